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
from camcli.explain import explain_batch, normalise_maps, top_predictions
from camcli.guided import GUIDED_RULE
from camcli.models import LoadedModel
from camcli.render import RenderedImage, jet_lut, render_batch, to_input_resolution
from camcli.write import (
    IndexWriter,
    OutputFiles,
    atomic_write_bytes,
    encode_npy,
    encode_png,
    output_files,
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


@dataclass
class _Pending:
    item: ImageItem
    record: dict[str, Any]
    future: Future[None]


def _write_image(
    files: OutputFiles,
    rendered: RenderedImage,
    raw: tuple[np.ndarray, np.ndarray | None] | None,
    record: dict[str, Any],
    png_level: int,
) -> None:
    """Encode and write one image's files; the JSON record last."""
    atomic_write_bytes(files.heatmap, encode_png(rendered.heatmap, png_level))
    atomic_write_bytes(files.overlay, encode_png(rendered.overlay, png_level))
    if rendered.guided is not None:
        atomic_write_bytes(files.guided, encode_png(rendered.guided, png_level))
    if raw is not None:
        atomic_write_bytes(files.cam_raw, encode_npy(raw[0]))
        if raw[1] is not None:
            atomic_write_bytes(files.guided_raw, encode_npy(raw[1]))
    write_json(files.record, record)


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
    classes = model.classes
    label_indices = [classes.resolve(item.label) if item.label else None for item in items]
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
            explanation = explain_batch(
                module,
                inputs,
                settings.layer,
                _batch_targets(settings, label_indices, batch),
                guided=settings.guided,
            )
            cam = explanation.cams[settings.layer]
            pixels = [p.to(device, non_blocking=True) for p in batch.pixels]
            rendered, peaks = render_batch(
                normalise_maps(cam),
                explanation.guided,
                pixels,
                batch.thetas.to(device),
                lut,
                settings.alpha,
            )
            raws: list[tuple[np.ndarray, np.ndarray | None] | None] = [None] * len(batch)
            if settings.save_raw:
                cam_input = to_input_resolution(cam, prep.size).cpu().numpy()
                guided_np = (
                    explanation.guided.float().cpu().numpy()
                    if explanation.guided is not None
                    else None
                )
                raws = [
                    (cam_input[j], guided_np[j] if guided_np is not None else None)
                    for j in range(len(batch))
                ]
            predictions = top_predictions(explanation.logits, settings.top_k)
            probabilities = explanation.logits.float().softmax(dim=1)
            targets = explanation.targets
            numbers = {
                "top_i": predictions.indices.tolist(),
                "top_p": predictions.probabilities.tolist(),
                "top_l": predictions.logits.tolist(),
                "target": targets.tolist(),
                "target_p": probabilities.gather(1, targets[:, None])[:, 0].tolist(),
                "target_l": explanation.logits.float().gather(1, targets[:, None])[:, 0].tolist(),
                "cam_max": cam.flatten(1).amax(dim=1).tolist(),
                "peaks": peaks,
            }
            guided_info = (
                {
                    "rule": GUIDED_RULE,
                    "guided_calls": explanation.guided_calls,
                    "unchanged_calls": explanation.unchanged_calls,
                }
                if settings.guided
                else None
            )
            for j, item_index in enumerate(batch.indices):
                item = items[item_index]
                files = output_files(settings.output_dir, item.relative)
                height, width = (int(s) for s in batch.pixels[j].shape[:2])
                record = _record(
                    item,
                    label_indices[item_index],
                    model,
                    settings,
                    static,
                    files,
                    j,
                    numbers,
                    width,
                    height,
                    guided_info,
                )
                future = pool.submit(
                    _write_image, files, rendered[j], raws[j], record, settings.png_level
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
    return {"model": model.name, "weights": model.weights, "layer": settings.layer, "view": view}


def _record(
    item: ImageItem,
    label_index: int | None,
    model: LoadedModel,
    settings: Settings,
    static: dict[str, Any],
    files: OutputFiles,
    j: int,
    numbers: dict[str, Any],
    width: int,
    height: int,
    guided_info: dict[str, Any] | None,
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
    listed = {"heatmap": files.heatmap.name, "overlay": files.overlay.name}
    if settings.guided:
        listed["guided"] = files.guided.name
    if settings.save_raw:
        listed["cam_raw"] = files.cam_raw.name
        if settings.guided:
            listed["guided_raw"] = files.guided_raw.name
    peak_x, peak_y = numbers["peaks"][j]
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
        "gradcam": {"max": numbers["cam_max"][j], "peak": {"x": peak_x, "y": peak_y}},
    }
    if guided_info is not None:
        record["guided_backprop"] = guided_info
    record["files"] = listed
    return record


def _index_entry(item: ImageItem, record: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    files = output_files(output_dir, item.relative)
    top = record["predictions"][0]
    return {
        "image": str(item.relative),
        "status": "ok",
        "record": files.record.relative_to(output_dir).as_posix(),
        "prediction": {
            "index": top["index"],
            "name": top["name"],
            "probability": top["probability"],
        },
        "target": record["target"]["index"],
        "correct": record["correct"],
    }


Callback = Callable[[dict[str, Any]], None]
