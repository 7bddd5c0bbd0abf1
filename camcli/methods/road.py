"""ROAD (Rong et al. 2022): remove pixels by a map's order and fill them in, then ask again.

Deletion sets removed pixels to one colour, so the model may react to the shape of the hole
rather than to what was removed. ROAD fills each removed pixel with the noisy linear
imputation of Rong et al.: every removed pixel takes the weighted mean of its eight
neighbours (weight 1/6 across an edge, 1/12 across a corner; neighbours outside the image
do not count), a linear system over all removed pixels that depends only on the kept ones,
plus Gaussian noise (standard deviation 0.01 in the model's input space). For each fraction
(10 % ... 90 % by default) the most relevant pixels (MoRF) or the least relevant ones (LeRF)
are removed and the target's probability is measured.

The system is solved on the model's device for the whole chunk at once, by conjugate
gradients with the diagonal as preconditioner: the matrix is symmetric and positive definite
whenever a pixel is kept, and each product with it is one 3 x 3 convolution.
Per image the scores are the mean probability over the fractions: ``road_morf`` (lower is
better: removing what the map calls relevant should hurt) and ``road_lerf`` (higher is
better).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camcli.methods.forward import autocast, class_probabilities
from camcli.methods.metrics import pixel_ranks
from camcli.methods.stopping import check_stop, passes_done, plan_passes, planned_passes
from camcli.models.hooks import frozen_eval

__all__ = ["ROAD_FRACTIONS", "ROAD_NOISE", "impute", "road", "road_passes"]

ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROAD_NOISE = 0.01


def _neighbours(values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each pixel's eight neighbours (zero outside), ``(B, 1, H, W)``.

    Shifted slices, not a convolution: a one-channel 3 x 3 convolution is far slower on the
    CPU than eight additions.
    """
    padded = F.pad(values, (1, 1, 1, 1))
    h, w = values.shape[-2:]

    def at(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    edges = at(-1, 0) + at(1, 0) + at(0, -1) + at(0, 1)
    corners = at(-1, -1) + at(-1, 1) + at(1, -1) + at(1, 1)
    return edges * (1 / 6) + corners * (1 / 12)


def impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    tolerance: float = 1e-4,
    max_iterations: int = 2000,
) -> torch.Tensor:
    """Linear imputation (no noise) of the removed pixels of each image.

    At the default tolerance the imputed values are within about 0.005 of the exact
    solution on 224 x 224 photos in normalised units (half the noise ROAD adds), measured
    against a solve to 1e-7.

    Args:
        images: ``(B, C, H, W)``.
        removed: ``(B, H, W)`` bool, the pixels to fill in.
        tolerance: stop when the residual is below this share of the right-hand side
            (per image and channel).
        max_iterations: at most this many conjugate-gradient steps.

    Returns:
        The images with the removed pixels replaced, same shape and type.

    """
    b, c, h, w = images.shape
    x = images.detach().float().reshape(b * c, 1, h, w)
    unknown = removed[:, None].expand(b, c, h, w).reshape(b * c, 1, h, w).to(x.dtype)
    filled = _fill(x, unknown, tolerance, max_iterations)
    return filled.reshape(b, c, h, w).to(images.dtype)


COARSEST = 16  # sides below twice this are solved without a coarser start


def _fill(
    x: torch.Tensor, unknown: torch.Tensor, tolerance: float, max_iterations: int
) -> torch.Tensor:
    """Solve the imputation system, starting from the solution of a half-size one.

    Conjugate gradients fix the fine detail quickly but the smooth part of the error
    slowly; the half-size problem (each 2 x 2 block: the mean of its kept pixels, removed
    when none is kept) solved first and upsampled gives that smooth part, so the full-size
    solve needs far fewer steps. The start changes the steps, not the solution.
    """
    known = 1 - unknown
    h, w = x.shape[-2:]
    start = None
    if min(h, w) >= 2 * COARSEST:
        kept = F.avg_pool2d(known, 2, ceil_mode=True)
        values = F.avg_pool2d(known * x, 2, ceil_mode=True) / kept.clamp(min=1e-12)
        coarse_unknown = (kept <= 0).to(x.dtype)
        coarse = _fill(values * (1 - coarse_unknown), coarse_unknown, 1e-3, max_iterations)
        start = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return _conjugate_gradients(x, unknown, start, tolerance, max_iterations)


