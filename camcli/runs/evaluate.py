"""``evaluate``'s pipeline: per batch every method's map, then the scores of each map.

Per batch, on the model's device: one forward pass serves every method
(:func:`camcli.methods.batch.compute_methods`); the faithfulness curves
(:mod:`camcli.methods.metrics`) and ROAD (:mod:`camcli.methods.road`) run in chunks of
``--chunk-size`` modified images; the sanity checks recompute every map on the model
randomised stage by stage (:mod:`camcli.methods.sanity`). Maps are resampled onto each
photo on the device for the localisation scores (:mod:`camcli.methods.localisation`). The
batch loop is the shared one: resume, failures, the index and bounded writes as ``explain``.
Per image the record ``NAME.evaluate.json`` holds every score; the run's means, leaderboard
and pictures are written by :mod:`camcli.report.evaluation` from the records.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from camcli.io.annotations import AnnotationError, Annotations, fit_boxes, read_mask
from camcli.io.decode import Batch
from camcli.io.discover import ImageItem, resolved_source
from camcli.io.resume import settings_key
from camcli.io.write import artifact_path, encode_png, record_path
from camcli.methods.batch import BatchMethods, compute_methods
from camcli.methods.forward import autocast, class_probabilities, top_predictions
from camcli.methods.localisation import (
    POINTING_TOLERANCE,
    box_accuracy,
    energy_pointing_game,
    pointing_game,
    region_of,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from camcli.methods.metrics import faithfulness, pixel_order_saliency
from camcli.methods.road import ROAD_FRACTIONS, road
from camcli.methods.sanity import SANITY_STAGES, SanityStages, similarity
from camcli.models.hooks import frozen_eval
from camcli.models.loaded import LoadedModel
from camcli.pictures.render import original_grid, sample_on_original
from camcli.pictures.sheet import sanity_sheet
from camcli.runs.explain import image_seed, settings_payload
from camcli.runs.loop import run_batches
from camcli.runs.settings import Settings
from camcli.runs.targets import target_indices
from camcli.runs.work import FileJob, ImageOutput, Reporter, RunSummary

__all__ = [
    "LOCALISATION_SCORES",
    "SCORES",
    "EvaluateOptions",
    "evaluate_payload",
    "run_evaluate",
]

LOCALISATION_SCORES = (
    "pointing_game",
    "energy_pointing_game",
    "box_accuracy",
    "mass_accuracy",
    "rank_accuracy",
)
FAITHFULNESS_SCORES = ("deletion", "insertion", "drop", "road_morf", "road_lerf")
# Every score of evaluation.json, in its column order.
SCORES = LOCALISATION_SCORES + FAITHFULNESS_SCORES


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``evaluate`` measures besides the maps themselves.

    Attributes:
        metrics: faithfulness scores: ``deletion``, ``insertion``, ``drop``.
        road: also ROAD, most and least relevant first, at ``ROAD_FRACTIONS``.
        sanity: the cascading randomisation checks.
        sanity_stages: randomisation stages (the classifier, then groups of blocks).
        tolerance: the pointing game's tolerance in pixels.
        annotated: explain, per image with boxes, the annotated class the model rates
            highest (``--target annotated``); images without boxes get the run's target.

    """

    metrics: tuple[str, ...] = ("deletion", "insertion", "drop")
    road: bool = False
    sanity: bool = False
    sanity_stages: int = SANITY_STAGES
    tolerance: float = POINTING_TOLERANCE
    annotated: bool = False


def evaluate_payload(
    model: LoadedModel, settings: Settings, options: EvaluateOptions, annotations: Annotations
) -> dict[str, Any]:
    """Everything that shapes an evaluation's records; its digest decides what is redone."""
    payload = settings_payload(model, settings)
    if options.annotated:
        payload["target"] = {"mode": "annotated", "index": None}
    return {
        **payload,
        "command": "evaluate",
        "evaluate": {
            "metrics": list(options.metrics),
            "metric_steps": settings.method_options.metric_steps,
            "road": list(ROAD_FRACTIONS) if options.road else None,
            "sanity": options.sanity_stages if options.sanity else None,
            "tolerance": options.tolerance,
            "annotated": options.annotated,
            "annotations": annotations.source,
        },
    }


