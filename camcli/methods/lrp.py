"""Layer-wise relevance propagation (Bach et al. 2015), computed by zennit.

The rules are zennit's (``EpsilonPlusFlat``: flat rule for the first layer, z+ for the other
convolutions, epsilon for the fully connected layers, relevance passed through activations
and normalised through sums and average pooling). camcli only chooses the canonizers that
make a model's graph fit those rules, and refuses models it cannot canonize:

* torchvision ResNet: zennit's ``ResNetCanonizer`` (batch norm merged into the convolution
  before it, the skip connection's addition made an explicit sum);
* torchvision VGG and plain models whose batch norms each follow a convolution or linear
  layer: batch norm merged into that layer (zennit's merge, paired in module order);
* timm EfficientNet / MobileNet blocks (the embedded model): the same merge, with the
  pairs read inside timm's fused batch-norm + activation modules, and the residual
  addition of the inverted-residual blocks made an explicit zennit sum.

DenseNet is refused: its batch norms come after concatenations and before the
convolutions, so no merge keeps the network's function, and zennit has no canonizer for it.
Models with attention or layer norms (vision transformers, Swin, ConvNeXt) are refused too:
the composite has no rule for them and would pass plain gradients through.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer, Canonizer, NamedMergeBatchNorm
from zennit.composites import EpsilonPlusFlat
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer

from camcli.methods.activation import CamNotApplicable
from camcli.methods.names import LRP_COMPOSITE
from camcli.methods.stopping import check_stop, passes_done, plan_passes
from camcli.models.hooks import frozen_eval

__all__ = [
    "LRP_COMPOSITE",
    "ExactMergeBatchNorm",
    "LrpNotApplicable",
    "TimmResidualCanonizer",
    "lrp",
    "lrp_canonizers",
]

_OTHERS = "gradcam, guided, smoothgrad, ig or rise"


class LrpNotApplicable(CamNotApplicable):
    """The model's graph cannot be canonized for LRP's rules (a usage error: exit 2)."""


def _timm_block_types() -> tuple[type, ...]:
    try:
        from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
    except ImportError:  # pragma: no cover - timm is a dependency
        return ()
    return (DepthwiseSeparableConv, InvertedResidual)


def _skip_as_sum(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm residual block's forward with its addition routed through a zennit ``Sum``."""
    if not getattr(self, "has_skip", False):
        return type(self).forward(self, x)
    # Run the block's own body without its addition.
    self.has_skip = False  # type: ignore[assignment]
    try:
        body = type(self).forward(self, x)
    finally:
        self.has_skip = True  # type: ignore[assignment]
    return self.canonizer_sum(torch.stack([x, body], dim=-1))  # type: ignore[operator]


class TimmResidualCanonizer(AttributeCanonizer):
    """Make the skip additions of timm's EfficientNet/MobileNet blocks explicit sums."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict[str, Any] | None:
        types = _timm_block_types()
        if types and isinstance(module, types) and getattr(module, "has_skip", False):
            return {"forward": _skip_as_sum.__get__(module), "canonizer_sum": Sum()}
        return None


class ExactMergeBatchNorm(NamedMergeBatchNorm):
    """zennit's named merge, with the batch norm's epsilon zeroed while merged.

    zennit folds ``1 / sqrt(var + eps)`` into the layer and leaves the batch norm computing
    ``x / sqrt(1 + eps)``: a factor 0.9995 per layer with TensorFlow's eps 1e-3, about 2.5 %
    over the embedded model's 49 batch norms. With eps zeroed the merged network computes
    exactly the original function.
    """

    def register(self, linears: list[nn.Module], batch_norm: nn.Module) -> None:
        """Merge, then make the batch norm an exact identity."""
        super().register(linears, batch_norm)
        self.batch_norm_eps = batch_norm.eps
        batch_norm.eps = 0.0  # type: ignore[assignment]

    def remove(self) -> None:
        """Restore the parameters and the epsilon."""
        super().remove()
        self.batch_norm.eps = self.batch_norm_eps


_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Leaves in registration order; batch norms count as leaves (timm nests an activation)."""
    children = list(module.named_children())
    if not children or isinstance(module, _NORM):
        yield prefix, module
        return
    for name, child in children:
        yield from _leaves(child, f"{prefix}.{name}" if prefix else name)


