"""Localisation scores: does a map point at the object, measured against ground truth.

Every score reads one image's saliency at the image's own size (``(H, W)``, on any device)
and a region of the explained class: the union of its boxes, or a mask.

* pointing game (Zhang et al. 2016): a hit when a maximum of the map lies within
  ``tolerance`` pixels (15 in the paper) of the region; a constant map (no maximum) misses.
* energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the map's positive
  mass inside the region.
* box accuracy (Selvaraju et al. 2017, Grad-CAM): the map's positive part thresholded at
  15 % of its maximum, a box around the largest connected region (8-connected), correct at
  an intersection over union of at least 0.5 with one box of the class.
* relevance mass accuracy and relevance rank accuracy (Arras et al. 2022), with a mask: the
  share of the positive mass inside the mask, and the share of the ``K`` most relevant pixels
  that lie in it (``K`` = the mask's size).

Signed maps (Integrated Gradients, LRP) count with their positive part, gradient pictures
with their magnitude (:func:`camcli.methods.metrics.pixel_order_saliency`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

__all__ = [
    "POINTING_TOLERANCE",
    "Box",
    "Region",
    "box_accuracy",
    "energy_pointing_game",
    "pointing_game",
    "region_of",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
]

POINTING_TOLERANCE = 15  # pixels, Zhang et al.
BOX_THRESHOLD = 0.15  # of the map's maximum, Selvaraju et al.
BOX_IOU = 0.5


@dataclass(frozen=True)
class Box:
    """An object's box in image pixels: ``[x0, x1) x [y0, y1)`` in continuous coordinates.

    The pixel in column ``i`` and row ``j`` (centre ``(i + 0.5, j + 0.5)``) is inside when its
    centre is. Pascal VOC's 1-based inclusive ``xmin..xmax`` is ``x0 = xmin - 1, x1 = xmax``;
    COCO's ``[x, y, w, h]`` is ``x0 = x, x1 = x + w``.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def columns(self, width: int) -> tuple[int, int]:
        """The first and one past the last column whose centre lies in the box."""
        return _span(self.x0, self.x1, width)

    def rows(self, height: int) -> tuple[int, int]:
        """The first and one past the last row whose centre lies in the box."""
        return _span(self.y0, self.y1, height)


def _span(low: float, high: float, size: int) -> tuple[int, int]:
    first = max(0, int(np.ceil(low - 0.5)))
    last = min(size, int(np.ceil(high - 0.5)))
    return first, max(first, last)


@dataclass(frozen=True)
class Region:
    """Where the explained class is in one image.

    Attributes:
        inside: ``(H, W)`` bool, the boxes' union or the mask.
        near: ``(H, W)`` bool, the pixels within the pointing game's tolerance of ``inside``.
        boxes: the class's boxes (empty for a mask).

    """

    inside: np.ndarray
    near: np.ndarray
    boxes: tuple[Box, ...] = ()


def region_of(
    height: int,
    width: int,
    boxes: Sequence[Box] = (),
    mask: np.ndarray | None = None,
    tolerance: float = POINTING_TOLERANCE,
) -> Region:
    """The region of boxes or of a mask, and its neighbourhood for the pointing game.

    Args:
        height: image height.
        width: image width.
        boxes: the class's boxes (used when ``mask`` is ``None``).
        mask: ``(H, W)``, non-zero on the object.
        tolerance: the pointing game's tolerance in pixels (Euclidean distance between
            pixel centres).

    """
    if mask is not None:
        inside = np.asarray(mask) != 0
    else:
        inside = np.zeros((height, width), dtype=bool)
        for box in boxes:
            c0, c1 = box.columns(width)
            r0, r1 = box.rows(height)
            inside[r0:r1, c0:c1] = True
    if not inside.any():
        near = inside.copy()
    elif tolerance > 0:
        # Distance of every pixel to the nearest pixel of the region (exact Euclidean).
        distance = cv2.distanceTransform(
            (~inside).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
        )
        near = distance <= tolerance + 1e-6
    else:
        near = inside.copy()
    return Region(inside, near, tuple(boxes))


def _positive(saliency: torch.Tensor) -> torch.Tensor:
    return saliency.float().clamp(min=0)


def pointing_game(saliency: torch.Tensor, near: torch.Tensor) -> float:
    """1.0 when a maximum of ``saliency`` lies in ``near`` (the tolerant region), else 0.0.

    A constant map has no maximum to point with and misses.
    """
    values = saliency.float()
    peak, low = values.max(), values.min()
    if not bool(peak > low):
        return 0.0
    return float(((values == peak) & near).any())


def energy_pointing_game(saliency: torch.Tensor, inside: torch.Tensor) -> float | None:
    """The share of the positive mass inside the region (``None`` for a map without mass)."""
    positive = _positive(saliency)
    total = float(positive.sum())
    if total <= 0:
        return None
    return float(positive[inside].sum()) / total


def relevance_mass_accuracy(saliency: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Arras et al.'s mass accuracy: the positive mass inside the mask over all of it."""
    return energy_pointing_game(saliency, mask)


def relevance_rank_accuracy(saliency: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Arras et al.'s rank accuracy: of the ``K`` most relevant pixels, the share in the mask.

    ``K`` is the number of mask pixels; ties are broken by position (row-major), so the
    result does not depend on the device. ``None`` for an empty mask.
    """
    size = int(mask.sum())
    if size == 0:
        return None
    flat = saliency.float().flatten()
    order = torch.sort(flat, descending=True, stable=True).indices[:size]
    return float(mask.flatten()[order].sum()) / size


def box_accuracy(
    saliency: np.ndarray, boxes: Sequence[Box], threshold: float = BOX_THRESHOLD
) -> tuple[float, float]:
    """Grad-CAM's localisation: the box of the largest region above ``threshold`` x maximum.

    Args:
        saliency: ``(H, W)`` on the host.
        boxes: the class's ground-truth boxes.
        threshold: share of the map's positive maximum kept.

    Returns:
        ``(correct, iou)``: 1.0 when the best intersection over union with a ground-truth
        box is at least 0.5, and that intersection over union (0 for a map without mass).

    """
    positive = np.clip(np.asarray(saliency, dtype=np.float32), 0, None)
    peak = float(positive.max()) if positive.size else 0.0
    if peak <= 0 or not boxes:
        return 0.0, 0.0
    kept = (positive >= threshold * peak).astype(np.uint8)
    count, _labels, stats, _ = cv2.connectedComponentsWithStats(kept, connectivity=8)
    if count <= 1:
        return 0.0, 0.0
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, width, height = (
        int(stats[largest, cv2.CC_STAT_LEFT]),
        int(stats[largest, cv2.CC_STAT_TOP]),
        int(stats[largest, cv2.CC_STAT_WIDTH]),
        int(stats[largest, cv2.CC_STAT_HEIGHT]),
    )
    found = Box(left, top, left + width, top + height)
    best = max(_iou(found, box, *positive.shape) for box in boxes)
    return float(best >= BOX_IOU), best


def _iou(a: Box, b: Box, height: int, width: int) -> float:
    """Intersection over union of two boxes, counted in whole pixels (pixel centres)."""
    (ac0, ac1), (ar0, ar1) = a.columns(width), a.rows(height)
    (bc0, bc1), (br0, br1) = b.columns(width), b.rows(height)
    across = max(0, min(ac1, bc1) - max(ac0, bc0))
    down = max(0, min(ar1, br1) - max(ar0, br0))
    intersection = across * down
    union = (ac1 - ac0) * (ar1 - ar0) + (bc1 - bc0) * (br1 - br0) - intersection
    return intersection / union if union > 0 else 0.0
