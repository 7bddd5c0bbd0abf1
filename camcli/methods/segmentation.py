"""Explaining a semantic segmenter, per class present: Seg-Grad-CAM and Eigen-CAM.

The segmenter follows torchvision's convention: it takes the normalised batch (as a
classifier does) and returns ``{"out": N x C x H x W}`` logits, or that tensor. Each class of
the predicted mask (its argmax) that covers at least ``min_fraction`` of the image, the
background (index 0) excepted, is explained with the sum of its logits over its predicted
pixels (Seg-Grad-CAM, Vinogradova et al. 2020; pytorch-grad-cam's
``SemanticSegmentationTarget``). One forward pass per batch; one gradient per class slot:
slot ``k`` sums the ``k``-th class of every image (the images of a batch stay separate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from camcli.methods.activation import eigencam
from camcli.methods.detection import GRADIENT_CAMS
from camcli.methods.names import SEGMENTATION_METHODS as NAMED_SEGMENTATION_METHODS
from camcli.models.hooks import LayerCapture, frozen_eval
from camcli.models.tasks import describe_output

__all__ = ["SEGMENTATION_METHODS", "Segment", "SegmentationResult", "explain_segments", "logits_of"]

SEGMENTATION_METHODS = NAMED_SEGMENTATION_METHODS  # the names the command line checks


@dataclass(frozen=True)
class Segment:
    """A class present in an image's predicted mask."""

    index: int
    pixels: int
    fraction: float


@dataclass
class SegmentationResult:
    """One image's predicted mask, its segments and their maps.

    Attributes:
        mask: the predicted class per pixel of the model input, ``(S, S)`` int64.
        segments: the classes explained, largest first.
        maps: per method, ``(K, h, w)`` maps on the layer's grid, one per segment;
            ``eigencam``'s is ``(1, h, w)``.
    """

    mask: torch.Tensor
    segments: list[Segment]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


def logits_of(output: Any) -> torch.Tensor:
    """The ``N x C x H x W`` logits of a segmenter's output (``{"out": ...}`` or the tensor).

    Raises:
        ValueError: naming what the model returned otherwise.
    """
    if isinstance(output, dict) and isinstance(output.get("out"), torch.Tensor):
        output = output["out"]
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return output
    raise ValueError(
        "a segmenter must return N x C x H x W logits or {'out': those logits}; "
        f"this one returned {describe_output(output)}"
    )


def explain_segments(
    module: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    methods: Sequence[str],
    min_fraction: float = 0.01,
) -> list[SegmentationResult]:
    """Segment the batch, then explain each image's classes with ``methods``.

    Args:
        module: the segmenter, in eval mode.
        inputs: the normalised batch ``(N, 3, S, S)``.
        layer: the layer of the maps (a 4-D output).
        methods: some of :data:`SEGMENTATION_METHODS`.
        min_fraction: the least share of the image a class must cover to be explained.

    Returns:
        One result per image.

    Raises:
        ValueError: an unknown method, or a model that is no segmenter.
    """
    unknown = [m for m in methods if m not in SEGMENTATION_METHODS]
    if unknown:
        raise ValueError(f"no segmentation method {unknown[0]!r} (one of {SEGMENTATION_METHODS})")
    with frozen_eval(module), torch.enable_grad():
        with LayerCapture(module, [layer], detach=True) as capture:
            logits = logits_of(module(inputs))
        activations = capture.activations[layer]
        mask = logits.detach().argmax(dim=1)  # (N, H, W)
        total = mask[0].numel()
        counts = torch.stack([torch.bincount(m.flatten(), minlength=logits.shape[1]) for m in mask])
        results = []
        for i, row in enumerate(counts.cpu().tolist()):
            present = [
                Segment(c, n, n / total)
                for c, n in enumerate(row)
                if c != 0 and n > 0 and n / total >= min_fraction
            ]
            present.sort(key=lambda s: -s.pixels)
            results.append(SegmentationResult(mask[i], present))
        gradient_cams = [m for m in methods if m in GRADIENT_CAMS]
        per_image: list[dict[str, list[torch.Tensor]]] = [
            {m: [] for m in gradient_cams} for _ in results
        ]
        slots = max((len(r.segments) for r in results), default=0)
        for slot in range(slots if gradient_cams else 0):
            owners = [i for i, r in enumerate(results) if len(r.segments) > slot]
            target = logits.new_zeros(())
            for i in owners:
                c = results[i].segments[slot].index
                target = target + (logits[i, c] * (mask[i] == c)).sum()
            (gradients,) = torch.autograd.grad(
                target, activations, retain_graph=slot + 1 < slots, allow_unused=True
            )
            if gradients is None:
                gradients = torch.zeros_like(activations)
            for method in gradient_cams:
                maps = GRADIENT_CAMS[method](activations[owners].detach(), gradients[owners])
                for row, i in enumerate(owners):
                    per_image[i][method].append(maps[row])
    h, w = activations.shape[-2:]
    for i, result in enumerate(results):
        for method in gradient_cams:
            stack = per_image[i][method]
            result.maps[method] = torch.stack(stack) if stack else activations.new_zeros((0, h, w))
        if "eigencam" in methods:
            result.maps["eigencam"] = eigencam(activations[i : i + 1].detach())
    return results
