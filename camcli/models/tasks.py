"""What a model does (classify, detect, segment), found from what it returns.

* a classifier takes the normalised batch and returns ``N x C`` logits;
* a detector (torchvision's convention) takes a list of ``3 x H x W`` float images in
  [0, 1] and returns one dict per image with ``boxes``, ``labels`` and ``scores``;
* a segmenter takes the normalised batch and returns ``{"out": N x C x H x W}`` logits, or
  that tensor.

Detectors and segmenters are also loaded from torchvision's zoo by name, with their COCO or
VOC classes (index 0 is the background in both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from camcli.models.preprocessing import Preprocessing

__all__ = [
    "TASKS",
    "TASK_NOUNS",
    "Task",
    "TaskMismatch",
    "dense_default_layer",
    "describe_output",
    "probe_task",
    "task_of_output",
]

Task = Literal["classify", "detect", "segment"]
TASKS: tuple[Task, ...] = ("classify", "detect", "segment")
TASK_NOUNS: dict[str, str] = {
    "classify": "classifier",
    "detect": "detector",
    "segment": "segmenter",
}
"""What a model of each task is called in messages."""
CONVENTIONS = (
    "camcli explains classifiers (N x C logits), detectors (one dict per image with boxes, "
    "labels and scores, as torchvision's) and segmenters ({'out': N x C x H x W} logits, or "
    "that tensor)"
)


def describe_output(output: Any) -> str:
    """A short description of what a model returned, for error messages."""
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, dict):
        keys = ", ".join(repr(k) for k in list(output)[:6])
        return f"a dict with keys {keys}"
    if isinstance(output, (list, tuple)):
        inner = describe_output(output[0]) if output else "nothing"
        return f"a {type(output).__name__} of {len(output)} (the first: {inner})"
    return f"a {type(output).__name__}"


class TaskMismatch(ValueError):
    """The model's output follows none of the three conventions; the message names it."""


def task_of_output(output: Any) -> tuple[Task, int]:
    """The task an output shows, and its number of classes (0 when a detector's is unknown).

    Raises:
        TaskMismatch: for an output of none of the conventions.
    """
    if (
        isinstance(output, (list, tuple))
        and output
        and all(isinstance(o, dict) and {"boxes", "labels", "scores"} <= set(o) for o in output)
    ):
        return "detect", 0
    if isinstance(output, dict) and isinstance(output.get("out"), torch.Tensor):
        output = output["out"]
        if output.dim() == 4:
            return "segment", int(output.shape[1])
    elif isinstance(output, torch.Tensor):
        if output.dim() == 4:
            return "segment", int(output.shape[1])
        if output.dim() in (1, 2):
            return "classify", 1 if output.dim() == 1 else int(output.shape[1])
    raise TaskMismatch(f"the model returned {describe_output(output)}; {CONVENTIONS}")


def probe_task(module: nn.Module, prep: Preprocessing) -> tuple[Task, int]:
    """Run the model once on a blank input and read its task from the output.

    A detector gets a list of one grey image; a classifier or segmenter the normalised batch
    (a tensor is tried first: torchvision's detectors take a batch tensor as a list too).

    Raises:
        TaskMismatch: the output follows none of the conventions, or the model fails.
    """
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    blank = torch.full((1, prep.channels, prep.size, prep.size), 0.5, device=device)
    modes = [(part, part.training) for part in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            try:
                output = module(blank)
            except Exception as first:
                try:
                    output = module([blank[0]])
                except Exception:
                    raise TaskMismatch(
                        f"the model fails on a {prep.channels}-channel {prep.size} x {prep.size} "
                        f"input ({type(first).__name__}: {str(first).splitlines()[0][:160]})"
                        "; set --input-channels and --input-size"
                    ) from None
    finally:
        for part, training in modes:
            part.training = training
    return task_of_output(output)


def dense_default_layer(module: nn.Module, run: Callable[[], Any], classes: int) -> str | None:
    """The layer a detector's or segmenter's maps use unless ``--layer`` says otherwise.

    The last module, in the order they run, that runs once and outputs one ``C x h x w`` map
    for the one image of ``run`` (a blank pass): inside ``backbone.body`` or ``backbone`` when
    the model has them (torchvision's; the heads after them see proposals, not the image),
    and not the segmenter's classifier (``C`` equal to the classes).
    """
    names = dict((id(m), n) for n, m in module.named_modules() if n)
    order: list[str] = []
    calls: dict[str, int] = {}
    handles = []

    def hook(part: nn.Module, _inputs: Any, output: Any) -> None:
        name = names[id(part)]
        calls[name] = calls.get(name, 0) + 1
        one_map = isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[0] == 1
        if one_map and output.shape[1] != classes:
            order.append(name)

    for part in module.modules():
        if id(part) in names:
            handles.append(part.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    candidates = [n for n in order if calls[n] == 1]
    for scope in ("backbone.body.", "backbone."):
        inside = [n for n in candidates if n.startswith(scope)]
        if inside:
            return inside[-1]
    return candidates[-1] if candidates else None
