"""Decode images (EXIF-aware) into original pixels plus the model's input, in loader workers.

Each image yields its original RGB pixels (for the overlay, decoded once), the resized model
input as uint8 (normalised later, on the device) and the affine map from the original image to
the model input, which the renderer uses to put maps back exactly where the model looked.
"""

from __future__ import annotations

import hashlib
import io
import re
import signal
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from camcli.io import DEFAULT_MAX_PIXELS
from camcli.io.lock import release_inherited_locks
from camcli.io.storage import Source, read_source
from camcli.io.transfer import to_device
from camcli.models.loaded import Preprocessing

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Batch",
    "DecodeFailure",
    "DecodedImage",
    "ImageDataset",
    "TooManyPixels",
    "ViewGeometry",
    "collate",
    "load_rgb",
    "make_loader",
    "model_input",
    "model_inputs_on_device",
    "view_geometry",
]

_OBJECT_ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
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


def model_inputs_on_device(
    pixels: Sequence[torch.Tensor],
    prep: Preprocessing,
    crop: bool,
    pixel_budget: int = 2**24,
) -> torch.Tensor:
    """The model inputs of a batch, made from the original photos where they are (a GPU).

    Same geometry as :func:`model_input`; the resampling is PyTorch's antialiased
    interpolation (bilinear or bicubic, which follows Pillow's filters), in two separable
    passes rounded to whole levels like Pillow's: values differ from Pillow's by 0 or 1 of 255
    almost everywhere and at most 3 (Pillow's filter weights are fixed-point). Photos
    of one size are resized together, up to ``pixel_budget`` original pixels per call.

    Args:
        pixels: N original photos ``(H, W, 3)`` uint8, on one device.
        prep: the model's preprocessing.
        crop: centre-crop instead of resizing the whole image.
        pixel_budget: original pixels per interpolation call (at least one photo).

    Returns:
        ``(N, C, S, S)`` float32 in [0, 255] on the photos' device; with one channel, the
        luma of the photo (ITU-R 601-2, as Pillow's ``convert("L")``) resized.

    """
    size = prep.size
    device = pixels[0].device if pixels else torch.device("cpu")
    out = torch.empty(len(pixels), prep.channels, size, size, device=device)
    luma = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, photo in enumerate(pixels):
        groups.setdefault((int(photo.shape[0]), int(photo.shape[1])), []).append(i)
    mode = prep.interpolation if prep.interpolation in ("bilinear", "bicubic") else "nearest-exact"
    for (height, width), members in groups.items():
        geometry = view_geometry(width, height, prep, crop)
        rw, rh = geometry.resized
        left, top, cw, ch = geometry.crop
        step = max(1, pixel_budget // (height * width))
        for start in range(0, len(members), step):
            part = members[start : start + step]
            photos = torch.stack([pixels[i] for i in part]).permute(0, 3, 1, 2).float()
            if prep.channels == 1:
                photos = (photos * luma).sum(dim=1, keepdim=True).round_()
            # Like Pillow: the width first, rounded and clipped to whole levels, then the
            # height (a separable pass at scale 1 is the identity).
            for target in ((height, rw), (rh, rw)):
                photos = (
                    F.interpolate(
                        photos,
                        size=target,
                        mode=mode,
                        antialias=mode != "nearest-exact",
                        align_corners=False if mode != "nearest-exact" else None,
                    )
                    .round_()
                    .clamp_(0, 255)
                )
            view = photos[:, :, top : top + ch, left : left + cw]
            if len(part) == 1:
                out[part[0]] = view[0]
            else:
                out.index_copy_(0, to_device(torch.tensor(part), device), view)
    return out


class TooManyPixels(ValueError):
    """The image is larger than the pixel limit (a possible decompression bomb)."""


def load_rgb(source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as the viewer shows it: EXIF rotation applied, RGB, alpha on white.

    Animated images give their first frame; 16-bit greyscale is scaled to 8 bits; palette and
    alpha images are composited on white.

    Args:
        source: a path or the file's bytes.
        max_pixels: refuse images with more pixels than this (checked from the header,
            before decoding).

    Raises:
        TooManyPixels: over the limit.
        OSError, ValueError: when the file cannot be decoded.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # the limit below replaces Pillow's
        try:
            opened = Image.open(stream)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    with opened:
        pixels = opened.width * opened.height
        if pixels > max_pixels:
            raise TooManyPixels(
                f"image has {opened.width} x {opened.height} = {pixels} pixels, more than the "
                f"limit of {max_pixels} (--max-pixels)"
            )
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

    With ``prep.channels == 1`` the image is first converted to single-channel L (Pillow's
    ITU-R 601-2 luma).

    Returns:
        The model input as uint8 ``(size, size, channels)`` and the geometry used.

    """
    geometry = view_geometry(image.width, image.height, prep, crop)
    if prep.channels == 1:
        image = image.convert("L")
    resample = _RESAMPLE.get(prep.interpolation, Image.Resampling.BILINEAR)
    resized = image.resize(geometry.resized, resample=resample)
    left, top, cw, ch = geometry.crop
    if (left, top, cw, ch) != (0, 0, *geometry.resized):
        resized = resized.crop((left, top, left + cw, top + ch))
    array = np.asarray(resized)
    return (array[:, :, None].copy() if array.ndim == 2 else array), geometry


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image, as the loader yields it."""

    index: int
    sha256: str  # of the file's bytes, for resuming
    pixels: torch.Tensor  # (H, W, 3) uint8, original size, EXIF applied
    model_input: torch.Tensor  # (3, S, S) uint8, or empty when resized on the device
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
        max_pixels: refuse larger images.
        resize: make the model input here; ``False`` leaves it empty for
            :func:`model_inputs_on_device` (only the geometry is computed).

    """

    def __init__(
        self,
        paths: Sequence[Source],
        prep: Preprocessing,
        crop: bool,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        resize: bool = True,
    ) -> None:
        self.paths = list(paths)
        self.prep = prep
        self.crop = crop
        self.max_pixels = max_pixels
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedImage | DecodeFailure:
        try:
            data = read_source(self.paths[index])
        except OSError as exc:
            return DecodeFailure(index, f"cannot read file: {exc.strerror or exc}")
        try:
            image = load_rgb(data, self.max_pixels)
            if self.resize:
                array, geometry = model_input(image, self.prep, self.crop)
                resized = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
            else:
                geometry = view_geometry(image.width, image.height, self.prep, self.crop)
                resized = torch.empty(0, dtype=torch.uint8)
            pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        except TooManyPixels as exc:
            return DecodeFailure(index, str(exc))
        except Exception as exc:  # any decoder error: report this file, keep the run going
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            # Pillow names the stream it read ("<_io.BytesIO object at 0x7f...>"): an
            # address that changes every run, in the index and run.json; say the format.
            reason = _OBJECT_ADDRESS.sub("it", reason)
            if reason == "cannot identify image file it":
                reason = "not an image file Pillow can identify (wrong extension or damaged)"
            if not data:
                reason = "the file is empty"
            return DecodeFailure(index, f"cannot decode image: {reason or type(exc).__name__}")
        return DecodedImage(
            index=index,
            sha256=hashlib.sha256(data).hexdigest(),
            pixels=pixels,
            model_input=resized,
            theta=torch.tensor(geometry.theta(), dtype=torch.float32),
        )


@dataclass
class Batch:
    """Decoded images of one batch, plus the files of that batch that failed to decode.

    The original photos travel as one flat buffer (one shared-memory segment from a loader
    worker, one page-locking copy, one copy to the GPU) with each photo's shape; ``pixels``
    gives them as views.
    """

    indices: list[int]
    sha256: list[str]
    inputs: torch.Tensor  # (N, 3, S, S) uint8, or (N, 0) when resized on the device
    thetas: torch.Tensor  # (N, 2, 3) float32
    pixel_data: torch.Tensor  # every photo's (H, W, 3) uint8 pixels, flat, in batch order
    shapes: list[tuple[int, int]]  # (H, W) per photo
    failures: list[DecodeFailure]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def pixels(self) -> list[torch.Tensor]:
        """The original photos, N x ``(H, W, 3)`` uint8 views of ``pixel_data``."""
        return unpack_pixels(self.pixel_data, self.shapes)

    def pin_memory(self) -> Batch:
        """Page-lock the tensors, so copies to the GPU can run asynchronously.

        The loader calls this when ``pin_memory=True``.
        """
        self.inputs = self.inputs.pin_memory()
        self.thetas = self.thetas.pin_memory()
        self.pixel_data = self.pixel_data.pin_memory()
        return self

    def split(self, size: int) -> list[Batch]:
        """Split into consecutive parts of at most ``size`` images (failures go first)."""
        parts = []
        ends = np.cumsum([0] + [h * w * 3 for h, w in self.shapes])
        for start in range(0, len(self), size):
            part = slice(start, start + size)
            stop = min(start + size, len(self))
            parts.append(
                Batch(
                    indices=self.indices[part],
                    sha256=self.sha256[part],
                    inputs=self.inputs[part],
                    thetas=self.thetas[part],
                    pixel_data=self.pixel_data[int(ends[start]) : int(ends[stop])],
                    shapes=self.shapes[part],
                    failures=self.failures if start == 0 else [],
                )
            )
        return parts


def unpack_pixels(data: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Views ``(H, W, 3)`` of consecutive photos in a flat uint8 buffer (on any device)."""
    views, offset = [], 0
    for height, width in shapes:
        size = height * width * 3
        views.append(data[offset : offset + size].view(height, width, 3))
        offset += size
    return views


def collate(items: Sequence[DecodedImage | DecodeFailure]) -> Batch:
    """Stack the decoded images of a batch; keep failures aside."""
    good = [item for item in items if isinstance(item, DecodedImage)]
    failures = [item for item in items if isinstance(item, DecodeFailure)]
    if good:
        inputs = torch.stack([item.model_input for item in good])
        thetas = torch.stack([item.theta for item in good])
        pixel_data = torch.cat([item.pixels.reshape(-1) for item in good])
    else:
        inputs = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
        thetas = torch.empty(0, 2, 3)
        pixel_data = torch.empty(0, dtype=torch.uint8)
    return Batch(
        indices=[item.index for item in good],
        sha256=[item.sha256 for item in good],
        inputs=inputs,
        thetas=thetas,
        pixel_data=pixel_data,
        shapes=[(int(item.pixels.shape[0]), int(item.pixels.shape[1])) for item in good],
        failures=failures,
    )


def _leave_signals_to_the_main_process(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The run lock belongs to the main process: a worker outliving it must not hold it.
    release_inherited_locks()


def make_loader(
    paths: Sequence[Source],
    prep: Preprocessing,
    crop: bool,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize: bool = True,
) -> DataLoader[Any]:
    """A loader that decodes in ``workers`` processes (0: in this process), in order."""
    return DataLoader(
        ImageDataset(paths, prep, crop, max_pixels, resize),
        worker_init_fn=_leave_signals_to_the_main_process,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )
