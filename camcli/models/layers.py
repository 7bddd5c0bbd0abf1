"""The layer a model's maps use by default: per family, for transformers, or probed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "default_layer",
    "probe_layer",
    "transformer_layer",
]

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
    # the map that feeds DenseNet's pooling: after its functional ReLU (see hooks.RECTIFIED)
    ("densenet", lambda m: "features.norm5+relu"),
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
