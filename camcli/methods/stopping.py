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
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

__all__ = [
    "PassProgress",
    "Stopped",
    "check_stop",
    "passes_done",
    "plan_passes",
    "stop_between_chunks",
]

_STOP: ContextVar[threading.Event | None] = ContextVar("camcli_stop", default=None)


class PassProgress(Protocol):
    """Receives a batch's passes: planned as each loop starts, done as each chunk ends."""

    def plan(self, passes: int, method: str) -> None:
        """A loop of ``passes`` passes of ``method`` starts."""

    def done(self, passes: int) -> None:
        """``passes`` more passes are done."""


_PROGRESS: ContextVar[PassProgress | None] = ContextVar("camcli_passes", default=None)


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
    try:
        yield
    finally:
        _PROGRESS.reset(reported)
        _STOP.reset(token)


def plan_passes(passes: int, method: str) -> None:
    """Say that a loop of ``passes`` passes of ``method`` starts (for the progress)."""
    progress = _PROGRESS.get()
    if progress is not None and passes > 0:
        progress.plan(passes, method)


def passes_done(passes: int) -> None:
    """Say that ``passes`` more passes are done (for the progress)."""
    progress = _PROGRESS.get()
    if progress is not None and passes > 0:
        progress.done(passes)


def check_stop() -> None:
    """Raise :class:`Stopped` when the current block's stop event is set."""
    event = _STOP.get()
    if event is not None and event.is_set():
        raise Stopped