def _batch_norm_pairs(model: nn.Module) -> tuple[list[tuple[list[str], str]], list[str]]:
    """(linear, batch norm) pairs adjacent in module order, and the batch norms left over."""
    pairs: list[tuple[list[str], str]] = []
    unpaired: list[str] = []
    last: tuple[str, nn.Module] | None = None
    for name, leaf in _leaves(model):
        if isinstance(leaf, _NORM):
            if last is not None and isinstance(last[1], _LINEAR):
                pairs.append(([last[0]], name))
            else:
                unpaired.append(name)
        last = (name, leaf)
    return pairs, unpaired


def _attention_or_layer_norm(model: nn.Module) -> str | None:
    """The name of the first attention or layer-norm module (transformers, ConvNeXt)."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.MultiheadAttention | nn.LayerNorm) or kind.endswith(
            ("Attention", "LayerNorm", "LayerNorm2d")
        ):
            return name or kind
    return None


def lrp_canonizers(model: nn.Module) -> list[Canonizer]:
    """The canonizers that fit ``model`` to LRP's rules.

    Raises:
        LrpNotApplicable: for DenseNet, for models with attention or layer norms, and for
            models with a batch norm that follows no convolution or linear layer (one
            sentence naming the methods that apply).

    """
    import torchvision

    if isinstance(model, torchvision.models.DenseNet):
        raise LrpNotApplicable(
            "lrp cannot canonize DenseNet (its batch norms follow concatenations and zennit "
            f"has no canonizer for it); use {_OTHERS}"
        )
    if isinstance(model, torchvision.models.ResNet):
        return [ResNetCanonizer()]
    if blocker := _attention_or_layer_norm(model):
        raise LrpNotApplicable(
            f"lrp has no rules for attention or layer norms (this model's {blocker!r}): "
            f"zennit's composite would pass plain gradients through them; use {_OTHERS}"
        )
    pairs, unpaired = _batch_norm_pairs(model)
    if unpaired:
        raise LrpNotApplicable(
            f"lrp cannot canonize this model: batch norm {unpaired[0]!r} follows no "
            f"convolution or linear layer it could be merged into; use {_OTHERS}"
        )
    canonizers: list[Canonizer] = [TimmResidualCanonizer()]
    if pairs:
        canonizers.insert(0, ExactMergeBatchNorm(pairs))
    return canonizers


@contextmanager
def _lrp_model(model: nn.Module) -> Iterator[nn.Module]:
    composite = EpsilonPlusFlat(canonizers=lrp_canonizers(model))
    with composite.context(model) as modified:
        yield modified


def lrp(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LRP relevance of each image's target logit, per input element, in float32.

    The target logit is the relevance put at the output (so the relevance sums to about the
    logit: exactly for a bias-free network, less what biases and epsilon absorb otherwise).
    The images of a batch get their own targets in one backward pass per chunk.

    Args:
        model: the classifier (eval mode is forced for the call).
        inputs: the normalised batch ``(N, 3, S, S)``.
        targets: the class per image ``(N,)``.
        chunk_size: images per forward + backward pass.

    Returns:
        ``(relevance (N, 3, S, S), target logits (N,))``.

    Raises:
        LrpNotApplicable: when the model cannot be canonized.

    """
    x = inputs.detach().float()
    relevance = torch.empty_like(x)
    logits = torch.empty(x.shape[0], device=x.device)
    plan_passes(x.shape[0], "lrp")
    with frozen_eval(model), torch.enable_grad(), _lrp_model(model) as modified:
        for start in range(0, x.shape[0], chunk_size):
            check_stop()
            part = slice(start, min(start + chunk_size, x.shape[0]))
            batch = x[part].clone().requires_grad_(True)
            out = modified(batch).float()
            chosen = out.gather(1, targets[part][:, None])
            (grad,) = torch.autograd.grad(chosen.sum(), batch)
            # zennit's modified gradient at the input is the relevance for a unit relevance
            # at the output; the rules are linear in it, so scaling puts the logit there.
            relevance[part] = grad * chosen.detach().view(-1, 1, 1, 1)
            logits[part] = chosen.detach()[:, 0]
            passes_done(part.stop - part.start)
    return relevance, logits
