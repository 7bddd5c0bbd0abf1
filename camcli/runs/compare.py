"""``compare``'s pipeline: several models x several methods, one sheet per image.

The models run one after another over the whole input, one model in memory at a time: each
pass computes every method's map (at the model's layer resolution) and its top-1 for every
image and keeps them as small ``.npz`` files in a scratch folder inside the output directory.
A last pass decodes the photos once more and composes each image's sheet from the stored maps
on the device. The scratch folder is removed at the end. Both kinds of pass are the shared
batch loop (:mod:`runloop`): decoding ahead, overlap, out-of-memory halving, bounded writes,
and the last one the same resume rules, index and records as ``explain``.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from camcli import __version__
from camcli.io.decode import Batch
from camcli.io.discover import ImageItem, resolved_source
from camcli.io.resume import settings_key
from camcli.io.transfer import HostCopy
from camcli.io.write import artifact_path, encode_png, record_path
from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.forward import class_probabilities
from camcli.models.loaded import LoadedModel
from camcli.pictures.render import jet_lut
from camcli.pictures.sheet import SheetLayout, compose_sheet, label_sheet, sheet_layout
from camcli.runs.explain import image_seed
from camcli.runs.loop import reusable_records, run_batches
from camcli.runs.settings import Settings
from camcli.runs.work import ImageOutput, Reporter, RunSummary

__all__ = ["CompareOptions", "compare_payload", "run_compare"]

SCRATCH = ".camcli-compare"


@dataclass(frozen=True)
class CompareOptions:
    """What a comparison sheet shows.

    Attributes:
        models: model names, one row each, in order.
        methods: map methods, one column each, in order.
        cell: width of one cell in pixels.
        method_options: settings of the methods that make extra passes (Score-CAM).
        classes: per model, where its class names came from (a ``--classes`` file with a
            digest of its names, :attr:`LoadedModel.classes_source`), ``None`` for its own
            classes; empty when every model has its own.

    """

    models: tuple[str, ...]
    methods: tuple[str, ...]
    cell: int = 256
    method_options: MethodOptions = field(default_factory=MethodOptions)
    classes: tuple[str | None, ...] = ()


def compare_payload(settings: Settings, options: CompareOptions) -> dict[str, Any]:
    """Everything that shapes a compare run's outputs; its digest decides what is redone."""
    return {
        "camcli": __version__,
        "command": "compare",
        "models": list(options.models),
        "methods": list(options.methods),
        "cell": options.cell,
        "alpha": settings.alpha,
        "png_level": settings.png_level,
        "precision": settings.precision,
        "resized_on": "device" if settings.resize_on_device else "loader",
        "view": "resize",
        # other class names: other records (absent without --classes: earlier runs' keys)
        **({"classes": list(options.classes)} if any(options.classes) else {}),
        "method_options": {
            "seed": options.method_options.seed,
            **(
                {"rise_masks": options.method_options.rise_masks}
                if "rise" in options.methods
                else {}
            ),
        },
    }


class _Quiet:
    """A reporter for the per-model passes: the last pass reports every image."""

    def record(self, record: dict[str, Any]) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def passes(self, done: int, planned: int, method: str) -> None:
        pass