def _conjugate_gradients(
    x: torch.Tensor,
    unknown: torch.Tensor,
    start: torch.Tensor | None,
    tolerance: float,
    max_iterations: int,
) -> torch.Tensor:
    known = 1 - unknown
    # Each removed pixel: degree * u_i - sum_{removed j} w_ij u_j = sum_{kept j} w_ij x_j.
    degree = _neighbours(torch.ones_like(x[:1]))
    rhs = unknown * _neighbours(known * x)

    def apply(v: torch.Tensor) -> torch.Tensor:
        return unknown * (degree * v - _neighbours(unknown * v))

    solution = unknown * (start if start is not None else rhs / degree)
    residual = rhs - apply(solution)
    z = residual / degree
    direction = z.clone()
    rz = (residual * z).flatten(1).sum(1)
    # The residual is measured against the right-hand side, with a floor for images whose
    # kept pixels are near zero (mid-grey after normalisation): there a relative residual of
    # 1e-4 is below float32's reach and the solve would never stop. The floor is what a
    # right-hand side of 0.1 per boundary pixel gives (inputs are O(1) after normalisation).
    boundary = (unknown * (_neighbours(known) > 0)).flatten(1).sum(1)
    scale = torch.maximum(rhs.flatten(1).norm(dim=1), 0.1 * boundary.sqrt()).clamp(min=1e-12)
    for _ in range(max_iterations):
        check_stop()  # a solve can take seconds on a CPU: a stop request lands inside it
        # Each image and channel stops on its own, so chunking does not change results.
        active = residual.flatten(1).norm(dim=1) > tolerance * scale
        if not bool(active.any()):
            break
        product = apply(direction)
        denominator = (direction * product).flatten(1).sum(1)
        alpha = torch.where(active & (denominator > 0), rz / denominator.clamp(min=1e-30), 0.0)
        solution = solution + alpha.view(-1, 1, 1, 1) * direction
        residual = residual - alpha.view(-1, 1, 1, 1) * product
        z = residual / degree
        rz_next = (residual * z).flatten(1).sum(1)
        beta = torch.where(rz > 0, rz_next / rz.clamp(min=1e-30), 0.0)
        direction = z + beta.view(-1, 1, 1, 1) * direction
        rz = rz_next
    return known * x + unknown * solution


def road_passes(images: int, methods: int, fractions: Sequence[float] = ROAD_FRACTIONS) -> int:
    """The passes :func:`road` makes for a batch: per method, image and fraction, two.

    Example:
        >>> road_passes(2, 3, (0.1, 0.5, 0.9))
        36

    """
    return 2 * images * methods * len(fractions)


def road(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    saliencies: dict[str, torch.Tensor],
    seeds: Sequence[int],
    fractions: Sequence[float] = ROAD_FRACTIONS,
    chunk_size: int = 32,
    autocast_dtype: torch.dtype | None = None,
    binary: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """ROAD curves and scores of every method's saliency, per image.

    Args:
        model: the classifier.
        inputs: the normalised batch ``(N, 3, S, S)``.
        targets: the class per image ``(N,)``.
        saliencies: per method, the pixel saliency ``(N, S, S)``.
        seeds: per image, the seed of its imputation noise.
        fractions: shares of pixels removed.
        chunk_size: imputed images per forward pass.
        autocast_dtype: forward passes under autocast to this type.
        binary: the logits are a sigmoid classifier's ``[-z, z]``.

    Returns:
        Per method: ``road_morf`` and ``road_lerf`` ``(N,)`` (mean probability over the
        fractions) and ``road_morf_curve``, ``road_lerf_curve`` ``(N, len(fractions))``.

    """
    x = inputs.detach()
    n, _, height, width = x.shape
    pixels = height * width
    counts = [round(f * pixels) for f in fractions]
    noise = torch.stack(
        [torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    ).to(x.device, torch.float32)
    results: dict[str, dict[str, torch.Tensor]] = {}
    passes = road_passes(n, len(saliencies), fractions)
    with frozen_eval(model), torch.no_grad(), planned_passes(passes, "road_morf"):
        for method, saliency in saliencies.items():
            position = pixel_ranks(saliency)
            scores: dict[str, torch.Tensor] = {}
            for kind in ("morf", "lerf"):
                jobs = [(i, k) for i in range(n) for k in range(len(counts))]
                probs = torch.empty(len(jobs), device=x.device)
                plan_passes(len(jobs), f"road_{kind}")
                for start in range(0, len(jobs), chunk_size):
                    check_stop()
                    part = jobs[start : start + chunk_size]
                    who = torch.tensor([i for i, _ in part], device=x.device)
                    count = torch.tensor([counts[k] for _, k in part], device=x.device)
                    rank = position[who]
                    if kind == "lerf":
                        rank = pixels - 1 - rank
                    removed = (rank < count[:, None]).view(-1, height, width)
                    filled = impute(x[who].float(), removed)
                    filled = filled + ROAD_NOISE * noise[who] * removed[:, None]
                    filled = filled.to(x.dtype)
                    if x.is_contiguous(memory_format=torch.channels_last):
                        filled = filled.contiguous(memory_format=torch.channels_last)
                    with autocast(x.device, autocast_dtype):
                        logits = model(filled).float()
                    probs[start : start + len(part)] = class_probabilities(logits, binary).gather(
                        1, targets[who][:, None]
                    )[:, 0]
                    passes_done(len(part))
                curve = probs.view(n, len(counts))
                scores[f"road_{kind}"] = curve.mean(dim=1)
                scores[f"road_{kind}_curve"] = curve
            results[method] = scores
    return results
