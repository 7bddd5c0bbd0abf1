"""Faithfulness scores: does the model's confidence follow where a map points.

* deletion (Petsiuk et al. 2018): pixels are removed (set to zero, the normalisation's mean
  colour) in order of the map's value, most salient first, in ``steps`` equal steps; the
  target's probability is measured at each of the ``steps + 1`` points and the area under
  that curve (x from 0 to 1) is the score: lower is better.
* insertion (Petsiuk et al.): pixels of the image are revealed in the same order on a
  blurred copy; area under the probability curve: higher is better.
* drop and increase (Chattopadhyay et al. 2018): the image multiplied by the map (in [0, 1],
  at the input resolution) is shown to the model; drop is ``max(0, Y - O) / Y`` with ``Y``
  and ``O`` the target's probability on the image and on the masked image (lower is
  better; its mean over images is the paper's "average drop"), increase is 1 when
  ``O > Y`` (its mean is the "increase in confidence", higher is better).

Everything runs batched on the model's device, ``chunk_size`` modified images per forward
pass, so memory is bounded by the chunk whatever the number of steps or methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from camcli.methods.forward import autocast, class_probabilities
from camcli.methods.stopping import check_stop, passes_done, plan_passes, planned_passes
from camcli.models.hooks import frozen_eval

__all__ = [
    "FaithfulnessAverages",
    "blurred",
    "faithfulness",
    "faithfulness_passes",
    "pixel_order_saliency",
    "pixel_ranks",
]

# What each metric writes per image, and whether higher is better.
SCORES = {"deletion": ("deletion",), "insertion": ("insertion",), "drop": ("drop", "increase")}


def blurred(inputs: torch.Tensor) -> torch.Tensor:
    """A heavy Gaussian blur of each image, batched: insertion's start, IG's ``blur`` baseline.

    The standard deviation scales with the input: 5 pixels at 224 (Petsiuk et al.'s
    setting), ``5 S / 224`` in general; kernel ``4 sigma + 1`` (at most ``S - 1``), reflected
    edges.
    """
    size = min(inputs.shape[-2:])
    sigma = max(5 * size / 224, 0.5)
    kernel = min(int(4 * sigma) | 1, (size - 1) | 1 if size % 2 == 0 else size - 2)
    if kernel < 3:
        return inputs.clone()
    # Imported here: torchvision's import costs a second (its ops pull in torch's compiler),
    # on every start of a run, and only insertion and IG's blur baseline blur.
    import torchvision.transforms.functional as TF

    return TF.gaussian_blur(inputs, [kernel, kernel], [sigma, sigma])


def pixel_order_saliency(method: str, values: torch.Tensor, size: int) -> torch.Tensor:
    """The per-pixel saliency ``(N, S, S)`` that orders pixels for a method's output.

    Maps ``(N, h, w)`` are upsampled bilinearly; attributions whose sum means something
    (``lrp``, ``ig``) are summed over colour channels with their sign; gradient pictures
    (guided backprop, SmoothGrad) use their magnitude, maximum over channels.
    """
    if values.dim() == 3:
        maps = values.float()
        if maps.shape[-1] != size:
            maps = F.interpolate(
                maps[:, None], size=(size, size), mode="bilinear", align_corners=False
            )[:, 0]
        return maps
    if method in ("lrp", "ig"):
        return values.float().sum(dim=1)
    return values.float().abs().amax(dim=1)


def pixel_ranks(saliency: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank in its map, most salient first: ``(N, S, S)`` -> ``(N, S * S)``.

    Ties keep the row-major order (a stable sort), so the order is the same on every device.
    """
    n = saliency.shape[0]
    flat = saliency.float().reshape(n, -1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(n, -1))
    return position


def _unit(saliency: torch.Tensor) -> torch.Tensor:
    positive = saliency.clamp(min=0)
    peak = positive.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(peak > 0, positive / peak.clamp(min=1e-12), torch.zeros_like(positive))


def faithfulness_passes(images: int, methods: int, metrics: Sequence[str], steps: int) -> int:
    """The passes :func:`faithfulness` makes for a batch: one image through the model each.

    The unmodified images once, then per method the ``steps + 1`` points of each curve and
    the masked image of ``drop``.

    Example:
        >>> faithfulness_passes(2, 5, ("deletion", "insertion", "drop"), 16)
        352

    """
    wanted = set(metrics)
    curves = sum(kind in wanted for kind in ("deletion", "insertion"))
    per_method = curves * (steps + 1) + ("drop" in wanted)
    return images * (1 + methods * per_method)


