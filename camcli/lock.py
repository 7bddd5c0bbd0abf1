"""One run per output directory: a lock file naming its holder, stale locks taken over."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LockHeld", "run_lock"]


class LockHeld(RuntimeError):
    """Another live camcli run holds the output directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _try_create(path: Path, holder: dict[str, object]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(holder, handle)
    return True


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[Path]:
    """Hold the lock file ``path`` for the duration of the block.

    A lock left by a process that no longer runs on this host is taken over.

    Raises:
        LockHeld: when a live process (or one on another host) holds it; the message names
            the holder (pid, host, start time) and the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    holder = {
        "pid": os.getpid(),
        "host": host,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for _ in range(5):
        if _try_create(path, holder):
            break
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            current = {}
        pid = int(current.get("pid", 0) or 0)
        dead = current.get("host") == host and pid > 0 and not _alive(pid)
        # An unreadable lock may be one another run is writing this very moment.
        abandoned = not current and _age(path) > 10.0
        if dead or abandoned:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its process is gone (or the file is unreadable)
            continue
        if not current:
            time.sleep(0.5)  # being written: read it again
            continue
        raise LockHeld(
            f"{path.parent} is in use by camcli pid {pid} on {current.get('host')} since "
            f"{current.get('started')}; wait for it to finish, or delete {path} if that run "
            "is gone"
        )
    else:
        raise LockHeld(f"could not take the lock {path}")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
