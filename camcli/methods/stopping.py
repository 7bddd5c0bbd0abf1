"""Between the chunks of a method's passes: stop requests, and progress within a batch.

RISE at 4,000 masks, Score-CAM on a wide layer, Integrated Gradients at many steps or the
faithfulness curves are minutes of passes for one batch; a service manager sends SIGKILL
30 to 90 s after SIGTERM. The run loop sets its stop event for the batch work with
:func:`stop_between_chunks`; every chunked loop calls :func:`check_stop` before a chunk and
raises :class:`Stopped`, which abandons the batch (nothing of it is written, so a re-run
does it again) while the batches already finished are written.

The same loops report their passes (one image through the model, masked, noisy or on an
integration path, is one pass): :func:`plan_passes` when a loop starts, :func:`passes_done`
after each chunk. The run loop shows them, so that a batch of several thousand passes moves
its progress instead of freezing it.

The work of a batch declares its passes before the first one (:func:`planned_passes`: the
classifier methods' :func:`camcli.methods.batch.compute_methods` every method's, adaptive
Integrated Gradients its most levels), so the planned total is known up front and does not
grow: a loop that starts inside a declared block takes its passes from the block and only
names its method. A block's passes no loop took (the levels adaptive Integrated Gradients did
not need) are taken back from the plan when it ends, so done reaches planned at the end of
the batch, and the time left, from the rate of the passes done, stays true.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "PROGRESS_CHUNKS",
    "PassProgress",
    "Stopped",
    "check_stop",
    "passes_done",
    "plan_passes",
    "planned_passes",
    "progress_chunk",
    "stop_between_chunks",
]

_STOP: ContextVar[threading.Event | None] = ContextVar("camcli_stop", default=None)


class PassProgress(Protocol):
    """Receives a batch's passes: planned up front (or as a loop starts), done as chunks end."""

    def plan(self, passes: int, method: str) -> None:
        """``passes`` more passes are planned, and ``method``'s are the ones running now.

        ``passes`` is 0 when a loop starts whose passes were planned already (declared up
        front by :func:`planned_passes`): the call then only names the method. It is
        negative when planned passes turned out not to be needed (the levels adaptive
        Integrated Gradients did not take): they are taken back, never more than were
        planned, so that done reaches planned and the rate of the passes done stays true.
        """

    def done(self, passes: int) -> None:
        """``passes`` more passes are done."""


_PROGRESS: ContextVar[PassProgress | None] = ContextVar("camcli_passes", default=None)


@dataclass
class _Block:
    """Passes declared up front that no loop has taken yet."""

    left: int


_BLOCK: ContextVar[_Block | None] = ContextVar("camcli_planned", default=None)


class Stopped(Exception):
    """A stop request came while a batch's passes were running."""


@contextmanager
def stop_between_chunks(
    event: threading.Event | None, progress: PassProgress | None = None
) -> Iterator[None]:
    """Let the chunked loops of the methods called in this block see ``event``.

    ``progress``, when given, receives their passes (:func:`plan_passes`,
    :func:`passes_done`).
    """
    token = _STOP.set(event)
    reported = _PROGRESS.set(progress)
    block = _BLOCK.set(None)
    try:
        yield
    finally:
        _BLOCK.reset(block)
        _PROGRESS.reset(reported)
        _STOP.reset(token)


def _take(passes: int) -> int:
    """Take ``passes`` from the innermost declared block; return those it did not hold."""
    block = _BLOCK.get()
    if block is None:
        return passes
    taken = min(passes, block.left)
    block.left -= taken
    return passes - taken


@contextmanager
def planned_passes(passes: int, method: str) -> Iterator[None]:
    """Declare the passes of the block's loops before the first of them runs.

    The loops inside (and blocks inside, which declare a part of these) take their passes
    from this declaration instead of adding to the planned total; ``method`` is named until
    the first loop starts. When the block ends normally, the passes no loop took are taken
    back from the plan (work that turned out not to be needed). A block inside a declared
    one takes its passes from it; a block or loop that needs more than its enclosing block
    holds plans the rest.

    Args:
        passes: the most passes the block's loops make.
        method: the method the progress names until the first loop starts.

    """
    progress = _PROGRESS.get()
    if progress is None or passes <= 0:
        yield
        return
    progress.plan(_take(passes), method)
    block = _Block(passes)
    token = _BLOCK.set(block)
    try:
        yield
    finally:
        _BLOCK.reset(token)
    if block.left > 0:  # not reached when the block raised: the batch is abandoned or retried
        progress.plan(-block.left, method)


def plan_passes(passes: int, method: str) -> None:
    """Say that a loop of ``passes`` passes of ``method`` starts (for the progress).

    Inside a :func:`planned_passes` block the passes were planned already: the progress is
    only told which method runs (and any passes beyond the block's declaration).
    """
    progress = _PROGRESS.get()
    if progress is not None and passes > 0:
        progress.plan(_take(passes), method)


def passes_done(passes: int) -> None:
    """Say that ``passes`` more passes are done (for the progress)."""
    progress = _PROGRESS.get()
    if progress is not None and passes > 0:
        progress.done(passes)


PROGRESS_CHUNKS = 4
"""The fewest chunks of a loop chunked by :func:`progress_chunk` (when it has that many passes)."""


def progress_chunk(chunk_size: int, passes: int) -> int:
    """A loop's chunk: at most ``chunk_size``, and small enough for :data:`PROGRESS_CHUNKS`.

    A loop whose passes all fit in one chunk would report them only when it ends (SmoothGrad's
    32 passes of two images sat at 0 done for 10 s on a CPU); a few smaller chunks move its
    progress while it runs. Loops of many chunks keep ``chunk_size``.

    Example:
        >>> progress_chunk(64, 32), progress_chunk(64, 1000), progress_chunk(64, 2)
        (8, 64, 1)

    """
    return max(1, min(chunk_size, -(-passes // PROGRESS_CHUNKS)))


def check_stop() -> None:
    """Raise :class:`Stopped` when the current block's stop event is set."""
    event = _STOP.get()
    if event is not None and event.is_set():
        raise Stopped
