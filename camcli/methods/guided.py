"""Guided backpropagation through every activation call, modules and functional alike.

Swapping ``nn.ReLU`` modules (what captum and pytorch-grad-cam do) misses functional calls
such as DenseNet's final ``F.relu`` and other activations (ReLU6, SiLU, GELU). Here the
forward pass runs under a :class:`torch.overrides.TorchFunctionMode` that routes each call
of a known activation function through one autograd function whose backward rule can be
switched after the forward pass:

* normal: ``grad_in = grad_out * f'(x)``, exactly the ordinary gradient;
* guided: ``grad_in = max(grad_out, 0) * f'(x)``.

For ReLU the guided rule is Springenberg et al.'s guided backprop (positive gradient, at
positions with positive input). For the other rectifier-like activations (ReLU6/hardtanh,
SiLU, GELU, hardswish, Mish, leaky ReLU, ELU, SELU, CELU) the same rule is applied: only
positive gradient passes, scaled by the activation's own derivative. Gating functions
(sigmoid, tanh, hardsigmoid, e.g. in squeeze-excitation blocks) keep the normal rule; their
calls are counted so the record says what was and was not guided.

Because the rule is switched per backward call on one retained graph, the Grad-CAM gradient
(normal rule) and the guided input gradient come from the same forward pass, and guided
rules never leak into Grad-CAM. The rule lives per call, not per module, so one ReLU module
used several times per forward (torchvision's ResNet blocks) is handled correctly.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["GUIDED_RULE", "BackwardRule", "GuidedActivations"]

GUIDED_RULE = (
    "guided: grad_in = max(grad_out, 0) * f'(x) at every call of a rectifier-like "
    "activation (ReLU as in Springenberg et al.; the same rule for the others listed); "
    "gating activations keep the ordinary gradient"
)


class BackwardRule:
    """A switch read by every activation's backward: ``guided`` or the normal gradient."""

    def __init__(self) -> None:
        self.guided = False


@dataclass(frozen=True)
class _Activation:
    name: str  # the name recorded in the JSON
    kind: str  # "relu", "hardtanh" (fast masks) or "generic" (derivative by autograd)
    inplace: bool  # the function always works in place (torch.relu_, Tensor.relu_)
    signature: inspect.Signature | None  # to bind F.* arguments; None: (input) only


