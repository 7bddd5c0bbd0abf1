"""Comparison sheets: one picture per image, a row per model and a column per method.

:func:`compose_sheet` lays out the overlays on the device (the photo scaled to the cell, each
map upsampled onto it, coloured and blended); :func:`label_sheet` writes the method names
and, on each cell, the model's top-1 class and probability (Pillow, on the host).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from camcli.pictures.render import colorize, jet_lut, overlay
from camcli.pictures.style import label_font

__all__ = ["SheetLayout", "compose_sheet", "label_sheet", "sanity_sheet", "sheet_layout"]


@dataclass(frozen=True)
class SheetLayout:
    """Where the cells of a comparison sheet are.

    Attributes:
        rows: cell rows (models).
        cols: cell columns (methods).
        cell_width: width of a cell in pixels.
        cell_height: height of a cell (the photo's aspect ratio kept).
        header: height of the band of method names at the top.
        gap: pixels between cells and around the sheet.

    """

    rows: int
    cols: int
    cell_width: int
    cell_height: int
    header: int
    gap: int

    @property
    def width(self) -> int:
        """Picture width."""
        return self.cols * (self.cell_width + self.gap) + self.gap

    @property
    def height(self) -> int:
        """Picture height."""
        return self.header + self.rows * (self.cell_height + self.gap) + self.gap

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left ``(x, y)`` of a cell."""
        x = self.gap + col * (self.cell_width + self.gap)
        y = self.header + self.gap + row * (self.cell_height + self.gap)
        return x, y


def sheet_layout(rows: int, cols: int, width: int, height: int, cell_width: int) -> SheetLayout:
    """The layout for a photo of ``width`` x ``height`` in cells ``cell_width`` wide.

    Example:
        >>> s = sheet_layout(2, 3, 400, 200, 100); (s.cell_height, s.width, s.height)
        (50, 316, 138)

    """
    cell_height = max(1, round(cell_width * height / width))
    return SheetLayout(rows, cols, cell_width, cell_height, header=24, gap=4)


def compose_sheet(
    photo: torch.Tensor,
    maps: list[torch.Tensor],
    layout: SheetLayout,
    lut: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """The sheet of one photo without its text: white background, one overlay per cell.

    Each map covers the whole photo (the model saw it resized, not cropped), so it is
    upsampled bilinearly onto the photo's cell.

    Args:
        photo: ``(H, W, 3)`` uint8 on the device.
        maps: per row, ``(cols, h, w)`` maps in [0, 1] (each row at its own ``h, w``).
        layout: from :func:`sheet_layout`.
        lut: ``(256, 3)`` uint8 colour table.
        alpha: heatmap weight in the overlay.

    Returns:
        ``(layout.height, layout.width, 3)`` uint8.

    """
    size = (layout.cell_height, layout.cell_width)
    small = F.interpolate(
        photo.permute(2, 0, 1)[None].float(), size=size, mode="bilinear", antialias=True
    )
    thumb = small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
    canvas = torch.full((layout.height, layout.width, 3), 255, dtype=torch.uint8, device=lut.device)
    for row, row_maps in enumerate(maps):
        cells = F.interpolate(
            row_maps[:, None].float(), size=size, mode="bilinear", align_corners=False
        )[:, 0]
        photos = thumb[None].expand(cells.shape[0], -1, -1, -1)
        blended = overlay(photos, colorize(cells, lut), alpha)
        for col in range(row_maps.shape[0]):
            x, y = layout.origin(row, col)
            canvas[y : y + size[0], x : x + size[1]] = blended[col]
    return canvas


def label_sheet(
    picture: np.ndarray,
    layout: SheetLayout,
    columns: list[str],
    texts: list[list[list[str]]],
) -> np.ndarray:
    """Write the column titles, and lines of text on each cell over a dark box.

    Args:
        picture: ``(H, W, 3)`` uint8 from :func:`compose_sheet`.
        layout: its layout.
        columns: one title per column (method names).
        texts: per row and column, the lines written at the cell's top-left.

    Returns:
        The labelled picture (a new array).

    """
    image = Image.fromarray(picture).convert("RGBA")
    boxes = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw_boxes = ImageDraw.Draw(boxes)
    size = max(11, min(16, layout.cell_width // 18))
    font = label_font(size)
    measure = ImageDraw.Draw(image)
    for col, title in enumerate(columns):
        x, _ = layout.origin(0, col)
        width = measure.textlength(title, font=font)
        measure.text(
            (x + (layout.cell_width - width) / 2, (layout.header - size) / 2),
            title,
            fill=(0, 0, 0, 255),
            font=font,
        )
    lines_at: list[tuple[float, float, str]] = []
    for row, row_texts in enumerate(texts):
        for col, lines in enumerate(row_texts):
            x, y = layout.origin(row, col)
            widest = max((measure.textlength(line, font=font) for line in lines), default=0)
            height = len(lines) * (size + 3) + 3
            draw_boxes.rectangle(
                (x, y, x + min(widest + 6, layout.cell_width - 1), y + height),
                fill=(0, 0, 0, 170),
            )
            lines_at += [(x + 3, y + 2 + i * (size + 3), line) for i, line in enumerate(lines)]
    image = Image.alpha_composite(image, boxes)
    draw = ImageDraw.Draw(image)
    for left, top, line in lines_at:
        draw.text((left, top), line, fill=(255, 255, 255, 255), font=font)
    return np.asarray(image.convert("RGB"))


SANITY_CELL = 96  # pixels per map in a sanity sheet


def sanity_sheet(
    columns: list[tuple[str, dict[str, np.ndarray]]],
    methods: list[str],
    cell: int = SANITY_CELL,
    photo: np.ndarray | None = None,
    caption: str = "",
) -> np.ndarray:
    """One image's maps at each randomisation stage: a row per method, a column per stage.

    Each map is shown by its magnitude (JET colours: blue low, red high), scaled to its own
    99th percentile so that sparse gradient pictures stay visible. The model's input, when
    given, comes first, titled with ``caption`` (the class explained).

    Args:
        columns: per column, its title and the maps ``(S, S)`` per method.
        methods: the row order.
        cell: side of one map in pixels.
        photo: the model's input ``(S, S, 3)`` uint8, shown in the first row.
        caption: its title.

    Returns:
        ``(H, W, 3)`` uint8.

    """
    import cv2

    if photo is not None:
        blank = {m: np.zeros((1, 1), dtype=np.float32) for m in methods}
        columns = [(caption or "input", blank), *columns]
    gap, label_width, header = 4, 110, 22
    width = label_width + len(columns) * (cell + gap) + gap
    height = header + len(methods) * (cell + gap) + gap
    picture = np.full((height, width, 3), 255, dtype=np.uint8)
    lut = jet_lut().numpy()
    for col, (_title, maps) in enumerate(columns):
        for row, method in enumerate(methods):
            values = np.abs(np.asarray(maps[method], dtype=np.float32))
            peak = float(np.percentile(values, 99)) if values.size else 0.0
            peak = peak if peak > 0 else float(values.max(initial=0.0))
            unit = np.clip(values / peak, 0, 1) if peak > 0 else values
            small = cv2.resize(unit, (cell, cell), interpolation=cv2.INTER_AREA)
            index = np.clip(np.rint(small * 255), 0, 255).astype(np.uint8)
            x = label_width + gap + col * (cell + gap)
            y = header + gap + row * (cell + gap)
            if photo is not None and col == 0:
                if row == 0:
                    picture[y : y + cell, x : x + cell] = cv2.resize(
                        photo, (cell, cell), interpolation=cv2.INTER_AREA
                    )
                continue
            picture[y : y + cell, x : x + cell] = lut[index]
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    font = label_font(11)
    for col, (title, _maps) in enumerate(columns):
        x = label_width + gap + col * (cell + gap)
        shown = title if len(title) <= 17 else title[:16] + "…"
        draw.text((x + 2, 5), shown, fill=(0, 0, 0), font=font)
    for row, method in enumerate(methods):
        y = header + gap + row * (cell + gap) + cell // 2 - 6
        draw.text((4, y), method, fill=(0, 0, 0), font=font)
    return np.asarray(image)
