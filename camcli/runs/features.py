"""``features``' pipeline: per image and layer, a grid picture of the layer's feature maps.

One forward pass per batch without gradients captures the layers; the channel choice, the
colour scale and the grid are made on the device (:mod:`camcli.pictures.grids`); labels are drawn
and PNGs encoded in the writer threads. The batch loop is the shared one (:mod:`runloop`):
same resume rules, index, failures and bounded writes as ``explain``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from camcli.io.decode import Batch
from camcli.io.discover import ImageItem, resolved_source
from camcli.io.resume import settings_key
from camcli.io.transfer import HostCopy
from camcli.io.write import artifact_path, encode_npy, encode_png, record_path
from camcli.methods.forward import autocast, top_predictions
from camcli.models.hooks import LayerCapture, LayerUnusable, frozen_eval
from camcli.models.loaded import LoadedModel
from camcli.pictures.grids import (
    GridLayout,
    grid_layout,
    label_grid,
    launch_feature_grids,
    select_channels,
    viridis_lut,
)
from camcli.runs.explain import settings_payload
from camcli.runs.loop import run_batches
from camcli.runs.settings import Settings
from camcli.runs.work import FileJob, ImageOutput, Reporter, RunSummary

__all__ = ["FeatureOptions", "features_payload", "run_features"]


@dataclass(frozen=True)
class FeatureOptions:
    """What a feature-map grid shows.

    Attributes:
        channels: channels per grid.
        strongest: show the channels of highest mean activation (else the first ones).
        cell: side of one feature map in the grid, in pixels.

    """

    channels: int = 16
    strongest: bool = False
    cell: int = 64


def features_payload(
    model: LoadedModel, settings: Settings, options: FeatureOptions
) -> dict[str, Any]:
    """Everything that shapes a features run's outputs; its digest decides what is redone."""
    return {
        **settings_payload(model, settings),
        "command": "features",
        "features": {
            "channels": options.channels,
            "strongest": options.strongest,
            "cell": options.cell,
        },
    }


