"""Integrated Gradients take as many steps per image as completeness needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from camcli.cli import main
from camcli.methods.integrated import adaptive_integrated_gradients, integrated_gradients

from .conftest import TINY, TinyNet, random_photo, save_image


def batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(3, 3, 32, 32) * 2
    return model, x, torch.full_like(x, -2.0), torch.tensor([3, 5, 9])


def test_tripled_steps_reuse_the_gradients_and_equal_the_finer_rule():
    """4 steps refined twice are exactly the 36 midpoints: the 4 and 8 more per interval."""
    model, x, b, targets = batch()
    adaptive = adaptive_integrated_gradients(
        model, x, b, targets, steps=4, chunk_size=7, tolerance=0.0, max_steps=36, rule="midpoint"
    )
    fixed, differences = integrated_gradients(model, x, b, targets, steps=36, chunk_size=7)
    assert adaptive.steps.tolist() == [36, 36, 36]
    assert adaptive.passes.tolist() == [36, 36, 36]  # 4 + 8 + 24: nothing computed twice
    torch.testing.assert_close(adaptive.attributions, fixed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(adaptive.differences, differences)


@pytest.mark.parametrize("rule", ["gausslegendre", "midpoint"])
def test_each_image_stops_at_the_tolerance_and_the_error_reported_is_its_own(rule: str):
    model, x, b, targets = batch()
    coarse = adaptive_integrated_gradients(
        model, x, b, targets, steps=2, chunk_size=16, max_steps=2, rule=rule
    )
    tolerance = float(coarse.errors.median())  # some images meet it at 2 steps, some do not
    result = adaptive_integrated_gradients(
        model, x, b, targets, steps=2, chunk_size=16, tolerance=tolerance, max_steps=4374,
        rule=rule,
    )  # fmt: skip
    for i in range(3):
        total = float(result.attributions[i].sum())
        error = abs(total - float(result.differences[i])) / abs(float(result.differences[i]))
        assert error == pytest.approx(float(result.errors[i]), rel=1e-4, abs=1e-7)
        if float(coarse.errors[i]) <= tolerance:
            assert int(result.steps[i]) == 2  # met it at once: no more passes
        else:
            assert int(result.steps[i]) > 2
            assert error <= tolerance or int(result.steps[i]) * 3 > 4374
    assert len(set(result.steps.tolist())) > 1  # per image, not per batch


def test_the_record_gives_the_steps_used_and_the_error_reached(tmp_path: Path):
    root = tmp_path / "photos"
    for i in range(2):
        save_image(root / f"p{i}.png", random_photo(i, 40, 30))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["explain", str(root), "-o", str(out), "--model", TINY, "-j", "0", "--method", "ig",
         "--ig-steps", "4", "--ig-tolerance", "0.001", "--ig-max-steps", "108", "--jsonl"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for line in result.stdout.splitlines():
        ig = json.loads(line)["integrated_gradients"]
        assert ig["start_steps"] == 4 and ig["tolerance"] == 0.001 and ig["max_steps"] == 108
        assert ig["steps"] in (4, 12, 36) and ig["passes"] <= 108  # the bound is on passes
        # Stopped at the tolerance, or because the next level (3 x the points, fresh
        # Gauss-Legendre nodes) would pass the bound.
        assert ig["completeness_error"] <= 0.001 or ig["passes"] + 3 * ig["steps"] > 108


def test_gauss_legendre_equals_captums_default_and_beats_midpoints_on_a_smooth_path():
    from captum.attr import IntegratedGradients

    model, x, b, targets = batch()
    ours, _ = integrated_gradients(model, x, b, targets, 8, 16, rule="gausslegendre")
    theirs = IntegratedGradients(model).attribute(
        x, baselines=b, target=targets, n_steps=8, method="gausslegendre"
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)
    # a linear model is integrated exactly by both; a smooth one (tanh) far better by GL
    torch.manual_seed(1)
    smooth = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    )
    xs = torch.randn(4, 3, 2, 2) * 3
    bs = torch.zeros_like(xs)
    t = torch.tensor([0, 1, 2, 0])
    errors = {
        rule: adaptive_integrated_gradients(smooth, xs, bs, t, 6, 8, max_steps=6, rule=rule).errors
        for rule in ("gausslegendre", "midpoint")
    }
    assert float(errors["gausslegendre"].max()) < float(errors["midpoint"].max())


@pytest.mark.parametrize("rule", ["midpoint", "gausslegendre"])
@pytest.mark.parametrize("max_steps", [4, 15, 16, 52, 53, 160])
def test_no_image_takes_more_passes_than_the_bound(rule: str, max_steps: int) -> None:
    """--ig-max-steps bounds the passes an image costs over all its levels, whatever the rule."""
    torch.manual_seed(0)
    # ReLUs: the path integrand has kinks, so no level is exact and every image refines.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    x, b = torch.randn(3, 3, 4, 4), torch.zeros(3, 3, 4, 4)
    targets = torch.tensor([0, 1, 2])
    result = adaptive_integrated_gradients(
        model, x, b, targets, steps=4, chunk_size=5, tolerance=0.0, max_steps=max_steps, rule=rule
    )
    assert int(result.passes.max()) <= max(max_steps, 4)
    assert (result.errors > 0).all()
    # And it goes as far as the bound allows: the next level would not have fitted.
    extra = 2 * int(result.steps[0]) if rule == "midpoint" else 3 * int(result.steps[0])
    assert int(result.passes[0]) + extra > max_steps
