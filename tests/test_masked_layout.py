"""Masked and perturbed batches keep the input's memory layout (channels-last on the CPU).

A chunk built by masking a channels-last batch must reach the model in channels-last too:
otherwise every chunked pass pays a layout conversion in each convolution (the CPU default
is channels-last, where the embedded model runs about 4 x faster).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.names import METRICS

from .conftest import TinyNet


class Recording(nn.Module):
    """The tiny model, recording the memory layout of every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet()
        self.layouts: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1 or x.shape[1] > 1:  # a 1 x C x 1 x 1 tensor has every layout
            self.layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.net(x)


@pytest.mark.parametrize(
    ("methods", "metrics"),
    [
        (["rise"], ()),
        (["scorecam"], ()),
        (["smoothgrad"], ()),
        (["ig"], ()),
        (["lrp"], ()),
        (["gradcam"], METRICS),
    ],
)
def test_every_pass_of_a_chunked_method_is_channels_last(methods: list[str], metrics: tuple):
    torch.manual_seed(0)
    model = Recording().eval().to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    options = MethodOptions(
        chunk_size=5, rise_masks=12, smooth_samples=4, ig_steps=4, ig_max_steps=4,
        metrics=metrics, metric_steps=4,
    )  # fmt: skip
    compute_methods(model, x, ["net.features.3"], methods, None, options)
    assert len(model.layouts) >= 2  # the batch's pass and the method's own
    assert all(model.layouts), model.layouts
