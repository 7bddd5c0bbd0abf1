"""Methods that run extra passes of the model: Score-CAM and SmoothGrad, chunked.

Both create many modified copies of the batch (one per channel, one per noise sample). They
never hold more than ``chunk_size`` copies at once: memory is bounded by the chunk, not by
the number of channels or images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camcli.io.transfer import to_device
from camcli.methods.forward import autocast
from camcli.methods.guided import GuidedActivations
from camcli.methods.stopping import check_stop, passes_done, plan_passes, progress_chunk
from camcli.models.hooks import frozen_eval

__all__ = ["scorecam", "smoothgrad"]


def scorecam(
    model: nn.Module,
    inputs: torch.Tensor,
    activations: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020), batched over images and channels in bounded chunks.

    Each channel of the layer, min-max normalised to [0, 1] and bilinearly upsampled to the
    input size, masks the (normalised) input; the target logit of the masked input scores the
    channel; the weights are the softmax of the scores over channels (the logit of the
    unmasked input, subtracted in the paper, is a per-image constant and cancels in the
    softmax). Map = ``ReLU(sum_k w_k A_k)``.

    Args:
        model: the classifier.
        inputs: the normalised batch ``(N, 3, S, S)``.
        activations: the layer's output for that batch ``(N, C, h, w)``.
        targets: the class per image ``(N,)``.
        chunk_size: masked images per forward pass (the memory bound).
        autocast_dtype: forward passes under autocast to this type.

    Returns:
        Unnormalised maps ``(N, h, w)``.

    """
    a = activations.detach().float()
    n, c, h, w = a.shape
    low = a.amin(dim=(2, 3), keepdim=True)
    high = a.amax(dim=(2, 3), keepdim=True)
    span = high - low
    masks = torch.where(span > 0, (a - low) / span.clamp(min=1e-12), torch.zeros_like(a))
    masks = masks.reshape(n * c, 1, h, w)  # channels-last activations are not viewable
    owner = torch.arange(n, device=a.device).repeat_interleave(c)
    scores = torch.empty(n * c, device=a.device)
    size = inputs.shape[-2:]
    x = inputs.detach()
    plan_passes(n * c, "scorecam")
    with frozen_eval(model), torch.no_grad():
        for start in range(0, n * c, chunk_size):
            check_stop()
            part = slice(start, min(start + chunk_size, n * c))
            upsampled = F.interpolate(masks[part], size=size, mode="bilinear", align_corners=False)
            masked = x[owner[part]] * upsampled.to(x.dtype)
            with autocast(x.device, autocast_dtype):
                logits = model(masked).float()
            scores[part] = logits.gather(1, targets[owner[part]][:, None])[:, 0]
            passes_done(part.stop - part.start)
    weights = scores.view(n, c).softmax(dim=1)
    return (weights[:, :, None, None] * a).sum(dim=1).clamp(min=0)


def smoothgrad(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: Sequence[int],
    samples: int,
    noise: float,
    guided: bool,
    chunk_size: int,
    autocast_dtype: torch.dtype | None = None,
    calls: dict[str, dict[str, int]] | None = None,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): input gradients averaged over noisy copies.

    Each image gets ``samples`` copies with Gaussian noise of standard deviation
    ``noise * (max - min)`` of that image; the noise comes from a generator seeded per image
    (``seeds``), so an image's result does not depend on its batch. Copies of all images are
    processed together, ``chunk_size`` per forward + backward pass (fewer when all copies
    fit in a few chunks: :func:`~camcli.methods.stopping.progress_chunk`, so that the passes
    are counted as they finish).

    Args:
        model: the classifier.
        inputs: the normalised batch ``(N, 3, S, S)``.
        targets: the class per image ``(N,)``.
        seeds: one seed per image.
        samples: noisy copies per image.
        noise: noise level relative to each image's value range.
        guided: average guided-backprop gradients instead of plain gradients.
        chunk_size: copies per pass.
        autocast_dtype: forward passes under autocast to this type.
        calls: if given, receives the activation calls of one guided forward pass
            (``guided`` and ``unchanged`` counts per name).

    Returns:
        Averaged gradients ``(N, 3, S, S)``.

    """
    x = inputs.detach()
    total = torch.zeros_like(x, dtype=torch.float32)
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    pending: list[tuple[torch.Tensor, int]] = []

    def flush() -> None:
        check_stop()
        batch = torch.stack([copy for copy, _ in pending])
        if x.is_contiguous(memory_format=torch.channels_last):
            batch = batch.contiguous(memory_format=torch.channels_last)  # stack made it NCHW
        batch.requires_grad_(True)
        owners = to_device(torch.tensor([i for _, i in pending]), x.device)
        mode = GuidedActivations()
        with frozen_eval(model), torch.enable_grad():
            with mode if guided else contextlib.nullcontext(), autocast(x.device, autocast_dtype):
                logits = model(batch)
            mode.rule.guided = guided
            if guided and calls is not None and not calls:
                calls["guided"] = dict(mode.guided)  # per forward pass, like explain_batch's
                calls["unchanged"] = dict(mode.unchanged)
            score = logits.gather(1, targets[owners][:, None]).sum()
            (grad,) = torch.autograd.grad(score, batch)
        total.index_add_(0, owners, grad.float())
        passes_done(len(pending))
        pending.clear()

    passes = x.shape[0] * samples
    chunk = progress_chunk(chunk_size, passes)  # a few chunks at least: done moves as they end
    plan_passes(passes, "smoothgrad")
    for i in range(x.shape[0]):
        generator = torch.Generator(device=x.device).manual_seed(int(seeds[i]))
        noise_i = torch.randn((samples, *x.shape[1:]), generator=generator, device=x.device)
        copies = x[i] + noise_i.to(x.dtype) * (noise * span[i])
        for copy in copies:
            pending.append((copy, i))
            if len(pending) >= chunk:
                flush()
    if pending:
        flush()
    return total / samples
