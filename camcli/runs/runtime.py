"""Process-level concerns of a run: signals, torchrun ranks, the run summary file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from camcli import __version__
from camcli.io.write import atomic_write_bytes

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the signals and summaries here serve commands that
# need no model (camcli summarize), whose start must not wait for torch.

__all__ = [
    "Rank",
    "StopRequest",
    "build_summary",
    "current_rank",
    "gather_summaries",
    "merge_indexes",
    "parse_shard",
    "run_name_suffix",
    "stop_on_signals",
    "write_summary",
]


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM: the run stops taking batches and exits with 128 + signal."""

    event: threading.Event
    signum: int | None = None

    @property
    def exit_code(self) -> int | None:
        """130 after SIGINT, 143 after SIGTERM, ``None`` when no signal came."""
        return 128 + self.signum if self.signum is not None else None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn the first SIGINT/SIGTERM into a stop request; a second one interrupts at once.

    The stop request is seen between batches and between the chunks of a method's passes;
    a second signal of either kind (a service manager repeating SIGTERM) raises
    KeyboardInterrupt at once. The exit code stays the first signal's.
    """
    request = StopRequest(threading.Event())
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        if request.event.is_set():
            raise KeyboardInterrupt
        request.signum = signum
        request.event.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_shard(text: str) -> tuple[int, int]:
    """Read ``K/N`` (0 <= K < N).

    Raises:
        ValueError: for anything else.
    """
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ValueError(f"{text!r} is not K/N (e.g. 0/4 for the first of four shards)") from None
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"{text!r}: K must be between 0 and N - 1 (shards are numbered from 0)")
    return k, n


def run_name_suffix(shard_k: int, shard_n: int, rank: Rank | None) -> str:
    """The suffix of a run's index, summary and lock names, per shard and torchrun rank."""
    suffix = f".shard-{shard_k}-of-{shard_n}" if shard_n > 1 else ""
    if rank is not None:
        suffix += f".rank-{rank.rank}-of-{rank.world_size}"
    return suffix


@dataclass(frozen=True)
class Rank:
    """A process's place in a ``torchrun`` job."""

    rank: int
    world_size: int
    local_rank: int


def current_rank() -> Rank | None:
    """The torchrun rank from the environment, or ``None`` outside a multi-process job."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return None
    return Rank(rank, world, local) if world > 1 else None


def init_group(rank: Rank) -> None:
    """Join the job's process group (gloo: only small objects travel)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(
            "gloo",
            rank=rank.rank,
            world_size=rank.world_size,
            timeout=datetime.timedelta(days=1),
        )


def gather_summaries(summary: dict[str, Any], rank: Rank) -> list[dict[str, Any]]:
    """Every rank's summary, in rank order (a collective: all ranks must call it)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * rank.world_size
    dist.all_gather_object(gathered, summary)
    dist.destroy_process_group()
    return [g for g in gathered if g is not None]


def merge_indexes(output_dir: Path, parts: Sequence[str], final: str) -> None:
    """Concatenate the ranks' index files into one, atomically, and remove the parts."""
    lines: list[str] = []
    for name in parts:
        path = output_dir / name
        if path.exists():
            lines.extend(line for line in path.read_text(encoding="utf-8").splitlines() if line)
    atomic_write_bytes(output_dir / final, ("\n".join(lines) + "\n" if lines else "").encode())
    for name in parts:
        (output_dir / name).unlink(missing_ok=True)


def _device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def build_summary(
    *,
    status: str,
    exit_code: int,
    counts: dict[str, int],
    seconds: float,
    failures: Sequence[tuple[str, str]],
    settings: dict[str, Any],
    device: torch.device,
    started: str,
    shard: str | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """The content of ``run.json``."""
    import torch
    import torchvision

    explained = counts.get("explained", 0)
    return {
        "status": status,
        "exit_code": exit_code,
        "started": started,
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_seconds": round(seconds, 3),
        "images_per_second": round(explained / seconds, 3) if seconds > 0 else None,
        "counts": counts,
        "failures": [{"image": image, "error": error} for image, error in failures],
        "versions": {
            "camcli": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "device": _device_name(device),
        "host": platform.node(),
        "shard": shard,
        "processes": processes,
        "settings": settings,
    }


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write ``run.json`` atomically."""
    atomic_write_bytes(path, (json.dumps(summary, indent=2, default=str) + "\n").encode())
