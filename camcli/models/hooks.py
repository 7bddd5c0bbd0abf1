"""Owned forward hooks that capture a layer's output, removed when the block ends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from camcli.models import RECTIFIED
from camcli.models.layer_names import missing_layer_message
from camcli.models.tokens import spatial_view

__all__ = [
    "RECTIFIED",
    "LayerCapture",
    "LayerUnusable",
    "UnknownLayer",
    "frozen_eval",
    "resolve_layer",
]


class UnknownLayer(ValueError):
    """A layer name that the model does not have; the message lists close matches."""


class LayerUnusable(RuntimeError):
    """The layer exists but cannot be explained (not a 4-D map, or runs several times)."""


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module with the dotted name ``name`` (as in ``named_modules()``).

    ``NAME+relu`` names the output of ``NAME`` after a ReLU (:data:`RECTIFIED`).

    Raises:
        UnknownLayer: when there is none; the message names up to five close matches.

    """
    modules = dict(model.named_modules())
    message = missing_layer_message(name, list(modules))
    if message is not None:
        raise UnknownLayer(message)
    return modules[name.removesuffix(RECTIFIED)]


class LayerCapture:
    """Capture the outputs of named layers during one forward pass.

    A name ending in ``+relu`` captures the layer's output after a ReLU, and the network goes
    on from that rectified map (the ReLU the model applies next changes nothing then).

    The hook keeps the layer's output and hands the rest of the network a clone, so in-place
    operations after the layer (ResNet's ``out += identity``, DenseNet's final
    ``F.relu(..., inplace=True)``) cannot change what was captured. Transformer outputs are
    captured as ``(N, C, H, W)`` maps (:mod:`camcli.models.tokens`): patch tokens on their grid
    (class and register tokens dropped), Swin's channels-last maps permuted; the network
    goes on from the captured map. With ``detach=True`` the
    captured tensor is cut from the graph before the layer and made to require grad: a
    gradient to it then costs only a backward pass through the layers after it.

    Use as a context manager; the hooks are removed on exit, also after an error.

    Args:
        model: the network.
        names: dotted names of the layers to capture.
        detach: start the graph at the layer (enough for Grad-CAM without input gradients).

    """

    def __init__(self, model: nn.Module, names: Sequence[str], detach: bool = False) -> None:
        self.modules = {name: resolve_layer(model, name) for name in names}
        prefix = getattr(model, "num_prefix_tokens", None)
        self.prefix_tokens = prefix if isinstance(prefix, int) else None
        self.detach = detach
        self.activations: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor:
            if name in self.activations:
                raise LayerUnusable(
                    f"layer {name!r} runs more than once per forward pass; "
                    "choose a layer that runs once"
                )
            view = (
                spatial_view(_module, output, self.prefix_tokens)
                if isinstance(output, torch.Tensor)
                else None
            )
            if view is None:
                if isinstance(output, torch.Tensor):  # per image: the batch is not its shape
                    per_image = " x ".join(str(s) for s in output.shape[1:]) or "a scalar"
                    what = f"{per_image} per image"
                else:
                    what = type(output).__name__
                raise LayerUnusable(
                    f"layer {name!r} outputs {what}; a map needs a C x H x W feature map or "
                    "tokens x C patch tokens per image"
                )
            # Start the graph here unless an earlier captured layer already did: the
            # gradient must reach every captured layer.
            start_here = self.detach and not output.requires_grad
            spatial = view.to_spatial(output.detach() if start_here else output)
            rectified = name.endswith(RECTIFIED)
            if rectified:
                if view.layout in ("nhwc", "tokens"):
                    raise LayerUnusable(
                        f"{RECTIFIED} names a convolutional map rectified before pooling; "
                        f"{name.removesuffix(RECTIFIED)!r} outputs transformer tokens"
                    )
                spatial = torch.relu(spatial)  # out of place
            captured = spatial.requires_grad_(True) if start_here else spatial
            handed = view.from_spatial(captured, output)
            # NAME+relu: the tensor the network goes on with is the map its pooling reads
            # (its own ReLU, in place, keeps the values): gradients taken to it are those of
            # the pooling's input, not masked again by that ReLU.
            self.activations[name] = handed if rectified else captured
            return handed

        return hook

    def __enter__(self) -> LayerCapture:
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook this object registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put a model in eval mode with frozen parameters; restore both afterwards.

    BatchNorm and Dropout in train mode would make results random and couple the images of a
    batch; frozen parameters mean no weight gradients are computed or stored.
    """
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in grads:
            param.requires_grad_(False)
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)
