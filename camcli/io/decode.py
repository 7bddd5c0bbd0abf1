"""Decode images (EXIF-aware) into original pixels plus the model's input, in loader workers.

Each image yields its original RGB pixels (for the overlay, decoded once), the resized model
input as uint8 (normalised later, on the device) and the affine map from the original image to
the model input, which the renderer uses to put maps back exactly where the model looked.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from camcli.io import DEFAULT_MAX_PIXELS
from camcli.io.images import (
    TooManyPixels,
    ViewGeometry,
    decode_source,
    load_rgb,
    model_input,
    view_geometry,
)
from camcli.io.lock import release_inherited_locks
from camcli.io.storage import Source
from camcli.io.transfer import to_device
from camcli.models.preprocessing import Preprocessing

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
                # Python numbers, not a tensor made from a list (a synchronising copy)
                red, green, blue = photos.unbind(dim=1)
                photos = (red * 0.299 + green * 0.587 + blue * 0.114).unsqueeze(1).round_()
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
        decoded = decode_source(
            self.paths[index], self.prep, self.crop, self.max_pixels, self.resize
        )
        if isinstance(decoded, str):
            return DecodeFailure(index, decoded)
        resized = (
            torch.from_numpy(decoded.model_input)
            if decoded.model_input is not None
            else torch.empty(0, dtype=torch.uint8)
        )
        return DecodedImage(
            index=index,
            sha256=decoded.sha256,
            pixels=torch.from_numpy(decoded.pixels),
            model_input=resized,
            theta=torch.tensor(decoded.theta, dtype=torch.float32),
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
