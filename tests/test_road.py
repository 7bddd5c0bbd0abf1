"""ROAD: the imputation equals Quantus's (an exact sparse solve); the curves on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from quantus.functions.perturb_func import noisy_linear_imputation
from torch import nn

from camcli.methods.road import ROAD_FRACTIONS, impute, road


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_imputation_equals_quantus_noisy_linear_imputation_without_noise(share: float):
    rng = np.random.default_rng(int(share * 10))
    image = rng.random((3, 40, 36))
    removed = rng.random((40, 36)) < share
    theirs = noisy_linear_imputation(image.copy(), np.flatnonzero(removed.reshape(-1)), noise=0.0)
    ours = (
        impute(
            torch.tensor(image, dtype=torch.float32)[None],
            torch.from_numpy(removed)[None],
            tolerance=1e-7,
        )[0]
        .double()
        .numpy()
    )
    assert np.abs(ours - theirs).max() < 1e-4
    # Kept pixels are untouched.
    assert np.array_equal(ours[:, ~removed], image[:, ~removed].astype(np.float32))
    # The default tolerance stays far below ROAD's noise (0.01).
    default = impute(
        torch.tensor(image, dtype=torch.float32)[None], torch.from_numpy(removed)[None]
    )
    assert np.abs(default[0].double().numpy() - theirs).max() < 2e-3


def test_a_removed_pixel_takes_the_weighted_mean_of_its_neighbours():
    image = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = True
    # Edges 1, 3, 5, 7 weigh 1/6; corners 0, 2, 6, 8 weigh 1/12: (16/6 + 16/12) / 1 = 4.
    assert impute(image, removed, tolerance=1e-8)[0, 0, 1, 1].item() == pytest.approx(4.0)
    removed[0] = False
    removed[0, 0, 0] = True  # a corner: neighbours 1 (1/6), 3 (1/6), 4 (1/12)
    expected = (1 / 6 + 3 / 6 + 4 / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    assert impute(image, removed, tolerance=1e-8)[0, 0, 0, 0].item() == pytest.approx(expected)


class MeanBrightness(nn.Module):
    """Two logits: z and -z, z = 10 * (mean of the left half - mean of the right half)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        z = 10 * (x[..., :half].mean(dim=(1, 2, 3)) - x[..., half:].mean(dim=(1, 2, 3)))
        return torch.stack([z, -z], dim=1)


def test_road_curves_follow_what_the_map_removes():
    torch.manual_seed(0)
    # A bright square on the left half; the right half dark: class 0 wins clearly.
    x = torch.full((2, 3, 32, 32), -1.0)
    x[:, :, 8:24, 4:14] = 1.0
    right = torch.zeros(2, 32, 32)
    right[:, 8:24, 4:14] = 1.0  # the map of the evidence
    smooth = F.avg_pool2d(right[:, None], 5, 1, 2)[:, 0] + 1e-3 * torch.rand(2, 32, 32)
    wrong = 1 - smooth
    out = road(
        MeanBrightness(),
        x,
        torch.zeros(2, dtype=torch.long),
        {"right": smooth, "wrong": wrong},
        seeds=[1, 2],
        chunk_size=5,
    )
    assert out["right"]["road_morf_curve"].shape == (2, len(ROAD_FRACTIONS))
    # Removing the evidence first (MoRF) hurts; removing the rest first (LeRF) does not.
    assert (out["right"]["road_morf"] < out["wrong"]["road_morf"]).all()
    assert (out["right"]["road_lerf"] > out["wrong"]["road_lerf"]).all()
    # Means of the curves; the same seeds give the same numbers.
    again = road(
        MeanBrightness(), x, torch.zeros(2, dtype=torch.long), {"right": smooth}, seeds=[1, 2]
    )
    torch.testing.assert_close(again["right"]["road_morf"], out["right"]["road_morf"])
    torch.testing.assert_close(
        out["right"]["road_lerf"], out["right"]["road_lerf_curve"].mean(dim=1)
    )
