"""The loop that joins the stages: decode -> forward/explain -> render -> write.

Decoding runs in loader workers ahead of the model; encoding and writing run in a thread pool
behind it, with a bounded number of images in flight so memory stays flat.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from camcli.config import Settings
from camcli.decode import Batch, make_loader
from camcli.discover import ImageItem
from camcli.explain import normalise_maps, top_predictions
from camcli.guided import GUIDED_RULE
from camcli.methods import BatchMethods, compute_methods
from camcli.models import LoadedModel
from camcli.render import (
    guided_to_unit,
    jet_lut,
    render_batch,
    saliency_to_unit,
    to_input_resolution,
)
from camcli.write import (
    IndexWriter,
    artifact_path,
    atomic_write_bytes,
    encode_npy,
    encode_png,
    record_path,
    write_json,
)

__all__ = ["Reporter", "RunSummary", "WriteFailed", "run_explain"]


class WriteFailed(RuntimeError):
    """An output file could not be written (disk full, permissions); the run stops."""


class Reporter(Protocol):
    """Receives what a run produces, as it happens."""

    def record(self, record: dict[str, Any]) -> None:
        """An image was explained and its files written, or it failed (``status`` says)."""

    def advance(self, count: int) -> None:
        """``count`` more images are finished."""


@dataclass
class RunSummary:
    """Counts of a finished run."""

    total: int
    explained: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


# One file to write: its path and a function producing its bytes (run in a writer thread).
FileJob = tuple[Path, Callable[[], bytes]]


@dataclass
class _Pending:
    item: ImageItem
    record: dict[str, Any]
    future: Future[None]


def _write_files(jobs: list[FileJob], record_file: Path, record: dict[str, Any]) -> None:
    """Encode and write one image's files; the JSON record last, so it marks completion."""
    for path, produce in jobs:
        atomic_write_bytes(path, produce())
    write_json(record_file, record)


def _batch_targets(
    settings: Settings, label_indices: Sequence[int | None], batch: Batch
) -> torch.Tensor | None:
    mode = settings.target.mode
    if mode == "pred":
        return None
    if mode == "class":
        return torch.full((len(batch),), int(settings.target.index or 0), dtype=torch.long)
    labels = [label_indices[i] for i in batch.indices]
    if any(label is None for label in labels):
        raise ValueError("--target label needs a class folder for every image")
    return torch.tensor(labels, dtype=torch.long)


