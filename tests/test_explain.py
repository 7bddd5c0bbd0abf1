"""Grad-CAM and guided-backprop maths: hand-computed answers, invariants, a reference library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from camcli.cli import main
from camcli.methods.forward import explain_batch, grad_cam, normalise_maps, top_predictions
from camcli.models.hooks import LayerCapture, LayerUnusable, frozen_eval

from .conftest import TINY, TinyNet


class FeatureHead(nn.Module):
    """Input *is* the feature map: layer ``feat`` (identity) -> optional ReLU -> GAP -> linear."""

    def __init__(self, weight: torch.Tensor, relu_after: bool = False) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.relu_after = relu_after
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.feat(x)
        if self.relu_after:
            y = F.relu(y, inplace=True)  # DenseNet's pattern: functional, in place
        return self.fc(y.mean(dim=(2, 3)))


def test_grad_cam_matches_hand_computation():
    activations = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 0.0]]]])
    model = FeatureHead(torch.tensor([[1.0, -1.0], [0.0, 1.0]]))
    result = explain_batch(model, activations, "feat", torch.tensor([0]), guided=False)
    # weights = W[0] / 4 = (0.25, -0.25); cam = relu(0.25 * (A0 - A1))
    expected = torch.tensor([[[0.0, 0.5], [0.75, 1.0]]])
    torch.testing.assert_close(result.cams["feat"], expected)
    torch.testing.assert_close(normalise_maps(result.cams["feat"]), expected)
    # class 1: weights (0, 0.25): cam = 0.25 * A1 = [[1, 0], [0, 0]]
    other = explain_batch(model, activations, "feat", torch.tensor([1]), guided=False)
    torch.testing.assert_close(other.cams["feat"], torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))


def test_functional_inplace_relu_after_layer_does_not_change_captured_activation():
    activations = torch.tensor([[[[-2.0, 1.0], [3.0, -1.0]]]])
    model = FeatureHead(torch.tensor([[2.0]]), relu_after=True)
    result = explain_batch(model, activations, "feat", torch.tensor([0]), guided=True)
    # d logit / dA = 2/4 * [A > 0] -> channel weight = mean = 0.5 * 2/4 = 0.25,
    # applied to the *pre-ReLU* activation: relu(0.25 * A)
    torch.testing.assert_close(result.cams["feat"], torch.tensor([[[0.0, 0.25], [0.75, 0.0]]]))


def test_all_zero_map_stays_zero_without_nan():
    activations = torch.ones(2, 1, 3, 3)
    model = FeatureHead(torch.tensor([[-1.0]]))
    result = explain_batch(model, activations, "feat", torch.tensor([0, 0]), guided=False)
    maps = normalise_maps(result.cams["feat"])
    assert torch.equal(maps, torch.zeros(2, 3, 3))
    assert not torch.isnan(normalise_maps(torch.zeros(1, 4, 4))).any()


def test_grad_cam_pure_function_on_4x4():
    a = torch.arange(32, dtype=torch.float32).view(1, 2, 4, 4)
    g = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), -0.5)]).unsqueeze(0)
    expected = (a[0, 0] - 0.5 * a[0, 1]).clamp(min=0)
    torch.testing.assert_close(grad_cam(a, g)[0], expected)


def test_batch_result_equals_per_image_result_even_from_train_mode():
    torch.manual_seed(1)
    model = TinyNet().train()  # BatchNorm in train mode would couple images
    x = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([3, 1, 4, 1])
    batch = explain_batch(model, x, "features.3", targets)
    for i in range(4):
        single = explain_batch(model, x[i : i + 1], "features.3", targets[i : i + 1])
        torch.testing.assert_close(batch.cams["features.3"][i], single.cams["features.3"][0])
        torch.testing.assert_close(batch.guided[i], single.guided[0])
    assert model.training, "the caller's train mode must be restored"


def test_model_state_and_hooks_restored_and_no_parameter_gradients():
    model = TinyNet().train()
    model.fc.weight.requires_grad_(True)
    model.features[0].weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    explain_batch(model, torch.randn(2, 3, 32, 32), "features.3")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(not m._backward_hooks for m in model.modules())


def test_hooks_removed_when_forward_fails():
    class Broken(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.features(x)
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        explain_batch(model, torch.randn(1, 3, 32, 32), "features.3")
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training


def test_unusable_layers_are_refused_with_a_reason():
    model = TinyNet()
    with pytest.raises(LayerUnusable, match="a map needs a C x H x W feature map"):
        explain_batch(model, torch.randn(1, 3, 32, 32), "fc")
    relu_twice = nn.Sequential()
    relu = nn.ReLU()
    relu_twice.add_module("a", nn.Conv2d(3, 3, 1))
    relu_twice.add_module("r", relu)
    relu_twice.add_module("b", nn.Conv2d(3, 3, 1))
    relu_twice.add_module("r2", relu)  # the same module object, run twice
    with pytest.raises(LayerUnusable, match="more than once"), LayerCapture(relu_twice, ["r"]):
        relu_twice(torch.randn(1, 3, 4, 4))
    assert not relu._forward_hooks


def test_inference_mode_is_refused_with_a_reason():
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        explain_batch(TinyNet(), torch.randn(1, 3, 32, 32), "features.3")


def test_inputs_made_in_inference_mode_are_accepted():
    with torch.inference_mode():
        x = torch.randn(1, 3, 32, 32)
    result = explain_batch(TinyNet(), x, "features.3", guided=True)
    assert result.guided is not None and result.guided.abs().sum() > 0


def test_targets_must_be_one_per_image():
    with pytest.raises(ValueError, match="one class per image"):
        explain_batch(TinyNet(), torch.randn(3, 3, 32, 32), "features.3", torch.tensor([1]))


def test_each_image_gets_its_own_target_in_one_batch():
    model = TinyNet()
    x = torch.randn(1, 3, 32, 32).repeat(3, 1, 1, 1)
    result = explain_batch(model, x, "features.3", torch.tensor([5, 9, 5]))
    cams = result.cams["features.3"]
    torch.testing.assert_close(cams[0], cams[2])
    assert not torch.allclose(cams[0], cams[1])
    assert result.targets.tolist() == [5, 9, 5]


def test_default_target_is_top1_and_top_k_comes_from_same_logits():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 32, 32)
    result = explain_batch(model, x, "features.3")
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(result.logits, logits)
    assert result.targets.tolist() == logits.argmax(1).tolist()
    top = top_predictions(result.logits, 3)
    assert top.indices[:, 0].tolist() == result.targets.tolist()
    torch.testing.assert_close(top.probabilities.sum(1) <= 1.0, torch.ones(2, dtype=torch.bool))


def test_frozen_eval_restores_after_error():
    model = TinyNet().train()
    with pytest.raises(KeyError), frozen_eval(model):
        assert not model.training
        raise KeyError("x")
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_a_layer_that_does_not_run_is_refused_with_a_reason():
    class TrainOnlyBranch(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.aux = nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.features(x)
            if self.training:
                self.aux(features)
            return self.fc(torch.flatten(self.pool(features), 1))

    with pytest.raises(LayerUnusable, match="did not run in the forward pass"):
        explain_batch(TrainOnlyBranch(), torch.randn(1, 3, 32, 32), "aux")


def test_a_rewritten_record_takes_its_stale_pictures_with_it(image_folder, tmp_path: Path):
    """Re-run with other methods: the old methods' files go; other commands' files stay."""
    root = image_folder({"tabby/a.jpg": (50, 40)})
    out = tmp_path / "out"

    def run(*args: str) -> None:
        result = CliRunner().invoke(main, [*args, str(root), "-o", str(out), "-m", TINY])
        assert result.exit_code == 0, result.output

    run("explain", "--method", "gradcam,guided")
    run("features", "--layer", "features.3")
    features = sorted(p.name for p in (out / "tabby").iterdir() if ".features." in p.name)
    assert (out / "tabby" / "a.jpg.gradcam.png").exists()
    assert (out / "tabby" / "a.jpg.guided.png").exists()
    run("explain", "--method", "gradcam++")
    names = sorted(p.name for p in (out / "tabby").iterdir())
    assert "a.jpg.gradcam.png" not in names and "a.jpg.gradcam.overlay.png" not in names
    assert "a.jpg.guided.png" not in names
    assert {"a.jpg.gradcam++.png", "a.jpg.gradcam++.overlay.png", "a.jpg.json"} <= set(names)
    assert sorted(n for n in names if ".features." in n) == features  # another command's
    record = json.loads((out / "tabby" / "a.jpg.json").read_text())
    assert set(record["files"]) == {"gradcam++"}