def run_compare(
    items: Sequence[ImageItem],
    load: Callable[[int], LoadedModel],
    settings: Settings,
    options: CompareOptions,
    reporter: Reporter,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Run every model over the images, then write one sheet and one record per image.

    Args:
        items: the images, in output order.
        load: loads the model of a row (``options.models[index]``); called once per row, in
            order, after the previous model is released.
        settings: run settings (output directory, batching, precision, alpha, force).
        options: models, methods and the cell size.
        reporter: receives the records and progress of the sheets.
        stop: set it to end the run early and cleanly.

    Returns:
        Counts and failures of the sheets.

    Raises:
        WriteFailed: when an output cannot be written.

    """
    started = time.perf_counter()  # the model passes count as well as the sheets'
    key = settings_key(compare_payload(settings, options))
    reusable = reusable_records(items, settings, key)
    todo = [
        item
        for item, record in zip(items, reusable, strict=True)
        if record is None and ".." not in item.relative.parts and not item.relative.is_absolute()
    ]
    scratch = settings.output_dir / f"{SCRATCH}{settings.name_suffix}"
    shutil.rmtree(scratch, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    try:
        loaded: LoadedModel | None = None
        for index, name in enumerate(options.models):
            if index > 0 and (not todo or (stop is not None and stop.is_set())):
                break  # every sheet is up to date, or the run stops: no other model needed
            loaded = None  # release the previous model before loading the next
            loaded = load(index)
            rows.append({"model": name, "layer": loaded.default_layer, "weights": loaded.weights})
            if todo:
                print(
                    f"camcli: model {index + 1} of {len(options.models)}: {name} over "
                    f"{len(todo)} image(s)",
                    file=sys.stderr,
                )
                _maps_pass(todo, loaded, settings, options, scratch / str(index), stop)
        if loaded is None:
            raise ValueError("compare needs at least one model")

        def start(_module: torch.nn.Module) -> _SheetWork:
            return _SheetWork(items, settings, options, rows, scratch)

        def index_entry(item: ImageItem, record: dict[str, Any]) -> dict[str, Any]:
            return {
                "image": str(item.relative),
                "status": "ok",
                "record": record_path(settings.output_dir, item.relative, settings.kind)
                .relative_to(settings.output_dir)
                .as_posix(),
                "predictions": {row["model"]: row["prediction"] for row in record["rows"]},
            }

        summary = run_batches(items, loaded, settings, reporter, key, start, index_entry, stop)
        summary.seconds = time.perf_counter() - started
        return summary
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _maps_pass(
    items: Sequence[ImageItem],
    model: LoadedModel,
    settings: Settings,
    options: CompareOptions,
    folder: Path,
    stop: threading.Event | None,
) -> None:
    """One model over the images: each image's maps and top-1 as ``.npz`` under ``folder``."""
    layer = model.default_layer
    model_settings = replace(
        settings,
        output_dir=folder,
        layers=(layer,),
        methods=options.methods,
        force=True,
        name_suffix="",
    )

    def start(module: torch.nn.Module) -> _MapsWork:
        return _MapsWork(items, model, module, model_settings, options)

    def index_entry(item: ImageItem, record: dict[str, Any]) -> dict[str, Any]:
        return {"image": str(item.relative), "status": "ok"}

    run_batches(items, model, model_settings, _Quiet(), "", start, index_entry, stop)


@dataclass
class _MapsLaunched:
    positions: list[int]
    copy: HostCopy


class _MapsWork:
    """Per batch: the methods' unit maps, their raw maxima and the top-1 of one model."""

    def __init__(
        self,
        items: Sequence[ImageItem],
        model: LoadedModel,
        module: torch.nn.Module,
        settings: Settings,
        options: CompareOptions,
    ) -> None:
        self.items = items
        self.model = model
        self.module = module
        self.settings = settings
        self.options = options

    def launch(
        self, part: Batch, positions: list[int], pixels: list[torch.Tensor], inputs: torch.Tensor
    ) -> _MapsLaunched:
        settings = self.settings
        (layer,) = settings.layers
        result = compute_methods(
            self.module,
            inputs,
            settings.layers,
            settings.methods,
            None,
            self.options.method_options,
            seeds=[image_seed(self.items[p]) for p in positions],
            autocast_dtype=torch.bfloat16 if settings.precision == "bf16" else None,
        )
        probabilities = class_probabilities(result.explanation.logits, self.model.binary)
        top_p, top_i = probabilities.max(dim=1)
        unit_maps = [result.picture_map(m).float() for m in settings.methods]
        # RISE's map is at the input resolution, the CAMs at the layer's: one grid for all.
        height = max(u.shape[-2] for u in unit_maps)
        width = max(u.shape[-1] for u in unit_maps)
        units = torch.stack(
            [
                u
                if u.shape[-2:] == (height, width)
                else F.interpolate(u[:, None], size=(height, width), mode="bilinear")[:, 0]
                for u in unit_maps
            ],
            dim=1,
        )
        maxima = torch.stack(
            [
                (result.maps[m].get(layer, next(iter(result.maps[m].values()))))
                .flatten(1)
                .amax(dim=1)
                .float()
                for m in settings.methods
            ],
            dim=1,
        )
        return _MapsLaunched(positions, HostCopy([units, maxima, top_i, top_p]))

    def finish(self, launched: _MapsLaunched) -> list[ImageOutput]:
        units, maxima, top_i, top_p = launched.copy.wait()
        classes = self.model.classes
        outputs = []
        for j, position in enumerate(launched.positions):
            item = self.items[position]
            index = int(top_i[j])
            label = classes.resolve(item.label) if item.label is not None else None
            meta = {
                "prediction": {
                    "index": index,
                    "name": classes.name(index),
                    "probability": round(float(top_p[j]), 6),
                },
                "label_index": label,
                "label_name": classes.name(label) if label is not None else None,
                "max": [float(m) for m in maxima[j]],
            }
            path = artifact_path(self.settings.output_dir, item.relative, "maps.npz")
            maps = np.ascontiguousarray(units[j], dtype=np.float32)
            jobs = [(path, _npz(maps, json.dumps(meta)))]
            record = {
                "image": str(item.relative),
                "status": "ok",
                "files": {"maps": {"npz": path.name}},
            }
            outputs.append(ImageOutput(record, jobs, maps.nbytes))
        return outputs


def _npz(maps: np.ndarray, meta: str) -> Callable[[], bytes]:
    def produce() -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, maps=maps, meta=np.array(meta))
        return buffer.getvalue()

    return produce