def _map_keys(result: BatchMethods, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Maps to render: ``method`` (fused or only layer) and ``method@layer`` per layer."""
    maps: dict[str, torch.Tensor] = {}
    for method, per_layer in result.maps.items():
        maps[method] = result.unit_map(method)
        if len(layers) > 1:
            for layer, values in per_layer.items():
                maps[f"{method}@{layer}"] = normalise_maps(values)
    return maps


def _pictures(result: BatchMethods) -> dict[str, torch.Tensor]:
    return {
        method: saliency_to_unit(grads) if method == "smoothgrad" else guided_to_unit(grads)
        for method, grads in result.images.items()
    }


def run_explain(
    items: Sequence[ImageItem],
    model: LoadedModel,
    settings: Settings,
    reporter: Reporter,
) -> RunSummary:
    """Explain every image and write its files, the index and (via ``reporter``) records.

    Args:
        items: the images, in output order.
        model: the loaded model.
        settings: run settings.
        reporter: receives records and progress.

    Returns:
        Counts and failures.

    Raises:
        WriteFailed: when an output cannot be written; files already written stay valid.

    """
    start = time.perf_counter()
    device = settings.device
    module = model.module.to(device)
    prep = model.preprocessing
    label_indices = [model.classes.resolve(item.label) if item.label else None for item in items]
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    lut = jet_lut(device)
    loader = make_loader(
        [item.path for item in items],
        prep,
        settings.crop,
        settings.batch_size,
        settings.workers,
        pin_memory=device.type == "cuda",
    )
    summary = RunSummary(total=len(items))
    index = IndexWriter(settings.output_dir)
    pending: deque[_Pending] = deque()
    max_pending = max(2 * settings.batch_size, 8)
    static = _static_fields(model, settings)

    def finish(entry: _Pending) -> None:
        try:
            entry.future.result()
        except OSError as exc:
            raise WriteFailed(f"cannot write outputs for {entry.item.relative}: {exc}") from exc
        summary.explained += 1
        reporter.record(entry.record)
        index.add(_index_entry(entry.item, entry.record, settings.output_dir))
        reporter.advance(1)

    def fail(item: ImageItem, message: str) -> None:
        summary.failed += 1
        summary.failures.append((str(item.relative), message))
        entry = {
            "image": str(item.relative),
            "source": str(item.path),
            "status": "error",
            "error": message,
        }
        reporter.record(entry)
        index.add(entry)
        reporter.advance(1)

    completed = False
    pool = ThreadPoolExecutor(
        max_workers=max(1, settings.write_threads), thread_name_prefix="camcli-write"
    )
    try:
        for batch in loader:
            for failure in batch.failures:
                fail(items[failure.index], failure.message)
            if len(batch) == 0:
                continue
            inputs = batch.inputs.to(device, non_blocking=True).float().div_(255.0)
            inputs = (inputs - mean) / std
            result = compute_methods(
                module,
                inputs,
                settings.layers,
                settings.methods,
                _batch_targets(settings, label_indices, batch),
                settings.method_options,
                seeds=batch.indices,
            )
            maps = _map_keys(result, settings.layers)
            pixels = [p.to(device, non_blocking=True) for p in batch.pixels]
            rendered, peaks = render_batch(
                maps, _pictures(result), pixels, batch.thetas.to(device), lut, settings.alpha
            )
            numbers = _batch_numbers(result, settings, peaks)
            raws = _raw_arrays(result, settings, prep.size) if settings.save_raw else {}
            for j, item_index in enumerate(batch.indices):
                item = items[item_index]
                height, width = (int(s) for s in batch.pixels[j].shape[:2])
                jobs, files = _file_jobs(item, rendered[j], raws, j, settings)
                record = _record(
                    item,
                    item_index,
                    label_indices[item_index],
                    model,
                    settings,
                    static,
                    files,
                    j,
                    numbers,
                    width,
                    height,
                    result,
                )
                future = pool.submit(
                    _write_files, jobs, record_path(settings.output_dir, item.relative), record
                )
                pending.append(_Pending(item, record, future))
            while pending and (pending[0].future.done() or len(pending) > max_pending):
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
        completed = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        index.close(complete=completed)
    summary.seconds = time.perf_counter() - start
    return summary


def _batch_numbers(
    result: BatchMethods, settings: Settings, peaks: dict[str, list[tuple[int, int]]]
) -> dict[str, Any]:
    """Everything the records need from the device, copied back once per batch."""
    explanation = result.explanation
    predictions = top_predictions(explanation.logits, settings.top_k)
    logits = explanation.logits.float()
    targets = explanation.targets
    maxima = {
        f"{method}@{layer}": values.flatten(1).amax(dim=1).tolist()
        for method, per_layer in result.maps.items()
        for layer, values in per_layer.items()
    }
    return {
        "top_i": predictions.indices.tolist(),
        "top_p": predictions.probabilities.tolist(),
        "top_l": predictions.logits.tolist(),
        "target": targets.tolist(),
        "target_p": logits.softmax(dim=1).gather(1, targets[:, None])[:, 0].tolist(),
        "target_l": logits.gather(1, targets[:, None])[:, 0].tolist(),
        "max": maxima,
        "peaks": peaks,
    }


def _raw_arrays(result: BatchMethods, settings: Settings, size: int) -> dict[str, np.ndarray]:
    """Float arrays at the model's input resolution, per output key."""
    raws: dict[str, np.ndarray] = {}
    for method, per_layer in result.maps.items():
        for layer, values in per_layer.items():
            key = f"{method}@{layer}" if len(settings.layers) > 1 else method
            raws[key] = to_input_resolution(values, size).cpu().numpy()
        if method in result.fused:
            raws[method] = result.fused[method].float().cpu().numpy()
    for method, grads in result.images.items():
        raws[method] = grads.float().cpu().numpy()
    return raws


def _file_jobs(
    item: ImageItem,
    rendered: Any,
    raws: dict[str, np.ndarray],
    j: int,
    settings: Settings,
) -> tuple[list[FileJob], dict[str, dict[str, str]]]:
    """The files of one image, and their listing per method (names relative to the JSON)."""
    level = settings.png_level
    out, rel = settings.output_dir, item.relative
    jobs: list[FileJob] = []
    files: dict[str, dict[str, str]] = {}

    def add(method: str, role: str, suffix: str, produce: Callable[[], bytes]) -> None:
        path = artifact_path(out, rel, suffix)
        jobs.append((path, produce))
        files.setdefault(method, {})[role] = path.name

    def png(array: np.ndarray) -> Callable[[], bytes]:
        return lambda: encode_png(array, level)

    def npy(array: np.ndarray) -> Callable[[], bytes]:
        return lambda: encode_npy(np.ascontiguousarray(array))

    for key in rendered.heatmaps:
        method, _, layer = key.partition("@")
        stem = f"{method}.{layer}" if layer else method
        prefix = f"{layer}." if layer else ""
        add(method, f"{prefix}heatmap", f"{stem}.png", png(rendered.heatmaps[key]))
        add(method, f"{prefix}overlay", f"{stem}.overlay.png", png(rendered.overlays[key]))
        if key in raws:
            add(method, f"{prefix}raw", f"{stem}.npy", npy(raws[key][j]))
    for method, picture in rendered.pictures.items():
        add(method, "image", f"{method}.png", png(picture))
        if method in raws:
            add(method, "raw", f"{method}.npy", npy(raws[method][j]))
    return jobs, files


def _static_fields(model: LoadedModel, settings: Settings) -> dict[str, Any]:
    prep = model.preprocessing
    view: dict[str, Any] = {
        "mode": "crop" if settings.crop else "resize",
        "size": prep.size,
        "interpolation": prep.interpolation,
        "mean": list(prep.mean),
        "std": list(prep.std),
    }
    if settings.crop:
        view["resize_size"] = prep.resize_size
    return {
        "model": model.name,
        "weights": model.weights,
        "layers": list(settings.layers),
        "methods": list(settings.methods),
        "view": view,
    }


def _record(
    item: ImageItem,
    item_index: int,
    label_index: int | None,
    model: LoadedModel,
    settings: Settings,
    static: dict[str, Any],
    files: dict[str, dict[str, str]],
    j: int,
    numbers: dict[str, Any],
    width: int,
    height: int,
    result: BatchMethods,
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
        "source": str(Path(item.path).resolve()),
        "status": "ok",
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
        "maps": _maps_entry(result, settings, numbers, j),
    }
    explanation = result.explanation
    if explanation.guided is not None or (
        "smoothgrad" in result.images and settings.method_options.smooth_guided
    ):
        record["guided_backprop"] = {
            "rule": GUIDED_RULE,
            "guided_calls": explanation.guided_calls,
            "unchanged_calls": explanation.unchanged_calls,
        }
    if "smoothgrad" in result.images:
        options = settings.method_options
        record["smoothgrad"] = {
            "samples": options.smooth_samples,
            "noise": options.smooth_noise,
            "gradients": "guided" if options.smooth_guided else "plain",
            "seed": options.seed + item_index,
        }
    record["files"] = files
    return record


def _point(xy: tuple[int, int]) -> dict[str, int]:
    return {"x": int(xy[0]), "y": int(xy[1])}


def _maps_entry(
    result: BatchMethods, settings: Settings, numbers: dict[str, Any], j: int
) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    layers = settings.layers
    for method, per_layer in result.maps.items():
        entry: dict[str, Any] = {"peak": _point(numbers["peaks"][method][j])}
        if len(layers) == 1:
            entry["layer"] = layers[0]
            entry["max"] = numbers["max"][f"{method}@{layers[0]}"][j]
        else:
            entry["layer"] = "fused"
            entry["fused_from"] = list(layers)
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
            heads = {layer: head.name for layer, head in result.heads.items()}
            entry["classifier"] = heads
            entry["relu_before_pooling"] = any(h.relu_first for h in result.heads.values())
        entries[method] = entry
    return entries


def _index_entry(item: ImageItem, record: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    top = record["predictions"][0]
    return {
        "image": str(item.relative),
        "status": "ok",
        "record": record_path(output_dir, item.relative).relative_to(output_dir).as_posix(),
        "prediction": {
            "index": top["index"],
            "name": top["name"],
            "probability": top["probability"],
        },
        "target": record["target"]["index"],
        "correct": record["correct"],
    }
