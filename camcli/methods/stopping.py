"""Stop requests seen between the chunks of a method's passes, not only between batches.

RISE at 4,000 masks, Score-CAM on a wide layer, Integrated Gradients at many steps or the
faithfulness curves are minutes of passes for one batch; a service manager sends SIGKILL
30 to 90 s after SIGTERM. The run loop sets its stop event for the batch work with
:func:`stop_between_chunks`; every chunked loop calls :func:`check_stop` before a chunk and
raises :class:`Stopped`, which abandons the batch (nothing of it is written, so a re-run
does it again) while the batches already finished are written.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["Stopped", "check_stop", "stop_between_chunks"]

_STOP: ContextVar[threading.Event | None] = ContextVar("camcli_stop", default=None)


class Stopped(Exception):
    """A stop request came while a batch's passes were running."""


@contextmanager
def stop_between_chunks(event: threading.Event | None) -> Iterator[None]:
    """Let the chunked loops of the methods called in this block see ``event``."""
    token = _STOP.set(event)
    try:
        yield
    finally:
        _STOP.reset(token)


def check_stop() -> None:
    """Raise :class:`Stopped` when the current block's stop event is set."""
    event = _STOP.get()
    if event is not None and event.is_set():
        raise Stopped
