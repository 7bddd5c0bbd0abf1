"""Several targets in one run: the maps of each, from one forward pass per batch.

``--target pred,label`` explains the predicted class and the labelled class of every image:
"why it said alligator" next to "where it saw the iguana". The first target is explained as
with a single target (same files, same record fields); every further target adds, per method,
its own final map's pictures named ``NAME.METHOD.SUFFIX.png`` (``.overlay.png``) or, for the
gradient pictures, ``NAME.METHOD.SUFFIX.png``, where SUFFIX is ``pred``, ``label`` or
``class-N``. The record lists them under ``files`` (roles prefixed ``SUFFIX.``) and gains
``targets``: per target its class, probability, logit and map statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from camcli.io.discover import ImageItem
from camcli.io.transfer import HostCopy
from camcli.io.write import artifact_path, encode_png
from camcli.methods.batch import (
    GRADIENT_MAPS,
    BatchMethods,
    MethodOptions,
    compute_methods,
    method_passes,
)
from camcli.methods.forward import class_probabilities, explain_targets
from camcli.methods.stopping import planned_passes
from camcli.models.classes import TargetSpec, parse_targets
from camcli.models.loaded import LoadedModel
from camcli.pictures.render import PendingRender, RenderedImage, launch_render, picture_to_unit
from camcli.runs.settings import Settings
from camcli.runs.work import FileJob

__all__ = [
    "ExtraTargets",
    "add_extra_targets",
    "collect_extra_targets",
    "compute_for_targets",
    "launch_extra_targets",
    "parse_targets",
    "target_indices",
    "target_suffix",
]


def target_suffix(spec: TargetSpec) -> str:
    """The name part of a further target's files: ``pred``, ``label`` or ``class-N``."""
    return f"class-{spec.index}" if spec.mode == "class" else spec.mode


def target_indices(
    spec: TargetSpec, labels: Sequence[int | None], count: int
) -> torch.Tensor | None:
    """The class per image of a target (``None``: the top-1, chosen in the forward pass).

    Raises:
        ValueError: for ``label`` when an image has no class folder.

    """
    if spec.mode == "pred":
        return None
    if spec.mode == "class":
        return torch.full((count,), int(spec.index or 0), dtype=torch.long)
    if any(label is None for label in labels):
        raise ValueError("--target label needs a class folder for every image")
    return torch.tensor(labels, dtype=torch.long)


