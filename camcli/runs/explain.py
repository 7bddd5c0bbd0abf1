"""``explain``'s pipeline: decode -> forward/explain -> render -> write.

The batch loop itself (decoding ahead in loader workers, each batch launched before the
previous one's records and file jobs are made, writes in a thread pool behind with a bounded
number of images in flight) is shared by every batch command and lives in ``runloop``; here
is what explain does per batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from camcli import __version__
from camcli.io.annotations import Annotations
from camcli.io.decode import Batch
from camcli.io.discover import ImageItem, resolved_source
from camcli.io.mapgrid import encode_grid
from camcli.io.resume import settings_key
from camcli.io.transfer import HostCopy
from camcli.io.write import artifact_path, encode_npy, encode_png, record_path, write_image_files
from camcli.methods.batch import BatchMethods, compute_methods
from camcli.methods.forward import class_probabilities, normalise_maps, top_predictions
from camcli.methods.guided import GUIDED_RULE
from camcli.methods.localisation import POINTING_TOLERANCE
from camcli.methods.metrics import FaithfulnessAverages
from camcli.methods.names import LRP_COMPOSITE
from camcli.models.loaded import LoadedModel
from camcli.pictures.render import (
    PendingRender,
    jet_lut,
    launch_render,
    picture_to_unit,
    to_input_resolution,
)
from camcli.report.build import (
    thumbnail_file,
    thumbnail_jpeg,
    thumbnail_size,
    thumbnail_source,
)
from camcli.runs.loop import run_batches
from camcli.runs.settings import Settings
from camcli.runs.targets import (
    ExtraTargets,
    add_extra_targets,
    collect_extra_targets,
    compute_for_targets,
    launch_extra_targets,
    target_indices,
)
from camcli.runs.work import (
    MAX_PENDING_BYTES,
    BatchWork,
    FileJob,
    ImageOutput,
    Reporter,
    RunSummary,
    WriteFailed,
    report_passes,
)

__all__ = [
    "MAX_PENDING_BYTES",
    "FileJob",
    "Reporter",
    "RunSummary",
    "WriteFailed",
    "run_explain",
    "run_regions",
    "settings_payload",
]


def image_seed(item: ImageItem) -> int:
    """A per-image noise seed from its relative path: independent of order, shards, batches."""
    digest = hashlib.sha1(str(item.relative).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def _batch_targets(
    settings: Settings, labels: Sequence[int | None], batch: Batch
) -> torch.Tensor | None:
    mode = settings.target.mode
    if mode == "pred":
        return None
    if mode == "class":
        return torch.full((len(batch),), int(settings.target.index or 0), dtype=torch.long)
    if any(label is None for label in labels):
        raise ValueError("--target label needs a class folder for every image")
    return torch.tensor(labels, dtype=torch.long)


def _map_keys(result: BatchMethods, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Maps to render: ``method`` (fused or only layer) and ``method@layer`` per layer."""
    maps: dict[str, torch.Tensor] = {}
    for method, per_layer in result.maps.items():
        maps[method] = result.picture_map(method)
        if len(per_layer) > 1:
            for layer, values in per_layer.items():
                maps[f"{method}@{layer}"] = normalise_maps(values)
    return maps


def _pictures(result: BatchMethods) -> dict[str, torch.Tensor]:
    return {method: picture_to_unit(method, grads) for method, grads in result.images.items()}


