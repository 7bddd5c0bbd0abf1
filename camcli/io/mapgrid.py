"""The small copy of a map that an ``explain`` record keeps, for ``camcli summarize``.

Each map method's entry in a record carries ``grid``: the heatmap's values (the map as its
picture shows it, 0 to 1) averaged over a 32 x 32 grid of the image frame, quantised to
uint8 and stored as base64, row by row from the top left. ``summarize`` reads 10,000 records'
grids in seconds, where decoding 10,000 full-size heatmap PNGs would take minutes.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

__all__ = ["SUMMARY_GRID", "decode_grid", "encode_grid"]

SUMMARY_GRID = 32
"""Side of the small copy of each map kept in the record (``camcli summarize`` reads it)."""


def encode_grid(values: np.ndarray) -> dict[str, Any]:
    """A ``(rows, cols)`` uint8 grid as a record's JSON entry.

    Returns:
        ``{"shape": [rows, cols], "uint8": BASE64}``.

    """
    array = np.ascontiguousarray(values, dtype=np.uint8)
    return {
        "shape": [int(array.shape[0]), int(array.shape[1])],
        "uint8": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def decode_grid(entry: Any) -> np.ndarray | None:
    """The grid of a record's entry as float32 in [0, 1], or ``None`` if it holds none."""
    if not isinstance(entry, dict):
        return None
    shape, text = entry.get("shape"), entry.get("uint8")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(s, int) and s > 0 for s in shape)
        or not isinstance(text, str)
    ):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != shape[0] * shape[1]:
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).astype(np.float32) / 255.0
