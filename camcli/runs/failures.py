"""What a failed image's record says: one line naming the error, never a traceback.

Whatever fails for one image (a photo too thin for the model's resizing, an exception inside
the model, a picture that cannot be encoded) becomes that image's error record and the run
goes on; ``--debug`` adds the traceback on stderr.
"""

from __future__ import annotations

__all__ = ["MAX_REASON", "failure_reason", "is_run_error"]

MAX_REASON = 300
"""The most characters of an exception's message kept in a record."""


def failure_reason(exc: BaseException) -> str:
    """One line for a record: the exception's type and the first line of its message.

    >>> failure_reason(RuntimeError("sizes should be greater than 0\\nmore"))
    'RuntimeError: sizes should be greater than 0'
    >>> failure_reason(KeyError("x"))
    "KeyError: 'x'"
    """
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    if len(first) > MAX_REASON:
        first = first[: MAX_REASON - 3].rstrip() + "..."
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def is_run_error(exc: BaseException) -> bool:
    """``True`` for an error of the run's settings, the same for every image.

    A method the model cannot have (``cam`` without a linear head, ``lrp`` without
    canonizers) or a layer it cannot use ends the run as a usage error naming the option,
    instead of failing each image in turn.
    """
    from camcli.methods.activation import CamNotApplicable
    from camcli.models.hooks import LayerUnusable

    return isinstance(exc, (CamNotApplicable, LayerUnusable))
