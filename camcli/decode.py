"""Decode images (EXIF-aware) into original pixels plus the model's input, in loader workers.

Each image yields its original RGB pixels (for the overlay, decoded once), the resized model
input as uint8 (normalised later, on the device) and the affine map from the original image to
the model input, which the renderer uses to put maps back exactly where the model looked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from camcli.models import Preprocessing

__all__ = [
    "Batch",
    "DecodeFailure",
    "DecodedImage",
    "ImageDataset",
    "ViewGeometry",
    "collate",
    "load_rgb",
    "make_loader",
    "model_input",
    "view_geometry",
]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class ViewGeometry:
    """Where the model's input lies in the original image.

    The original (``width`` x ``height``) is resized to ``resized`` and the box ``crop``
    (left, top, width, height, in resized pixels) is what the model sees.
    """

    width: int
    height: int
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]

    def theta(self) -> list[list[float]]:
        """Affine map from original to model-input normalised coordinates.

        For ``F.affine_grid`` with ``align_corners=False``.
        """
        rw, rh = self.resized
        left, top, cw, ch = self.crop
        return [
            [rw / cw, 0.0, (rw - 2 * left) / cw - 1.0],
            [0.0, rh / ch, (rh - 2 * top) / ch - 1.0],
        ]


def view_geometry(width: int, height: int, prep: Preprocessing, crop: bool) -> ViewGeometry:
    """How an image of this size is mapped to the model input.

    Args:
        width: original width in pixels.
        height: original height in pixels.
        prep: the model's preprocessing.
        crop: ``False``: the whole image is resized (squashed) to ``size`` x ``size``;
            ``True``: the shorter side is resized to ``resize_size`` and the centre
            ``size`` x ``size`` is cut out (torchvision's rounding).

    Returns:
        The geometry.

    """
    size = prep.size
    if not crop:
        return ViewGeometry(width, height, (size, size), (0, 0, size, size))
    short, long = (width, height) if width <= height else (height, width)
    new_short = max(prep.resize_size, size)
    new_long = max(int(new_short * long / short), new_short)
    rw, rh = (new_short, new_long) if width <= height else (new_long, new_short)
    left = round((rw - size) / 2.0)
    top = round((rh - size) / 2.0)
    return ViewGeometry(width, height, (rw, rh), (left, top, size, size))


def load_rgb(path: Path) -> Image.Image:
    """Open an image as the viewer shows it: EXIF rotation applied, RGB, alpha on white.

    Raises:
        OSError, ValueError: when the file cannot be decoded.

    """
    with Image.open(path) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def model_input(
    image: Image.Image, prep: Preprocessing, crop: bool
) -> tuple[np.ndarray, ViewGeometry]:
    """Resize (and optionally centre-crop) an RGB image for the model.

    Returns:
        The model input as uint8 ``(size, size, 3)`` and the geometry used.

    """
    geometry = view_geometry(image.width, image.height, prep, crop)
    resample = _RESAMPLE.get(prep.interpolation, Image.Resampling.BILINEAR)
    resized = image.resize(geometry.resized, resample=resample)
    left, top, cw, ch = geometry.crop
    if (left, top, cw, ch) != (0, 0, *geometry.resized):
        resized = resized.crop((left, top, left + cw, top + ch))
    return np.asarray(resized), geometry


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image, as the loader yields it."""

    index: int
    pixels: torch.Tensor  # (H, W, 3) uint8, original size, EXIF applied
    model_input: torch.Tensor  # (3, S, S) uint8
    theta: torch.Tensor  # (2, 3) float32, see ViewGeometry.theta


@dataclass(frozen=True)
class DecodeFailure:
    """An image that could not be read, with the reason."""

    index: int
    message: str


class ImageDataset(Dataset[DecodedImage | DecodeFailure]):
    """Decodes the listed files; a file that cannot be read becomes a :class:`DecodeFailure`.

    Args:
        paths: files to read, indexed by position.
        prep: the model's preprocessing.
        crop: centre-crop instead of resizing the whole image.

    """

    def __init__(self, paths: Sequence[Path], prep: Preprocessing, crop: bool) -> None:
        self.paths = list(paths)
        self.prep = prep
        self.crop = crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedImage | DecodeFailure:
        try:
            image = load_rgb(self.paths[index])
            array, geometry = model_input(image, self.prep, self.crop)
            pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        except Exception as exc:  # any decoder error: report this file, keep the run going
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return DecodeFailure(index, f"cannot decode image: {reason or type(exc).__name__}")
        return DecodedImage(
            index=index,
            pixels=pixels,
            model_input=torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))),
            theta=torch.tensor(geometry.theta(), dtype=torch.float32),
        )


@dataclass
class Batch:
    """Decoded images of one batch, plus the files of that batch that failed to decode."""

    indices: list[int]
    inputs: torch.Tensor  # (N, 3, S, S) uint8
    thetas: torch.Tensor  # (N, 2, 3) float32
    pixels: list[torch.Tensor]  # N x (H, W, 3) uint8
    failures: list[DecodeFailure]

    def __len__(self) -> int:
        return len(self.indices)


def collate(items: Sequence[DecodedImage | DecodeFailure]) -> Batch:
    """Stack the decoded images of a batch; keep failures aside."""
    good = [item for item in items if isinstance(item, DecodedImage)]
    failures = [item for item in items if isinstance(item, DecodeFailure)]
    if good:
        inputs = torch.stack([item.model_input for item in good])
        thetas = torch.stack([item.theta for item in good])
    else:
        inputs = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        thetas = torch.empty(0, 2, 3)
    return Batch(
        indices=[item.index for item in good],
        inputs=inputs,
        thetas=thetas,
        pixels=[item.pixels for item in good],
        failures=failures,
    )


def make_loader(
    paths: Sequence[Path],
    prep: Preprocessing,
    crop: bool,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """A loader that decodes in ``workers`` processes (0: in this process), in order."""
    return DataLoader(
        ImageDataset(paths, prep, crop),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )
