"""Turn maps into pictures on the device.

Upsampling onto the original image, colour maps, overlays and guided-backprop images. Every
function here is a pure tensor function; only uint8 pictures leave the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from camcli.io.mapgrid import SUMMARY_GRID
from camcli.io.transfer import HostCopy, to_device
from camcli.pictures.style import jet_rgb

__all__ = [
    "PendingRender",
    "RenderedImage",
    "colorize",
    "guided_to_unit",
    "jet_lut",
    "launch_render",
    "original_grid",
    "overlay",
    "picture_to_unit",
    "render_batch",
    "saliency_to_unit",
    "sample_on_original",
    "to_input_resolution",
]


def jet_lut(device: torch.device | str = "cpu") -> torch.Tensor:
    """OpenCV's JET colour map as a ``(256, 3)`` uint8 table in **RGB** order."""
    return torch.from_numpy(jet_rgb().copy()).to(device)


def colorize(unit_map: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Colour a map in [0, 1] with a lookup table: ``(..., H, W)`` -> ``(..., H, W, 3)`` uint8.

    Quantises like ``cv2.applyColorMap`` on ``round(255 * map)``, so 1.0 is JET's dark red
    (RGB 128, 0, 0) and 0.0 its dark blue (RGB 0, 0, 128).
    """
    index = unit_map.float().clamp(0, 1).mul(255.0).round_().to(torch.int32)
    return lut.index_select(0, index.flatten()).view(*unit_map.shape, lut.shape[1])


def overlay(pixels: torch.Tensor, heatmap: torch.Tensor, alpha: float) -> torch.Tensor:
    """Blend a coloured heatmap over a photo: ``alpha * heat + (1 - alpha) * photo``.

    Args:
        pixels: photo, ``(H, W, 3)`` uint8.
        heatmap: coloured map, ``(H, W, 3)`` uint8.
        alpha: weight of the heatmap in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8.

    """
    photo = pixels.to(torch.float32, copy=True)
    # photo + alpha * (heat - photo): a convex combination, so no clamp is needed
    step = heatmap.to(torch.float32, copy=True).sub_(photo).mul_(alpha)
    return photo.add_(step).round_().to(torch.uint8)


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
    return _sample_group(maps[None], grid, inside[None, None], outside)[0]


def guided_to_unit(gradients: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Guided-backprop gradients ``(N, 3, H, W)`` to a viewable [0, 1] image per image.

    Standardises each image's gradient (zero mean, unit standard deviation over all its
    values), scales by 0.1 and centres on 0.5, as the guided-backprop papers' figures do
    (``0.5 +- 5`` standard deviations spans the range). A zero gradient gives flat 0.5 grey.
    """
    values = gradients.float()
    std, mean = torch.std_mean(values.flatten(1), dim=1, correction=0)
    factor = torch.where(std > eps, 0.1 / std.clamp(min=eps), torch.zeros_like(std))
    shape = (-1,) + (1,) * (values.dim() - 1)
    # One new tensor, then in place: this runs on every batch at the input resolution.
    scaled = (values - mean.view(shape)).mul_(factor.view(shape))
    return scaled.add_(0.5).clamp_(0, 1)


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


# Gradient pictures shown as magnitudes (SmoothGrad, Integrated Gradients); the others
# (guided backprop, guided Grad-CAM, LRP) as signed gradients around grey.
MAGNITUDE_PICTURES = ("smoothgrad", "ig")


def picture_to_unit(method: str, gradients: torch.Tensor) -> torch.Tensor:
    """A method's gradient picture in [0, 1], as that method is shown (see above)."""
    if method in MAGNITUDE_PICTURES:
        return saliency_to_unit(gradients)
    return guided_to_unit(gradients)


@dataclass
class RenderedImage:
    """The pictures of one image, uint8 at its original size, on the CPU.

    Attributes:
        heatmaps: coloured map per key, ``(H, W, 3)`` RGB.
        overlays: photo blended with the coloured map, per key, ``(H, W, 3)`` RGB.
        pictures: gradient pictures per key, ``(H, W, 3)`` RGB or ``(H, W)`` grey.
        grids: per map key, the heatmap's values averaged over a
            ``SUMMARY_GRID x SUMMARY_GRID`` grid of the image frame, uint8 (``255 * map``).

    """

    heatmaps: dict[str, np.ndarray]
    overlays: dict[str, np.ndarray]
    pictures: dict[str, np.ndarray]
    grids: dict[str, np.ndarray] = field(default_factory=dict)


def _covers_whole_image(theta: np.ndarray, height: int, width: int) -> bool:
    """Whether every pixel centre of the original maps inside the model's view.

    ``theta`` is affine, so the extremes are at the corner pixels' centres; checked on the
    host, without a device round trip.
    """
    xs, ys = 1.0 - 1.0 / width, 1.0 - 1.0 / height
    corners = np.array([[-xs, -ys, 1.0], [xs, -ys, 1.0], [-xs, ys, 1.0], [xs, ys, 1.0]])
    return bool((np.abs(corners @ theta.T) <= 1.0 + 1e-6).all())


def _sample_group(
    maps: torch.Tensor, grid: torch.Tensor, inside: torch.Tensor | None, outside: float
) -> torch.Tensor:
    """``(n, C, h, w)`` maps onto one shared grid: ``(n, C, H, W)`` float32."""
    sampled = F.grid_sample(
        maps.float(),
        grid.expand(maps.shape[0], -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    if inside is None:
        return sampled
    return torch.where(inside, sampled, torch.full_like(sampled, outside))


def _to_uint8(unit: torch.Tensor) -> torch.Tensor:
    """[0, 1] float to uint8 (round half to even, like ``round(255 * x)``)."""
    return unit.mul(255.0).round_().to(torch.uint8)


def _geometry_groups(pixels: list[torch.Tensor], thetas: np.ndarray) -> list[list[int]]:
    """Batch positions grouped by (original size, view): each group shares one sampling grid."""
    groups: dict[tuple[int, int, bytes], list[int]] = {}
    for i, photo in enumerate(pixels):
        key = (int(photo.shape[0]), int(photo.shape[1]), thetas[i].tobytes())
        groups.setdefault(key, []).append(i)
    return list(groups.values())


@dataclass
class PendingRender:
    """A batch's pictures on their way to the host; :meth:`collect` unpacks them."""

    copy: HostCopy
    layout: list[tuple[list[int], str, str]]  # per packed tensor: (positions, kind, key)
    keys: list[str]  # map keys; the last packed tensor holds their peaks when there are any
    order: list[int]  # batch positions in the order the peaks were computed
    widths: list[int]

    def collect(self) -> tuple[list[RenderedImage], dict[str, list[tuple[int, int]]]]:
        """Wait for the copies; the pictures per image and each map's peak pixel."""
        arrays = self.copy.wait()
        rendered = [RenderedImage({}, {}, {}, {}) for _ in self.widths]
        for block, (part, kind, key) in zip(arrays[: len(self.layout)], self.layout, strict=True):
            for j, i in enumerate(part):
                getattr(rendered[i], kind)[key] = block[j]
        peaks: dict[str, list[tuple[int, int]]] = {key: [] for key in self.keys}
        if self.order and self.keys:
            for key, row in zip(self.keys, arrays[-1].tolist(), strict=True):
                found = [(0, 0)] * len(self.widths)
                for i, position in zip(self.order, row, strict=True):
                    found[i] = (position % self.widths[i], position // self.widths[i])
                peaks[key] = found
        return rendered, peaks


def render_batch(
    maps: dict[str, torch.Tensor],
    pictures: dict[str, torch.Tensor],
    pixels: list[torch.Tensor],
    thetas: torch.Tensor,
    lut: torch.Tensor,
    alpha: float = 0.5,
    pixel_budget: int | None = None,
) -> tuple[list[RenderedImage], dict[str, list[tuple[int, int]]]]:
    """:func:`launch_render` and wait for the result."""
    return launch_render(maps, pictures, pixels, thetas, lut, alpha, pixel_budget).collect()


def launch_render(
    maps: dict[str, torch.Tensor],
    pictures: dict[str, torch.Tensor],
    pixels: list[torch.Tensor],
    thetas: torch.Tensor,
    lut: torch.Tensor,
    alpha: float = 0.5,
    pixel_budget: int | None = None,
) -> PendingRender:
    """Render the maps and pictures of a batch at each image's original size.

    Images of the same size and view (the usual case: a folder of one camera's photos) share
    one sampling grid and are rendered together, up to ``pixel_budget`` pixels per tensor
    operation.

    Args:
        maps: normalised maps in [0, 1] per key, ``(N, h, w)`` at any resolution covering the
            model input, on the device.
        pictures: gradient pictures in [0, 1] per key, ``(N, C, S, S)`` with C = 3 or 1.
        pixels: original photos, N x ``(H, W, 3)`` uint8, on the device.
        thetas: ``(N, 2, 3)`` maps from original to model-input coordinates (on the host:
            grouping reads them without a device round trip).
        lut: colour table from :func:`jet_lut`, on the device.
        alpha: heatmap weight in the overlay.
        pixel_budget: original pixels per operation (at least one image); default: 2**24 on
            CUDA (few kernel launches, bounded memory), 2**20 on the CPU (the working set stays
            near the cache).

    Returns:
        The pictures on their way to the host: ``collect()`` gives one
        :class:`RenderedImage` per image, in batch order, and per map key the ``(x, y)`` pixel
        of each image's maximum (first in row order).

    """
    device = lut.device
    host_thetas = thetas.detach().to("cpu", torch.float32).numpy()
    if pixel_budget is None:
        pixel_budget = 2**24 if device.type == "cuda" else 2**20
    # Every uint8 picture goes back in one copy; `layout` says which image and picture each
    # packed tensor holds: (positions, kind, key).
    tensors: list[torch.Tensor] = []
    layout: list[tuple[list[int], str, str]] = []
    peak_parts: dict[str, list[torch.Tensor]] = {key: [] for key in maps}
    order: list[int] = []
    for group in _geometry_groups(pixels, host_thetas):
        height, width = (int(s) for s in pixels[group[0]].shape[:2])
        # Host-to-device copies here are non-blocking: a blocking one would wait for the
        # model's queued work and undo the overlap of batches.
        theta = to_device(torch.from_numpy(host_thetas[group[0]].copy()), device)
        grid, mask = original_grid(theta, height, width)
        inside = None  # (1, 1, H, W) where the model did not see the whole photo
        if not _covers_whole_image(host_thetas[group[0]].astype(np.float64), height, width):
            inside = mask[None, None]
        step = max(1, pixel_budget // (height * width))
        for start in range(0, len(group), step):
            part = group[start : start + step]
            order.extend(part)
            index = to_device(torch.tensor(part), device) if len(part) > 1 else None
            photos = (
                torch.stack([pixels[i] for i in part]) if len(part) > 1 else pixels[part[0]][None]
            )
            for key, batch_maps in maps.items():
                rows = batch_maps[index] if index is not None else batch_maps[part[0] : part[0] + 1]
                cams = _sample_group(rows[:, None], grid, inside, 0.0)[:, 0]  # (n, H, W)
                peak_parts[key].append(cams.flatten(1).argmax(dim=1))
                heat = colorize(cams, lut)
                blended = overlay(photos, heat, alpha)
                if inside is not None:
                    blended = torch.where(inside[:, 0, :, :, None], blended, photos)
                # The small copy: the heatmap's values averaged over cells of the image frame.
                small = F.adaptive_avg_pool2d(cams[:, None], (SUMMARY_GRID, SUMMARY_GRID))[:, 0]
                tensors += [heat, blended, _to_uint8(small.clamp(0, 1))]
                layout += [
                    (part, "heatmaps", key),
                    (part, "overlays", key),
                    (part, "grids", key),
                ]
            for key, batch_pictures in pictures.items():
                rows = (
                    batch_pictures[index]
                    if index is not None
                    else batch_pictures[part[0] : part[0] + 1]
                )
                sampled = _sample_group(rows, grid, inside, 0.5)  # (n, C, H, W)
                as_uint8 = _to_uint8(sampled.permute(0, 2, 3, 1))
                tensors.append(as_uint8[..., 0] if as_uint8.shape[-1] == 1 else as_uint8)
                layout.append((part, "pictures", key))
    if order and maps:
        tensors.append(torch.stack([torch.cat(parts) for parts in peak_parts.values()]))
    widths = [int(photo.shape[1]) for photo in pixels]
    return PendingRender(HostCopy(tensors), layout, list(maps), order, widths)
