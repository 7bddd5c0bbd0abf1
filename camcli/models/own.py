"""Models people trained themselves: a factory in a Python file or module, and timm models.

``--model path/to/file.py:build`` (or ``package.module:build``) imports that code and calls
``build()``, which must return an ``nn.Module``; ``--model timm/NAME`` builds a timm model
with its ``pretrained_cfg`` preprocessing. Both then load ``--weights`` (a ``.pt``/``.pth``
state dict read with ``weights_only=True``, or ``.safetensors``).

What the model itself knows is used as the default: the input channels of its first
convolution, the input size and normalisation in a timm-style ``pretrained_cfg``, the number
of outputs (one forward pass on a blank image). A single-logit network is a sigmoid
classifier: :func:`present_binary` shows it as two classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import math
import os
import socket
import sys
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from camcli.models.classes import ClassIndex, imagenet_classes
from camcli.models.layers import default_layer
from camcli.models.loaded import LoadedModel, ModelUnavailable, Preprocessing, load_state_dict_file
from camcli.models.names import TIMM_PREFIX, is_factory_spec, is_timm_spec

__all__ = [
    "BINARY_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelSpecError",
    "OptionProblem",
    "OutputMismatch",
    "customise_model",
    "is_factory_spec",
    "is_timm_spec",
    "load_factory_model",
    "load_module_model",
    "load_timm_model",
    "parse_floats",
    "present_binary",
    "probe_outputs",
    "with_task",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BINARY_NAMES = ("negative", "positive")


class ModelSpecError(ValueError):
    """A ``--model`` value that names no usable factory or timm model (a usage mistake)."""


class OutputMismatch(ValueError):
    """The model does not take the stated input or returns something other than logits."""


FACTORY_MODULE_PREFIX = "camcli_factory_"  # the name a FILE.py of --model is imported under


def _call_factory(spec: str) -> nn.Module:
    """Import the module of ``spec`` and call its factory (code the user asked to run)."""
    location, _, function = spec.rpartition(":")
    folder: str | None = None
    try:
        if location.endswith(".py"):
            path = Path(location).expanduser().resolve()
            if not path.is_file():
                raise ModelSpecError(f"factory file {location} does not exist")
            digest = hashlib.sha1(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:12]
            module_name = f"{FACTORY_MODULE_PREFIX}{path.stem}_{digest}"
            spec_obj = importlib.util.spec_from_file_location(module_name, path)
            if spec_obj is None or spec_obj.loader is None:
                raise ModelSpecError(f"cannot import {location} as Python code")
            module = importlib.util.module_from_spec(spec_obj)
            # As when the file runs as a script: its folder is importable (also while the
            # factory runs), and it is a registered module (dataclasses need that).
            folder = str(path.parent)
            sys.path.insert(0, folder)
            sys.modules[module_name] = module
            try:
                spec_obj.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[module_name]
                raise ModelUnavailable(f"importing {location} failed: {_short(exc)}") from None
        else:
            # As ``python -m`` does: packages in the working directory are importable.
            folder = os.getcwd()
            sys.path.insert(0, folder)
            try:
                module = importlib.import_module(location)
            except ImportError as exc:
                raise ModelSpecError(f"cannot import module {location!r}: {_short(exc)}") from None
        factory: Any = module
        for part in function.split("."):  # FUNCTION or Class.factory_method
            factory = getattr(factory, part, None)
        if not callable(factory):
            raise ModelSpecError(f"{location} has no function named {function!r}")
        try:
            built = factory()
        except Exception as exc:
            raise ModelUnavailable(f"{spec}() failed: {_short(exc)}") from None
    finally:
        if folder is not None and folder in sys.path:
            sys.path.remove(folder)
    if not isinstance(built, nn.Module):
        raise ModelSpecError(f"{spec}() returned {type(built).__name__}, not a torch nn.Module")
    return built


def _short(error: BaseException, limit: int = 240) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_into(module: nn.Module, weights: Path, what: str) -> None:
    state = load_state_dict_file(weights)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelUnavailable(
            f"weights file {weights} does not fit {what}: {_short(exc)}"
        ) from None


def _input_channels(module: nn.Module) -> int:
    """Input channels of the first convolution (3 when the model has none)."""
    for child in module.modules():
        if isinstance(child, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            return int(child.in_channels)
    return 3


def _stated_preprocessing(module: nn.Module) -> Preprocessing:
    """What the model says about its input, with defaults for what it does not say.

    A timm-style ``pretrained_cfg`` (or ``default_cfg``) gives size, crop, mean, std and
    interpolation; a patch embedding gives the size; the first convolution the channels.
    Otherwise: 224 pixels, ImageNet mean and std for RGB, no normalisation (mean 0, std 1,
    as ``ToTensor()`` alone) for one channel.
    """
    cfg: dict[str, Any] = dict(
        getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    )
    channels = _input_channels(module)
    size = 224
    if "input_size" in cfg:
        channels, size = int(cfg["input_size"][0]), int(cfg["input_size"][-1])
    else:
        patch_size = getattr(getattr(module, "patch_embed", None), "img_size", None)
        if isinstance(patch_size, int | tuple | list) and patch_size:
            size = int(patch_size if isinstance(patch_size, int) else patch_size[-1])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    default_mean = IMAGENET_MEAN if channels == 3 else (0.0,) * channels
    default_std = IMAGENET_STD if channels == 3 else (1.0,) * channels
    mean = tuple(float(v) for v in cfg.get("mean", default_mean))
    std = tuple(float(v) for v in cfg.get("std", default_std))
    interpolation = str(cfg.get("interpolation") or "bilinear")
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bilinear"
    return Preprocessing(
        size=size,
        resize_size=max(size, math.floor(size / crop_pct)),
        mean=mean,
        std=std,
        interpolation=interpolation,
        channels=channels,
    )


def probe_outputs(module: nn.Module, prep: Preprocessing) -> int:
    """Number of outputs of the model for one blank input of the stated shape.

    Raises:
        OutputMismatch: when the forward pass fails or does not return ``(1, K)`` logits.

    """
    was_training = module.training
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    shape = (1, prep.channels, prep.size, prep.size)
    try:
        module.eval()
        with torch.no_grad():
            output = module(torch.zeros(shape, device=device))
    except Exception as exc:
        raise OutputMismatch(
            f"the model does not take a {prep.channels}-channel {prep.size} x {prep.size} "
            f"input ({_short(exc, 160)}); set --input-channels and --input-size"
        ) from None
    finally:
        module.train(was_training)
    if not isinstance(output, torch.Tensor) or output.dim() not in (1, 2) or output.shape[0] != 1:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise OutputMismatch(f"the model returns {got}; camcli needs logits of shape (N, classes)")
    return 1 if output.dim() == 1 else int(output.shape[1])


def _task(module: nn.Module, prep: Preprocessing) -> tuple[str, int]:
    """The model's task and classes.

    A model that fails on the probe is left to the classifier's probe, whose message names
    the input options.
    """
    from camcli.models.tasks import TaskMismatch, probe_task

    try:
        return probe_task(module, prep)
    except TaskMismatch as exc:
        if "fails on" in str(exc):
            return "classify", 0
        raise OutputMismatch(str(exc)) from None


def dense_model(
    name: str, module: nn.Module, prep: Preprocessing, weights: str, task: str, classes: ClassIndex
) -> LoadedModel:
    """A detector or segmenter, with the layer its maps use by default."""
    from camcli.models.tasks import dense_default_layer

    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    blank = torch.full((1, prep.channels, prep.size, prep.size), 0.5, device=device)
    module.eval()
    if task == "detect":
        layer = dense_default_layer(module, lambda: module([blank[0]]), -1)
    else:
        layer = dense_default_layer(module, lambda: module(blank), len(classes))
    if layer is None:
        raise OutputMismatch(f"the {task}or has no layer with a C x h x w map per image")
    return LoadedModel(
        name=name,
        module=module,
        preprocessing=prep,
        classes=classes,
        default_layer=layer,
        weights=weights,
        task=task,
    )


def _signed_logits(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    z = output if output.dim() == 2 else output[:, None]
    return torch.cat([-z, z], dim=1)


def present_binary(loaded: LoadedModel) -> LoadedModel:
    """Show a single-logit (sigmoid) model as two classes: ``[-z, z]``, negative first.

    The model's output is replaced by the signed logits through a forward hook, so layer
    names stay those of the user's module. Each class's probability is the sigmoid of its
    signed logit (``p`` and ``1 - p``); explaining the negative class explains ``-z``.
    """
    if loaded.binary:
        return loaded
    loaded.module.register_forward_hook(_signed_logits)
    classes = loaded.classes if len(loaded.classes) == 2 else ClassIndex(list(BINARY_NAMES))
    return replace(loaded, classes=classes, binary=True)


def _pooled_logits(_module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor:
    logits = output["out"] if isinstance(output, dict) else output
    # already pooled: the same module run as a classifier twice (two Explainers) adds the
    # hook twice
    return logits.mean(dim=(2, 3)) if logits.dim() == 4 else logits


_RETURNS = {
    "classify": "N x C logits",
    "detect": "one dict of boxes, labels and scores per image",
    "segment": "N x C x H x W logits",
}


def with_task(loaded: LoadedModel, wanted: str) -> LoadedModel:
    """The model run as the task ``wanted`` (``auto``: its own, found from what it returns).

    The one override that can be made: a segmenter run as a classifier (a fully
    convolutional classifier), whose logits are its per-pixel logits averaged over the image,
    through a forward hook (layer names stay the module's). Its classes and default layer
    stay the segmenter's; a one-channel segmenter becomes a binary classifier.

    Raises:
        OptionProblem: naming ``--task``, when the model's output cannot be read as
            ``wanted``.
    """
    from camcli.models.tasks import TASK_NOUNS

    found = loaded.task
    if wanted in ("auto", found):
        return loaded
    if (found, wanted) == ("segment", "classify"):
        loaded.module.register_forward_hook(_pooled_logits)
        pooled = replace(loaded, task="classify", pooled=True)
        return present_binary(pooled) if len(loaded.classes) == 1 else pooled
    raise OptionProblem(
        "--task",
        f"the model is a {TASK_NOUNS[found]}: it returns {_RETURNS[found]}, and a "
        f"{TASK_NOUNS[wanted]} returns {_RETURNS[wanted]} (the one override is --task classify "
        "on a segmenter, whose per-pixel logits are then averaged)",
    )


def _finish(name: str, module: nn.Module, prep: Preprocessing, weights: str) -> LoadedModel:
    module.eval()
    task, outputs = _task(module, prep)
    if task != "classify":
        return dense_model(name, module, prep, weights, task, ClassIndex.numbered(max(outputs, 1)))
    outputs = probe_outputs(module, prep)
    classes = imagenet_classes() if outputs == 1000 else ClassIndex.numbered(outputs)
    loaded = LoadedModel(
        name=name,
        module=module,
        preprocessing=prep,
        classes=classes,
        default_layer=default_layer(name, module, prep.size, prep.channels),
        weights=weights,
    )
    return present_binary(loaded) if outputs == 1 else loaded


def load_module_model(module: nn.Module, name: str | None = None) -> LoadedModel:
    """Wrap a module a caller built (the library's ``Explainer(model=module)``).

    Its preprocessing is what it states (``camcli_preprocessing`` or the timm-style
    ``pretrained_cfg``), else ImageNet's at 224 x 224; classes and the default layer are
    found as for a factory. The caller's module is used as it is and keeps its train or
    eval state: every method runs it in eval mode and restores the state afterwards.

    Raises:
        OutputMismatch: the module does not take its stated input.

    """
    prep = _stated_preprocessing(module)
    label = name or type(module).__name__
    modes = [(part, part.training) for part in module.modules()]
    try:
        return _finish(label, module, prep, f"given module ({label})")
    finally:  # the caller's module keeps its train/eval state (methods run in eval mode)
        for part, training in modes:
            part.training = training


def load_factory_model(
    spec: str,
    weights: Path | None,
    input_size: int | None = None,
    input_channels: int | None = None,
) -> LoadedModel:
    """Build the model of ``FILE.py:FUNCTION`` / ``module:FUNCTION`` and load ``weights``.

    ``input_size`` and ``input_channels`` (the user's ``--input-size`` / ``--input-channels``)
    replace what the model states before it is first probed, so a model whose head needs
    another size than the 224 default loads.

    Raises:
        ModelSpecError: the file, module or function is missing, or it returns no module.
        ModelUnavailable: the factory or the weights fail.
        OutputMismatch: the model does not take its stated input.

    """
    module = _call_factory(spec)
    if weights is not None:
        _load_into(module, weights, spec)
    prep = _stated_preprocessing(module)
    if input_size is not None and input_size != prep.size:
        prep = replace(prep, size=input_size, resize_size=input_size)
    if input_channels is not None and input_channels != prep.channels:
        prep = replace(
            prep,
            channels=input_channels,
            mean=_per_channel(None, prep.mean, input_channels, "--mean"),
            std=_per_channel(None, prep.std, input_channels, "--std"),
        )
    return _finish(spec, module, prep, str(weights or spec))


def _timm_cached_weights(model_name: str, offline: bool) -> nn.Module:
    """A timm model with pretrained weights from the local cache (or downloaded when allowed).

    The cache is tried first with the hub's offline mode on, so a cached model never waits
    on the network; a model that is not cached is downloaded only when the hub answers a
    connection within a few seconds (without a network the hub's client would retry for
    about a minute before failing).
    """
    import timm
    from huggingface_hub import constants

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("downloads are off")

    def create(online: bool) -> nn.Module:
        with contextlib.ExitStack() as stack:
            if not online:
                # Read at call time by huggingface_hub: no request leaves, the cache works.
                stack.enter_context(mock.patch.object(constants, "HF_HUB_OFFLINE", True))
                stack.enter_context(mock.patch.object(torch.hub, "download_url_to_file", refuse))
            return timm.create_model(model_name, pretrained=True)

    def unavailable(state: str) -> ModelUnavailable:
        return ModelUnavailable(
            f"weights for timm/{model_name} are not in the local Hugging Face cache and "
            f"{state}: run once with a network to cache them, or pass --weights FILE"
        )

    try:
        return create(online=False)
    except Exception:
        if offline:
            raise unavailable("downloads are off") from None
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if not _reachable(host, 443):
        raise unavailable(f"the model hub ({host}) cannot be reached") from None
    try:
        return create(online=True)
    except Exception as exc:
        raise unavailable(f"the download failed ({type(exc).__name__})") from None


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_timm_model(spec: str, weights: Path | None, offline: bool) -> LoadedModel:
    """Build ``timm/NAME`` with timm's preprocessing; weights from ``weights`` or the cache.

    Raises:
        ModelSpecError: timm has no such model.
        ModelUnavailable: the weights are not available.

    """
    import timm

    model_name = spec.removeprefix(TIMM_PREFIX)
    if not timm.is_model(model_name):
        import difflib

        close = difflib.get_close_matches(model_name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm/' + c for c in close)}?" if close else ""
        raise ModelSpecError(f"timm has no model named {model_name!r}{hint}")
    if weights is not None:
        module = timm.create_model(model_name, pretrained=False)
        _load_into(module, weights, spec)
        source = str(weights)
    else:
        module = _timm_cached_weights(model_name, offline)
        source = f"timm cache: {model_name}"
    prep = _stated_preprocessing(module)
    from timm.data import resolve_data_config

    data_cfg = resolve_data_config({}, model=module)
    size = int(data_cfg["input_size"][-1])
    prep = Preprocessing(
        size=size,
        resize_size=max(size, math.floor(size / float(data_cfg.get("crop_pct") or 1.0))),
        mean=tuple(float(v) for v in data_cfg["mean"]),
        std=tuple(float(v) for v in data_cfg["std"]),
        interpolation=str(data_cfg.get("interpolation") or prep.interpolation),
        channels=int(data_cfg["input_size"][0]),
    )
    if prep.interpolation not in ("bilinear", "bicubic", "nearest"):
        prep = replace(prep, interpolation="bilinear")
    loaded = _finish(spec, module, prep, source)
    feature_info = getattr(module, "feature_info", None)
    if feature_info and loaded.default_layer and _is_cnn_fallback(module):
        last = feature_info[-1].get("module") if isinstance(feature_info[-1], dict) else None
        if last and last in dict(module.named_modules()):
            loaded = replace(loaded, default_layer=last)
    return loaded


def _is_cnn_fallback(module: nn.Module) -> bool:
    from camcli.models.layers import transformer_layer

    return transformer_layer(module) is None


class OptionProblem(ValueError):
    """A model option that does not fit the model; ``option`` names it (exit 2 at the CLI)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """Read ``--mean``/``--std``: one number or comma-separated numbers per channel."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in str(text).replace(" ", "").split(",") if part)
    except ValueError:
        raise OptionProblem(option, f"{text!r} is not a number or a comma-separated list") from None
    if not values:
        raise OptionProblem(option, "give one number, or one per input channel")
    if option == "--std" and any(v <= 0 for v in values):
        raise OptionProblem(option, f"every standard deviation must be positive, got {text!r}")
    return values


def _per_channel(
    given: tuple[float, ...] | None, default: tuple[float, ...], channels: int, option: str
) -> tuple[float, ...]:
    if given is not None:
        if len(given) == 1:
            return given * channels
        if len(given) != channels:
            wanted = "1 value" if channels == 1 else f"1 or {channels} values"
            raise OptionProblem(option, f"give {wanted} for a {channels}-channel input")
        return given
    if len(default) == channels:
        return default
    if channels == 1:  # an RGB model read as grey: one value, the mean of the three
        return (sum(default) / len(default),)
    return (default[0],) * channels


def customise_model(
    loaded: LoadedModel,
    *,
    input_size: int | None = None,
    mean: str | None = None,
    std: str | None = None,
    interpolation: str | None = None,
    channels: int | None = None,
    classes_file: Path | None = None,
) -> LoadedModel:
    """Apply the preprocessing and class options to a loaded model, checking they fit.

    A changed input shape is checked with one forward pass on a blank image; the class file
    must name one class per output (two for a single-logit model: negative, then positive).
    A single-output model is presented as a binary classifier (:func:`present_binary`).

    Raises:
        OptionProblem: naming the option that does not fit (before any image is read).

    """
    from camcli.models.classes import ClassFileError, read_class_file

    prep = loaded.preprocessing
    new_channels = channels or prep.channels
    new_size = input_size or prep.size
    resize_size = prep.resize_size
    if new_size != prep.size:
        resize_size = max(new_size, round(prep.resize_size * new_size / prep.size))
    changed = replace(
        prep,
        size=new_size,
        resize_size=resize_size,
        channels=new_channels,
        mean=_per_channel(parse_floats(mean, "--mean"), prep.mean, new_channels, "--mean"),
        std=_per_channel(parse_floats(std, "--std"), prep.std, new_channels, "--std"),
        interpolation=interpolation or prep.interpolation,
    )
    if changed != prep:
        loaded = replace(loaded, preprocessing=changed)
    dense = loaded.task != "classify"  # a detector's or segmenter's classes are not probed
    if (new_channels, new_size) != (prep.channels, prep.size) and not dense:
        try:
            outputs = probe_outputs(loaded.module, changed)
        except OutputMismatch as exc:
            if new_channels == prep.channels:  # only the size changed: a fixed-size head
                raise OptionProblem(
                    "--input-size",
                    f"{loaded.name} cannot run at a {new_size} x {new_size} input (its head "
                    f"has a fixed size); leave out --input-size to use its default input "
                    f"size {prep.size}",
                ) from None
            raise OptionProblem("--input-channels", str(exc)) from None
        expected = 1 if loaded.binary else len(loaded.classes)
        if outputs != expected and not (loaded.binary and outputs == 2):
            loaded = replace(loaded, classes=ClassIndex.numbered(outputs))
    if not loaded.binary and len(loaded.classes) == 1 and not dense:
        loaded = present_binary(loaded)
    if classes_file is not None:
        try:
            names = read_class_file(classes_file)
        except ClassFileError as exc:
            raise OptionProblem("--classes", str(exc)) from None
        if loaded.binary and len(names) != 2:
            raise OptionProblem(
                "--classes",
                f"{classes_file} names {len(names)} class(es), but the model has one output "
                "(a sigmoid classifier): give 2 names, the negative class first",
            )
        if loaded.task == "detect" and len(names) < 2:
            raise OptionProblem(
                "--classes",
                f"{classes_file} names {len(names)} class(es); a detector's class file starts "
                "with the background (index 0), then its classes",
            )
        if loaded.task != "detect" and not loaded.binary and len(names) != len(loaded.classes):
            raise OptionProblem(
                "--classes",
                f"{classes_file} names {len(names)} classes, but the model has "
                f"{len(loaded.classes)} outputs",
            )
        digest = hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]
        loaded = replace(
            loaded, classes=ClassIndex(names), classes_source=f"{classes_file} ({digest})"
        )
    return loaded
