"""Every requested method of a batch, computed together from one forward pass.

Map methods give one ``(N, h, w)`` map per layer: the gradient-weighted CAMs (sharing one
gradient to the layers), CAM, Eigen-CAM, Score-CAM and RISE. Image methods give a
``(N, 3, S, S)`` picture at the input resolution: guided backprop, guided Grad-CAM,
SmoothGrad, LRP and Integrated Gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from camcli.methods.activation import (
    LinearHead,
    class_activation_map,
    eigencam,
    find_linear_head,
)
from camcli.methods.forward import Explanation, explain_batch, normalise_maps, picture_maps
from camcli.methods.gradient import gradcam, gradcam_plus_plus, hirescam, layercam, xgradcam
from camcli.methods.integrated import adaptive_integrated_gradients, ig_baseline, most_passes
from camcli.methods.metrics import faithfulness, faithfulness_passes, pixel_order_saliency
from camcli.methods.names import (
    IG_MAX_PASSES,
    IMAGE_METHODS,
    MAP_METHODS,
    RISE_LAYER,
)
from camcli.methods.perturbation import scorecam, smoothgrad
from camcli.methods.rise import RiseMasks, rise
from camcli.methods.stopping import planned_passes

__all__ = [
    "GRADIENT_MAPS",
    "BatchMethods",
    "MethodOptions",
    "compute_methods",
    "method_passes",
    "run_masks",
]

GRADIENT_MAPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
}


@dataclass(frozen=True)
class MethodOptions:
    """Settings of the methods that make extra passes.

    Attributes:
        chunk_size: modified images per forward pass in Score-CAM and SmoothGrad.
        smooth_samples: noisy copies per image in SmoothGrad.
        smooth_noise: SmoothGrad noise level, relative to each image's value range.
        smooth_guided: average guided-backprop gradients instead of plain ones.
        seed: base seed of SmoothGrad's noise (an image's seed is ``seed + its index``) and
            of RISE's masks (shared by all images).
        rise_masks: random masks in RISE.
        ig_steps: path steps of Integrated Gradients every image starts with.
        ig_tolerance: completeness error at which an image's IG stops adding steps.
        ig_max_steps: most IG passes per image over its levels (the points triple: 32, 96,
            288, 864; Gauss-Legendre levels do not nest, so 1,280 passes reach 864).
        ig_rule: where IG's path points lie: ``gausslegendre`` or ``midpoint``.
        ig_baseline: ``black`` or ``blur``.
        black: the normalised value of a black pixel per channel (``-mean / std``), for
            the black baseline; ``None`` takes 0.
        metrics: faithfulness scores to compute (:data:`camcli.methods.metrics.METRICS`).
        metric_steps: steps of the deletion and insertion curves.
        binary: the model is a sigmoid classifier shown as two logits ``[-z, z]``: RISE and
            the scores read its probabilities with the sigmoid, not the softmax.

    """

    chunk_size: int = 64
    smooth_samples: int = 16
    smooth_noise: float = 0.15
    smooth_guided: bool = False
    seed: int = 0
    rise_masks: int = 4000
    ig_steps: int = 32
    ig_tolerance: float = 0.05
    ig_max_steps: int = IG_MAX_PASSES
    ig_rule: str = "gausslegendre"
    ig_baseline: str = "black"
    black: tuple[float, ...] | None = None
    metrics: tuple[str, ...] = ()
    metric_steps: int = 16
    binary: bool = False


@dataclass
class BatchMethods:
    """What the methods produced for a batch.

    Attributes:
        explanation: the forward pass and gradients they share.
        maps: unnormalised maps per method and layer, ``(N, h, w)``.
        fused: per map method with several layers: the element-wise maximum of the layers'
            normalised maps at the input resolution, ``(N, S, S)`` in [0, 1].
        images: per image method, the gradient picture ``(N, 3, S, S)``.
        heads: the linear head CAM used, per layer.
        checks: per-image numbers the records report, ``(N,)`` each: ``ig_sum`` and
            ``ig_difference`` (completeness of Integrated Gradients), ``ig_steps`` (the
            steps each image used), ``lrp_sum`` and
            ``lrp_logit`` (conservation of LRP).
        lrp_canonizers: the zennit canonizers LRP used.
        metrics: per method, per faithfulness score, ``(N,)``.

    """

    explanation: Explanation
    maps: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    fused: dict[str, torch.Tensor] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    heads: dict[str, LinearHead] = field(default_factory=dict)
    checks: dict[str, torch.Tensor] = field(default_factory=dict)
    lrp_canonizers: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def unit_map(self, method: str) -> torch.Tensor:
        """The method's final map in [0, 1]: the fused one, or the only layer's."""
        if method in self.fused:
            return self.fused[method]
        (only,) = self.maps[method].values()
        return normalise_maps(only)

    def picture_map(self, method: str) -> torch.Tensor:
        """The method's final map as its picture shows it (:func:`picture_maps`)."""
        if method in self.fused:
            return self.fused[method]
        (only,) = self.maps[method].values()
        return picture_maps(method, only)


