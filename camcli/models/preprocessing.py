"""How a model's weights expect their input (no torch: decoding tasks read it too)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How the weights expect their input.

    Attributes:
        size: side of the square model input (the crop size of the weights).
        resize_size: shorter-side size before a centre crop (``crop`` mode only).
        mean: per-channel mean on the [0, 1] scale (RGB, or one value for grey input).
        std: per-channel standard deviation on the [0, 1] scale, likewise.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        channels: 3 (RGB input) or 1 (the image decoded as single-channel L).

    """

    size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    channels: int = 3
