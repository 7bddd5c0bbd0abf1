"""Integrated Gradients (Sundararajan et al. 2017), batched over images and path steps.

``IG(x) = (x - b) * mean_k grad f(b + a_k (x - b))`` with midpoint steps
``a_k = (k + 1/2) / m``, ``k = 0 .. m-1``: the Riemann sum of the path integral from the
baseline ``b`` to the image. Completeness says the attributions sum to ``f(x) - f(b)``
(logits of the target). :func:`adaptive_integrated_gradients` triples the steps of the
images whose error is above a tolerance, reusing every gradient already computed; the record
reports both sides, the steps used and the error reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from camcli.methods.forward import autocast
from camcli.methods.metrics import blurred
from camcli.methods.names import IG_BASELINES, IG_MAX_PASSES, IG_RULES
from camcli.methods.stopping import check_stop, passes_done, plan_passes, planned_passes
from camcli.models.hooks import frozen_eval

__all__ = [
    "IntegratedGradients",
    "adaptive_integrated_gradients",
    "ig_baseline",
    "integrated_gradients",
    "most_passes",
]


def ig_baseline(inputs: torch.Tensor, kind: str, black: Sequence[float] | None) -> torch.Tensor:
    """The baseline of each image: ``black`` or ``blur`` (a heavy blur of the image).

    Args:
        inputs: the normalised batch ``(N, 3, S, S)``.
        kind: ``black`` or ``blur``.
        black: the normalised value of a black pixel per channel (``-mean / std``);
            ``None`` takes 0.

    Raises:
        ValueError: for another kind.

    """
    if kind == "black":
        if black is None:
            return torch.zeros_like(inputs)
        value = torch.tensor(list(black), device=inputs.device, dtype=inputs.dtype)
        return value.view(1, -1, 1, 1).expand_as(inputs).clone()
    if kind == "blur":
        return blurred(inputs)
    raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(IG_BASELINES)}")


def integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    chunk_size: int,
    autocast_dtype: torch.dtype | None = None,
    rule: str = "midpoint",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients of each image's target logit at a fixed number of steps.

    The ``N * steps`` path points are processed ``chunk_size`` per forward + backward pass,
    points of several images together. The logits at the image and at the baseline come from
    one more forward pass per chunk of ``chunk_size`` images.

    Args:
        model: the classifier.
        inputs: the normalised batch ``(N, 3, S, S)``.
        baselines: one baseline per image, same shape.
        targets: the class per image ``(N,)``.
        steps: path steps ``m``.
        chunk_size: path points per pass.
        autocast_dtype: forward passes under autocast to this type.
        rule: ``midpoint`` or ``gausslegendre`` (see :data:`IG_RULES`).

    Returns:
        ``(attributions (N, 3, S, S) float32, logit differences f(x) - f(b) (N,))``.

    """
    result = adaptive_integrated_gradients(
        model,
        inputs,
        baselines,
        targets,
        steps,
        chunk_size,
        autocast_dtype,
        max_steps=steps,
        rule=rule,
    )
    return result.attributions, result.differences


@dataclass
class IntegratedGradients:
    """Attributions and how close they came to completeness, per image.

    Attributes:
        attributions: ``(N, C, S, S)`` float32.
        differences: ``f(x) - f(b)`` of the target logit, ``(N,)``.
        steps: path points of each image's last level, ``(N,)`` long.
        errors: ``|sum of attributions - difference| / |difference|``, ``(N,)``.
        passes: path points computed for each image over all levels (one forward +
            backward pass each), ``(N,)`` long.

    """

    attributions: torch.Tensor
    differences: torch.Tensor
    steps: torch.Tensor
    errors: torch.Tensor
    passes: torch.Tensor