def faithfulness(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    saliencies: dict[str, torch.Tensor],
    metrics: Sequence[str],
    steps: int,
    chunk_size: int,
    autocast_dtype: torch.dtype | None = None,
    binary: bool = False,
    curves: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Faithfulness scores of every method's saliency, per image.

    Args:
        model: the classifier.
        inputs: the normalised batch ``(N, 3, S, S)``.
        targets: the class per image ``(N,)``.
        saliencies: per method, the pixel saliency ``(N, S, S)``.
        metrics: names from :data:`METRICS`.
        steps: deletion / insertion steps.
        chunk_size: modified images per forward pass.
        autocast_dtype: forward passes under autocast to this type.
        binary: the logits are a sigmoid classifier's ``[-z, z]`` (probabilities by sigmoid).
        curves: also return the deletion and insertion curves, ``deletion_curve`` and
            ``insertion_curve``, ``(N, steps + 1)``.

    Returns:
        Per method, per score (``deletion``, ``insertion``, ``drop``, ``increase``), ``(N,)``.

    """
    x = inputs.detach()
    n, _, height, width = x.shape
    pixels = height * width
    wanted = set(metrics)
    kinds = [kind for kind in ("deletion", "insertion") if kind in wanted]
    blur = blurred(x.float()).to(x.dtype) if "insertion" in wanted else x
    counts = torch.round(torch.arange(steps + 1, device=x.device) * (pixels / steps)).long()
    results: dict[str, dict[str, torch.Tensor]] = {}
    passes = faithfulness_passes(n, len(saliencies), metrics, steps)
    with frozen_eval(model), torch.no_grad(), planned_passes(passes, "faithfulness"):
        original = _probabilities(
            model, x, targets, chunk_size, autocast_dtype, binary, "faithfulness"
        )
        for method, saliency in saliencies.items():
            scores: dict[str, torch.Tensor] = {}
            position = pixel_ranks(saliency)
            for kind in kinds:
                jobs = [(i, k) for i in range(n) for k in range(steps + 1)]
                probs = torch.empty(len(jobs), device=x.device)
                plan_passes(len(jobs), kind)
                for start in range(0, len(jobs), chunk_size):
                    check_stop()
                    part = jobs[start : start + chunk_size]
                    who = torch.tensor([i for i, _ in part], device=x.device)
                    count = counts[torch.tensor([k for _, k in part], device=x.device)]
                    mask = (position[who] < count[:, None]).view(-1, 1, height, width)
                    mask = mask.to(x.dtype)
                    if kind == "deletion":
                        images = x[who] * (1 - mask)
                    else:
                        images = blur[who] * (1 - mask) + x[who] * mask
                    probs[start : start + len(part)] = _forward_probs(
                        model, images, targets[who], autocast_dtype, binary
                    )
                    passes_done(len(part))
                curve = probs.view(n, steps + 1)
                scores[kind] = (curve.sum(dim=1) - (curve[:, 0] + curve[:, -1]) / 2) / steps
                if curves:
                    scores[f"{kind}_curve"] = curve
            if "drop" in wanted:
                unit = _unit(saliency.float()).to(x.dtype)[:, None]
                masked = _probabilities(
                    model, x * unit, targets, chunk_size, autocast_dtype, binary, "drop"
                )
                scores["drop"] = (original - masked).clamp(min=0) / original.clamp(min=1e-12)
                scores["increase"] = (masked > original).float()
            results[method] = scores
    return results


def _forward_probs(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    autocast_dtype: torch.dtype | None,
    binary: bool,
) -> torch.Tensor:
    check_stop()
    with autocast(images.device, autocast_dtype):
        logits = model(images).float()
    return class_probabilities(logits, binary).gather(1, targets[:, None])[:, 0]


def _probabilities(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    autocast_dtype: torch.dtype | None,
    binary: bool,
    label: str,
) -> torch.Tensor:
    plan_passes(images.shape[0], label)
    parts = []
    for s in range(0, images.shape[0], chunk_size):
        parts.append(
            _forward_probs(
                model, images[s : s + chunk_size], targets[s : s + chunk_size], autocast_dtype,
                binary,
            )
        )  # fmt: skip
        passes_done(len(parts[-1]))
    return torch.cat(parts)


class FaithfulnessAverages:
    """Per-method means of the records' faithfulness scores, for ``run.json``."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, float]] = {}
        self.counts: dict[str, int] = {}

    def add(self, record: dict[str, Any]) -> None:
        """Count one record's scores (records without scores are ignored)."""
        for method, scores in (record.get("faithfulness") or {}).items():
            if not isinstance(scores, dict):  # "steps"
                continue
            sums = self.sums.setdefault(method, {})
            for name, value in scores.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            self.counts[method] = self.counts.get(method, 0) + 1

    def result(self) -> dict[str, dict[str, float | int]]:
        """Per method: the mean of each score and the number of images."""
        return {
            method: {
                **{name: round(total / self.counts[method], 6) for name, total in sums.items()},
                "images": self.counts[method],
            }
            for method, sums in self.sums.items()
        }