def _to_size(maps: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[
        :, 0
    ]


def compute_methods(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[str],
    targets: torch.Tensor | None,
    options: MethodOptions,
    seeds: Sequence[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    explanation: Explanation | None = None,
) -> BatchMethods:
    """Compute every requested method for a batch, sharing one forward pass.

    Cost per batch: one forward; one gradient to the layers if any gradient-based method is
    asked for (all of them share it); one gradient to the input for guided backprop / guided
    Grad-CAM; Score-CAM adds ``N * C / chunk_size`` forward passes, SmoothGrad
    ``N * samples / chunk_size`` forward + backward passes; RISE ``N * masks / chunk_size``
    forward passes; Integrated Gradients ``N * steps / chunk_size`` forward + backward
    passes; LRP one forward + backward per ``chunk_size`` images; the faithfulness scores
    about ``N * 2 (steps + 1) / chunk_size`` forward passes per method.

    Args:
        model: the classifier.
        inputs: the normalised batch ``(N, 3, S, S)``.
        layers: target layer names.
        methods: method names (see :data:`ALL_METHODS`).
        targets: the class per image, or ``None`` for the top-1.
        options: settings of Score-CAM and SmoothGrad.
        seeds: per-image noise seeds for SmoothGrad (default: ``options.seed + position``).
        autocast_dtype: run every forward pass under autocast to this type (bfloat16).
        explanation: the batch's forward pass and gradients when already made (one
            forward for several targets, see ``camcli.runs.targets``); ``targets`` is then unused.

    Returns:
        The maps and pictures.

    Raises:
        CamNotApplicable: when ``cam`` is asked for a model without a linear head, or
            ``lrp`` for a model it cannot canonize (:class:`LrpNotApplicable`).

    """
    wanted = set(methods)
    need_gradients = bool(wanted & (set(GRADIENT_MAPS) | {"guided-gradcam"}))
    need_guided = bool(wanted & {"guided", "guided-gradcam"})
    if explanation is None:
        explanation = explain_batch(
            model,
            inputs,
            list(layers),
            targets,
            guided=need_guided,
            layer_gradients=need_gradients,
            autocast_dtype=autocast_dtype,
        )
    passes = method_passes(explanation, inputs.shape[0], layers, methods, options)
    # Every method's passes are planned before the first: the total does not grow.
    with planned_passes(sum(passes.values()), next(iter(passes), "")):
        return _compute(model, inputs, layers, methods, options, seeds, autocast_dtype, explanation)


def method_passes(
    explanation: Explanation,
    images: int,
    layers: Sequence[str],
    methods: Sequence[str],
    options: MethodOptions,
) -> dict[str, int]:
    """The passes each method of :func:`compute_methods` makes for a batch, in their order.

    One image through the model is one pass: Score-CAM one per image and channel of each
    layer, SmoothGrad one per noisy copy, RISE one per image and mask, LRP one per image,
    Integrated Gradients the most its levels can take (``--ig-max-steps``; the levels an
    image does not need are taken back from the plan when it stops), and the faithfulness
    scores theirs (``faithfulness``). The forward pass and gradients that every method
    shares are not counted. Methods without passes of their own are left out.

    Args:
        explanation: the batch's forward pass (Score-CAM's channels are its layers').
        images: the batch's images.
        layers: target layer names.
        methods: method names.
        options: the methods' settings.

    Returns:
        Passes per method, in the order they run; empty when none makes passes.

    """
    wanted = set(methods)
    passes: dict[str, int] = {}
    if "scorecam" in wanted:
        passes["scorecam"] = sum(images * explanation.activations[la].shape[1] for la in layers)
    if "smoothgrad" in wanted:
        passes["smoothgrad"] = images * options.smooth_samples
    if "rise" in wanted:
        passes["rise"] = images * options.rise_masks
    if "lrp" in wanted:
        passes["lrp"] = images
    if "ig" in wanted:
        most = max(options.ig_max_steps, options.ig_steps)
        passes["ig"] = images * most_passes(options.ig_steps, most, options.ig_rule)
    if options.metrics:
        guided = explanation.guided is not None
        scored = [
            m
            for m in wanted
            if m in MAP_METHODS
            or (m in IMAGE_METHODS and (guided or m not in ("guided", "guided-gradcam")))
        ]
        passes["faithfulness"] = faithfulness_passes(
            images, len(scored), options.metrics, options.metric_steps
        )
    return {method: count for method, count in passes.items() if count > 0}


def _compute(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[str],
    options: MethodOptions,
    seeds: Sequence[int] | None,
    autocast_dtype: torch.dtype | None,
    explanation: Explanation,
) -> BatchMethods:
    """:func:`compute_methods` once the batch's forward pass is made."""
    wanted = set(methods)
    result = BatchMethods(explanation)
    chosen = explanation.targets
    size = inputs.shape[-1]
    for method in methods:
        if method not in MAP_METHODS and not (
            method == "guided-gradcam" and "gradcam" not in wanted
        ):
            continue
        name = "gradcam" if method == "guided-gradcam" else method
        per_layer: dict[str, torch.Tensor] = {}
        for layer in layers:
            activations = explanation.activations[layer]
            if name in GRADIENT_MAPS:
                per_layer[layer] = GRADIENT_MAPS[name](activations, explanation.gradients[layer])
            elif name == "cam":
                head = find_linear_head(model, activations, explanation.logits, layer)
                result.heads[layer] = head
                per_layer[layer] = class_activation_map(activations, head, chosen)
            elif name == "eigencam":
                per_layer[layer] = eigencam(activations)
            elif name == "scorecam":
                per_layer[layer] = scorecam(
                    model, inputs, activations, chosen, options.chunk_size, autocast_dtype
                )
        result.maps[name] = per_layer
        if len(layers) > 1:
            stacked = torch.stack([_to_size(normalise_maps(m), size) for m in per_layer.values()])
            result.fused[name] = stacked.amax(dim=0)
    if "guided" in wanted and explanation.guided is not None:
        result.images["guided"] = explanation.guided
    if "guided-gradcam" in wanted and explanation.guided is not None:
        cam = result.unit_map("gradcam")
        if cam.shape[-1] != size:
            cam = _to_size(cam, size)
        result.images["guided-gradcam"] = explanation.guided * cam[:, None]
        if "gradcam" not in wanted:
            del result.maps["gradcam"]
            result.fused.pop("gradcam", None)
    if "smoothgrad" in wanted:
        image_seeds = seeds if seeds is not None else range(inputs.shape[0])
        calls: dict[str, dict[str, int]] = {}
        result.images["smoothgrad"] = smoothgrad(
            model,
            inputs,
            chosen,
            [options.seed + int(s) for s in image_seeds],
            options.smooth_samples,
            options.smooth_noise,
            options.smooth_guided,
            options.chunk_size,
            autocast_dtype,
            calls,
        )
        if calls and not explanation.guided_calls:
            explanation.guided_calls = calls["guided"]
            explanation.unchanged_calls = calls["unchanged"]
    _attribution_methods(model, inputs, wanted, result, options, autocast_dtype)
    if options.metrics:
        saliencies = {
            method: pixel_order_saliency(method, result.unit_map(method), size)
            for method in result.maps
        }
        saliencies.update(
            (method, pixel_order_saliency(method, values, size))
            for method, values in result.images.items()
        )
        result.metrics = faithfulness(
            model,
            inputs,
            chosen,
            saliencies,
            options.metrics,
            options.metric_steps,
            options.chunk_size,
            autocast_dtype,
            options.binary,
        )
    return result


@functools.lru_cache(maxsize=4)
def run_masks(count: int, size: int, seed: int) -> RiseMasks:
    """RISE's masks of a run: made once from the seed, shared by every image and batch."""
    return RiseMasks.random(count, size, seed)


def _attribution_methods(
    model: nn.Module,
    inputs: torch.Tensor,
    wanted: set[str],
    result: BatchMethods,
    options: MethodOptions,
    autocast_dtype: torch.dtype | None,
) -> None:
    """RISE, LRP and Integrated Gradients: each its own passes, chunked."""
    chosen = result.explanation.targets
    if "rise" in wanted:
        masks = run_masks(options.rise_masks, inputs.shape[-1], options.seed)
        maps = rise(
            model, inputs, chosen, masks, options.chunk_size, autocast_dtype, options.binary
        )
        result.maps["rise"] = {RISE_LAYER: maps}
    if "lrp" in wanted:
        # Imported here: zennit imports torchvision (a second at every run's start).
        from camcli.methods.lrp import lrp, lrp_canonizers

        result.lrp_canonizers = [type(c).__name__ for c in lrp_canonizers(model)]
        relevance, logits = lrp(model, inputs, chosen, options.chunk_size)
        result.images["lrp"] = relevance
        result.checks["lrp_sum"] = relevance.flatten(1).sum(dim=1)
        result.checks["lrp_logit"] = logits
    if "ig" in wanted:
        baselines = ig_baseline(inputs, options.ig_baseline, options.black)
        ig = adaptive_integrated_gradients(
            model,
            inputs,
            baselines,
            chosen,
            options.ig_steps,
            options.chunk_size,
            autocast_dtype,
            tolerance=options.ig_tolerance,
            max_steps=max(options.ig_max_steps, options.ig_steps),
            rule=options.ig_rule,
        )
        result.images["ig"] = ig.attributions
        result.checks["ig_sum"] = ig.attributions.flatten(1).sum(dim=1)
        result.checks["ig_difference"] = ig.differences
        result.checks["ig_steps"] = ig.steps.float()
        result.checks["ig_passes"] = ig.passes.float()
