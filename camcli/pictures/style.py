"""Colour maps and the label font of every picture, without torch (the summary uses them)."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from PIL import ImageFont

__all__ = ["jet_rgb", "label_font"]


@lru_cache(maxsize=1)
def _jet() -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    bgr = cv2.applyColorMap(ramp, cv2.COLORMAP_JET).reshape(256, 3)
    table = np.ascontiguousarray(bgr[:, ::-1])
    table.setflags(write=False)
    return table


def jet_rgb() -> np.ndarray:
    """OpenCV's JET colour map as a read-only ``(256, 3)`` uint8 table in **RGB** order."""
    return _jet()


@lru_cache(maxsize=8)
def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at ``size`` pixels, for the labels written on pictures."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()
