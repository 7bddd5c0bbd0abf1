"""Look inside a model: every layer's output shape (``camcli layers``).

:func:`probe_layers` runs one forward pass with a hook on every named module and reports what
each one outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camcli.models.classes import ClassIndex, imagenet_classes
from camcli.models.layers import default_layer
from camcli.models.loaded import LoadedModel, ModelUnavailable, Preprocessing
from camcli.models.registry import load_model
from camcli.models.tokens import spatial_view

__all__ = [
    "LayerInfo",
    "model_for_probing",
    "probe_layers",
]


@dataclass(frozen=True)
class LayerInfo:
    """What one named module outputs for the model's input.

    Attributes:
        name: dotted name (as in ``named_modules()``).
        kind: the module's class name.
        shape: output shape without the batch dimension, or ``None`` when the output is not
            one tensor.
        output: ``"tensor"``, or the output's type name (``"tuple"``, ``"dict"``...).
        calls: how many times it ran in the forward pass (0: not on the path to the output).
        spatial: gives a spatial map a CAM can use: a 4-D output with more than one pixel,
            or transformer patch tokens on a grid of more than one (:mod:`camcli.models.tokens`),
            from a module that runs once.
        parameters: number of parameters of the module itself (children excluded).

    """

    name: str
    kind: str
    shape: tuple[int, ...] | None
    output: str
    calls: int
    spatial: bool
    parameters: int


def probe_layers(model: nn.Module, size: int, channels: int = 3) -> list[LayerInfo]:
    """Every named module of ``model`` with its output shape, from one forward pass.

    The pass runs on a blank ``(1, channels, size, size)`` input in eval mode without
    gradients; hooks are removed afterwards, also after an error. Modules are listed in
    ``named_modules()`` order; a module that runs several times reports its first output.

    Args:
        model: the network.
        size: side of the square input.
        channels: input channels.

    Returns:
        One entry per named module (the root excluded).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten())
        >>> [(i.name, i.shape, i.spatial) for i in probe_layers(net, 8)]
        [('0', (4, 8, 8), True), ('1', (256,), False)]

    """
    outputs: dict[str, Any] = {}
    calls: dict[str, int] = {}
    grids: dict[str, int] = {}  # pixels of the map a CAM would see
    handles = []
    prefix = getattr(model, "num_prefix_tokens", None)

    def watch(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in outputs:
                outputs[name] = (
                    tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
                )
                view = (
                    spatial_view(module, output, prefix if isinstance(prefix, int) else None)
                    if isinstance(output, torch.Tensor)
                    else None
                )
                if view is not None:
                    grids[name] = int(view.to_spatial(output)[0, 0].numel())

        return hook

    modes = [(module, module.training) for module in model.modules()]
    named = [(name, module) for name, module in model.named_modules() if name]
    try:
        for name, module in named:
            handles.append(module.register_forward_hook(watch(name)))
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    layers = []
    for name, module in named:
        seen = outputs.get(name)
        shape = tuple(int(s) for s in seen[1:]) if isinstance(seen, tuple) else None
        output = "tensor" if isinstance(seen, tuple) else (seen.__name__ if seen else "none")
        count = calls.get(name, 0)
        spatial = grids.get(name, 0) > 1
        layers.append(
            LayerInfo(
                name=name,
                kind=type(module).__name__,
                shape=shape,
                output=output,
                calls=count,
                spatial=spatial and count == 1,
                parameters=sum(p.numel() for p in module.parameters(recurse=False)),
            )
        )
    return layers


def model_for_probing(
    name: str, weights: Path | None = None, offline: bool = False
) -> tuple[LoadedModel, bool]:
    """The model to list layers of: with its weights when they load, else the architecture.

    Output shapes and the default layer do not depend on the weights, so a torchvision
    model whose weights are neither cached nor downloadable is built with random weights.

    Returns:
        The model and whether its pretrained weights were loaded.

    Raises:
        KeyError: when no model has that name.
        ModelUnavailable: when a registered model cannot be loaded, or a ``weights`` file
            cannot be read.

    """
    try:
        return load_model(name, weights, offline), True
    except ModelUnavailable:
        import torchvision.models as tvm

        if weights is not None or name not in tvm.list_models(module=tvm):
            raise
    default = tvm.get_model_weights(name).DEFAULT
    categories = list(default.meta["categories"])
    classes = imagenet_classes() if len(categories) == 1000 else ClassIndex(categories)
    builder_options = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    module = tvm.get_model(name, weights=None, **builder_options).eval()
    transforms = default.transforms()
    size = int(transforms.crop_size[0])
    loaded = LoadedModel(
        name=name,
        module=module,
        preprocessing=Preprocessing(
            size=size,
            resize_size=int(transforms.resize_size[0]),
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            interpolation=str(transforms.interpolation.value),
        ),
        classes=classes,
        default_layer=default_layer(name, module, size),
        weights="none (architecture only)",
    )
    return loaded, False