def most_passes(steps: int, max_steps: int, rule: str = "gausslegendre") -> int:
    """The most passes one image takes in :func:`adaptive_integrated_gradients`.

    Its levels until the next one would pass ``max_steps``: at 32 steps and 128 most, 32 +
    96 Gauss-Legendre nodes (128), or midpoints 32 + 64 (96).

    Example:
        >>> most_passes(32, 1280), most_passes(32, 128), most_passes(32, 128, "midpoint")
        (1280, 128, 96)

    """
    passes = reached = steps
    while True:
        extra = 2 * reached if rule == "midpoint" else 3 * reached
        if passes + extra > max_steps:
            return passes
        passes += extra
        reached = passes if rule == "midpoint" else extra


def adaptive_integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    chunk_size: int,
    autocast_dtype: torch.dtype | None = None,
    tolerance: float = 0.05,
    max_steps: int = IG_MAX_PASSES,
    rule: str = "gausslegendre",
) -> IntegratedGradients:
    """Integrated Gradients with as many path points per image as completeness needs.

    Every image starts at ``steps`` points. While an image's completeness error is above
    ``tolerance`` and the next level's passes fit in ``max_steps`` with the passes already
    made, its points are tripled; the images of a batch that need new points share the
    passes. No image takes more than ``max_steps`` passes (at least ``steps``).

    * ``midpoint``: the midpoints of ``m`` equal steps (captum's ``riemann_middle``). The
      midpoints of ``3 m`` steps are the ``m`` already computed plus ``2 m`` new ones (at
      ``(k + 1/6) / m`` and ``(k + 5/6) / m``): every gradient is kept.
    * ``gausslegendre`` (captum's default): ``m`` Gauss-Legendre nodes on [0, 1] with their
      weights. Nodes of ``3 m`` points are new ones (they do not nest), but on the sample
      photos 32 nodes reached the error that 288 midpoints did (``benchmarks/ig_steps.py``).

    Args:
        model: the classifier.
        inputs: the normalised batch ``(N, 3, S, S)``.
        baselines: one baseline per image, same shape.
        targets: the class per image ``(N,)``.
        steps: path points every image starts with.
        chunk_size: path points per pass.
        autocast_dtype: forward passes under autocast to this type.
        tolerance: completeness error at which an image stops refining.
        max_steps: most passes per image, over all its levels.
        rule: ``midpoint`` or ``gausslegendre``.

    Returns:
        The attributions, the logit differences, the points used (the last level's; the
        passes an image took are the sum of its levels with Gauss-Legendre) and the errors.

    Raises:
        ValueError: for another rule.

    """
    if rule not in IG_RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {', '.join(IG_RULES)}")
    # Every level's passes are planned before the first; those not needed are taken back.
    with planned_passes(inputs.shape[0] * most_passes(steps, max_steps, rule), "ig"):
        return _adaptive(
            model, inputs, baselines, targets, steps, chunk_size, autocast_dtype, tolerance,
            max_steps, rule,
        )  # fmt: skip


