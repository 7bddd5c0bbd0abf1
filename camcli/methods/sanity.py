"""Sanity checks for saliency maps (Adebayo et al. 2018): cascading model randomisation.

A map that explains the model must change when the model's learned parameters are
destroyed. The parameters are re-initialised from the top of the model down, in a handful of
stages (the classifier first, then groups of blocks), each stage keeping the earlier ones
randomised, and every map is recomputed at each stage for the same class. The similarity of
each stage's map to the original one is the Spearman rank correlation of their absolute
values and the structural similarity (SSIM) of the absolute maps scaled to [0, 1]; the
paper finds gradients and Grad-CAM decorrelate while guided backprop and guided Grad-CAM
barely change.

The model's *units* are its modules in the order it declares them, containers
(``nn.Sequential``, ``nn.ModuleList``) opened into their children: for torchvision's ResNet
``conv1, bn1, layer1.0, ..., layer4.1, fc``; for timm's EfficientNet ``conv_stem, bn1,
blocks.0.0, ..., conv_head, bn2, classifier``. The last unit is the first stage; the rest
are split, from the top, into groups of about equal size. A module is re-initialised with
its own ``reset_parameters()`` (PyTorch's initialisation, as Quantus does; batch norm
returns to identity statistics); a parameter of a module without one is drawn from a normal
distribution with its original standard deviation. The draws come from a seeded generator on
the CPU, so every run and every device randomise alike.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["SANITY_STAGES", "SanityStages", "similarity", "stage_units"]

SANITY_STAGES = 5


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def stage_units(module: nn.Module, prefix: str = "") -> list[str]:
    """The model's units (see the module's docstring), in declaration order."""
    units: list[str] = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if not _has_parameters(child):
            continue
        holders = [c for c in child.children() if _has_parameters(c)]
        if isinstance(child, nn.Sequential | nn.ModuleList) and len(holders) >= 2:
            units.extend(stage_units(child, full + "."))
        else:
            units.append(full)
    own = [n for n, _ in module.named_parameters(recurse=False)]
    if own and not prefix:
        units.insert(0, "")  # parameters of the model itself (a class token, say): first
    return units


def _groups(units: list[str], stages: int) -> list[list[str]]:
    """Top-down groups: the last unit alone, the others split into ``stages - 1`` runs."""
    if not units:
        return []
    top, rest = units[-1], units[:-1][::-1]
    count = max(0, min(stages - 1, len(rest)))
    groups = [[top]]
    for g in range(count):
        start, end = (g * len(rest)) // count, ((g + 1) * len(rest)) // count
        groups.append(rest[start:end])
    return groups


@dataclass(frozen=True)
class _Stage:
    name: str
    values: dict[str, torch.Tensor]  # the randomised parameters and buffers of this group


class SanityStages:
    """A copy of the model whose parameters can be randomised stage by stage.

    The copy is made once per run; :meth:`cascade` yields it at each stage, randomising
    one more group each time, and restores every original value at the end.
    """

    def __init__(self, module: nn.Module, stages: int = SANITY_STAGES, seed: int = 0) -> None:
        self.module = copy.deepcopy(module)
        device = next(module.parameters()).device
        cpu = copy.deepcopy(module).to("cpu")
        states = dict(cpu.state_dict(keep_vars=True))
        groups = _groups(stage_units(cpu), stages)
        self.stages: list[_Stage] = []
        generator_seed = seed
        for group in groups:
            names: list[str] = []
            for unit in group:
                owner = cpu.get_submodule(unit) if unit else cpu
                generator_seed += 1
                _randomise(owner, generator_seed, recurse=bool(unit))
                prefix = f"{unit}." if unit else ""
                names.extend(
                    n
                    for n in states
                    if n.startswith(prefix) and (unit or "." not in n[len(prefix) :])
                )
            values = {n: states[n].detach().clone().to(device) for n in names}
            self.stages.append(_Stage(group[-1] or "parameters", values))
        self.original = {
            n: t.detach().clone() for n, t in self.module.state_dict(keep_vars=True).items()
        }

    @property
    def names(self) -> list[str]:
        """Each stage's name: the lowest unit it randomises (all above it are random too)."""
        return [stage.name for stage in self.stages]

    def cascade(self) -> Iterator[tuple[str, nn.Module]]:
        """Yield ``(stage name, model)`` with the stages randomised cumulatively, top down."""
        state = self.module.state_dict(keep_vars=True)
        try:
            with torch.no_grad():
                for stage in self.stages:
                    for name, value in stage.values.items():
                        state[name].copy_(value)
                    yield stage.name, self.module
        finally:
            with torch.no_grad():
                for name, value in self.original.items():
                    state[name].copy_(value)


def _randomise(module: nn.Module, seed: int, recurse: bool) -> None:
    """Re-initialise a module's parameters (and its submodules' when ``recurse``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        covered: set[int] = set()
        for sub in module.modules() if recurse else ():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in sub.parameters(recurse=False))
        with torch.no_grad():
            owned = module.parameters() if recurse else module.parameters(recurse=False)
            for parameter in owned:
                if id(parameter) in covered:
                    continue
                std = float(parameter.float().std()) if parameter.numel() > 1 else 1.0
                parameter.normal_(0.0, std if std > 0 else 1.0)


RANK_RESOLUTION = 1e-5
"""Magnitudes closer than this share of a map's largest one rank as ties in :func:`similarity`.

The batch size, the memory layout and the CPU's kernels change a map by float rounding (about
1e-7 of its range), and an upsampled Grad-CAM map is full of values that are equal but for that
rounding: ranked as they come, such near-ties alone moved a Spearman correlation by 0.015
between a run of batch 1 and one of batch 3 (the test of that is in ``tests/test_evaluate.py``).
"""


def rank_levels(magnitudes: np.ndarray) -> np.ndarray:
    """A map's magnitudes on the grid that :func:`similarity` ranks them on.

    Values are scaled by the map's largest and rounded to :data:`RANK_RESOLUTION`: a monotone
    map, so a ranking changes only where values were closer than the resolution (now ties).
    Values equal but for rounding fall on one level unless they straddle a grid line, which
    noise far under the resolution makes rare.

    Args:
        magnitudes: a non-negative map (any shape).

    """
    top = float(magnitudes.max()) if magnitudes.size else 0.0
    if top <= 0:
        return magnitudes
    return np.round(magnitudes / (top * RANK_RESOLUTION))


def similarity(original: np.ndarray, randomised: np.ndarray) -> tuple[float, float]:
    """Spearman rank correlation of the absolute maps, and SSIM of them scaled to [0, 1].

    A constant map has no ranking: its correlation counts as 0. Magnitudes closer than
    :data:`RANK_RESOLUTION` of a map's largest rank as ties (float rounding decides nothing).

    Args:
        original: ``(H, W)`` map of the trained model.
        randomised: ``(H, W)`` map of the randomised one.

    """
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a = np.abs(np.asarray(original, dtype=np.float64))
    b = np.abs(np.asarray(randomised, dtype=np.float64))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        rho = 0.0
    else:
        rho = float(spearmanr(rank_levels(a).ravel(), rank_levels(b).ravel()).statistic)
    a_unit = a / a.max() if a.max() > 0 else a
    b_unit = b / b.max() if b.max() > 0 else b
    ssim = float(structural_similarity(a_unit, b_unit, data_range=1.0))
    return rho, ssim
