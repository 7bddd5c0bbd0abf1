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
    "input_size_problem",
    "model_for_probing",
    "probe_layers",
    "unusable_method",
    "zoo_architecture",
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

        if weights is None and (dense := zoo_architecture(name)) is not None:
            return dense, False  # a zoo detector or segmenter: its architecture
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


def unusable_method(
    model: LoadedModel, methods: tuple[str, ...], layers: tuple[str, ...]
) -> str | None:
    """Why one of ``methods`` cannot run on this model at all, or ``None``.

    Checked once before a run, so that a method no image can have is one usage error and not
    an error record per image: ``cam`` needs logits that are one linear layer on the global
    average of the layer (one forward pass on two seeded random inputs shows it), ``lrp`` a
    model zennit's canonizers fit.

    Args:
        model: the loaded model (as the run uses it: ``--task classify`` included).
        methods: the run's methods.
        layers: the run's layers.

    """
    from camcli.methods.activation import CamNotApplicable, find_linear_head
    from camcli.models.hooks import LayerCapture, frozen_eval

    if "lrp" in methods:
        from camcli.methods.lrp import LrpNotApplicable, lrp_canonizers

        try:
            lrp_canonizers(model.module)
        except LrpNotApplicable as exc:
            return str(exc)
    if "cam" not in methods:
        return None
    module, prep = model.module, model.preprocessing
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(2, prep.channels, prep.size, prep.size, generator=generator)
    try:
        with frozen_eval(module), torch.no_grad(), LayerCapture(module, layers) as capture:
            logits = module(inputs.to(device))
    except Exception:  # the run itself says what fails
        return None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        return None  # a single-logit head is checked by the run (its two classes are +-z)
    for layer in layers:
        try:
            find_linear_head(module, capture.activations[layer], logits, layer)
        except CamNotApplicable as exc:
            return str(exc)
    return None


def input_size_problem(model: LoadedModel) -> str | None:
    """Why the model's input size gives maps that cannot say where, or ``None``.

    At ``--input-size 7`` a network of stride 32 gives its last layer a 1 x 1 grid: every
    map is flat (all zeros, peak at (0, 0)). One forward pass at that size shows the default
    layer's grid; under 2 x 2 it is refused, with the least size that gives 2 x 2.
    """
    from camcli.models.hooks import LayerCapture, frozen_eval

    module, prep = model.module, model.preprocessing
    device = next((p.device for p in module.parameters()), torch.device("cpu"))

    def grid(size: int) -> tuple[int, int]:
        blank = torch.zeros(1, prep.channels, size, size, device=device)
        with frozen_eval(module), torch.no_grad(), LayerCapture(
            module, [model.default_layer]
        ) as capture:  # fmt: skip
            module(blank)
        height, width = capture.activations[model.default_layer].shape[-2:]
        return int(height), int(width)

    try:
        height, width = grid(prep.size)
        if min(height, width) >= 2:
            return None
        small, larger = prep.size, prep.size  # the least size with a 2 x 2 grid lies between
        while larger < 4096 and min(grid(larger)) < 2:
            small, larger = larger, larger * 2
        while larger - small > 1:  # grids grow with the input: halve the interval
            middle = (small + larger) // 2
            small, larger = (small, middle) if min(grid(middle)) >= 2 else (middle, larger)
    except Exception:  # the run itself says what fails
        return None
    return (
        f"at {prep.size} x {prep.size} the layer {model.default_layer} has a "
        f"{height} x {width} grid, so its maps cannot say where; use at least {larger} (a "
        f"{' x '.join(map(str, grid(larger)))} grid)"
    )


def zoo_architecture(name: str) -> LoadedModel | None:
    """A torchvision detector or segmenter with random weights: its architecture only.

    For listing its layers (``camcli layers``) when its published weights are not at hand:
    the shapes and the default layer do not depend on the weights. Built as the zoo loader
    builds it (its published classes; a segmenter's input at its published size), with no
    backbone weights either.

    Returns:
        The model, or ``None`` when ``name`` is not one of torchvision's detectors or
        segmenters.

    """
    import torchvision.models as tvm

    from camcli.models.classes import ClassIndex
    from camcli.models.own import dense_model
    from camcli.models.registry import dense_preprocessing

    if name in tvm.list_models(module=tvm.detection):
        task = "detect"
    elif name in tvm.list_models(module=tvm.segmentation):
        task = "segment"
    else:
        return None
    default = tvm.get_model_weights(name).DEFAULT
    categories = [str(c) for c in default.meta["categories"]]
    module = tvm.get_model(name, weights=None, weights_backbone=None, num_classes=len(categories))
    prep = dense_preprocessing(default, task)
    return dense_model(name, module, prep, "none (architecture only)", task, ClassIndex(categories))