def run_evaluate(
    items: Sequence[ImageItem],
    model: LoadedModel,
    settings: Settings,
    options: EvaluateOptions,
    annotations: Annotations,
    reporter: Reporter,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Score every method's map on every image; write the records and the index.

    Args:
        items: the images, in output order.
        model: the loaded model.
        settings: run settings (``methods``, ``layers``, ``target``, ``method_options``).
        options: what is measured.
        annotations: the boxes and masks.
        reporter: receives records (also reused ones) and progress.
        stop: set it to end the run early and cleanly.

    Returns:
        Counts and failures.

    """
    payload = evaluate_payload(model, settings, options, annotations)
    labels = [model.classes.resolve(item.label) if item.label else None for item in items]

    def start(module: torch.nn.Module) -> _EvaluateWork:
        return _EvaluateWork(items, labels, model, module, settings, options, annotations)

    def index_entry(item: ImageItem, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "image": str(item.relative),
            "status": "ok",
            "record": record_path(settings.output_dir, item.relative, settings.kind)
            .relative_to(settings.output_dir)
            .as_posix(),
            "target": record["target"],
            "scores": record["scores"],
        }

    def still_valid(item: ImageItem, record: dict[str, Any]) -> bool:
        """A record counts only while its image's annotation is the one it was scored on."""
        annotation = record.get("annotation") or {}
        return annotation.get("digest") == annotations.digest(item.relative)

    return run_batches(
        items,
        model,
        settings,
        reporter,
        settings_key(payload),
        start,
        index_entry,
        stop,
        still_valid=still_valid,
    )


@dataclass
class _Launched:
    part: Batch
    positions: list[int]
    outputs: list[ImageOutput] = field(default_factory=list)


def _maps(result: BatchMethods, size: int) -> dict[str, torch.Tensor]:
    """Each method's map: map methods at their own resolution, pictures as saliency."""
    maps = {method: result.unit_map(method) for method in result.maps}
    for method, values in result.images.items():
        maps[method] = pixel_order_saliency(method, values, size)
    return maps


class _EvaluateWork:
    """The maps and every score of a batch; the records are made at once."""

    def __init__(
        self,
        items: Sequence[ImageItem],
        labels: list[int | None],
        model: LoadedModel,
        module: torch.nn.Module,
        settings: Settings,
        options: EvaluateOptions,
        annotations: Annotations,
    ) -> None:
        self.items = items
        self.labels = labels
        self.model = model
        self.module = module
        self.settings = settings
        self.options = options
        self.annotations = annotations
        self.stages = (
            SanityStages(module, options.sanity_stages, settings.method_options.seed)
            if options.sanity
            else None
        )
        self.dtype = torch.bfloat16 if settings.precision == "bf16" else None

    def launch(
        self, part: Batch, positions: list[int], pixels: list[torch.Tensor], inputs: torch.Tensor
    ) -> _Launched:
        settings, method_options = self.settings, self.settings.method_options
        labels = [self.labels[p] for p in positions]
        targets = target_indices(settings.target, labels, len(part))
        if targets is not None:
            targets = targets.to(inputs.device)
        annotated = [False] * len(part)
        if self.options.annotated:
            targets, annotated = self._annotated_targets(positions, inputs, targets)
        seeds = [image_seed(self.items[p]) for p in positions]
        size = inputs.shape[-1]
        result = compute_methods(
            self.module,
            inputs,
            settings.layers,
            settings.methods,
            targets,
            method_options,
            seeds=seeds,
            autocast_dtype=self.dtype,
        )
        chosen = result.explanation.targets
        maps = _maps(result, size)
        saliencies = {m: pixel_order_saliency(m, v, size) for m, v in maps.items()}
        scores: dict[str, dict[str, torch.Tensor]] = {m: {} for m in maps}
        if self.options.metrics:
            measured = faithfulness(
                self.module,
                inputs,
                chosen,
                saliencies,
                self.options.metrics,
                method_options.metric_steps,
                method_options.chunk_size,
                self.dtype,
                method_options.binary,
                curves=True,
            )
            for method, values in measured.items():
                scores[method].update(values)
        if self.options.road:
            measured = road(
                self.module,
                inputs,
                chosen,
                saliencies,
                seeds,
                chunk_size=method_options.chunk_size,
                autocast_dtype=self.dtype,
                binary=method_options.binary,
            )
            for method, values in measured.items():
                scores[method].update(values)
        staged: list[tuple[str, dict[str, np.ndarray]]] = []
        if self.stages is not None:
            for name, randomised in self.stages.cascade():
                again = compute_methods(
                    randomised,
                    inputs,
                    settings.layers,
                    settings.methods,
                    chosen,
                    method_options,
                    seeds=seeds,
                    autocast_dtype=self.dtype,
                )
                staged.append(
                    (
                        name,
                        {
                            m: pixel_order_saliency(m, v, size).float().cpu().numpy()
                            for m, v in _maps(again, size).items()
                        },
                    )
                )
        top = top_predictions(result.explanation.logits, settings.top_k, self.model.binary)
        probabilities = class_probabilities(result.explanation.logits.float(), self.model.binary)
        target_p = probabilities.gather(1, chosen[:, None])[:, 0].cpu().tolist()
        host_scores = {
            m: {k: v.float().cpu().numpy() for k, v in values.items()}
            for m, values in scores.items()
        }
        original = {m: v.float().cpu().numpy() for m, v in saliencies.items()} if staged else {}
        top_i, top_p = top.indices.cpu().tolist(), top.probabilities.cpu().tolist()
        chosen_list = chosen.cpu().tolist()
        launched = _Launched(part, positions)
        for j, position in enumerate(positions):
            item = self.items[position]
            height, width = part.shapes[j]
            try:
                localised, annotation = self._localise(
                    item, j, maps, int(chosen_list[j]), part.thetas[j], height, width
                )
            except AnnotationError as exc:
                launched.outputs.append(
                    ImageOutput(
                        {"image": str(item.relative), "status": "error", "error": str(exc)}, [], 0
                    )
                )
                continue
            per_method: dict[str, dict[str, Any]] = {}
            curves: dict[str, dict[str, list[float]]] = {}
            for method in maps:
                got = host_scores[method]
                entry: dict[str, Any] = dict.fromkeys(SCORES)
                entry.update(localised.get(method, {}))
                for name in ("deletion", "insertion", "drop", "road_morf", "road_lerf"):
                    if name in got:
                        entry[name] = round(float(got[name][j]), 6)
                per_method[method] = entry
                curves[method] = {
                    name: [round(float(v), 5) for v in got[f"{name}_curve"][j]]
                    for name in ("deletion", "insertion", "road_morf", "road_lerf")
                    if f"{name}_curve" in got
                }
            sanity: dict[str, list[dict[str, Any]]] = {}
            jobs: list[FileJob] = []
            files: dict[str, dict[str, str]] = {}
            held = 0  # bytes the sheet's job holds until it is written (bounds the writes)
            if staged:
                for method in maps:
                    sanity[method] = []
                    for name, stage_maps in staged:
                        rho, ssim = similarity(original[method][j], stage_maps[method][j])
                        sanity[method].append(
                            {"stage": name, "spearman": round(rho, 6), "ssim": round(ssim, 6)}
                        )
                path = artifact_path(settings.output_dir, item.relative, "sanity.png")
                columns = [("original", {m: original[m][j] for m in maps})] + [
                    (name, {m: stage_maps[m][j] for m in maps}) for name, stage_maps in staged
                ]
                photo = _photo(inputs[j], self.model)
                held = photo.nbytes + sum(a.nbytes for _, m in columns for a in m.values())
                caption = self.model.classes.name(int(chosen_list[j]))
                jobs.append(
                    (path, _sheet_png(columns, list(maps), photo, caption, settings.png_level))
                )
                files["sanity"] = {"sheet": path.name}
            record = {
                "image": str(item.relative),
                "source": resolved_source(item.path),
                "status": "ok",
                "task": "classify",
                "width": width,
                "height": height,
                "model": self.model.name,
                "weights": self.model.weights,
                "methods": list(maps),
                "layers": list(settings.layers),
                "label": _label(item, self.labels[position], self.model),
                "predictions": [
                    {
                        "rank": rank + 1,
                        "index": int(index),
                        "name": self.model.classes.name(int(index)),
                        "probability": round(float(p), 6),
                    }
                    for rank, (index, p) in enumerate(zip(top_i[j], top_p[j], strict=True))
                ],
                "target": {
                    "mode": "annotated" if annotated[j] else settings.target.mode,
                    "index": int(chosen_list[j]),
                    "name": self.model.classes.name(int(chosen_list[j])),
                    "probability": round(float(target_p[j]), 6),
                },
                "annotation": annotation,
                "scores": per_method,
                "curves": curves,
                "sanity": sanity,
                "files": files,
            }
            launched.outputs.append(ImageOutput(record, jobs, held))
        return launched

    def finish(self, launched: _Launched) -> list[ImageOutput]:
        return launched.outputs

    def _annotated_targets(
        self, positions: list[int], inputs: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[bool]]:
        """Per image with boxes, its annotated class of highest logit (one more forward)."""
        with frozen_eval(self.module), torch.no_grad(), autocast(inputs.device, self.dtype):
            logits = self.module(inputs).float()
        chosen = targets.clone() if targets is not None else logits.argmax(dim=1)
        annotated = []
        for j, position in enumerate(positions):
            objects = self.annotations.objects(self.items[position].relative)
            classes = sorted({o.index for o in objects or ()})
            if classes:
                scores = logits[j, classes]
                chosen[j] = classes[int(scores.argmax())]
            annotated.append(bool(classes))
        return chosen, annotated

    def _localise(
        self,
        item: ImageItem,
        j: int,
        maps: dict[str, torch.Tensor],
        target: int,
        theta: torch.Tensor,
        height: int,
        width: int,
    ) -> tuple[dict[str, dict[str, float | None]], dict[str, Any] | None]:
        """Localisation scores per method of image ``j``, and what was annotated."""
        listed = self.annotations.objects(item.relative)
        mask_file = self.annotations.mask_path(item.relative)
        if listed is None and mask_file is None:
            return {}, None
        fitted = fit_boxes(listed or [], width, height)
        objects = None if listed is None else fitted.objects
        boxes = [o.box for o in objects or () if o.index == target]
        mask = read_mask(mask_file, height, width) if mask_file is not None else None
        annotation: dict[str, Any] = {
            "objects": None if objects is None else len(objects),
            "target_boxes": None if objects is None else len(boxes),
            "mask": None if mask is None else int(mask.sum()),
            "digest": self.annotations.digest(item.relative),
            **fitted.notes(),
        }
        if mask is not None and not mask.any():
            mask = None  # an empty mask marks no object: nothing to localise against
        box_region = region_of(height, width, boxes, tolerance=self.options.tolerance)
        mask_region = (
            region_of(height, width, mask=mask, tolerance=self.options.tolerance)
            if mask is not None
            else None
        )
        # The pointing games read the class's boxes, or the mask when there are none.
        pointing = box_region if boxes else mask_region
        if pointing is None and mask_region is None:
            return {}, annotation
        device = next(iter(maps.values())).device
        grid, seen = original_grid(theta.to(device), height, width)
        grid, seen = grid.to(device), seen.to(device)

        def on_device(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(device)

        near = inside = mask_t = None
        if pointing is not None:
            near, inside = on_device(pointing.near), on_device(pointing.inside)
        if mask_region is not None:
            mask_t = on_device(mask_region.inside)
        scores: dict[str, dict[str, float | None]] = {}
        for method, values in maps.items():
            on_image = sample_on_original(values[j : j + 1].float(), grid, seen)[0]
            entry: dict[str, float | None] = {}
            if near is not None and inside is not None:
                entry["pointing_game"] = pointing_game(on_image, near)
                energy = energy_pointing_game(on_image, inside)
                entry["energy_pointing_game"] = None if energy is None else round(energy, 6)
            if boxes:
                correct, iou = box_accuracy(on_image.cpu().numpy(), boxes)
                entry["box_accuracy"] = correct
                entry["box_iou"] = round(iou, 6)
            if mask_t is not None:
                mass = relevance_mass_accuracy(on_image, mask_t)
                rank = relevance_rank_accuracy(on_image, mask_t)
                entry["mass_accuracy"] = None if mass is None else round(mass, 6)
                entry["rank_accuracy"] = None if rank is None else round(rank, 6)
            scores[method] = entry
        return scores, annotation


def _label(item: ImageItem, index: int | None, model: LoadedModel) -> dict[str, Any] | None:
    if item.label is None:
        return None
    return {
        "folder": item.label,
        "index": index,
        "name": model.classes.name(index) if index is not None else None,
    }


def _photo(image: torch.Tensor, model: LoadedModel) -> np.ndarray:
    """The model's input as a picture ``(S, S, 3)`` uint8 (the normalisation undone)."""
    prep = model.preprocessing
    mean = torch.tensor(prep.mean, device=image.device).view(-1, 1, 1)
    std = torch.tensor(prep.std, device=image.device).view(-1, 1, 1)
    values = (image.detach().float() * std + mean).clamp(0, 1).mul(255).round().byte()
    if values.shape[0] == 1:
        values = values.expand(3, -1, -1)
    return values[:3].permute(1, 2, 0).contiguous().cpu().numpy()


def _sheet_png(
    columns: list[tuple[str, dict[str, np.ndarray]]],
    methods: list[str],
    photo: np.ndarray,
    caption: str,
    level: int | None,
) -> Callable[[], bytes]:
    return lambda: encode_png(sanity_sheet(columns, methods, photo=photo, caption=caption), level)
