"""The pictures of a dataset summary: mean maps, cluster sheets, the 2-D embedding.

Mean maps use the heatmaps' colour map (JET, :func:`camcli.pictures.render.jet_lut`); the
embedding is drawn with matplotlib's object interface, off-screen, as the evaluation plots.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from camcli.pictures.style import jet_rgb, label_font

__all__ = ["MAP_SIZE", "cluster_sheet", "embedding_picture", "map_picture"]

MAP_SIZE = 160
"""Side of a mean map's picture in pixels."""

_GAP = 6


def map_picture(values: np.ndarray, size: int = MAP_SIZE) -> np.ndarray:
    """A mean map as a JET picture: scaled from its minimum to its maximum, upsampled.

    Args:
        values: ``(h, w)`` the map over the image frame.
        size: the picture's side.

    Returns:
        ``(size, size, 3)`` uint8 RGB.

    """
    array = np.asarray(values, dtype=np.float32)
    low, high = float(array.min()), float(array.max())
    unit = (array - low) / (high - low) if high - low > 1e-12 else np.zeros_like(array)
    big = cv2.resize(unit, (size, size), interpolation=cv2.INTER_CUBIC)
    index = np.clip(np.rint(big * 255.0), 0, 255).astype(np.intp)
    return jet_rgb()[index]


def _fit(picture: np.ndarray | None, size: int) -> np.ndarray:
    """A picture centred on a white ``size x size`` tile (grey when there is none)."""
    tile = np.full((size, size, 3), 255, dtype=np.uint8)
    if picture is None:
        tile[:] = 200
        return tile
    height, width = picture.shape[:2]
    scale = min(size / height, size / width)
    resized = cv2.resize(
        picture,
        (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA,
    )
    top, left = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    tile[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return tile


def cluster_sheet(
    mean: np.ndarray,
    thumbs: Sequence[np.ndarray | None],
    captions: Sequence[str],
    size: int = MAP_SIZE,
) -> np.ndarray:
    """A cluster at a glance: its mean map, then its example overlays, with their names.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    """
    tiles = [map_picture(mean, size)] + [_fit(t, size) for t in thumbs]
    names = ["mean map", *[c.rsplit("/", 1)[-1] for c in captions]]
    caption_height = 16
    width = len(tiles) * size + (len(tiles) + 1) * _GAP
    height = size + caption_height + 2 * _GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = label_font(11)
    for position, (tile, name) in enumerate(zip(tiles, names, strict=True)):
        left = _GAP + position * (size + _GAP)
        sheet.paste(Image.fromarray(tile), (left, _GAP))
        text = name if len(name) <= 24 else name[:23] + "…"
        draw.text((left, _GAP + size + 2), text, fill=(40, 40, 40), font=font)
    return np.asarray(sheet)


def embedding_picture(
    positions: np.ndarray,
    clusters: np.ndarray,
    thumbs: dict[int, np.ndarray | None],
    rows: Sequence[int],
    title: str,
) -> bytes:
    """The 2-D embedding of a class's maps, coloured by cluster, with a few thumbnails.

    Args:
        positions: ``(m, 2)`` embedded points.
        clusters: ``(m,)`` each point's cluster rank (1 = the most suspicious).
        thumbs: thumbnails by image number, drawn at their points.
        rows: the image number of each point.
        title: the picture's title.

    Returns:
        A PNG.

    """
    from matplotlib.figure import Figure
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    from camcli.pictures.plots import DPI, figure_png

    figure = Figure(figsize=(7.0, 6.0), dpi=DPI, layout="constrained")
    axis = figure.subplots()
    for rank in sorted(set(int(c) for c in clusters)):
        chosen = clusters == rank
        axis.scatter(
            positions[chosen, 0],
            positions[chosen, 1],
            s=14,
            label=f"cluster {rank}",
            color=f"C{(rank - 1) % 10}",
            alpha=0.8,
        )
    where = {int(image): position for position, image in enumerate(rows)}
    for image, thumb in thumbs.items():
        if thumb is None or image not in where:
            continue
        point = positions[where[image]]
        rank = int(clusters[where[image]])
        box = AnnotationBbox(
            OffsetImage(thumb, zoom=0.3),
            (float(point[0]), float(point[1])),
            frameon=True,
            pad=0.1,
            bboxprops={"edgecolor": f"C{(rank - 1) % 10}", "linewidth": 1.5},
        )
        axis.add_artist(box)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="best")
    return figure_png(figure)
