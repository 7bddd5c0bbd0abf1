"""One run per output directory: a lock file naming its holder.

The lock is an ``fcntl.flock`` on the file, which the kernel releases when its process ends
however it ends (even ``kill -9``): a lock left by a dead run is simply free. The file's text
names the holder (pid, host, start time) for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LockHeld", "holder_message", "release_inherited_locks", "run_lock"]

# Descriptors of the locks this process holds. A forked child (a loader worker) inherits
# them, and an flock stays held while any copy is open: children close theirs so that the
# lock ends with the process that took it, even when that one is killed.
_HELD: set[int] = set()


def release_inherited_locks() -> None:
    """In a forked child: close the inherited lock descriptors (the parent keeps its locks)."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


class LockHeld(RuntimeError):
    """Another live camcli run holds the output directory."""


def _holder(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def holder_message(path: Path) -> str:
    """The refusal of a run into a directory whose lock ``path`` another run holds."""
    current = _holder(path)
    return (
        f"{path.parent} is in use by camcli pid {current.get('pid', '?')} on "
        f"{current.get('host', '?')} since {current.get('started', '?')}; wait for it to finish"
    )


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[Path]:
    """Hold the lock file ``path`` for the duration of the block.

    Raises:
        LockHeld: when a live process holds it; the message names the holder (pid, host,
            start time) and the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(holder_message(path)) from None
        # The previous holder may have removed the file between our open and our lock:
        # then we hold a lock on a file nobody else sees. Start again with the new file.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise LockHeld(f"could not take the lock {path}")
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        _HELD.add(fd)
        yield path
    finally:
        _HELD.discard(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