def run_features(
    items: Sequence[ImageItem],
    model: LoadedModel,
    settings: Settings,
    options: FeatureOptions,
    reporter: Reporter,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Write a feature-map grid per image and layer (``settings.layers``), and the records.

    Args:
        items: the images, in output order.
        model: the loaded model.
        settings: run settings (``layers``, ``top_k``, ``save_raw`` and the batch settings).
        options: what the grids show.
        reporter: receives records and progress.
        stop: set it to end the run early and cleanly.

    Returns:
        Counts and failures.

    Raises:
        LayerUnusable: a layer does not give a spatial map or does not run once.
        WriteFailed: when an output cannot be written.

    """
    payload = features_payload(model, settings, options)
    view = payload["view"]

    def start(module: torch.nn.Module) -> _FeatureWork:
        return _FeatureWork(items, model, module, settings, options, view)

    def index_entry(item: ImageItem, record: dict[str, Any]) -> dict[str, Any]:
        top = record["predictions"][0]
        return {
            "image": str(item.relative),
            "status": "ok",
            "record": record_path(settings.output_dir, item.relative, settings.kind)
            .relative_to(settings.output_dir)
            .as_posix(),
            "prediction": {k: top[k] for k in ("index", "name", "probability")},
            "layers": list(record["features"]),
        }

    return run_batches(
        items, model, settings, reporter, settings_key(payload), start, index_entry, stop
    )


@dataclass
class _Launched:
    part: Batch
    positions: list[int]
    layouts: dict[str, GridLayout]
    shapes: dict[str, list[int]]
    copy: HostCopy
    keys: list[str]


class _FeatureWork:
    """Capture the layers, make the grids on the device; records and file jobs on the host."""

    def __init__(
        self,
        items: Sequence[ImageItem],
        model: LoadedModel,
        module: torch.nn.Module,
        settings: Settings,
        options: FeatureOptions,
        view: dict[str, Any],
    ) -> None:
        self.items = items
        self.model = model
        self.module = module
        self.settings = settings
        self.options = options
        self.view = view
        self.lut = viridis_lut(settings.device)

    def launch(
        self, part: Batch, positions: list[int], pixels: list[torch.Tensor], inputs: torch.Tensor
    ) -> _Launched:
        settings, layers = self.settings, list(self.settings.layers)
        dtype = torch.bfloat16 if settings.precision == "bf16" else None
        with (
            frozen_eval(self.module),
            torch.no_grad(),
            LayerCapture(self.module, layers) as capture,
            autocast(inputs.device, dtype),
        ):
            logits = self.module(inputs)
        missing = [name for name in layers if name not in capture.activations]
        if missing:
            raise LayerUnusable(
                f"layer {missing[0]!r} did not run in the forward pass; choose a layer on "
                "the path to the output"
            )
        predictions = top_predictions(logits, settings.top_k, self.model.binary)
        tensors: dict[str, torch.Tensor] = {
            "top_i": predictions.indices,
            "top_p": predictions.probabilities,
        }
        layouts, shapes = {}, {}
        for layer in layers:
            activations = capture.activations[layer].float()
            chosen = select_channels(activations, self.options.channels, self.options.strongest)
            layout = grid_layout(chosen.shape[1], self.options.cell)
            grids, low, high = launch_feature_grids(activations, chosen, layout, self.lut)
            means = activations.mean(dim=(2, 3)).gather(1, chosen)
            tensors.update(
                {
                    f"grid:{layer}": grids,
                    f"low:{layer}": low,
                    f"high:{layer}": high,
                    f"channels:{layer}": chosen,
                    f"means:{layer}": means,
                }
            )
            if settings.save_raw:
                tensors[f"raw:{layer}"] = activations
            layouts[layer] = layout
            shapes[layer] = list(activations.shape[1:])
        return _Launched(
            part, positions, layouts, shapes, HostCopy(list(tensors.values())), list(tensors)
        )

    def finish(self, launched: _Launched) -> list[ImageOutput]:
        arrays = dict(zip(launched.keys, launched.copy.wait(), strict=True))
        settings, classes = self.settings, self.model.classes
        level = settings.png_level
        outputs = []
        for j, position in enumerate(launched.positions):
            item = self.items[position]
            height, width = launched.part.shapes[j]
            jobs: list[FileJob] = []
            files: dict[str, dict[str, str]] = {}
            entries: dict[str, Any] = {}
            size = 0
            for layer, layout in launched.layouts.items():
                channels = arrays[f"channels:{layer}"][j].tolist()
                low = float(arrays[f"low:{layer}"][j])
                high = float(arrays[f"high:{layer}"][j])
                grid = arrays[f"grid:{layer}"][j]
                size += grid.nbytes
                path = artifact_path(settings.output_dir, item.relative, f"features.{layer}.png")
                jobs.append((path, _grid_png(grid, layout, channels, low, high, layer, level)))
                files[layer] = {"grid": path.name}
                if settings.save_raw:
                    raw = artifact_path(settings.output_dir, item.relative, f"features.{layer}.npy")
                    jobs.append((raw, _npy(arrays[f"raw:{layer}"][j])))
                    files[layer]["raw"] = raw.name
                entries[layer] = {
                    "shape": launched.shapes[layer],
                    "selection": "strongest" if self.options.strongest else "first",
                    "channels": channels,
                    "mean_activation": [round(float(m), 6) for m in arrays[f"means:{layer}"][j]],
                    "scale": {"min": round(low, 6), "max": round(high, 6)},
                    "grid": {"rows": layout.rows, "cols": layout.cols, "cell": layout.cell},
                }
            record = {
                "image": str(item.relative),
                "source": resolved_source(item.path),
                "status": "ok",
                "width": width,
                "height": height,
                "model": self.model.name,
                "weights": self.model.weights,
                "view": self.view,
                "label": _label(item, classes),
                "predictions": [
                    {
                        "rank": rank + 1,
                        "index": int(index),
                        "name": classes.name(int(index)),
                        "probability": round(float(p), 6),
                    }
                    for rank, (index, p) in enumerate(
                        zip(arrays["top_i"][j], arrays["top_p"][j], strict=True)
                    )
                ],
                "features": entries,
                "files": files,
            }
            outputs.append(ImageOutput(record, jobs, size))
        return outputs


def _label(item: ImageItem, classes: Any) -> dict[str, Any] | None:
    """The image's class folder as in explain's records (``None`` outside class folders)."""
    if item.label is None:
        return None
    index = classes.resolve(item.label)
    return {
        "folder": item.label,
        "index": index,
        "name": classes.name(index) if index is not None else None,
    }


def _grid_png(
    grid: np.ndarray,
    layout: GridLayout,
    channels: list[int],
    low: float,
    high: float,
    title: str,
    level: int | None,
) -> Callable[[], bytes]:
    return lambda: encode_png(label_grid(grid, layout, channels, low, high, title), level)


def _npy(array: np.ndarray) -> Callable[[], bytes]:
    return lambda: encode_npy(np.ascontiguousarray(array, dtype=np.float32))
