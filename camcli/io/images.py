"""Reading one image (no torch): EXIF-aware decoding, the model's view of it, its input.

Loader workers (:mod:`camcli.io.decode`) and the Ray engine's decoding tasks both decode
through :func:`decode_source`, so the two engines see the same pixels; it needs no torch, so a
decoding task starts without importing it.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from camcli.io import DEFAULT_MAX_PIXELS
from camcli.io.storage import Source, read_source
from camcli.models.preprocessing import Preprocessing

__all__ = [
    "DecodedPixels",
    "TooManyPixels",
    "ViewGeometry",
    "decode_source",
    "load_rgb",
    "model_input",
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
class DecodedPixels:
    """A decoded image as arrays.

    Attributes:
        sha256: of the file's bytes, for resuming.
        pixels: ``(H, W, 3)`` uint8, original size, EXIF applied.
        model_input: ``(C, S, S)`` uint8, or ``None`` when resized on the device.
        theta: ``(2, 3)``, see :meth:`ViewGeometry.theta`.

    """

    sha256: str
    pixels: np.ndarray
    model_input: np.ndarray | None
    theta: list[list[float]]


def decode_source(
    source: Source, prep: Preprocessing, crop: bool, max_pixels: int, resize: bool
) -> DecodedPixels | str:
    """Read and decode one input; a file that cannot be read gives the reason instead.

    Args:
        source: a local path or a URI of object storage.
        prep: the model's preprocessing.
        crop: centre-crop instead of resizing the whole image.
        max_pixels: refuse larger images.
        resize: make the model input (``False``: only its geometry, for resizing on the
            device).

    Returns:
        The arrays, or one line saying why the image cannot be used.

    """
    try:
        data = read_source(source)
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    try:
        image = load_rgb(data, max_pixels)
        if resize:
            array, geometry = model_input(image, prep, crop)
            resized: np.ndarray | None = np.ascontiguousarray(array.transpose(2, 0, 1))
        else:
            geometry = view_geometry(image.width, image.height, prep, crop)
            resized = None
        pixels = np.array(image, dtype=np.uint8, copy=True)
    except TooManyPixels as exc:
        return str(exc)
    except Exception as exc:  # any decoder error: report this file, keep the run going
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        # Pillow names the stream it read ("<_io.BytesIO object at 0x7f...>"): an
        # address that changes every run, in the index and run.json; say the format.
        reason = _OBJECT_ADDRESS.sub("it", reason)
        if reason == "cannot identify image file it":
            reason = "not an image file Pillow can identify (wrong extension or damaged)"
        if not data:
            reason = "the file is empty"
        return f"cannot decode image: {reason or type(exc).__name__}"
    return DecodedPixels(hashlib.sha256(data).hexdigest(), pixels, resized, geometry.theta())
