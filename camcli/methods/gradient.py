"""Gradient-weighted CAMs: maps from one layer's activations A and gradients G, batched.

All share one forward pass and one gradient of the target logits to the layer; each is a
few tensor operations on ``(N, C, h, w)``. Every function returns unnormalised,
non-negative maps ``(N, h, w)`` in float32.
"""

from __future__ import annotations

import torch

__all__ = ["gradcam", "gradcam_plus_plus", "hirescam", "layercam", "xgradcam"]


def _weighted(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    return (weights[:, :, None, None] * activations).sum(dim=1).clamp(min=0)


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): weights = spatial mean of G; ReLU(sum w_k A_k)."""
    a, g = activations.float(), gradients.float()
    return _weighted(g.mean(dim=(2, 3)), a)


def gradcam_plus_plus(
    activations: torch.Tensor, gradients: torch.Tensor, eps: float = 1e-7
) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018), closed form for an exponential output.

    With S = exp(logit), the higher derivatives of S follow from the first-order gradient:
    ``alpha = G^2 / (2 G^2 + sum_ab A * G^3)`` (zero where G is zero) and
    ``w_k = sum_ij alpha * ReLU(G)``.
    """
    a, g = activations.float(), gradients.float()
    g2 = g * g
    g3 = g2 * g
    denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(g != 0, g2 / (denominator + eps), torch.zeros_like(g))
    return _weighted((alpha * g.clamp(min=0)).sum(dim=(2, 3)), a)


def xgradcam(activations: torch.Tensor, gradients: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020): ``w_k = sum_ij G * A / sum_ij A``."""
    a, g = activations.float(), gradients.float()
    weights = (g * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + eps)
    return _weighted(weights, a)


def layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_k ReLU(G_k) * A_k)``, element-wise weights."""
    a, g = activations.float(), gradients.float()
    return (g.clamp(min=0) * a).sum(dim=1).clamp(min=0)


def hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): ``ReLU(sum_k G_k * A_k)``, no spatial averaging."""
    a, g = activations.float(), gradients.float()
    return (g * a).sum(dim=1).clamp(min=0)
