"""The library face: :class:`Explainer` explains images in memory or a folder to files.

    import camcli

    explainer = camcli.Explainer("efficientnet_lite0", methods=["gradcam", "guided"])
    for result in explainer.explain(["a.jpg", "b.jpg"]):
        result.predictions[0].name, result.maps["gradcam"]  # float map at the image's size
        result.overlay("gradcam").save("a.overlay.png")
    explainer.explain_folder("images/", "out/")  # the same run as ``camcli explain``

Underneath, a batch is one forward pass shared by every method, as on the command line
(:func:`camcli.methods.batch.compute_methods`), and the maps are resampled onto each image's
own pixels with the same sampling grid the command line's pictures use.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from camcli.io.decode import ViewGeometry, load_rgb, model_input
from camcli.io.discover import ImageItem, discover_images, discover_remote_images
from camcli.io.lock import run_lock
from camcli.io.storage import is_uri, local_lock_path, output_location
from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.forward import top_predictions
from camcli.methods.names import DEFAULT_METHODS, parse_methods
from camcli.models import EMBEDDED_MODEL
from camcli.models.hooks import resolve_layer
from camcli.models.loaded import LoadedModel
from camcli.models.names import unknown_model
from camcli.models.own import OptionProblem, load_module_model, with_task
from camcli.models.probe import unusable_method
from camcli.models.registry import load_model
from camcli.models.tasks import TASK_NOUNS
from camcli.pictures.render import (
    colorize,
    guided_to_unit,
    jet_lut,
    original_grid,
    overlay,
    picture_to_unit,
    sample_on_original,
)
from camcli.runs.settings import Settings, parse_target, resolve_device
from camcli.runs.targets import parse_targets
from camcli.runs.work import Reporter, RunSummary

__all__ = ["ArgumentError", "ExplainResult", "Explainer", "Prediction"]

ImageLike = str | Path | Image.Image


class ArgumentError(ValueError):
    """A value of an argument of :class:`Explainer` it cannot use: ``ARGUMENT: reason``."""

    def __init__(self, argument: str, reason: str) -> None:
        super().__init__(f"{argument}: {reason}")
        self.argument = argument
        self.reason = reason


@dataclass(frozen=True)
class Prediction:
    """One of the model's top-k classes for an image.

    Attributes:
        rank: 1 for the top-1.
        index: the class index.
        name: the class name.
        probability: softmax (sigmoid for a binary model) probability.

    """

    rank: int
    index: int
    name: str
    probability: float


@dataclass
class Region:
    """A detection or a segment of an image, with its maps (detectors and segmenters).

    Attributes:
        index: the class index (0 is the background).
        name: the class name.
        maps: per method, ``(H, W)`` float32 in [0, 1] at the image's own size, as the
            command line draws them; ``guided`` is ``(H, W, 3)``.
        score: a detection's score (``None`` for a segment).
        box: a detection's box ``(x1, y1, x2, y2)`` in the image's pixels.
        pixels: a segment's predicted pixels at the model's input (``None`` for a detection).
        fraction: a segment's share of the image.
    """

    index: int
    name: str
    maps: dict[str, np.ndarray]
    score: float | None = None
    box: tuple[float, float, float, float] | None = None
    pixels: int | None = None
    fraction: float | None = None


@dataclass
class ExplainResult:
    """What :meth:`Explainer.explain` gives for one image.

    Attributes:
        image: the image as the model's view was taken from it (RGB, EXIF rotation applied).
        source: the path it was read from, or ``None`` for an image or tensor passed in.
        predictions: the top-k, best first.
        target: the class the maps explain.
        maps: per method, a float32 array at the image's own size: ``(H, W)`` in [0, 1] for
            map methods (Grad-CAM and the rest), ``(H, W, 3)`` in [0, 1] for the gradient
            pictures (guided, guided-gradcam, smoothgrad, lrp, ig), as the command line
            draws them.
        seen: with ``crop``, where the model saw the image, ``(H, W)`` bool; else ``None``.
        task: ``classify``, ``detect`` or ``segment``.
        detections: a detector's detections (score at least the threshold), best first.
        segments: a segmenter's classes present, largest first.

    A detector's or segmenter's result has no predictions and no target (``None``); its
    ``maps`` hold the per-image ``eigencam``, and each detection or segment its own maps.
    """

    image: Image.Image
    source: str | None
    predictions: list[Prediction]
    target: Prediction | None
    maps: dict[str, np.ndarray]
    seen: np.ndarray | None = None
    task: str = "classify"
    detections: list[Region] = field(default_factory=list)
    segments: list[Region] = field(default_factory=list)

    def heatmap(self, method: str) -> Image.Image:
        """The map of a map method coloured with JET (as ``NAME.METHOD.png``)."""
        unit = self._unit_map(method)
        return Image.fromarray(colorize(torch.from_numpy(unit), jet_lut()).numpy())

    def overlay(self, method: str, alpha: float = 0.5) -> Image.Image:
        """The map of a map method laid over the image (as ``NAME.METHOD.overlay.png``)."""
        unit = self._unit_map(method)
        heat = colorize(torch.from_numpy(unit), jet_lut())
        photo = torch.from_numpy(np.asarray(self.image, dtype=np.uint8).copy())
        blended = overlay(photo, heat, alpha)
        if self.seen is not None:  # a centre crop: the photo outside the model's view
            blended = torch.where(torch.from_numpy(self.seen)[..., None], blended, photo)
        return Image.fromarray(blended.numpy())

    def picture(self, method: str) -> Image.Image:
        """A gradient picture (guided backprop and the like) as an RGB image."""
        array = self.maps[method]
        if array.ndim != 3:
            raise ValueError(f"{method} is a map method: use heatmap() or overlay()")
        return Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8))

    def _unit_map(self, method: str) -> np.ndarray:
        if method not in self.maps:
            raise KeyError(f"{method!r} was not computed; methods: {', '.join(self.maps)}")
        array = self.maps[method]
        if array.ndim != 2:
            raise ValueError(f"{method} gives a gradient picture: use picture()")
        return array


class Explainer:
    """A model and methods, ready to explain images in batches.

    Args:
        model: what ``--model`` accepts (a zoo name, ``timm/NAME``, ``FILE.py:FUNC``), a
            :class:`~camcli.models.loaded.LoadedModel`, or an ``nn.Module`` (inputs normalised
            with ImageNet's mean and std at 224 x 224
            unless the module states its own, as for a factory).
        methods: method names (``--method``), default Grad-CAM and guided backprop.
        layers: target layers (``--layer``), default the model's.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        weights: a local weights file for the architecture (``--weights``).
        offline: never download weights.
        target: ``pred`` (the top-1), a class index or a class name (``--target``); with
            :meth:`explain_folder` also ``label`` and several, comma-separated.
        top_k: predictions kept per image.
        crop: centre-crop as in the weights' evaluation instead of resizing the whole image.
        batch_size: images per forward pass [default: 64 on CUDA, 8 on CPU].
        method_options: settings of the methods that make extra passes (RISE's masks,
            IG's steps, ...); the command line's defaults unless given.
        score_threshold: detectors: the least score of a detection that is explained.
        max_detections: detectors: the most detections explained per image.
        min_pixels: segmenters: the least share of the image a class covers.
        drise_masks: detectors: D-RISE's random masks per image.
        task: ``auto`` (found from what the model returns) or ``classify``, ``detect``,
            ``segment`` (``--task``): ``classify`` runs a segmenter as a classifier of its
            per-pixel logits averaged; other values must agree with the model.

    Raises:
        ValueError: an unknown model, method, target or device, or a value out of range
            (one sentence naming the argument, with the closest names where known).
        TypeError: an argument of the wrong type (one sentence naming it).
        camcli.models.hooks.UnknownLayer: a layer the model does not have.
        camcli.models.loaded.ModelUnavailable: the weights cannot be loaded.

    """

    def __init__(
        self,
        model: str | nn.Module | LoadedModel = EMBEDDED_MODEL,
        methods: Sequence[str] = DEFAULT_METHODS,
        *,
        layers: Sequence[str] = (),
        device: str | torch.device = "auto",
        weights: str | Path | None = None,
        offline: bool = False,
        target: str | int = "pred",
        top_k: int = 5,
        crop: bool = False,
        batch_size: int | None = None,
        method_options: MethodOptions | None = None,
        score_threshold: float = 0.5,
        max_detections: int = 20,
        min_pixels: float = 0.01,
        drise_masks: int = 1000,
        task: str = "auto",
    ) -> None:
        _check_arguments(
            model, methods, layers, device, weights, target, top_k, crop, batch_size,
            method_options,
        )  # fmt: skip
        if isinstance(methods, str):  # "gradcam,guided" as on the command line
            methods = [methods]
        if isinstance(layers, str):
            layers = [layers]
        try:
            self.device = device if isinstance(device, torch.device) else resolve_device(device)
        except ValueError as exc:
            raise ArgumentError("device", str(exc)) from None
        if isinstance(model, LoadedModel):
            self.model: LoadedModel = model
        elif isinstance(model, nn.Module):
            self.model = load_module_model(model)
        else:
            message = unknown_model(model)
            if message is not None:
                raise ArgumentError("model", message)
            if weights is not None and not Path(weights).expanduser().is_file():
                raise ArgumentError("weights", f"{str(weights)!r} is not a file")
            self.model = load_model(model, Path(weights) if weights else None, offline)
        if task not in ("auto", *TASK_NOUNS):
            raise ArgumentError(
                "task", f"{task!r} is not 'auto', 'classify', 'detect' or 'segment'"
            )
        try:
            self.model = with_task(self.model, task)
        except OptionProblem as exc:
            raise ArgumentError("task", str(exc)) from None
        self.task = self.model.task
        self.regions = _RegionOptions(score_threshold, max_detections, min_pixels, drise_masks)
        if self.task != "classify":
            self.methods = _region_methods(self.task, methods)
            if str(target) != "pred":
                raise ArgumentError(
                    "target", f"a {TASK_NOUNS[self.task]}'s detections or classes are its targets"
                )
        else:
            try:
                self.methods = parse_methods(list(methods))
            except ValueError as exc:
                raise ArgumentError("methods", str(exc)) from None
        self.layers = tuple(dict.fromkeys(layers)) or (self.model.default_layer,)
        for name in self.layers:
            resolve_layer(self.model.module, name)
        if self.task == "classify" and (problem := unusable_method(
            self.model, self.methods, self.layers
        )):  # fmt: skip
            raise ArgumentError("methods", problem)
        classes = self.model.classes
        try:
            self.target, self.extra_targets = parse_targets(
                str(target), lambda text: parse_target(text, classes)
            )
        except ValueError as exc:
            raise ArgumentError("target", str(exc)) from None
        self.top_k = top_k
        self.crop = crop
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 8)
        prep = self.model.preprocessing
        black = tuple(-m / s for m, s in zip(prep.mean, prep.std, strict=True))
        defaults = MethodOptions(
            chunk_size=256 if self.device.type == "cuda" else 32,
            black=black,
            binary=self.model.binary,
        )
        self.method_options = method_options or defaults
        if method_options is not None and method_options.black is None:
            self.method_options = replace(method_options, black=black)
        self.model.module.to(self.device)  # eval mode is each method's, for its passes

    def explain(
        self, images: ImageLike | Iterable[ImageLike] | torch.Tensor
    ) -> Iterator[ExplainResult]:
        """Explain images, a batch at a time; yields one result per image, in order.

        Args:
            images: paths, PIL images, or a tensor batch ``(N, C, H, W)`` of images in
                [0, 1] (resized and normalised here like any other image); one path or
                one PIL image is a list of one.

        Yields:
            The results.

        """
        if self.extra_targets or self.target.mode == "label":
            raise ValueError(
                "explain() gives one map per method for one target (pred or a class); "
                "several targets and 'label' (class folders) need explain_folder()"
            )
        if isinstance(images, str | Path | Image.Image):  # one image: a batch of one
            images = [images]
        explain = self._explain_batch if self.task == "classify" else self._explain_regions
        pending: list[tuple[Image.Image, str | None]] = []
        for image in _as_images(images):
            pending.append(image)
            if len(pending) == self.batch_size:
                yield from explain(pending)
                pending = []
        if pending:
            yield from explain(pending)

    def explain_folder(
        self,
        input_path: str | Path,
        output_dir: str | Path,
        *,
        force: bool = False,
        alpha: float = 0.5,
        save_raw: bool = False,
        thumbnails: bool = False,
    ) -> RunSummary:
        """Explain every image under a folder into files: the run ``camcli explain`` makes.

        The same records, pictures, index, resume rules and output names as the command
        line with the same model and options; the output directory is locked for the run.
        No ``run.json`` is written (that is the command line's summary of a process).
        ``thumbnails``: also write the HTML report's thumbnails (as ``--report`` does).
        Either path may be a URI of object storage (``s3://bucket/prefix``), as on the
        command line.

        Returns:
            The run's counts.

        Raises:
            StorageError: a URI's bucket is missing or cannot be read.

        """
        remote_out = isinstance(output_dir, str) and is_uri(output_dir)
        output = output_location(str(output_dir)) if remote_out else Path(output_dir).expanduser()
        if isinstance(input_path, str) and is_uri(input_path):
            items = discover_remote_images(input_path)
        else:
            local = output if isinstance(output, Path) else None
            items = discover_images(Path(input_path), exclude=local)
        settings = self.settings(
            output, force=force, alpha=alpha, save_raw=save_raw, thumbnails=thumbnails
        )
        if not remote_out:
            output.mkdir(parents=True, exist_ok=True)
        with run_lock(local_lock_path(output, settings.lock_name)):
            return self.run(items, settings)

    def settings(self, output_dir: Path, **fields: Any) -> Settings:
        """The settings of a run of this explainer into ``output_dir``.

        ``camcli explain`` builds its run's settings here too, with its options as
        ``fields`` (workers, precision, PNG level, ...): both write the same files.
        """
        chosen: dict[str, Any] = {
            "batch_size": self.batch_size,
            "workers": 0,
            "device": self.device,
            "channels_last": self.device.type == "cpu",
        }
        chosen.update(fields)
        return Settings(
            output_dir=output_dir,
            layers=self.layers,
            methods=self.methods,
            method_options=self.method_options,
            target=self.target,
            extra_targets=self.extra_targets,
            top_k=self.top_k,
            crop=self.crop,
            task=self.task,
            score_threshold=self.regions.score_threshold,
            max_detections=self.regions.max_detections,
            min_pixels=self.regions.min_pixels,
            drise_masks=self.regions.drise_masks,
            **chosen,
        )

    def run(
        self,
        items: Sequence[ImageItem],
        settings: Settings,
        reporter: Reporter | None = None,
        stop: threading.Event | None = None,
    ) -> RunSummary:
        """Explain ``items`` into files with ``settings`` (see :meth:`settings`).

        The command line's run: the caller holds the output directory's lock.
        """
        from camcli.runs.explain import run_explain

        return run_explain(items, self.model, settings, reporter or _QuietReporter(), stop)

    def _explain_regions(self, batch: list[tuple[Image.Image, str | None]]) -> list[ExplainResult]:
        with torch.inference_mode(False):
            return _region_results(self, batch)

    def _explain_batch(self, batch: list[tuple[Image.Image, str | None]]) -> list[ExplainResult]:
        prep = self.model.preprocessing
        arrays, geometries = [], []
        for image, _source in batch:
            array, geometry = model_input(image, prep, self.crop)
            arrays.append(torch.from_numpy(array.copy()))
            geometries.append(geometry)
        x = torch.stack(arrays).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
        std = torch.tensor(prep.std).view(1, -1, 1, 1)
        inputs = ((x - mean) / std).to(self.device)
        targets = None
        if self.target.mode == "class":
            targets = torch.full((len(batch),), int(self.target.index or 0), device=self.device)
        result = compute_methods(
            self.model.module, inputs, self.layers, self.methods, targets, self.method_options
        )
        explanation = result.explanation
        top = top_predictions(explanation.logits, self.top_k, self.model.binary)
        chosen = explanation.targets.tolist()
        probabilities = explanation.logits.detach().float()
        probabilities = probabilities.sigmoid() if self.model.binary else probabilities.softmax(1)
        # What the command line renders: each map method's normalised map at its own
        # resolution and each gradient picture, resampled onto the original pixels.
        unit_maps = {m: result.picture_map(m).float().cpu() for m in result.maps}
        pictures = {m: picture_to_unit(m, result.images[m]).float().cpu() for m in result.images}
        out = []
        for i, (image, source) in enumerate(batch):
            grid, inside = _grid(geometries[i])
            maps: dict[str, np.ndarray] = {}
            for method, unit in unit_maps.items():
                maps[method] = sample_on_original(unit[i : i + 1], grid, inside)[0].numpy()
            for method, picture in pictures.items():
                on_image = sample_on_original(picture[i], grid, inside, outside=0.5)
                maps[method] = on_image.permute(1, 2, 0).contiguous().numpy()
            predictions = [
                Prediction(
                    rank=r + 1,
                    index=int(index),
                    name=self.model.classes.name(int(index)),
                    probability=float(p),
                )
                for r, (index, p) in enumerate(
                    zip(top.indices[i].tolist(), top.probabilities[i].tolist(), strict=True)
                )
            ]
            target = int(chosen[i])
            out.append(
                ExplainResult(
                    image=image,
                    source=source,
                    predictions=predictions,
                    target=Prediction(
                        rank=next((p.rank for p in predictions if p.index == target), 0),
                        index=target,
                        name=self.model.classes.name(target),
                        probability=float(probabilities[i, target]),
                    ),
                    maps=maps,
                    seen=None if bool(inside.all()) else inside.numpy(),
                )
            )
        return out


@dataclass(frozen=True)
class _RegionOptions:
    score_threshold: float
    max_detections: int
    min_pixels: float
    drise_masks: int


def _region_methods(task: str, methods: Sequence[str]) -> tuple[str, ...]:
    """A detector's or segmenter's methods (the classifiers' default: its Grad-CAM)."""
    from camcli.methods.detection import DETECTION_METHODS
    from camcli.methods.segmentation import SEGMENTATION_METHODS

    allowed = DETECTION_METHODS if task == "detect" else SEGMENTATION_METHODS
    if isinstance(methods, str):
        methods = [methods]
    chosen = [m.strip().lower() for v in methods for m in str(v).split(",") if m.strip()]
    if tuple(chosen) == DEFAULT_METHODS:
        chosen = ["gradcam", "guided"] if task == "detect" else ["gradcam"]
    wrong = [m for m in chosen if m not in allowed]
    if wrong or not chosen:
        raise ArgumentError(
            "methods",
            f"{(wrong or ['nothing'])[0]} does not apply to a {TASK_NOUNS[task]}; its maps come "
            f"from {', '.join(allowed)}",
        )
    return tuple(m for m in allowed if m in chosen)


def _region_results(
    explainer: Explainer, batch: list[tuple[Image.Image, str | None]]
) -> list[ExplainResult]:
    """A detector's or segmenter's results for a batch (see :class:`ExplainResult`)."""
    from camcli.methods.detection import explain_detections
    from camcli.methods.forward import picture_maps
    from camcli.methods.segmentation import explain_segments
    from camcli.runs.regions import class_name

    model, options = explainer.model, explainer.regions
    layer = explainer.layers[0] if explainer.layers else None
    out = []
    if explainer.task == "detect":
        photos = [
            torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
            .permute(2, 0, 1)
            .float()
            .div_(255.0)
            .to(explainer.device)
            for image, _ in batch
        ]
        found = explain_detections(
            model.module, photos, layer, explainer.methods, options.score_threshold,
            options.max_detections, options.drise_masks,
            explainer.method_options.chunk_size, explainer.method_options.seed,
        )  # fmt: skip
        for (image, source), result in zip(batch, found, strict=True):
            units = {m: picture_maps(m, v.float()).cpu().numpy() for m, v in result.maps.items()}
            guided = (
                guided_to_unit(result.gradients.float()).permute(0, 2, 3, 1).cpu().numpy()
                if result.gradients is not None and len(result.gradients)
                else None
            )
            regions = []
            for k, det in enumerate(result.detections):
                maps = {m: u[k] for m, u in units.items() if m != "eigencam"}
                if guided is not None:
                    maps["guided"] = guided[k]
                regions.append(Region(det.label, class_name(model.classes, det.label), maps,
                                      score=det.score, box=det.box))  # fmt: skip
            per_image = {"eigencam": units["eigencam"][0]} if "eigencam" in units else {}
            out.append(ExplainResult(image, source, [], None, per_image, task="detect",
                                     detections=regions))  # fmt: skip
        return out
    prep = model.preprocessing
    arrays, geometries = [], []
    for image, _source in batch:
        array, geometry = model_input(image, prep, False)
        arrays.append(torch.from_numpy(array.copy()))
        geometries.append(geometry)
    x = torch.stack(arrays).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    inputs = ((x - mean) / std).to(explainer.device)
    assert layer is not None
    found_segments = explain_segments(
        model.module, inputs, layer, explainer.methods, options.min_pixels
    )
    for i, ((image, source), segmented) in enumerate(zip(batch, found_segments, strict=True)):
        grid, inside = _grid(geometries[i])
        units = {
            m: sample_on_original(picture_maps(m, v.float()).cpu(), grid, inside).numpy()
            for m, v in segmented.maps.items()
        }
        regions = [
            Region(
                s.index,
                class_name(model.classes, s.index),
                {m: u[k] for m, u in units.items() if m != "eigencam"},
                pixels=s.pixels,
                fraction=s.fraction,
            )
            for k, s in enumerate(segmented.segments)
        ]
        per_image = {"eigencam": units["eigencam"][0]} if "eigencam" in units else {}
        out.append(ExplainResult(image, source, [], None, per_image, task="segment",
                                 segments=regions))  # fmt: skip
    return out


def _grid(geometry: ViewGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.tensor(geometry.theta())
    return original_grid(theta, geometry.height, geometry.width)


def _as_images(
    images: Iterable[ImageLike] | torch.Tensor,
) -> Iterator[tuple[Image.Image, str | None]]:
    if isinstance(images, torch.Tensor):
        batch = images if images.dim() == 4 else images[None]
        for tensor in batch:
            array = tensor.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
            if array.shape[0] == 1:
                array = array.expand(3, -1, -1)
            yield Image.fromarray(array.permute(1, 2, 0).numpy()), None
        return
    for image in images:
        if isinstance(image, Image.Image):
            yield image.convert("RGB"), None
        elif isinstance(image, str | Path):
            path = Path(image).expanduser()
            if not path.is_file():
                raise ValueError(f"images: {str(image)!r} is not an image file")
            yield load_rgb(path), str(image)
        else:
            raise TypeError(
                f"images: {type(image).__name__} is not a path, a PIL image or a tensor"
            )


def _check_arguments(
    model: Any,
    methods: Any,
    layers: Any,
    device: Any,
    weights: Any,
    target: Any,
    top_k: Any,
    crop: Any,
    batch_size: Any,
    method_options: Any,
) -> None:
    """Refuse arguments of the wrong type or value, one sentence naming the argument."""

    def strings(value: Any) -> bool:
        return isinstance(value, str) or (
            isinstance(value, Sequence) and all(isinstance(v, str) for v in value)
        )

    if not isinstance(model, str | nn.Module | LoadedModel):
        raise TypeError(
            f"model: {type(model).__name__} is not a model name, a torch.nn.Module or a LoadedModel"
        )
    if not strings(methods):
        raise TypeError("methods: give method names, e.g. ['gradcam', 'guided']")
    if not strings(layers):
        raise TypeError("layers: give layer names, e.g. ['features.29']")
    if not isinstance(device, str | torch.device):
        raise TypeError(f"device: {device!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if weights is not None and not isinstance(weights, str | Path):
        raise TypeError(f"weights: {type(weights).__name__} is not a path to a weight file")
    if isinstance(target, bool) or not isinstance(target, str | int):
        raise TypeError(f"target: {target!r} is not 'pred', a class index or a class name")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k: {top_k!r} is not a whole number of at least 1")
    if not isinstance(crop, bool):
        raise TypeError(f"crop: {crop!r} is not True or False")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size: {batch_size!r} is not a whole number of at least 1")
    if method_options is not None and not isinstance(method_options, MethodOptions):
        raise TypeError(
            f"method_options: {type(method_options).__name__} is not a "
            "camcli.methods.batch.MethodOptions"
        )


class _QuietReporter:
    """The run loop's reporter for library runs: records are returned, nothing printed."""

    def record(self, record: dict[str, Any]) -> None:
        """Take one image's record (nothing to print)."""

    def advance(self, count: int) -> None:
        """Take progress (nothing to show)."""

    def passes(self, done: int, planned: int, method: str) -> None:
        """Take progress within a batch (nothing to show)."""

    def close(self) -> None:
        """Nothing to close."""
