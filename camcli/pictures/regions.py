"""Pictures of detections and segments: boxes with names on the photo, a coloured mask.

Host-side (NumPy and Pillow); an image has few detections and one mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from camcli.pictures.style import label_font

__all__ = ["draw_boxes", "mask_picture", "palette"]


def palette(count: int) -> np.ndarray:
    """A fixed colour per class index, ``(count, 3)`` uint8.

    Black for the background (0), then well-separated hues (PASCAL VOC's bit-interleaved
    palette).
    """
    colours = np.zeros((count, 3), np.uint8)
    for index in range(count):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours[index] = (r, g, b)
    return colours


def _font_size(width: int, height: int) -> int:
    return max(10, min(width, height) // 30)


def draw_boxes(
    photo: np.ndarray,
    boxes: Sequence[Sequence[float]],
    captions: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
) -> np.ndarray:
    """The photo ``(H, W, 3)`` uint8 with each box outlined and captioned above it."""
    image = Image.fromarray(photo)
    draw = ImageDraw.Draw(image)
    height, width = photo.shape[:2]
    line = max(1, min(width, height) // 150)
    font = label_font(_font_size(width, height))
    for box, caption, colour in zip(boxes, captions, colours, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        if caption:
            left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
            tw, th = right - left, bottom - top
            ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1 + line
            draw.rectangle((x1, ty, x1 + tw + 4, ty + th + 2), fill=colour)
            draw.text((x1 + 2 - left, ty + 1 - top), caption, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def mask_picture(mask: np.ndarray, names: Sequence[str], shown: Sequence[int]) -> np.ndarray:
    """A class mask ``(H, W)`` in the fixed palette, with a legend of the ``shown`` classes."""
    colours = palette(max(int(mask.max()) + 1, len(names), 1))
    picture = colours[mask]
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    height, width = mask.shape
    font = label_font(_font_size(width, height))
    y = 2
    for index in shown:
        caption = names[index] if index < len(names) else f"class_{index}"
        left, top, _, bottom = draw.textbbox((0, 0), caption, font=font)
        size = int(bottom - top)
        draw.rectangle((2, y, 2 + size, y + size), fill=tuple(int(c) for c in colours[index]),
                       outline=(255, 255, 255))  # fmt: skip
        draw.text((6 + size - left, y - top), caption, fill=(255, 255, 255), font=font)
        y += size + 4
    return np.asarray(image)