def run_explain(
    items: Sequence[ImageItem],
    model: LoadedModel,
    settings: Settings,
    reporter: Reporter,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Explain every image and write its files, the index and (via ``reporter``) records.

    Images whose outputs are up to date (same input content, same settings, every file
    present) are reused unless ``settings.force``. When ``stop`` is set, no new batch is
    started; what is in flight is finished and written.

    Args:
        items: the images, in output order.
        model: the loaded model.
        settings: run settings.
        reporter: receives records and progress.
        stop: set it (from a signal handler) to end the run early and cleanly.

    Returns:
        Counts and failures; ``status`` is ``complete`` or ``interrupted``.

    Raises:
        WriteFailed: when an output cannot be written; files already written stay valid.
    """
    if settings.task != "classify":
        return run_regions(items, model, settings, reporter, stop)
    label_indices = [model.classes.resolve(item.label) if item.label else None for item in items]
    averages = FaithfulnessAverages()
    summary = run_batches(
        items,
        model,
        settings,
        _Averaging(reporter, averages),
        settings_key(settings_payload(model, settings)),
        lambda module: _explain_work(items, model, module, settings, label_indices),
        lambda item, record: _index_entry(item, record, settings.output_dir),
        stop,
        write_files=write_image_files,  # looked up here: a test slows it down
        max_pending_bytes=MAX_PENDING_BYTES,
    )
    if averages.counts:
        summary.extra["faithfulness"] = averages.result()
    return summary


def run_regions(
    items: Sequence[ImageItem],
    model: LoadedModel,
    settings: Settings,
    reporter: Reporter,
    stop: threading.Event | None = None,
    annotations: Annotations | None = None,
    tolerance: float = POINTING_TOLERANCE,
    payload: dict[str, Any] | None = None,
) -> RunSummary:
    """A detector's or a segmenter's run (:mod:`camcli.runs.regions`).

    Args:
        items: the images.
        model: a detector or segmenter.
        settings: the run's settings (``kind`` ``evaluate`` with ``annotations``).
        reporter: receives records and progress.
        stop: set it to end the run early and cleanly.
        annotations: ``camcli evaluate``'s boxes or masks: each detection or segment is
            matched and its maps scored.
        tolerance: the pointing game's tolerance in pixels.
        payload: more of what shapes the records (the annotations' source, the tolerance).
    """
    from camcli.runs.regions import region_index_entry, region_work

    static = {"model": model.name, "weights": model.weights, "layers": list(settings.layers),
              "methods": list(settings.methods)}  # fmt: skip
    key = settings_key({**settings_payload(model, settings), **(payload or {})})
    return run_batches(
        items,
        model,
        settings,
        reporter,
        key,
        lambda module: region_work(items, model, module, settings, static, annotations, tolerance),
        lambda item, record: region_index_entry(
            item,
            record,
            record_path(settings.output_dir, item.relative, settings.kind)
            .relative_to(settings.output_dir)
            .as_posix(),
        ),
        stop,
        write_files=write_image_files,
        max_pending_bytes=MAX_PENDING_BYTES,
    )


class _Averaging:
    """A reporter that also averages the records' faithfulness scores."""

    def __init__(self, reporter: Reporter, averages: FaithfulnessAverages) -> None:
        self.reporter = reporter
        self.averages = averages

    def record(self, record: dict[str, Any]) -> None:
        self.averages.add(record)
        self.reporter.record(record)

    def advance(self, count: int) -> None:
        self.reporter.advance(count)

    def passes(self, done: int, planned: int, method: str) -> None:
        report_passes(self.reporter, done, planned, method)


@dataclass
class _Work:
    launch: Callable[[Batch, list[int], list[torch.Tensor], torch.Tensor], _InFlight]
    finish: Callable[[_InFlight], list[ImageOutput]]


def _explain_work(
    items: Sequence[ImageItem],
    model: LoadedModel,
    module: torch.nn.Module,
    settings: Settings,
    label_indices: list[int | None],
) -> BatchWork:
    """Explain's device work: methods, rendering and numbers per batch; records and files."""
    device = settings.device
    prep = model.preprocessing
    lut = jet_lut(device)
    static = _static_fields(model, settings)

    def launch_part(
        part: Batch, positions: list[int], pixels: list[torch.Tensor], inputs: torch.Tensor
    ) -> _InFlight:
        """Queue a batch's device work: explain, render, and the copies back to the host."""
        labels = [label_indices[p] for p in positions]
        results: list[BatchMethods] = []
        if settings.extra_targets:  # one forward pass, the maps of every target
            extra_sets = [target_indices(s, labels, len(part)) for s in settings.extra_targets]
            results = compute_for_targets(
                module,
                inputs,
                settings.layers,
                settings.methods,
                [_batch_targets(settings, labels, part), *extra_sets],
                settings.method_options,
                seeds=[image_seed(items[p]) for p in positions],
                autocast_dtype=torch.bfloat16 if settings.precision == "bf16" else None,
            )
            result = results[0]
        else:
            result = compute_methods(
                module,
                inputs,
                settings.layers,
                settings.methods,
                _batch_targets(settings, labels, part),
                settings.method_options,
                seeds=[image_seed(items[p]) for p in positions],
                autocast_dtype=torch.bfloat16 if settings.precision == "bf16" else None,
            )
        render = launch_render(
            _map_keys(result, settings.layers),
            _pictures(result),
            pixels,
            part.thetas,
            lut,
            settings.alpha,
        )
        number_keys, numbers = _launch_numbers(result, settings, model.binary)
        raw_keys, raws = (
            _launch_raws(result, settings, prep.size) if settings.save_raw else ([], None)
        )
        extra = (
            launch_extra_targets(
                results, settings.extra_targets, pixels, part.thetas, lut, settings, model.binary
            )
            if results
            else None
        )
        return _InFlight(
            part, positions, render, number_keys, numbers, raw_keys, raws, _meta(result), extra
        )

    def finish_part(done: _InFlight) -> list[ImageOutput]:
        """Records and file jobs of a launched batch, once its copies have landed."""
        rendered, peaks = done.render.collect()
        numbers = _numbers(done.number_keys, done.numbers.wait(), peaks)
        raws = dict(zip(done.raw_keys, done.raws.wait(), strict=True)) if done.raws else {}
        part = done.part
        landed = collect_extra_targets(done.extra) if done.extra is not None else []
        outputs = []
        for j, position in enumerate(done.positions):
            item = items[position]
            height, width = part.shapes[j]
            jobs, files, arrays = _file_jobs(item, rendered[j], raws, j, settings)
            record = _record(
                item,
                label_indices[position],
                model,
                settings,
                static,
                files,
                j,
                numbers,
                width,
                height,
                done.meta,
                rendered[j].grids,
            )
            size = sum(
                a.nbytes
                for kind in (rendered[j].heatmaps, rendered[j].overlays, rendered[j].pictures)
                for a in kind.values()
            )
            if done.extra is not None:
                size += add_extra_targets(
                    record, jobs, item, j, done.extra, landed, model, settings
                )
            outputs.append(
                ImageOutput(
                    record,
                    jobs,
                    size,
                    _thumbnail(item, record, arrays, settings.output_dir)
                    if settings.thumbnails
                    else [],
                )
            )
        return outputs

    return _Work(launch_part, finish_part)


def settings_payload(model: LoadedModel, settings: Settings) -> dict[str, Any]:
    """Everything that shapes an image's outputs; its digest decides what a re-run redoes."""
    weights = Path(model.weights)
    weights_id: dict[str, Any] = {"path": model.weights}
    with contextlib.suppress(OSError):
        stat = weights.stat()
        weights_id.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    options = settings.method_options
    return {
        "camcli": __version__,
        **_static_fields(model, settings),
        "weights": weights_id,
        "target": {"mode": settings.target.mode, "index": settings.target.index},
        **_extra_targets_payload(settings),
        "top_k": settings.top_k,
        "save_raw": settings.save_raw,
        "alpha": settings.alpha,
        "png_level": settings.png_level,
        "precision": settings.precision,
        "resized_on": "device" if settings.resize_on_device else "loader",
        **_task_payload(settings),
        "method_options": {
            "chunk_size": None,  # a performance knob: does not change results
            "smooth_samples": options.smooth_samples,
            "smooth_noise": options.smooth_noise,
            "smooth_guided": options.smooth_guided,
            "seed": options.seed,
            **_new_method_options(settings),
        },
    }


def _task_payload(settings: Settings) -> dict[str, Any]:
    # Absent for a classifier, so its settings key (and resume) is unchanged.
    if settings.task == "detect":
        return {
            "task": "detect",
            "score_threshold": settings.score_threshold,
            "max_detections": settings.max_detections,
            **({"drise_masks": settings.drise_masks} if "drise" in settings.methods else {}),
        }
    if settings.task == "segment":
        return {"task": "segment", "min_pixels": settings.min_pixels}
    return {}


def _extra_targets_payload(settings: Settings) -> dict[str, Any]:
    # Absent for a single target, so its settings key (and resume) is unchanged.
    if not settings.extra_targets:
        return {}
    return {"extra_targets": [{"mode": t.mode, "index": t.index} for t in settings.extra_targets]}


def _new_method_options(settings: Settings) -> dict[str, Any]:
    """The options of RISE, Integrated Gradients and the scores, when they are used."""
    options = settings.method_options
    fields: dict[str, Any] = {}
    if "rise" in settings.methods:
        fields["rise_masks"] = options.rise_masks
    if "ig" in settings.methods:
        fields.update(
            ig_steps=options.ig_steps,
            ig_baseline=options.ig_baseline,
            ig_tolerance=options.ig_tolerance,
            ig_max_steps=options.ig_max_steps,
            ig_rule=options.ig_rule,
        )
    if options.metrics:
        fields.update(metrics=list(options.metrics), metric_steps=options.metric_steps)
    return fields


def _launch_numbers(
    result: BatchMethods, settings: Settings, binary: bool = False
) -> tuple[list[str], HostCopy]:
    """Everything the records need from the device, on its way to the host in one go."""
    explanation = result.explanation
    predictions = top_predictions(explanation.logits, settings.top_k, binary)
    logits = explanation.logits.float()
    targets = explanation.targets
    tensors = {
        "top_i": predictions.indices,
        "top_p": predictions.probabilities,
        "top_l": predictions.logits,
        "target": targets,
        "target_p": class_probabilities(logits, binary).gather(1, targets[:, None])[:, 0],
        "target_l": logits.gather(1, targets[:, None])[:, 0],
    }
    for method, per_layer in result.maps.items():
        for layer, values in per_layer.items():
            tensors[f"max:{method}@{layer}"] = values.flatten(1).amax(dim=1).float()
    for name, values in result.checks.items():
        tensors[f"check:{name}"] = values.float()
    for method, scores in result.metrics.items():
        for name, values in scores.items():
            tensors[f"metric:{method}:{name}"] = values.float()
    return list(tensors), HostCopy(list(tensors.values()))


def _numbers(
    keys: list[str], arrays: list[np.ndarray], peaks: dict[str, list[tuple[int, int]]]
) -> dict[str, Any]:
    """The landed numbers as Python lists, maxima grouped under ``max``."""
    numbers: dict[str, Any] = {"max": {}, "peaks": peaks, "check": {}, "metric": {}}
    for key, array in zip(keys, arrays, strict=True):
        if key.startswith("max:"):
            numbers["max"][key.removeprefix("max:")] = array.tolist()
        elif key.startswith(("check:", "metric:")):
            group, _, name = key.partition(":")
            numbers[group][name] = array.tolist()
        else:
            numbers[key] = array.tolist()
    return numbers


def _launch_raws(result: BatchMethods, settings: Settings, size: int) -> tuple[list[str], HostCopy]:
    """Float arrays at the model's input resolution, per output key, on their way to the host."""
    raws: dict[str, torch.Tensor] = {}
    for method, per_layer in result.maps.items():
        for layer, values in per_layer.items():
            key = f"{method}@{layer}" if len(per_layer) > 1 else method
            raws[key] = to_input_resolution(values, size)
        if method in result.fused:
            raws[method] = result.fused[method].float()
    for method, grads in result.images.items():
        raws[method] = grads.float()
    return list(raws), HostCopy(list(raws.values()))


@dataclass
class _BatchMeta:
    """What the records need from a batch's methods, without holding its device tensors."""

    map_layers: dict[str, list[str]]
    heads: dict[str, Any]
    guided: bool
    guided_calls: dict[str, int]
    unchanged_calls: dict[str, int]
    images: tuple[str, ...]
    lrp_canonizers: list[str] = field(default_factory=list)


def _meta(result: BatchMethods) -> _BatchMeta:
    explanation = result.explanation
    return _BatchMeta(
        map_layers={method: list(per_layer) for method, per_layer in result.maps.items()},
        heads=dict(result.heads),
        guided=explanation.guided is not None,
        guided_calls=dict(explanation.guided_calls),
        unchanged_calls=dict(explanation.unchanged_calls),
        images=tuple(result.images),
        lrp_canonizers=list(result.lrp_canonizers),
    )


@dataclass
class _InFlight:
    """A launched batch: its device work and copies are queued, its files not yet made."""

    part: Batch
    positions: list[int]
    render: PendingRender
    number_keys: list[str]
    numbers: HostCopy
    raw_keys: list[str]
    raws: HostCopy | None
    meta: _BatchMeta
    extra: ExtraTargets | None = None  # the further targets of --target pred,label


def _file_jobs(
    item: ImageItem,
    rendered: Any,
    raws: dict[str, np.ndarray],
    j: int,
    settings: Settings,
) -> tuple[list[FileJob], dict[str, dict[str, str]], dict[str, np.ndarray]]:
    """The files of one image, their listing and each picture's array by file name.

    The listing is per method, with names relative to the JSON record.
    """
    level = settings.png_level
    out, rel = settings.output_dir, item.relative
    jobs: list[FileJob] = []
    files: dict[str, dict[str, str]] = {}
    arrays: dict[str, np.ndarray] = {}

    def add(method: str, role: str, suffix: str, produce: Callable[[], bytes]) -> None:
        path = artifact_path(out, rel, suffix)
        jobs.append((path, produce))
        files.setdefault(method, {})[role] = path.name

    def picture(method: str, role: str, suffix: str, array: np.ndarray) -> None:
        add(method, role, suffix, png(array))
        arrays[artifact_path(out, rel, suffix).name] = array

    def png(array: np.ndarray) -> Callable[[], bytes]:
        return lambda: encode_png(array, level)

    def npy(array: np.ndarray) -> Callable[[], bytes]:
        return lambda: encode_npy(np.ascontiguousarray(array))

    for key in rendered.heatmaps:
        method, _, layer = key.partition("@")
        stem = f"{method}.{layer}" if layer else method
        prefix = f"{layer}." if layer else ""
        picture(method, f"{prefix}heatmap", f"{stem}.png", rendered.heatmaps[key])
        picture(method, f"{prefix}overlay", f"{stem}.overlay.png", rendered.overlays[key])
        if key in raws:
            add(method, f"{prefix}raw", f"{stem}.npy", npy(raws[key][j]))
    for method, gradients in rendered.pictures.items():
        picture(method, "image", f"{method}.png", gradients)
        if method in raws:
            add(method, "raw", f"{method}.npy", npy(raws[method][j]))
    return jobs, files, arrays


def _thumbnail(
    item: ImageItem, record: dict[str, Any], arrays: dict[str, np.ndarray], output_dir: Path
) -> list[FileJob]:
    """The report's thumbnail of the image, made from its overlay while it is in memory.

    The report makes the same file from the PNG when it is missing (``camcli report``
    decoded every overlay again otherwise: minutes for a large run).
    """
    source = thumbnail_source(record["files"])
    array = arrays.get(source) if source else None
    if array is None:
        return []
    relative = f"{item.relative.as_posix()}.json"

    def produce() -> bytes:
        return thumbnail_jpeg(Image.fromarray(array), thumbnail_size(output_dir))[0]

    return [(thumbnail_file(output_dir, relative), produce)]


def _static_fields(model: LoadedModel, settings: Settings) -> dict[str, Any]:
    prep = model.preprocessing
    view: dict[str, Any] = {
        "mode": "crop" if settings.crop else "resize",
        "size": prep.size,
        "interpolation": prep.interpolation,
        "resampled_by": "torch (on the device)" if settings.resize_on_device else "pillow",
        "mean": list(prep.mean),
        "std": list(prep.std),
    }
    if prep.channels != 3:
        view["channels"] = prep.channels
    if settings.crop:
        view["resize_size"] = prep.resize_size
    own: dict[str, Any] = {"head": "sigmoid (one logit z; classes -z, z)"} if model.binary else {}
    if model.pooled:
        own["pooled"] = "a segmenter's per-pixel logits, averaged over the image"
    if model.classes_source is not None:
        own["classes"] = model.classes_source  # other names: other records
    return {
        "model": model.name,
        **own,
        "weights": model.weights,
        "layers": list(settings.layers),
        "methods": list(settings.methods),
        "view": view,
    }


def _record(
    item: ImageItem,
    label_index: int | None,
    model: LoadedModel,
    settings: Settings,
    static: dict[str, Any],
    files: dict[str, dict[str, str]],
    j: int,
    numbers: dict[str, Any],
    width: int,
    height: int,
    meta: _BatchMeta,
    grids: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    classes = model.classes
    predictions = [
        {
            "rank": rank + 1,
            "index": index,
            "name": classes.name(index),
            "probability": round(p, 6),
            "logit": round(logit, 4),
        }
        for rank, (index, p, logit) in enumerate(
            zip(numbers["top_i"][j], numbers["top_p"][j], numbers["top_l"][j], strict=True)
        )
    ]
    label = None
    if item.label is not None:
        label = {
            "folder": item.label,
            "index": label_index,
            "name": classes.name(label_index) if label_index is not None else None,
        }
    target_index = numbers["target"][j]
    record: dict[str, Any] = {
        "image": str(item.relative),
        "source": resolved_source(item.path),
        "status": "ok",
        "task": "classify",
        "width": width,
        "height": height,
        **static,
        "label": label,
        "predictions": predictions,
        "correct": (numbers["top_i"][j][0] == label_index) if label_index is not None else None,
        "target": {
            "mode": settings.target.mode,
            "index": target_index,
            "name": classes.name(target_index),
            "probability": round(numbers["target_p"][j], 6),
            "logit": round(numbers["target_l"][j], 4),
        },
        "maps": _maps_entry(meta, settings, numbers, j, grids or {}),
    }
    if meta.guided or ("smoothgrad" in meta.images and settings.method_options.smooth_guided):
        record["guided_backprop"] = {
            "rule": GUIDED_RULE,
            "guided_calls": meta.guided_calls,
            "unchanged_calls": meta.unchanged_calls,
        }
    if "smoothgrad" in meta.images:
        options = settings.method_options
        record["smoothgrad"] = {
            "samples": options.smooth_samples,
            "noise": options.smooth_noise,
            "gradients": "guided" if options.smooth_guided else "plain",
            "seed": options.seed + image_seed(item),
        }
    record.update(_attribution_fields(item, settings, numbers, j, meta))
    record["files"] = files
    return record


def _attribution_fields(
    item: ImageItem, settings: Settings, numbers: dict[str, Any], j: int, meta: _BatchMeta
) -> dict[str, Any]:
    """The record's fields of RISE, LRP, Integrated Gradients and the faithfulness scores."""
    options = settings.method_options
    check = numbers["check"]
    fields: dict[str, Any] = {}
    if "rise" in meta.map_layers:
        fields["rise"] = {
            "masks": options.rise_masks,
            "cells": 7,
            "keep": 0.5,
            "seed": options.seed,
        }
    if "lrp_sum" in check:
        fields["lrp"] = {
            "composite": LRP_COMPOSITE,
            "canonizers": meta.lrp_canonizers,
            "relevance_sum": round(check["lrp_sum"][j], 6),
            "logit": round(check["lrp_logit"][j], 6),
            # What the relevance sum keeps of the logit; the rest stays with the layers'
            # biases (batch norms merged into convolutions put one in each): see README.
            "kept": round(check["lrp_sum"][j] / check["lrp_logit"][j], 6)
            if check["lrp_logit"][j]
            else None,
            "rest": "with the biases of the layers (merged batch norms)",
        }
    if "ig_sum" in check:
        total, difference = check["ig_sum"][j], check["ig_difference"][j]
        fields["integrated_gradients"] = {
            "baseline": options.ig_baseline,
            "rule": options.ig_rule,
            "steps": int(check["ig_steps"][j]),
            "passes": int(check["ig_passes"][j]),
            "start_steps": options.ig_steps,
            "tolerance": options.ig_tolerance,
            "max_steps": max(options.ig_max_steps, options.ig_steps),
            "attribution_sum": round(total, 6),
            "logit_difference": round(difference, 6),
            "completeness_error": round(abs(total - difference) / max(abs(difference), 1e-12), 6),
        }
    if numbers["metric"]:
        scores: dict[str, dict[str, float]] = {}
        for key, values in numbers["metric"].items():
            method, _, name = key.partition(":")
            scores.setdefault(method, {})[name] = round(values[j], 6)
        fields["faithfulness"] = {"steps": options.metric_steps, **scores}
    return fields


def _point(xy: tuple[int, int]) -> dict[str, int]:
    return {"x": int(xy[0]), "y": int(xy[1])}


def _maps_entry(
    meta: _BatchMeta,
    settings: Settings,
    numbers: dict[str, Any],
    j: int,
    grids: dict[str, np.ndarray],
) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for method, per_layer in meta.map_layers.items():
        entry: dict[str, Any] = {"peak": _point(numbers["peaks"][method][j])}
        if method in grids:  # the small copy camcli summarize reads (camcli.io.mapgrid)
            entry["grid"] = encode_grid(grids[method])
        if len(per_layer) == 1:
            (layer,) = per_layer
            entry["layer"] = layer
            entry["max"] = numbers["max"][f"{method}@{layer}"][j]
        else:
            entry["layer"] = "fused"
            entry["fused_from"] = list(per_layer)
            entry["layers"] = {
                layer: {
                    "max": numbers["max"][f"{method}@{layer}"][j],
                    "peak": dict(
                        zip(("x", "y"), numbers["peaks"][f"{method}@{layer}"][j], strict=True)
                    ),
                }
                for layer in per_layer
            }
        if method == "cam":
            heads = {layer: head.name for layer, head in meta.heads.items()}
            entry["classifier"] = heads
            entry["relu_before_pooling"] = any(h.relu_first for h in meta.heads.values())
        entries[method] = entry
    return entries


def _index_entry(item: ImageItem, record: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    top = record["predictions"][0]
    return {
        "image": str(item.relative),
        "status": "ok",
        "record": record_path(output_dir, item.relative).relative_to(output_dir).as_posix(),
        "task": "classify",
        "prediction": {
            "index": top["index"],
            "name": top["name"],
            "probability": top["probability"],
        },
        "target": record["target"]["index"],
        "correct": record["correct"],
        **({"faithfulness": record["faithfulness"]} if "faithfulness" in record else {}),
    }
