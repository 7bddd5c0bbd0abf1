"""Gradient-free maps from a layer's activations: CAM (classifier weights) and Eigen-CAM."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["CamNotApplicable", "LinearHead", "class_activation_map", "eigencam", "find_linear_head"]


class CamNotApplicable(ValueError):
    """The model does not end in global average pooling + one linear layer after the layer."""


@dataclass(frozen=True)
class LinearHead:
    """The classifier that maps the pooled layer output to the logits.

    Attributes:
        name: the Linear module's name.
        weight: its weight ``(classes, C)``.
        relu_first: the logits are ``W @ mean(ReLU(A)) + b`` (a ReLU between the layer and
            the pooling, as in torchvision's DenseNet), not ``W @ mean(A) + b``.

    """

    name: str
    weight: torch.Tensor
    relu_first: bool


def find_linear_head(
    model: nn.Module, activations: torch.Tensor, logits: torch.Tensor, layer: str
) -> LinearHead:
    """Find the linear layer whose output on the global average of the layer is the logits.

    The check is numerical, on this batch: a candidate ``nn.Linear`` (C inputs, one output per
    class) must reproduce the model's logits from the spatial mean of the activations (or of
    their ReLU), so heads with hidden layers, other pooling or anything else are refused.

    Raises:
        CamNotApplicable: with a sentence saying why and which methods apply instead.

    """
    a = activations.detach().float()
    target = logits.detach().float()
    # Logits from a bfloat16/float16 forward pass carry about 3 significant digits.
    rtol = 1e-3 if logits.dtype in (torch.float32, torch.float64) else 2e-2
    tolerance = rtol * float(target.abs().max()) + 1e-4
    pooled = {False: a.mean(dim=(2, 3)), True: a.clamp(min=0).mean(dim=(2, 3))}
    channels, classes = a.shape[1], target.shape[1]
    for name, module in model.named_modules():
        # A single-logit (sigmoid) head shown as two classes [-z, z] has the weights [-w, w].
        signed = classes == 2 and isinstance(module, nn.Linear) and module.out_features == 1
        if not (
            isinstance(module, nn.Linear)
            and module.in_features == channels
            and (module.out_features == classes or signed)
        ):
            continue
        weight = module.weight.detach().float().to(a.device)
        bias: torch.Tensor | float = (
            module.bias.detach().float().to(a.device) if module.bias is not None else 0.0
        )
        if signed:
            weight = torch.cat([-weight, weight])
            bias = torch.cat([-bias, bias]) if isinstance(bias, torch.Tensor) else 0.0
        for relu_first, features in pooled.items():
            if torch.allclose(features @ weight.T + bias, target, rtol=rtol, atol=tolerance):
                return LinearHead(name, weight, relu_first)
    raise CamNotApplicable(
        f"cam needs a model whose logits are one linear layer applied to the global average "
        f"of --layer {layer}, and this model's are not; use gradcam (equal to CAM up to scale "
        "on such models), gradcam++, xgradcam, layercam, hirescam, eigencam or scorecam"
    )


def class_activation_map(
    activations: torch.Tensor, head: LinearHead, targets: torch.Tensor
) -> torch.Tensor:
    """CAM (Zhou et al. 2016): ``ReLU(sum_k W[target, k] * A_k)`` per image.

    Returns:
        Unnormalised maps ``(N, h, w)``.

    """
    a = activations.detach().float()
    if head.relu_first:
        a = a.clamp(min=0)
    weights = head.weight.to(a.device)[targets]  # (N, C)
    return (weights[:, :, None, None] * a).sum(dim=1).clamp(min=0)


def eigencam(activations: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the activations.

    Per image, the ``(h*w, C)`` activation matrix is centred over positions and projected on
    its first right singular vector (one batched SVD). An SVD's sign is arbitrary; it is fixed
    so that the map correlates positively with the channel mean of the activations. Class
    independent.

    Returns:
        Unnormalised maps ``(N, h, w)``, ReLU applied.

    """
    a = activations.detach().float()
    n, _, h, w = a.shape
    x = a.flatten(2).transpose(1, 2)  # (N, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    projection = (x @ vh[:, 0, :, None])[..., 0]  # (N, hw)
    mean_map = a.mean(dim=1).flatten(1)
    agreement = (
        (projection - projection.mean(1, keepdim=True))
        * (mean_map - mean_map.mean(1, keepdim=True))
    ).sum(1)
    sign = torch.where(agreement < 0, -1.0, 1.0).to(projection.dtype)
    return (projection * sign[:, None]).view(n, h, w).clamp(min=0)
