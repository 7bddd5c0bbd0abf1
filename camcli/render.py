"""Turn maps into pictures on the device.

Upsampling onto the original image, colour maps, overlays and guided-backprop images. Every
function here is a pure tensor function; only uint8 pictures leave the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "RenderedImage",
    "colorize",
    "guided_to_unit",
    "jet_lut",
    "original_grid",
    "overlay",
    "render_batch",
    "sample_on_original",
    "to_input_resolution",
]


@lru_cache(maxsize=1)
def _jet_rgb() -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    bgr = cv2.applyColorMap(ramp, cv2.COLORMAP_JET).reshape(256, 3)
    return np.ascontiguousarray(bgr[:, ::-1])


def jet_lut(device: torch.device | str = "cpu") -> torch.Tensor:
    """OpenCV's JET colour map as a ``(256, 3)`` uint8 table in **RGB** order."""
    return torch.from_numpy(_jet_rgb().copy()).to(device)


def colorize(unit_map: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Colour a map in [0, 1] with a lookup table: ``(..., H, W)`` -> ``(..., H, W, 3)`` uint8.

    Quantises like ``cv2.applyColorMap`` on ``round(255 * map)``, so 1.0 is JET's dark red
    (RGB 128, 0, 0) and 0.0 its dark blue (RGB 0, 0, 128).
    """
    index = (unit_map.float().clamp(0, 1) * 255.0).round().long()
    return lut[index]


def overlay(pixels: torch.Tensor, heatmap: torch.Tensor, alpha: float) -> torch.Tensor:
    """Blend a coloured heatmap over a photo: ``alpha * heat + (1 - alpha) * photo``.

    Args:
        pixels: photo, ``(H, W, 3)`` uint8.
        heatmap: coloured map, ``(H, W, 3)`` uint8.
        alpha: weight of the heatmap in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8.

    """
    mixed = alpha * heatmap.float() + (1.0 - alpha) * pixels.float()
    return mixed.round().clamp(0, 255).to(torch.uint8)


def to_input_resolution(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly upsample ``(N, h, w)`` maps to the model input ``(N, size, size)``."""
    return F.interpolate(
        maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False
    )[:, 0]


def original_grid(
    theta: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling grid from original pixels into the model input, and where the model looked.

    Args:
        theta: ``(2, 3)`` affine map (see ``decode.ViewGeometry.theta``).
        height: original height.
        width: original width.

    Returns:
        The grid ``(1, H, W, 2)`` for ``F.grid_sample`` and a boolean mask ``(H, W)``, true
        where the pixel centre lies inside the model's view (all true unless cropped).

    """
    grid = F.affine_grid(theta[None].float(), [1, 1, height, width], align_corners=False)
    inside = (grid.abs() <= 1.0 + 1e-6).all(dim=-1)[0]
    return grid, inside


def sample_on_original(
    maps: torch.Tensor, grid: torch.Tensor, inside: torch.Tensor, outside: float = 0.0
) -> torch.Tensor:
    """Resample ``(C, h, w)`` maps onto the original pixels (bilinear, edges clamped).

    Pixels the model did not see (outside a centre crop) get ``outside``.

    Returns:
        ``(C, H, W)`` float32.

    """
    sampled = F.grid_sample(
        maps[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    return torch.where(inside[None], sampled, torch.full_like(sampled, outside))


def guided_to_unit(gradients: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Guided-backprop gradients ``(N, 3, H, W)`` to a viewable [0, 1] image per image.

    Standardises each image's gradient (zero mean, unit standard deviation over all its
    values), scales by 0.1 and centres on 0.5, as the guided-backprop papers' figures do
    (``0.5 +- 5`` standard deviations spans the range). A zero gradient gives flat 0.5 grey.
    """
    flat = gradients.float().flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1, unbiased=False).view(-1, 1, 1, 1)
    scaled = torch.where(
        std > eps,
        (gradients.float() - mean) / std.clamp(min=eps),
        torch.zeros_like(gradients, dtype=torch.float32),
    )
    return (scaled * 0.1 + 0.5).clamp(0, 1)


@dataclass
class RenderedImage:
    """The pictures of one image, uint8 RGB at its original size, on the CPU."""

    heatmap: np.ndarray
    overlay: np.ndarray
    guided: np.ndarray | None


def render_batch(
    cams: torch.Tensor,
    guided: torch.Tensor | None,
    pixels: list[torch.Tensor],
    thetas: torch.Tensor,
    lut: torch.Tensor,
    alpha: float = 0.5,
) -> tuple[list[RenderedImage], list[tuple[int, int]]]:
    """Render the pictures of a batch at each image's original size.

    Args:
        cams: normalised maps in [0, 1], ``(N, h, w)``, on the device.
        guided: guided-backprop gradients ``(N, 3, S, S)`` or ``None``.
        pixels: original photos, N x ``(H, W, 3)`` uint8, on the device.
        thetas: ``(N, 2, 3)`` maps from original to model-input coordinates.
        lut: colour table from :func:`jet_lut`, on the device.
        alpha: heatmap weight in the overlay.

    Returns:
        One :class:`RenderedImage` per image, in batch order, and the ``(x, y)`` pixel of
        each image's heatmap maximum (first one in row order).

    """
    guided_unit = guided_to_unit(guided) if guided is not None else None
    heat_list, over_list, guided_list, peak_list = [], [], [], []
    for i, photo in enumerate(pixels):
        height, width = int(photo.shape[0]), int(photo.shape[1])
        grid, inside = original_grid(thetas[i], height, width)
        cam = sample_on_original(cams[i : i + 1], grid, inside)[0]
        peak_list.append(cam.flatten().argmax())
        heat = colorize(cam, lut)
        blended = overlay(photo, heat, alpha)
        blended = torch.where(inside[..., None], blended, photo)
        heat_list.append(heat)
        over_list.append(blended)
        if guided_unit is not None:
            picture = sample_on_original(guided_unit[i], grid, inside, outside=0.5)
            guided_list.append((picture * 255.0).round().to(torch.uint8).permute(1, 2, 0))
    # Copies back: uint8 pictures and one small tensor of peak positions.
    widths = [int(photo.shape[1]) for photo in pixels]
    peaks = [
        (i % w, i // w) for i, w in zip(torch.stack(peak_list).cpu().tolist(), widths, strict=True)
    ]
    heat_cpu = [t.cpu().numpy() for t in heat_list]
    over_cpu = [t.cpu().numpy() for t in over_list]
    guided_cpu: list[np.ndarray | None] = (
        [t.contiguous().cpu().numpy() for t in guided_list] if guided_list else [None] * len(pixels)
    )
    rendered = [
        RenderedImage(h, o, g) for h, o, g in zip(heat_cpu, over_cpu, guided_cpu, strict=True)
    ]
    return rendered, peaks
