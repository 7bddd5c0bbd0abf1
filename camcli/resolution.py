"""Explaining at another input size than the weights' default (``--input-size``).

A fully convolutional classifier (convolutions, then global pooling and a linear head)
accepts any input size: at twice the side its last feature map has four times the cells, so
its CAMs are sharper. A head that needs a fixed size (a flattening classifier, a vision
transformer's position embeddings) cannot; that is found by one forward pass at the new
size.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from camcli.hooks import frozen_eval
from camcli.models import LoadedModel

__all__ = ["FixedInputSize", "with_input_size"]


class FixedInputSize(ValueError):
    """The model cannot run at the requested input size."""


def with_input_size(model: LoadedModel, size: int) -> LoadedModel:
    """The model with its preprocessing set to ``size`` x ``size`` inputs.

    The crop mode's resize scales with it, so a centre crop keeps the same share of the image.

    Raises:
        FixedInputSize: when one forward pass at that size fails or gives another number of
            classes (one sentence naming the option and the model's default size).

    """
    prep = model.preprocessing
    probe = torch.zeros(1, 3, size, size)
    try:
        with frozen_eval(model.module), torch.no_grad():
            classes = model.module(probe).shape[-1]
        expected = model.module(torch.zeros(1, 3, prep.size, prep.size)).shape[-1]
    except (RuntimeError, AssertionError, ValueError):
        classes, expected = -1, 0
    if classes != expected:
        raise FixedInputSize(
            f"{model.name} needs its default input size {prep.size} (its head has a fixed "
            "size); leave out --input-size"
        )
    resize = round(prep.resize_size * size / prep.size)
    return replace(model, preprocessing=replace(prep, size=size, resize_size=resize))