def _load_maps(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as stored:
        return stored["maps"], json.loads(str(stored["meta"]))


@dataclass
class _SheetLaunched:
    part: Batch
    positions: list[int]
    layouts: list[SheetLayout | None]
    metas: list[list[dict[str, Any]]]
    maps: list[list[np.ndarray]]
    copy: HostCopy


class _SheetWork:
    """Per batch: each image's sheet composed on the device from the stored maps."""

    def __init__(
        self,
        items: Sequence[ImageItem],
        settings: Settings,
        options: CompareOptions,
        rows: list[dict[str, Any]],
        scratch: Path,
    ) -> None:
        self.items = items
        self.settings = settings
        self.options = options
        self.rows = rows
        self.scratch = scratch
        self.lut = jet_lut(settings.device)

    def launch(
        self, part: Batch, positions: list[int], pixels: list[torch.Tensor], inputs: torch.Tensor
    ) -> _SheetLaunched:
        device = self.settings.device
        sheets: list[torch.Tensor | None] = []
        layouts: list[SheetLayout | None] = []
        metas: list[list[dict[str, Any]]] = []
        all_maps: list[list[np.ndarray]] = []
        for j, position in enumerate(positions):
            item = self.items[position]
            height, width = part.shapes[j]
            try:
                stored = [
                    _load_maps(artifact_path(self.scratch / str(r), item.relative, "maps.npz"))
                    for r in range(len(self.rows))
                ]
            except (OSError, ValueError, KeyError):
                # A model's pass failed on this image (reported as such by finish).
                sheets.append(None)
                layouts.append(None)
                metas.append([])
                all_maps.append([])
                continue
            layout = sheet_layout(
                len(self.rows), len(self.options.methods), width, height, self.options.cell
            )
            maps = [torch.from_numpy(m).to(device) for m, _ in stored]
            sheets.append(compose_sheet(pixels[j], maps, layout, self.lut, self.settings.alpha))
            layouts.append(layout)
            metas.append([meta for _, meta in stored])
            all_maps.append([m for m, _ in stored])
        made = [sheet for sheet in sheets if sheet is not None]
        return _SheetLaunched(part, positions, layouts, metas, all_maps, HostCopy(made))

    def finish(self, launched: _SheetLaunched) -> list[ImageOutput]:
        landed = iter(launched.copy.wait())
        settings, methods = self.settings, self.options.methods
        outputs = []
        for j, position in enumerate(launched.positions):
            item = self.items[position]
            height, width = launched.part.shapes[j]
            layout, metas, maps = launched.layouts[j], launched.metas[j], launched.maps[j]
            if layout is None:
                error = "a model's pass over this image failed, so its sheet cannot be made"
                outputs.append(ImageOutput(_error(item, error), [], 0))
                continue
            sheet = next(landed)
            texts, rows, cells = [], [], []
            for r, (row, meta) in enumerate(zip(self.rows, metas, strict=True)):
                top = meta["prediction"]
                label = meta["label_index"]
                rows.append(
                    {
                        **row,
                        "prediction": top,
                        "correct": (top["index"] == label) if label is not None else None,
                    }
                )
                line = f"{top['name']} {top['probability']:.2f}"
                texts.append([[row["model"], line] for _ in methods])
                for c, method in enumerate(methods):
                    unit = maps[r][c]
                    peak_y, peak_x = np.unravel_index(int(unit.argmax()), unit.shape)
                    cells.append(
                        {
                            "model": row["model"],
                            "method": method,
                            "row": r,
                            "col": c,
                            "prediction": top,
                            "map": {
                                "layer": "input" if method == "rise" else row["layer"],
                                "resolution": list(unit.shape),
                                "max": round(meta["max"][c], 6),
                                "mean": round(float(unit.mean()), 6),
                                "peak": {
                                    "x": int((peak_x + 0.5) * width / unit.shape[1]),
                                    "y": int((peak_y + 0.5) * height / unit.shape[0]),
                                },
                            },
                        }
                    )
            path = artifact_path(settings.output_dir, item.relative, "compare.png")
            produce = _sheet_png(sheet, layout, list(methods), texts, settings.png_level)

            record = {
                "image": str(item.relative),
                "source": resolved_source(item.path),
                "status": "ok",
                "width": width,
                "height": height,
                "models": [row["model"] for row in self.rows],
                "methods": list(methods),
                "label": (
                    {
                        "folder": item.label,
                        "index": metas[0]["label_index"],
                        "name": metas[0]["label_name"],
                    }
                    if item.label is not None
                    else None
                ),
                "target": "pred",
                "rows": rows,
                "cells": cells,
                "files": {"compare": {"sheet": path.name}},
            }
            outputs.append(ImageOutput(record, [(path, produce)], sheet.nbytes))
        return outputs


def _sheet_png(
    sheet: np.ndarray,
    layout: SheetLayout,
    columns: list[str],
    texts: list[list[list[str]]],
    level: int | None,
) -> Callable[[], bytes]:
    return lambda: encode_png(label_sheet(sheet, layout, columns, texts), level)


def _error(item: ImageItem, message: str) -> dict[str, Any]:
    return {"image": str(item.relative), "status": "error", "error": message}