class _GuidedActivation(torch.autograd.Function):
    """``y = fn(x)`` whose backward follows ``rule`` at the time backward runs.

    ReLU and hardtanh (ReLU6) keep their output and use PyTorch's own backward kernels
    (``threshold_backward``, ``hardtanh_backward``: the derivative is read off the output
    exactly as from the input), then clamp for the guided rule; in-place calls stay in
    place. Other activations keep a copy of their input and differentiate ``fn`` again.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        fn: Callable[[torch.Tensor], torch.Tensor],
        kind: str,
        bounds: tuple[float, float],
        rule: BackwardRule,
        inplace: bool,
    ) -> torch.Tensor:
        ctx.rule = rule
        ctx.kind = kind
        ctx.bounds = bounds
        if kind in ("relu", "hardtanh"):
            if inplace:
                y = torch.relu_(x) if kind == "relu" else F.hardtanh_(x, *bounds)
                ctx.mark_dirty(x)
            else:
                y = fn(x)
            ctx.save_for_backward(y)
            return y
        ctx.fn = fn
        # The caller will overwrite x when the call is in place: keep a private copy then.
        ctx.input_copy = x.detach().clone() if inplace else None
        ctx.save_for_backward(x if not inplace else None)
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (saved,) = ctx.saved_tensors
        if saved is None:
            saved = ctx.input_copy
        if ctx.kind == "relu":
            grad_in = torch.ops.aten.threshold_backward(grad, saved, 0.0)
        elif ctx.kind == "hardtanh":
            low, high = ctx.bounds
            grad_in = torch.ops.aten.hardtanh_backward(grad, saved, low, high)
        else:
            with torch.enable_grad():
                x = saved.detach().requires_grad_(True)
                (grad_in,) = torch.autograd.grad(
                    ctx.fn(x), x, grad.clamp(min=0) if ctx.rule.guided else grad
                )
            return grad_in, None, None, None, None, None
        if ctx.rule.guided:
            grad_in = grad_in.clamp_(min=0)
        return grad_in, None, None, None, None, None


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _table() -> dict[Callable[..., Any], _Activation]:
    table: dict[Callable[..., Any], _Activation] = {}

    def add(fn: Any, name: str, kind: str, inplace: bool = False) -> None:
        if fn is not None and fn not in table:
            table[fn] = _Activation(name, kind, inplace, _signature(fn))

    add(F.relu, "relu", "relu")
    add(torch.relu, "relu", "relu")
    add(torch.Tensor.relu, "relu", "relu")
    add(torch.relu_, "relu", "relu", inplace=True)
    add(getattr(F, "relu_", None), "relu", "relu", inplace=True)
    add(torch.Tensor.relu_, "relu", "relu", inplace=True)
    add(F.relu6, "relu6", "hardtanh")
    add(F.hardtanh, "hardtanh", "hardtanh")
    add(getattr(F, "hardtanh_", None), "hardtanh", "hardtanh", inplace=True)
    for name in ("silu", "gelu", "hardswish", "mish", "leaky_relu", "elu", "selu", "celu"):
        add(getattr(F, name, None), name, "generic")
    return table


_ACTIVATIONS = _table()
_GATE_LIST: list[tuple[Any, str]] = [
    (torch.sigmoid, "sigmoid"),
    (torch.Tensor.sigmoid, "sigmoid"),
    (F.sigmoid, "sigmoid"),
    (torch.tanh, "tanh"),
    (torch.Tensor.tanh, "tanh"),
    (F.tanh, "tanh"),
    (F.hardsigmoid, "hardsigmoid"),
]
_GATES: dict[Any, str] = dict(_GATE_LIST)


class GuidedActivations(TorchFunctionMode):
    """Route activation calls made in this block through switchable backward rules.

    Attributes:
        rule: flip ``rule.guided`` to True before the backward pass that should be guided.
        guided: calls routed, per activation name (e.g. ``{"relu": 17}``).
        unchanged: calls of gating activations left with the normal rule.

    Example:
        >>> mode = GuidedActivations()
        >>> x = torch.randn(1, 4, requires_grad=True)
        >>> with mode:
        ...     y = torch.nn.functional.relu(x).sum()
        >>> mode.rule.guided = True
        >>> (g,) = torch.autograd.grad(y, x)

    """

    def __init__(self) -> None:
        super().__init__()
        self.rule = BackwardRule()
        self.guided: Counter[str] = Counter()
        self.unchanged: Counter[str] = Counter()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        spec = _ACTIVATIONS.get(func)
        if spec is None:
            gate = _GATES.get(func)
            if gate is not None:
                self.unchanged[gate] += 1
            return func(*args, **kwargs)
        x, call, inplace, bounds = _bind(func, spec, args, kwargs)
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            return func(*args, **kwargs)
        self.guided[spec.name] += 1
        if spec.kind in ("relu", "hardtanh"):
            return _GuidedActivation.apply(x, call, spec.kind, bounds, self.rule, inplace)
        out = _GuidedActivation.apply(x, call, spec.kind, bounds, self.rule, inplace)
        if inplace:
            # Keep in-place semantics for callers that ignore the return value.
            x.copy_(out)
            return x
        return out


def _bind(
    func: Callable[..., Any], spec: _Activation, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor], bool, tuple[float, float]]:
    """Split a call into its input, an out-of-place callable and its in-place flag."""
    if spec.signature is None or spec.inplace:
        # Built-ins without a Python signature: keep every argument after the input.
        x = args[0] if args else kwargs.get("input", kwargs.get("self"))
        rest = args[1:]
        options = {k: v for k, v in kwargs.items() if k not in ("input", "self")}
        if spec.kind == "hardtanh":
            low = rest[0] if len(rest) > 0 else options.get("min_val", -1.0)
            high = rest[1] if len(rest) > 1 else options.get("max_val", 1.0)
            bounds = (float(low), float(high))
            return x, lambda t: F.hardtanh(t, *bounds), spec.inplace, bounds
        out_of_place = {
            torch.relu_: torch.relu,
            torch.Tensor.relu_: torch.relu,
        }.get(func, func)
        if spec.inplace and out_of_place is func:  # F.relu_
            out_of_place = F.relu

        def call_builtin(t: torch.Tensor) -> torch.Tensor:
            return out_of_place(t, *rest, **options)

        return x, call_builtin, spec.inplace, (0.0, 0.0)
    bound = spec.signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    x = arguments.pop("input")
    inplace = bool(arguments.pop("inplace", False))
    if spec.name == "relu6":
        bounds = (0.0, 6.0)
    elif spec.kind == "hardtanh":
        bounds = (float(arguments["min_val"]), float(arguments["max_val"]))
    else:
        bounds = (0.0, 0.0)
    has_inplace = "inplace" in spec.signature.parameters

    def call(t: torch.Tensor) -> torch.Tensor:
        if has_inplace:
            return func(t, **arguments, inplace=False)
        return func(t, **arguments)

    return x, call, inplace, bounds
