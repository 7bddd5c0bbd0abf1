"""Transformer layer outputs as spatial maps: token sequences and channels-last grids.

A CAM needs ``(N, C, H, W)``. Vision transformers give ``(N, T, C)`` tokens: the class
token (and register or distillation tokens) first, then one token per patch in row-major
order. Swin blocks and their norms give ``(N, H, W, C)``. :class:`SpatialView` turns such an
output into a ``(N, C, H, W)`` view and builds the layer output back from that view, so the
network goes on from the very tensor whose gradient the CAM needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SpatialView", "spatial_view"]


@dataclass(frozen=True)
class SpatialView:
    """How a layer's output maps to ``(N, C, H, W)``.

    Attributes:
        layout: ``"nchw"`` (already spatial), ``"nhwc"`` (Swin) or ``"tokens"`` (ViT).
        prefix: leading non-patch tokens dropped (class, register, distillation tokens).
        grid: ``(H, W)`` of the patch tokens.

    """

    layout: str
    prefix: int = 0
    grid: tuple[int, int] = (0, 0)

    def to_spatial(self, output: torch.Tensor) -> torch.Tensor:
        """The ``(N, C, H, W)`` view of a layer output."""
        if self.layout == "nhwc":
            return output.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            n, _, c = output.shape
            patches = output[:, self.prefix :, :]
            return patches.transpose(1, 2).reshape(n, c, *self.grid)
        return output

    def from_spatial(self, spatial: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The layer output rebuilt from ``spatial`` (prefix tokens taken from ``output``)."""
        if self.layout == "nhwc":
            return spatial.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)
        if self.layout == "tokens":
            patches = spatial.flatten(2).transpose(1, 2)
            return torch.cat([output[:, : self.prefix, :].to(patches.dtype), patches], dim=1)
        return spatial.clone()


def _channels_last_module(module: nn.Module, output: torch.Tensor) -> bool:
    """Swin's blocks, patch merging and plain LayerNorms over the last dim are NHWC."""
    kind = type(module).__name__
    if kind.startswith("Swin") or kind == "PatchMerging":
        return True
    plain_norm = type(module).forward is nn.LayerNorm.forward  # not LayerNorm2d (NCHW)
    if isinstance(module, nn.LayerNorm) and plain_norm:
        return int(module.normalized_shape[-1]) == int(output.shape[-1])
    return False


def spatial_view(module: nn.Module, output: torch.Tensor, prefix: int | None) -> SpatialView | None:
    """How to read ``module``'s output as a map, or ``None`` when it cannot be one.

    Args:
        module: the layer.
        output: its output.
        prefix: the model's count of leading non-patch tokens when it states one (timm's
            ``num_prefix_tokens``); otherwise the count is what is left over after the
            largest square grid (197 tokens: 1 class token and 14 x 14 patches).

    """
    if output.dim() == 4:
        return SpatialView("nhwc" if _channels_last_module(module, output) else "nchw")
    if output.dim() != 3:
        return None
    tokens = int(output.shape[1])
    if prefix is None:
        side = math.isqrt(tokens)
        prefix = tokens - side * side
    side = math.isqrt(max(tokens - prefix, 0))
    if side < 1 or side * side != tokens - prefix:
        return None
    return SpatialView("tokens", prefix, (side, side))
