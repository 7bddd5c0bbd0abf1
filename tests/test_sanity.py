"""Cascading randomisation: the stages, the copy they run on, the similarities."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch
import torchvision
from scipy.stats import spearmanr
from torch import nn

from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.metrics import pixel_order_saliency
from camcli.methods.sanity import SanityStages, _groups, rank_levels, similarity, stage_units
from tests.conftest import TinyNet


def test_units_open_containers_and_stages_go_top_down():
    model = torchvision.models.resnet18()
    units = stage_units(model)
    assert units[:3] == ["conv1", "bn1", "layer1.0"] and units[-2:] == ["layer4.1", "fc"]
    groups = _groups(units, 5)
    assert groups[0] == ["fc"]
    assert [g[-1] for g in groups] == ["fc", "layer4.0", "layer2.1", "layer1.1", "conv1"]
    assert sorted(u for g in groups for u in g) == sorted(units)  # every unit, once
    vgg = torchvision.models.vgg11()
    assert _groups(stage_units(vgg), 3)[0] == ["classifier.6"]  # the last Linear


def test_cascade_randomises_cumulatively_and_restores_the_model():
    torch.manual_seed(0)
    model = TinyNet().eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    stages = SanityStages(model, stages=3, seed=0)
    assert stages.names == ["fc", "features.3", "features.0"]
    seen = []
    for name, randomised in stages.cascade():
        state = randomised.state_dict()
        seen.append((name, {k for k in original if not torch.equal(original[k], state[k])}))
    assert seen[0] == ("fc", {"fc.weight", "fc.bias"})
    assert seen[1][1] == {"fc.weight", "fc.bias", "features.3.weight", "features.3.bias"}
    assert {"features.0.weight", "features.0.bias"} <= seen[2][1]
    # Afterwards the copy is the model again, and the model itself never changed.
    for k, v in stages.module.state_dict().items():
        assert torch.equal(v, original[k])
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k])
    # The same seed randomises alike.
    again = SanityStages(model, stages=3, seed=0)
    for a, b in zip(stages.stages, again.stages, strict=True):
        assert all(torch.equal(a.values[k], b.values[k]) for k in a.values)


def test_similarity_is_spearman_of_magnitudes_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(24, 24))
    rho, ssim = similarity(a, a)
    assert rho == pytest.approx(1.0) and ssim == pytest.approx(1.0)
    # Magnitudes: a sign flip changes nothing.
    assert similarity(a, -a)[0] == pytest.approx(1.0)
    b = rng.normal(size=(24, 24))
    rho, _ = similarity(a, b)
    levels_a, levels_b = rank_levels(np.abs(a)), rank_levels(np.abs(b))
    assert rho == pytest.approx(spearmanr(levels_a.ravel(), levels_b.ravel()).statistic)
    # The grid is fine: it moves the correlation of raw magnitudes by less than 1e-4.
    assert rho == pytest.approx(spearmanr(np.abs(a).ravel(), np.abs(b).ravel()).statistic, abs=1e-4)
    assert similarity(a, np.zeros((24, 24)))[0] == 0.0  # a constant map has no ranking


def test_float_rounding_does_not_reorder_near_ties():
    """An upsampled map has blocks of equal values; rounding noise must not rank them."""
    rng = np.random.default_rng(3)
    coarse = rng.random((4, 4))
    blocky = np.kron(coarse, np.ones((6, 6)))  # 24 x 24, ties in blocks of 36
    other = rng.random((24, 24))
    # Rounding noise far under the grid (a group that straddles a grid line can still split).
    noisy = blocky * (1 + 1e-8 * rng.standard_normal(blocky.shape))
    exact, _ = similarity(blocky, other)
    assert similarity(noisy, other)[0] == exact
    # Ranked as they come, the near-ties would have moved the correlation.
    raw = spearmanr(noisy.ravel(), other.ravel()).statistic
    assert abs(raw - spearmanr(blocky.ravel(), other.ravel()).statistic) > 1e-3


def test_gradients_decorrelate_under_randomisation_and_match_quantus_spearman():
    """Adebayo et al.'s test on a small trained-looking model, with Quantus as the oracle.

    Quantus's ModelParameterRandomisation re-initialises layers from the top with
    reset_parameters and compares explanations by Spearman correlation; camcli's first
    stage (the classifier) and its similarity give the same number for the same
    randomised model.
    """
    torch.manual_seed(1)
    model = TinyNet().eval()
    x = torch.randn(3, 3, 32, 32)
    options = MethodOptions(chunk_size=8)
    targets = torch.tensor([1, 2, 3])
    before = compute_methods(model, x, ["features.3"], ["gradcam"], targets, options)
    stages = SanityStages(model, stages=2, seed=0)
    ours = []
    for _name, randomised in stages.cascade():
        after = compute_methods(randomised, x, ["features.3"], ["gradcam"], targets, options)
        a = pixel_order_saliency("gradcam", before.unit_map("gradcam"), 32)
        b = pixel_order_saliency("gradcam", after.unit_map("gradcam"), 32)
        ours.append([similarity(a[i].numpy(), b[i].numpy())[0] for i in range(3)])
        # On the magnitudes as camcli ranks them (float rounding makes no order).
        theirs = quantus.similarity_func.correlation_spearman(
            rank_levels(np.abs(a[0].numpy())).ravel(), rank_levels(np.abs(b[0].numpy())).ravel()
        )
        assert ours[-1][0] == pytest.approx(theirs, abs=1e-9)
        # ... and within 1e-4 of Quantus on the magnitudes as they come.
        raw = quantus.similarity_func.correlation_spearman(
            np.abs(a[0].numpy()).ravel(), np.abs(b[0].numpy()).ravel()
        )
        assert ours[-1][0] == pytest.approx(raw, abs=1e-4)
    # Once the whole model is random, the maps no longer rank pixels like the original.
    assert np.mean(ours[-1]) < 0.9


def test_a_parameter_without_reset_is_drawn_with_its_own_scale():
    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.full((4,), 3.0) + torch.arange(4.0))
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x + self.token)

    model = WithToken()
    stages = SanityStages(model, stages=3, seed=0)
    assert stages.names == ["fc", "parameters"]
    token = stages.stages[1].values["token"]
    assert not torch.equal(token, model.token.detach())
