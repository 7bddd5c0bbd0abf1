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
    "saliency_to_unit",
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


def saliency_to_unit(gradients: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    """Input gradients ``(N, 3, H, W)`` to a grey saliency picture ``(N, 1, H, W)`` in [0, 1].

    SmoothGrad's usual display: the absolute gradient, maximum over colour channels, divided
    by its 99th percentile per image (so a few extreme pixels do not flatten the rest).
    """
    magnitude = gradients.float().abs().amax(dim=1, keepdim=True)
    flat = magnitude.flatten(1)
    k = max(1, round(quantile * flat.shape[1]))
    scale = flat.kthvalue(k, dim=1).values.view(-1, 1, 1, 1)
    unit = torch.where(scale > 0, magnitude / scale.clamp(min=1e-12), torch.zeros_like(magnitude))
    return unit.clamp(0, 1)


@dataclass
class RenderedImage:
    """The pictures of one image, uint8 at its original size, on the CPU.

    Attributes:
        heatmaps: coloured map per key, ``(H, W, 3)`` RGB.
        overlays: photo blended with the coloured map, per key, ``(H, W, 3)`` RGB.
        pictures: gradient pictures per key, ``(H, W, 3)`` RGB or ``(H, W)`` grey.

    """

    heatmaps: dict[str, np.ndarray]
    overlays: dict[str, np.ndarray]
    pictures: dict[str, np.ndarray]


def render_batch(
    maps: dict[str, torch.Tensor],
    pictures: dict[str, torch.Tensor],
    pixels: list[torch.Tensor],
    thetas: torch.Tensor,
    lut: torch.Tensor,
    alpha: float = 0.5,
) -> tuple[list[RenderedImage], dict[str, list[tuple[int, int]]]]:
    """Render the maps and pictures of a batch at each image's original size.

    Args:
        maps: normalised maps in [0, 1] per key, ``(N, h, w)`` at any resolution covering the
            model input, on the device.
        pictures: gradient pictures in [0, 1] per key, ``(N, C, S, S)`` with C = 3 or 1.
        pixels: original photos, N x ``(H, W, 3)`` uint8, on the device.
        thetas: ``(N, 2, 3)`` maps from original to model-input coordinates.
        lut: colour table from :func:`jet_lut`, on the device.
        alpha: heatmap weight in the overlay.

    Returns:
        One :class:`RenderedImage` per image, in batch order, and per map key the ``(x, y)``
        pixel of each image's maximum (first in row order).

    """
    on_device: list[
        tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]
    ] = []
    argmax: dict[str, list[torch.Tensor]] = {key: [] for key in maps}
    for i, photo in enumerate(pixels):
        height, width = int(photo.shape[0]), int(photo.shape[1])
        grid, inside = original_grid(thetas[i], height, width)
        heats, overs, pics = {}, {}, {}
        for key, batch_maps in maps.items():
            cam = sample_on_original(batch_maps[i : i + 1], grid, inside)[0]
            argmax[key].append(cam.flatten().argmax())
            heat = colorize(cam, lut)
            heats[key] = heat
            overs[key] = torch.where(inside[..., None], overlay(photo, heat, alpha), photo)
        for key, batch_pictures in pictures.items():
            picture = sample_on_original(batch_pictures[i], grid, inside, outside=0.5)
            as_uint8 = (picture * 255.0).round().to(torch.uint8)
            pics[key] = as_uint8[0] if as_uint8.shape[0] == 1 else as_uint8.permute(1, 2, 0)
        on_device.append((heats, overs, pics))
    # Two copies back per batch: every uint8 picture packed in one buffer, and the peaks.
    tensors = [t for group in on_device for kind in group for t in kind.values()]
    host = (
        torch.cat([t.reshape(-1) for t in tensors]).cpu().numpy()
        if tensors
        else np.empty(0, np.uint8)
    )
    arrays: list[np.ndarray] = []
    offset = 0
    for t in tensors:
        arrays.append(host[offset : offset + t.numel()].reshape(tuple(t.shape)))
        offset += t.numel()
    unpacked = iter(arrays)
    rendered = [
        RenderedImage(
            heatmaps={k: next(unpacked) for k in heats},
            overlays={k: next(unpacked) for k in overs},
            pictures={k: next(unpacked) for k in pics},
        )
        for heats, overs, pics in on_device
    ]
    found = [torch.stack(positions) for positions in argmax.values() if positions]
    peak_rows = torch.stack(found).cpu().tolist() if found else []
    widths = [int(photo.shape[1]) for photo in pixels]
    peaks = {
        key: [(i % w, i // w) for i, w in zip(row, widths, strict=True)]
        for key, row in zip(argmax, peak_rows, strict=True)
    }
    return rendered, peaks
