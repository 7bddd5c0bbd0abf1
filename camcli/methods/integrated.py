"""Integrated Gradients (Sundararajan et al. 2017), batched over images and path steps.

``IG(x) = (x - b) * mean_k grad f(b + a_k (x - b))`` with midpoint steps
``a_k = (k + 1/2) / m``, ``k = 0 .. m-1``: the Riemann sum of the path integral from the
baseline ``b`` to the image. Completeness says the attributions sum to ``f(x) - f(b)``
(logits of the target); the record reports both sides so a user sees how close ``m`` steps
came.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from camcli.methods.forward import autocast
from camcli.methods.metrics import blurred
from camcli.methods.names import IG_BASELINES
from camcli.models.hooks import frozen_eval

__all__ = ["ig_baseline", "integrated_gradients"]


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients of each image's target logit.

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

    Returns:
        ``(attributions (N, 3, S, S) float32, logit differences f(x) - f(b) (N,))``.

    """
    x = inputs.detach().float()
    b = baselines.detach().float()
    n = x.shape[0]
    delta = x - b
    total = torch.zeros_like(x)
    alphas = (torch.arange(steps, device=x.device, dtype=torch.float32) + 0.5) / steps
    owners = torch.arange(n, device=x.device).repeat_interleave(steps)
    fractions = alphas.repeat(n)
    with frozen_eval(model), torch.enable_grad():
        for start in range(0, n * steps, chunk_size):
            part = slice(start, min(start + chunk_size, n * steps))
            who = owners[part]
            a = fractions[part].view(-1, 1, 1, 1)
            points = (b[who] + a * delta[who]).to(inputs.dtype)
            if inputs.is_contiguous(memory_format=torch.channels_last):
                points = points.contiguous(memory_format=torch.channels_last)
            points.requires_grad_(True)
            with autocast(x.device, autocast_dtype):
                logits = model(points)
            score = logits.float().gather(1, targets[who][:, None]).sum()
            (grad,) = torch.autograd.grad(score, points)
            total.index_add_(0, who, grad.float())
        ends = torch.empty(n, device=x.device)
        with torch.no_grad():
            for start in range(0, n, max(1, chunk_size // 2)):
                stop = min(start + max(1, chunk_size // 2), n)
                pair = torch.cat([x[start:stop], b[start:stop]]).to(inputs.dtype)
                with autocast(x.device, autocast_dtype):
                    logits = model(pair).float()
                k = stop - start
                chosen = targets[start:stop][:, None]
                ends[start:stop] = (
                    logits[:k].gather(1, chosen)[:, 0] - logits[k:].gather(1, chosen)[:, 0]
                )
    return delta * total / steps, ends
