"""Explain a batch: one forward pass, Grad-CAM at a layer and guided backprop to the input.

Per batch: one forward with gradients enabled and parameters frozen, one gradient to the
target layer (normal backward rules, for Grad-CAM) and, when guided backprop is asked for,
one gradient to the input on the same graph with guided rules. Targets are per image;
because the model is in eval mode the images of a batch are independent, so the gradient of
the summed target logits gives each image its own gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from camcli.io.transfer import to_device
from camcli.methods.guided import GuidedActivations
from camcli.models.hooks import LayerCapture, LayerUnusable, frozen_eval

__all__ = [
    "FLOOR_METHODS",
    "Explanation",
    "Predictions",
    "class_probabilities",
    "explain_batch",
    "explain_targets",
    "grad_cam",
    "normalise_maps",
    "picture_maps",
    "top_predictions",
]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """An autocast context for ``dtype`` on ``device``, or a no-op for ``None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.) maps from a layer's activations and gradients.

    ReLU of the channel sum of the activations weighted by the spatial mean of their gradients.

    Args:
        activations: layer output, ``(N, C, H, W)``.
        gradients: d(target logit)/d(activations), same shape.

    Returns:
        Unnormalised maps, ``(N, H, W)``, float32, non-negative.

    Example:
        >>> a = torch.ones(1, 2, 2, 2); g = torch.ones(1, 2, 2, 2)
        >>> grad_cam(a, g)[0].tolist()
        [[2.0, 2.0], [2.0, 2.0]]

    """
    activations = activations.float()
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)
    return (weights * activations).sum(dim=1).clamp(min=0)


FLOOR_METHODS = ("rise", "drise")
"""Map methods whose maps have a floor far above zero: their pictures span min to max.

These are the perturbation methods whose map is a mean over random masks: a RISE map is a
mean of masked class probabilities (0.60 to 0.74 on a photo), a D-RISE map a mean of masks
weighted by the masked photo's match with the detection (every mask that keeps a part of the
object scores). Divided by its maximum either would fill only the red end of the colour map.
The other map methods' maps are rectified (zero means no evidence) and are divided by their
maximum: Score-CAM, the other perturbation method, is ``ReLU`` of a softmax-weighted sum of
the layer's non-negative channels, zero where no channel fires, as Grad-CAM's.
"""


def picture_maps(method: str, maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """How a method's maps become pictures: ``(N, ...)`` in [0, 1].

    From the minimum to the maximum of each map for :data:`FLOOR_METHODS` (as the RISE
    paper's figures and pytorch-grad-cam show them), else divided by the maximum
    (:func:`normalise_maps`). A flat map gives zeros.
    """
    if method not in FLOOR_METHODS:
        return normalise_maps(maps, eps)
    flat = maps.flatten(1).float()
    low = flat.amin(dim=1).view(-1, *([1] * (maps.dim() - 1)))
    span = (flat.amax(dim=1) - flat.amin(dim=1)).view(-1, *([1] * (maps.dim() - 1)))
    shifted = maps.float() - low
    return torch.where(span > eps, shifted / span.clamp(min=eps), torch.zeros_like(shifted))


def normalise_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each map to [0, 1] by its maximum; an all-zero map stays zero (no NaN).

    Args:
        maps: non-negative maps, ``(N, ...)``.
        eps: maxima at or below this count as zero.

    Returns:
        Maps of the same shape with maximum 1 (or all zero).

    """
    peak = maps.flatten(1).amax(dim=1).view(-1, *([1] * (maps.dim() - 1)))
    return torch.where(peak > eps, maps / peak.clamp(min=eps), torch.zeros_like(maps))


@dataclass
class Predictions:
    """Top-k of a batch, from the same forward pass that feeds the CAM."""

    indices: torch.Tensor  # (N, k) long
    probabilities: torch.Tensor  # (N, k) float32
    logits: torch.Tensor  # (N, k) float32


def class_probabilities(logits: torch.Tensor, binary: bool = False) -> torch.Tensor:
    """Class probabilities: the softmax of each row, or for a binary model the sigmoid.

    A binary (sigmoid) model's signed logits ``[-z, z]`` give ``1 - p`` and ``p``.
    """
    logits = logits.detach().float()
    return logits.sigmoid() if binary else logits.softmax(dim=1)


def top_predictions(logits: torch.Tensor, k: int, binary: bool = False) -> Predictions:
    """Top-k of each row of ``logits`` by probability (see :func:`class_probabilities`)."""
    k = min(k, logits.shape[1])
    logits = logits.detach().float()
    probabilities = class_probabilities(logits, binary)
    top_p, top_i = probabilities.topk(k, dim=1)
    return Predictions(top_i, top_p, logits.gather(1, top_i))


@dataclass
class Explanation:
    """What one forward pass (and its gradients) produced for a batch.

    Attributes:
        logits: model output, ``(N, classes)``.
        targets: the class explained per image, ``(N,)``.
        activations: each layer's output, ``(N, C, h, w)``, detached.
        gradients: d(target logit)/d(activations) per layer (empty when not asked for).
        guided: guided-backprop gradient w.r.t. the (normalised) input, ``(N, 3, S, S)``,
            or ``None`` when not asked for.
        guided_calls: activation calls that followed the guided rule, per name.
        unchanged_calls: gating activation calls that kept the normal rule, per name.

    """

    logits: torch.Tensor
    targets: torch.Tensor
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)
    guided: torch.Tensor | None = None
    guided_calls: dict[str, int] = field(default_factory=dict)
    unchanged_calls: dict[str, int] = field(default_factory=dict)

    @property
    def cams(self) -> dict[str, torch.Tensor]:
        """Unnormalised Grad-CAM per layer, ``(N, h, w)``."""
        return {
            name: grad_cam(self.activations[name], grad) for name, grad in self.gradients.items()
        }


