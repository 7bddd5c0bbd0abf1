"""Grids of a layer's feature maps (``camcli features``).

:func:`launch_feature_grids` picks channels of a layer's activations (the first ones or the
strongest by mean activation), scales them with one colour scale per grid and lays them out
as a uint8 picture on the device; :func:`label_grid` then writes the channel indices and the
scale on it (Pillow, on the host).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from camcli.pictures.style import label_font

__all__ = [
    "GridLayout",
    "grid_layout",
    "label_grid",
    "launch_feature_grids",
    "select_channels",
    "viridis_lut",
]


@lru_cache(maxsize=1)
def _viridis_rgb() -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    bgr = cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS).reshape(256, 3)
    return np.ascontiguousarray(bgr[:, ::-1])


def viridis_lut(device: torch.device | str = "cpu") -> torch.Tensor:
    """The viridis colour map as a ``(256, 3)`` uint8 table in RGB order (dark = low)."""
    return torch.from_numpy(_viridis_rgb().copy()).to(device)


def select_channels(activations: torch.Tensor, count: int, strongest: bool) -> torch.Tensor:
    """Which channels a grid shows, per image: ``(N, k)`` indices, ``k = min(count, C)``.

    Args:
        activations: ``(N, C, h, w)``.
        count: channels per grid.
        strongest: the ``count`` channels of highest mean activation, strongest first
            (ties: lower index first); otherwise channels ``0 .. count - 1``.

    Example:
        >>> a = torch.zeros(1, 4, 2, 2); a[0, 2] = 5; a[0, 1] = 1
        >>> select_channels(a, 2, True).tolist(), select_channels(a, 2, False).tolist()
        ([[2, 1]], [[0, 1]])

    """
    n, c = activations.shape[:2]
    k = min(count, c)
    if not strongest:
        return torch.arange(k, device=activations.device).expand(n, k)
    means = activations.float().mean(dim=(2, 3))
    # A stable descending sort: equal means keep channel order.
    return torch.sort(means, dim=1, descending=True, stable=True).indices[:, :k]


@dataclass(frozen=True)
class GridLayout:
    """Where the cells of a feature-map grid are.

    Attributes:
        rows: cell rows.
        cols: cell columns.
        cell: side of a cell in pixels.
        label: height of the band above each cell that holds its channel index.
        gap: pixels between cells and around the grid.
        bar: height of the colour-scale band at the bottom.

    """

    rows: int
    cols: int
    cell: int
    label: int
    gap: int
    bar: int

    @property
    def width(self) -> int:
        """Picture width."""
        return self.cols * (self.cell + self.gap) + self.gap

    @property
    def height(self) -> int:
        """Picture height."""
        return self.rows * (self.cell + self.label + self.gap) + self.gap + self.bar

    def origin(self, index: int) -> tuple[int, int]:
        """Top-left ``(x, y)`` of cell ``index``'s map (below its label band)."""
        row, col = divmod(index, self.cols)
        x = self.gap + col * (self.cell + self.gap)
        y = self.gap + row * (self.cell + self.label + self.gap) + self.label
        return x, y


def grid_layout(count: int, cell: int) -> GridLayout:
    """A near-square layout for ``count`` cells of ``cell`` pixels (labels sized to fit).

    Example:
        >>> g = grid_layout(10, 32); (g.rows, g.cols)
        (3, 4)

    """
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    label = max(12, cell // 6)
    return GridLayout(rows, cols, cell, label, gap=4, bar=label + 14)


def launch_feature_grids(
    activations: torch.Tensor,
    channels: torch.Tensor,
    layout: GridLayout,
    lut: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out the chosen feature maps of each image as one picture, on the device.

    Every map of a grid shares one colour scale: the lowest and highest value among the
    grid's chosen channels map to the two ends of ``lut``. Maps are scaled to the cell with
    nearest-neighbour sampling, so each activation stays a visible block.

    Args:
        activations: ``(N, C, h, w)``.
        channels: ``(N, k)`` channel indices per image (:func:`select_channels`).
        layout: the grid (at least ``k`` cells).
        lut: ``(256, 3)`` uint8 colour table on the device.

    Returns:
        ``(pictures, low, high)``: ``(N, height, width, 3)`` uint8 pictures (white label
        bands and gaps; the scale band at the bottom holds the colour ramp) and each grid's
        scale ends ``(N,)`` float32.

    """
    n, k = channels.shape
    values = activations.float().gather(
        1, channels[:, :, None, None].expand(-1, -1, *activations.shape[2:])
    )
    low = values.flatten(1).amin(dim=1)
    high = values.flatten(1).amax(dim=1)
    span = (high - low).clamp(min=1e-12)[:, None, None, None]
    unit = ((values - low[:, None, None, None]) / span).clamp(0, 1)
    h, w = values.shape[-2:]
    side = layout.cell
    scale = side / max(h, w)
    cell_h, cell_w = max(1, round(h * scale)), max(1, round(w * scale))
    cells = F.interpolate(unit, size=(cell_h, cell_w), mode="nearest")
    index = cells.mul(255.0).round_().to(torch.long)
    coloured = lut[index]  # (N, k, ch, cw, 3)
    canvas = torch.full(
        (n, layout.height, layout.width, 3), 255, dtype=torch.uint8, device=activations.device
    )
    for i in range(k):
        x, y = layout.origin(i)
        canvas[:, y : y + cell_h, x : x + cell_w] = coloured[:, i]
    ramp_top = layout.height - layout.bar + 2
    ramp_width = layout.width - 2 * layout.gap
    ramp = torch.linspace(0, 255, ramp_width, device=activations.device).round().to(torch.long)
    canvas[:, ramp_top : ramp_top + 8, layout.gap : layout.gap + ramp_width] = lut[ramp]
    return canvas, low, high


def label_grid(
    picture: np.ndarray,
    layout: GridLayout,
    channels: list[int],
    low: float,
    high: float,
    title: str,
) -> np.ndarray:
    """Write each cell's channel index, the title and the scale ends on a grid picture.

    Args:
        picture: ``(H, W, 3)`` uint8 from :func:`launch_feature_grids`.
        layout: its layout.
        channels: the channel index of each cell.
        low: value at the dark end of the scale.
        high: value at the bright end.
        title: what the grid shows (layer name), written in the scale band.

    Returns:
        The labelled picture (a new array).

    """
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    font = label_font(max(10, layout.label - 3))
    for i, channel in enumerate(channels):
        x, y = layout.origin(i)
        draw.text((x + 1, y - layout.label), f"{channel}", fill=(0, 0, 0), font=font)
    text_y = layout.height - layout.bar + 11
    draw.text((layout.gap, text_y), f"{low:.3g}", fill=(0, 0, 0), font=font)
    right = f"{high:.3g}"
    right_width = draw.textlength(right, font=font)
    draw.text((layout.width - layout.gap - right_width, text_y), right, fill=(0, 0, 0), font=font)
    title_width = draw.textlength(title, font=font)
    draw.text(((layout.width - title_width) / 2, text_y), title, fill=(0, 0, 0), font=font)
    return np.asarray(image)