def compute_for_targets(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[str],
    target_sets: Sequence[torch.Tensor | None],
    options: MethodOptions,
    seeds: Sequence[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[BatchMethods]:
    """Every method for every target of a batch, from one forward pass.

    Args:
        model: the classifier.
        inputs: the normalised batch.
        layers: target layer names.
        methods: method names.
        target_sets: per target, the class per image or ``None`` for the top-1.
        options: settings of Score-CAM and SmoothGrad (their own passes run per target).
        seeds: per-image noise seeds for SmoothGrad.
        autocast_dtype: autocast type of the forward passes.

    Returns:
        One result per target, in order.

    """
    wanted = set(methods)
    # As compute_methods decides for one target: what the maps and pictures need.
    need_gradients = bool(wanted & (set(GRADIENT_MAPS) | {"guided-gradcam"}))
    need_guided = bool(wanted & {"guided", "guided-gradcam"})
    explanations = explain_targets(
        model,
        inputs,
        list(layers),
        target_sets,
        guided=need_guided,
        layer_gradients=need_gradients,
        autocast_dtype=autocast_dtype,
    )
    # Every target's passes are planned before the first: the batch's total never grows.
    plans = [method_passes(e, inputs.shape[0], layers, methods, options) for e in explanations]
    first = next(iter(plans[0]), "") if plans else ""
    with planned_passes(sum(sum(plan.values()) for plan in plans), first):
        return [
            compute_methods(
                model, inputs, layers, methods, None, options, seeds, autocast_dtype, explanation
            )
            for explanation in explanations
        ]


@dataclass
class ExtraTargets:
    """The further targets of a launched batch: their pictures and numbers on the way."""

    specs: tuple[TargetSpec, ...]
    renders: list[PendingRender]
    numbers: list[HostCopy]
    methods: list[list[str]]  # map methods per target, in the order of their maxima
    layer: str | None  # the only layer, or None when maps are fused over several


def launch_extra_targets(
    results: Sequence[BatchMethods],
    specs: tuple[TargetSpec, ...],
    pixels: list[torch.Tensor],
    thetas: torch.Tensor,
    lut: torch.Tensor,
    settings: Settings,
    binary: bool = False,
) -> ExtraTargets:
    """Queue the rendering and the numbers of the further targets (``results[1:]``).

    ``binary``: the model is a single-logit (sigmoid) classifier shown as two classes.
    """
    renders, numbers, methods = [], [], []
    layers = settings.layers
    layer = layers[0] if len(layers) == 1 else None
    for result in results[1:]:
        maps = {method: result.picture_map(method) for method in result.maps}
        pictures = {method: picture_to_unit(method, g) for method, g in result.images.items()}
        renders.append(launch_render(maps, pictures, pixels, thetas, lut, settings.alpha))
        logits = result.explanation.logits.float()
        targets = result.explanation.targets
        tensors = [
            targets,
            class_probabilities(logits, binary).gather(1, targets[:, None])[:, 0],
            logits.gather(1, targets[:, None])[:, 0],
        ]
        if layer is not None:
            tensors += [
                _single_map(result, m, layer).flatten(1).amax(dim=1).float() for m in result.maps
            ]
        numbers.append(HostCopy(tensors))
        methods.append(list(result.maps))
    return ExtraTargets(specs, renders, numbers, methods, layer)


def _single_map(result: BatchMethods, method: str, layer: str) -> torch.Tensor:
    """The method's map at ``layer``, or its only map (RISE's has no layer: ``input``)."""
    per_layer = result.maps[method]
    return per_layer[layer] if layer in per_layer else next(iter(per_layer.values()))


@dataclass
class _Landed:
    rendered: list[RenderedImage]
    peaks: dict[str, list[tuple[int, int]]]
    arrays: list[np.ndarray]


def collect_extra_targets(extra: ExtraTargets) -> list[Any]:
    """Wait for the further targets' pictures and numbers."""
    landed = []
    for render, numbers in zip(extra.renders, extra.numbers, strict=True):
        rendered, peaks = render.collect()
        landed.append(_Landed(rendered, peaks, numbers.wait()))
    return landed


def add_extra_targets(
    record: dict[str, Any],
    jobs: list[FileJob],
    item: ImageItem,
    j: int,
    extra: ExtraTargets,
    landed: list[Any],
    model: LoadedModel,
    settings: Settings,
) -> int:
    """Add the further targets' files to ``jobs`` and ``record["files"]``, and ``targets``.

    ``record["targets"]`` lists every target, the first one as in ``record["target"]`` with
    the maps of ``record["maps"]``.

    Returns:
        Bytes of pictures added (for the bound on writes in flight).

    """
    files: dict[str, dict[str, str]] = record["files"]
    level = settings.png_level
    out, rel = settings.output_dir, item.relative
    size = 0
    entries = [{**record["target"], "suffix": None, "maps": record["maps"]}]

    def add(method: str, role: str, suffix: str, picture: np.ndarray) -> None:
        path = artifact_path(out, rel, suffix)
        jobs.append((path, lambda: encode_png(picture, level)))
        files.setdefault(method, {})[role] = path.name

    for spec, methods, here in zip(extra.specs, extra.methods, landed, strict=True):
        name = target_suffix(spec)
        rendered: RenderedImage = here.rendered[j]
        for method in rendered.heatmaps:
            add(method, f"{name}.heatmap", f"{method}.{name}.png", rendered.heatmaps[method])
            add(
                method, f"{name}.overlay", f"{method}.{name}.overlay.png", rendered.overlays[method]
            )
        for method, picture in rendered.pictures.items():
            add(method, f"{name}.image", f"{method}.{name}.png", picture)
        size += sum(
            a.nbytes
            for kind in (rendered.heatmaps, rendered.overlays, rendered.pictures)
            for a in kind.values()
        )
        index = int(here.arrays[0][j])
        maps: dict[str, Any] = {}
        for m, method in enumerate(methods):
            x, y = here.peaks[method][j]
            entry: dict[str, Any] = {
                "layer": extra.layer or "fused",
                "peak": {"x": int(x), "y": int(y)},
            }
            if extra.layer is not None:
                entry["max"] = float(here.arrays[3 + m][j])
            maps[method] = entry
        entries.append(
            {
                "mode": spec.mode,
                "index": index,
                "name": model.classes.name(index),
                "probability": round(float(here.arrays[1][j]), 6),
                "logit": round(float(here.arrays[2][j]), 4),
                "suffix": name,
                "maps": maps,
            }
        )
    record["targets"] = entries
    return size
