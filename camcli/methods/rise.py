"""RISE (Petsiuk et al. 2018): saliency from the model's response to random masks.

``N`` random binary grids of ``cells x cells`` (each cell kept with probability ``keep``)
are upsampled bilinearly to ``(cells + 1) * cell`` pixels and cropped to the input at a
random shift within one cell, which gives smooth masks whose edges fall anywhere. The map of
an image is the average of the masks weighted by the target's probability on the masked
image, divided by ``keep`` (the expected coverage of a pixel):
``map = sum_i P(target | x * M_i) M_i / (N keep)``.

The masks are made once per run from the seed and shared by every image; only the small
grids and shifts are kept, and a chunk of full-size masks is made when it is needed, so
memory is bounded by ``chunk_size`` whatever ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from camcli.methods.forward import autocast, class_probabilities
from camcli.methods.stopping import check_stop, passes_done, plan_passes
from camcli.models.hooks import frozen_eval

__all__ = ["RiseMasks", "rise"]


@dataclass(frozen=True)
class RiseMasks:
    """The random masks of a run, as low-resolution grids and shifts.

    Attributes:
        grids: kept cells, ``(N, 1, cells, cells)`` float (0 or 1).
        shifts: crop offsets in pixels ``(N, 2)`` (y, x), each in ``[0, cell)``.
        size: side of the masks (the model input).
        keep: the probability a cell is kept.

    """

    grids: torch.Tensor
    shifts: torch.Tensor
    size: int
    keep: float

    @classmethod
    def random(
        cls, count: int, size: int, seed: int, cells: int = 7, keep: float = 0.5
    ) -> RiseMasks:
        """Draw ``count`` masks for ``size`` x ``size`` inputs from ``seed`` (on the CPU).

        The same seed gives the same masks on every machine and device.
        """
        generator = torch.Generator().manual_seed(seed)
        grids = (torch.rand((count, 1, cells, cells), generator=generator) < keep).float()
        cell = -(-size // cells)  # ceil
        shifts = torch.randint(0, cell, (count, 2), generator=generator)
        return cls(grids, shifts, size, keep)

    def __len__(self) -> int:
        return int(self.grids.shape[0])

    def chunk(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """Full-size masks ``start:stop``, ``(n, 1, size, size)`` float on ``device``."""
        grids = self.grids[start:stop].to(device)
        cells = grids.shape[-1]
        cell = -(-self.size // cells)
        up = (cells + 1) * cell
        big = F.interpolate(grids, size=(up, up), mode="bilinear", align_corners=False)
        masks = torch.empty((stop - start, 1, self.size, self.size), device=device)
        for i, (dy, dx) in enumerate(self.shifts[start:stop].tolist()):
            masks[i] = big[i, :, dy : dy + self.size, dx : dx + self.size]
        return masks


def rise(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    masks: RiseMasks,
    chunk_size: int,
    autocast_dtype: torch.dtype | None = None,
    binary: bool = False,
) -> torch.Tensor:
    """RISE maps of a batch, ``(N, S, S)`` float32 (probabilities, not normalised).

    Each forward pass holds ``chunk_size`` masked images: a chunk of masks is applied to one
    image at a time (masks are made once per chunk and shared by the images of the batch).

    Args:
        model: the classifier.
        inputs: the normalised batch ``(N, 3, S, S)``; masking multiplies it (zero is the
            normalisation's mean colour).
        targets: the class per image ``(N,)``.
        masks: the run's masks (their size must be ``S``).
        chunk_size: masked images per forward pass.
        autocast_dtype: forward passes under autocast to this type.
        binary: the logits are a sigmoid classifier's ``[-z, z]`` (probabilities by sigmoid).

    Returns:
        The maps.

    Raises:
        ValueError: when the masks are not of the input's size.

    """
    x = inputs.detach()
    n, _, height, width = x.shape
    if masks.size != height or height != width:
        raise ValueError(f"RISE masks are {masks.size} px but the input is {height} x {width}")
    total = torch.zeros((n, height * width), device=x.device)
    plan_passes(n * len(masks), "rise")
    with frozen_eval(model), torch.no_grad():
        for start in range(0, len(masks), chunk_size):
            check_stop()
            stop = min(start + chunk_size, len(masks))
            chunk = masks.chunk(start, stop, x.device)
            flat = chunk.flatten(1)
            for i in range(n):
                if i:
                    check_stop()  # a chunk is one pass per image: stop between those too
                with autocast(x.device, autocast_dtype):
                    logits = model(x[i : i + 1] * chunk.to(x.dtype)).float()
                p = class_probabilities(logits, binary)[:, targets[i]]
                total[i] += p @ flat
                passes_done(stop - start)
    return (total / (len(masks) * masks.keep)).view(n, height, width)
