"""A model as every layer above the registry receives it, and local weight files.

Every model comes back as a :class:`LoadedModel`: the module in eval mode, the preprocessing its
weights were trained with, its class names and the layer Grad-CAM uses unless told otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camcli.models.classes import ClassIndex
from camcli.models.preprocessing import Preprocessing

__all__ = [
    "LoadedModel",
    "ModelLoader",
    "ModelUnavailable",
    "Preprocessing",
    "load_safetensors",
    "load_state_dict_file",
]


class ModelUnavailable(RuntimeError):
    """The model or its weights cannot be loaded; the message says what to do."""


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
        task: ``classify``, ``detect`` or ``segment`` (see :mod:`camcli.models.tasks`); for a
            detector or segmenter, class index 0 is the background.
        pooled: a segmenter run as a classifier (``--task classify``): its logits are the
            per-pixel logits averaged over the image.

    """

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    classes: ClassIndex
    default_layer: str
    weights: str
    binary: bool = False
    classes_source: str | None = None
    task: str = "classify"
    pooled: bool = False


ModelLoader = Callable[[Path | None, bool], LoadedModel]


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


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` state dict (a format that holds tensors only, no code).

    Raises:
        ModelUnavailable: when the file is missing or not a safetensors file.

    """
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelUnavailable(f"weights file {path} does not exist")
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(f"cannot read {path} as a safetensors file: {reason}") from None