def _adaptive(
    model: nn.Module,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    chunk_size: int,
    autocast_dtype: torch.dtype | None,
    tolerance: float,
    max_steps: int,
    rule: str,
) -> IntegratedGradients:
    x = inputs.detach().float()
    b = baselines.detach().float()
    n = x.shape[0]
    delta = x - b
    differences = _logit_differences(model, inputs, x, b, targets, chunk_size, autocast_dtype)
    sums = torch.zeros_like(x)  # weighted gradient sums of each image's current level
    used = torch.zeros(n, dtype=torch.long, device=x.device)
    passes = torch.zeros(n, dtype=torch.long, device=x.device)
    wanted = list(range(n))
    level = steps
    while True:
        if rule == "midpoint":
            current = int(used[wanted[0]])
            if current == 0:
                alphas = (torch.arange(level, dtype=torch.float64) + 0.5) / level
            else:
                k = torch.arange(current, dtype=torch.float64)
                alphas = torch.cat([(k + 1 / 6) / current, (k + 5 / 6) / current])
            weights = torch.full_like(alphas, 1.0)
        else:
            nodes, gl_weights = np.polynomial.legendre.leggauss(level)
            alphas = torch.from_numpy((nodes + 1) / 2)
            weights = torch.from_numpy(gl_weights / 2)
            sums[wanted] = 0.0  # a fresh level: its nodes replace the coarser ones
            used[wanted] = 0
        owners = torch.tensor(wanted, device=x.device).repeat_interleave(len(alphas))
        fractions = alphas.float().to(x.device).repeat(len(wanted))
        point_weights = weights.float().to(x.device).repeat(len(wanted))
        sums += _gradient_sums(
            model,
            inputs,
            b,
            delta,
            targets,
            owners,
            fractions,
            chunk_size,
            autocast_dtype,
            point_weights,
        )
        used[wanted] += len(alphas)
        passes[wanted] += len(alphas)
        scale = used.view(-1, 1, 1, 1).float() if rule == "midpoint" else 1.0
        attributions = delta * sums / scale
        totals = attributions.flatten(1).sum(dim=1)
        errors = (totals - differences).abs() / differences.abs().clamp(min=1e-12)
        reached = int(used[wanted[0]])
        wanted = [i for i in wanted if float(errors[i]) > tolerance]
        # The next level's cost: 2 m new midpoints (they nest), or 3 m fresh nodes.
        extra = 2 * reached if rule == "midpoint" else 3 * reached
        if not wanted or int(passes[wanted].max()) + extra > max_steps:
            return IntegratedGradients(attributions, differences, used, errors, passes)
        level = 3 * reached


def _gradient_sums(
    model: nn.Module,
    inputs: torch.Tensor,
    b: torch.Tensor,
    delta: torch.Tensor,
    targets: torch.Tensor,
    owners: torch.Tensor,
    fractions: torch.Tensor,
    chunk_size: int,
    autocast_dtype: torch.dtype | None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum per image of the target's input gradients at ``b + a delta``, ``chunk_size`` a pass.

    ``weights`` (one per point) weight the gradients (quadrature weights).
    """
    total = torch.zeros_like(b)
    count = len(owners)
    plan_passes(count, "ig")  # a level of adaptive IG takes its points from the planned ones
    with frozen_eval(model), torch.enable_grad():
        for start in range(0, count, chunk_size):
            check_stop()
            part = slice(start, min(start + chunk_size, count))
            who = owners[part]
            a = fractions[part].view(-1, 1, 1, 1)
            points = (b[who] + a * delta[who]).to(inputs.dtype)
            if inputs.is_contiguous(memory_format=torch.channels_last):
                points = points.contiguous(memory_format=torch.channels_last)
            points.requires_grad_(True)
            with autocast(b.device, autocast_dtype):
                logits = model(points)
            score = logits.float().gather(1, targets[who][:, None]).sum()
            (grad,) = torch.autograd.grad(score, points)
            grad = grad.float()
            if weights is not None:
                grad = grad * weights[part].view(-1, 1, 1, 1)
            total.index_add_(0, who, grad)
            passes_done(part.stop - part.start)
    return total


def _logit_differences(
    model: nn.Module,
    inputs: torch.Tensor,
    x: torch.Tensor,
    b: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """``f(x) - f(b)`` of each image's target logit, images and baselines in shared passes."""
    n = x.shape[0]
    ends = torch.empty(n, device=x.device)
    step = max(1, chunk_size // 2)
    with frozen_eval(model), torch.no_grad():
        for start in range(0, n, step):
            stop = min(start + step, n)
            pair = torch.cat([x[start:stop], b[start:stop]]).to(inputs.dtype)
            if inputs.is_contiguous(memory_format=torch.channels_last):
                pair = pair.contiguous(memory_format=torch.channels_last)
            with autocast(x.device, autocast_dtype):
                logits = model(pair).float()
            k = stop - start
            chosen = targets[start:stop][:, None]
            ends[start:stop] = (
                logits[:k].gather(1, chosen)[:, 0] - logits[k:].gather(1, chosen)[:, 0]
            )
    return ends