def explain_batch(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: str | list[str],
    targets: torch.Tensor | None = None,
    guided: bool = True,
    layer_gradients: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> Explanation:
    """Activations and gradients at ``layers`` and (optionally) guided backprop, in one forward.

    The model is put in eval mode with frozen parameters for the call and restored after;
    hooks are removed even when the forward pass fails. Costs one forward pass, one gradient
    to the layers (when ``layer_gradients``) and one to the input (when ``guided``), all on
    one graph.

    Args:
        model: the classifier, returning logits ``(N, classes)``.
        inputs: normalised input batch ``(N, 3, S, S)`` on the model's device.
        layers: dotted name(s) of the layer(s) to explain.
        targets: the class to explain per image, ``(N,)``; ``None`` explains the top-1.
        guided: also compute guided backprop to the input.
        layer_gradients: compute the gradients at the layers (gradient-based CAMs need them).
        autocast_dtype: run the forward pass under autocast to this type (e.g. bfloat16);
            the maps are computed in float32 from its activations and gradients.

    Returns:
        The explanation of the batch.

    Raises:
        RuntimeError: inside ``torch.inference_mode()``, or when a layer is unusable.
        ValueError: when ``targets`` does not have one entry per image.

    """
    (explanation,) = explain_targets(
        model, inputs, layers, [targets], guided, layer_gradients, autocast_dtype
    )
    return explanation


def explain_targets(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: str | list[str],
    target_sets: Sequence[torch.Tensor | None],
    guided: bool = True,
    layer_gradients: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> list[Explanation]:
    """:func:`explain_batch` for several targets per image, sharing one forward pass.

    The graph of the one forward pass is kept while the gradients of each target are taken:
    first every target's gradient to the layers (normal rule), then every target's guided
    gradient to the input. Costs one forward pass and one backward pass per target and kind.

    Args:
        model: the classifier, returning logits ``(N, classes)``.
        inputs: normalised input batch ``(N, 3, S, S)`` on the model's device.
        layers: dotted name(s) of the layer(s) to explain.
        target_sets: per target, the class per image ``(N,)``, or ``None`` for the top-1.
        guided: also compute guided backprop to the input.
        layer_gradients: compute the gradients at the layers.
        autocast_dtype: run the forward pass under autocast to this type.

    Returns:
        One explanation per target, in order (logits and activations shared).

    Raises:
        RuntimeError: inside ``torch.inference_mode()``, or when a layer is unusable.
        ValueError: when a target set does not have one entry per image, or none is given.

    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "explain_batch needs gradients and cannot run inside torch.inference_mode()"
        )
    if not target_sets:
        raise ValueError("at least one target set is needed")
    names = [layers] if isinstance(layers, str) else list(layers)
    for targets in target_sets:
        if targets is not None and targets.shape != (inputs.shape[0],):
            raise ValueError(
                f"targets must hold one class per image: got shape {tuple(targets.shape)} "
                f"for {inputs.shape[0]} images"
            )
    x = inputs.detach()
    if x.is_inference():
        x = x.clone()
    x.requires_grad_(guided)
    mode: Any = GuidedActivations() if guided else nullcontext()
    last = len(target_sets) - 1
    with frozen_eval(model), torch.enable_grad():
        with (
            LayerCapture(model, names, detach=not guided) as capture,
            mode,
            autocast(x.device, autocast_dtype),
        ):
            logits = model(x)
        missing = [name for name in names if name not in capture.activations]
        if missing:
            raise LayerUnusable(
                f"layer {missing[0]!r} did not run in the forward pass (a branch used only in "
                "training?); choose a layer on the path to the output"
            )
        activations = [capture.activations[name] for name in names]
        chosen = [
            logits.detach().argmax(dim=1) if targets is None else to_device(targets, logits.device)
            for targets in target_sets
        ]
        scores = [logits.gather(1, c[:, None]).sum() for c in chosen]
        gradients: list[dict[str, torch.Tensor]] = [{} for _ in scores]
        if layer_gradients:
            for t, score in enumerate(scores):
                grads = torch.autograd.grad(score, activations, retain_graph=guided or t < last)
                gradients[t] = dict(zip(names, grads, strict=True))
        guided_grads: list[torch.Tensor | None] = [None] * len(scores)
        if guided:
            mode.rule.guided = True
            for t, score in enumerate(scores):
                (guided_grads[t],) = torch.autograd.grad(score, x, retain_graph=t < last)
    detached = {name: act.detach() for name, act in zip(names, activations, strict=True)}
    return [
        Explanation(
            logits=logits.detach(),
            targets=chosen[t],
            activations=detached,
            gradients=gradients[t],
            guided=guided_grads[t],
            guided_calls=dict(mode.guided) if guided else {},
            unchanged_calls=dict(mode.unchanged) if guided else {},
        )
        for t in range(len(scores))
    ]
