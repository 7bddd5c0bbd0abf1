"""LRP, RISE, Integrated Gradients and the faithfulness scores: hand-computed cases,
independent references (zennit, captum), chunking, and their CLI options."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner, Result
from torch import nn

from camcli.cli import main
from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.integrated import integrated_gradients
from camcli.methods.lrp import LrpNotApplicable, lrp
from camcli.methods.metrics import faithfulness
from camcli.methods.names import parse_metrics
from camcli.methods.rise import RiseMasks, rise
from camcli.models.loaded import LoadedModel, Preprocessing
from camcli.models.registry import register_model, unregister_model

from .conftest import TINY, TinyNet

NEW = ["rise", "lrp", "ig"]


def _bias_free() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5, bias=False),
    ).eval()


class _Counting:
    """Records the batch size of every forward pass of a model."""

    def __init__(self, model: nn.Module) -> None:
        self.sizes: list[int] = []
        self.handle = model.register_forward_pre_hook(
            lambda _m, args: self.sizes.append(args[0].shape[0])
        )


# --- LRP -------------------------------------------------------------------------------------


def test_lrp_by_hand_on_one_linear_layer():
    """The first layer takes the flat rule: each input gets logit / fan-in."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.5], [0.0, 1.0, 1.0, 1.0]]))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    relevance, logit = lrp(model, x, torch.tensor([0]), chunk_size=4)
    expected_logit = 1 - 4 + 9 + 2
    assert float(logit[0]) == pytest.approx(expected_logit)
    torch.testing.assert_close(relevance, torch.full_like(x, expected_logit / 4))


def test_lrp_conserves_the_logit_on_a_bias_free_model():
    model = _bias_free()
    x = torch.randn(3, 3, 12, 12)
    relevance, logits = lrp(model, x, torch.tensor([0, 3, 4]), chunk_size=2)
    torch.testing.assert_close(logits, model(x).gather(1, torch.tensor([[0], [3], [4]]))[:, 0])
    torch.testing.assert_close(relevance.flatten(1).sum(1), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrp_agrees_with_zennits_attributor_on_resnet(channels_last: bool):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([1, 7, 42])
    reference = copy.deepcopy(model)
    with Gradient(reference, EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attributor:
        _, expected = attributor(x, torch.eye(1000)[targets])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    result = compute_methods(model, x, ["layer4"], ["lrp"], targets, MethodOptions(chunk_size=2))
    logits = result.checks["lrp_logit"]
    torch.testing.assert_close(
        result.images["lrp"], expected * logits.view(-1, 1, 1, 1), rtol=1e-3, atol=1e-6
    )
    assert result.lrp_canonizers == ["ResNetCanonizer"]


def test_lrp_canonizers_keep_the_embedded_models_function_and_are_undone():
    from zennit.composites import EpsilonPlusFlat

    from camcli.methods.lrp import lrp_canonizers
    from camcli.models.registry import EMBEDDED_MODEL, load_model

    model = load_model(EMBEDDED_MODEL, offline=True).module.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        composite = EpsilonPlusFlat(canonizers=lrp_canonizers(model))
        with composite.context(model) as modified:
            canonized = modified(x)
        after = model(x)
    torch.testing.assert_close(canonized, before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, before)
    assert {type(c).__name__ for c in lrp_canonizers(model)} == {
        "ExactMergeBatchNorm",
        "TimmResidualCanonizer",
    }


def test_lrp_refuses_densenet_and_a_batch_norm_without_a_layer_before_it():
    torch.manual_seed(0)
    densenet = torchvision.models.densenet121(weights=None).eval()
    with pytest.raises(LrpNotApplicable, match=r"DenseNet.*use gradcam"):
        compute_methods(
            densenet, torch.randn(1, 3, 32, 32), ["features"], ["lrp"], None, MethodOptions()
        )
    norm_first = nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3)
    )
    norm_first(torch.randn(1, 3, 8, 8))
    with pytest.raises(LrpNotApplicable, match="batch norm '0'"):
        lrp(norm_first.eval(), torch.randn(1, 3, 8, 8), torch.tensor([0]), 4)


# --- Integrated Gradients --------------------------------------------------------------------


def test_integrated_gradients_of_a_linear_model_by_hand():
    """f(x) = w . x: every path gradient is w, so IG = (x - b) * w exactly."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.randn(2, 3, 2, 2)
    b = torch.full_like(x, -1.0)
    attributions, differences = integrated_gradients(
        model, x, b, torch.tensor([2, 0]), steps=5, chunk_size=3
    )
    w = model[1].weight.detach()
    expected = (x - b) * torch.stack([w[2], w[0]]).view(2, 3, 2, 2)
    torch.testing.assert_close(attributions, expected)
    torch.testing.assert_close(differences, expected.flatten(1).sum(1))


def test_integrated_gradients_completeness_within_one_percent_at_32_steps():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(3, 3, 32, 32)
    baseline = torch.full_like(x, -2.0)  # black for the tiny model's normalisation
    attributions, differences = integrated_gradients(
        model, x, baseline, torch.tensor([3, 5, 9]), steps=32, chunk_size=16
    )
    error = (attributions.flatten(1).sum(1) - differences).abs() / differences.abs()
    # Measured: 0.14 %, 1.14 %, 0.09 % (midpoint rule through ReLU kinks).
    assert float(error.mean()) < 0.01 and float(error.max()) < 0.02, error


def test_integrated_gradients_agree_with_captum():
    from captum.attr import IntegratedGradients

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([1, 2])
    cases = [
        (4, 0.05, 4, "midpoint", "riemann_middle"),  # fixed steps
        (12, 0.0, 12, "midpoint", "riemann_middle"),  # refined once: 4 + 8 new midpoints
        (4, 0.05, 4, "gausslegendre", "gausslegendre"),  # captum's default rule
        # refined once: 12 fresh nodes, 4 + 12 passes (the bound is on passes)
        (16, 0.0, 12, "gausslegendre", "gausslegendre"),
    ]
    for max_steps, tolerance, steps, rule, method in cases:
        options = MethodOptions(
            ig_steps=4,
            ig_max_steps=max_steps,
            ig_tolerance=tolerance,
            ig_rule=rule,
            chunk_size=3,
            black=(-1.0, -1.0, -1.0),
        )
        ours = compute_methods(model, x, ["layer4"], ["ig"], targets, options).images["ig"]
        reference = IntegratedGradients(copy.deepcopy(model)).attribute(
            x,
            baselines=torch.full_like(x, -1.0),
            target=targets,
            n_steps=steps,
            method=method,
        )
        torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-5)


# --- RISE --------------------------------------------------------------------------------------


def test_rise_with_all_ones_masks_is_the_plain_probability():
    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    masks = RiseMasks(torch.ones(5, 1, 7, 7), torch.zeros(5, 2, dtype=torch.long), 16, 1.0)
    targets = torch.tensor([4, 8])
    maps = rise(model, x, targets, masks, chunk_size=2)
    with torch.no_grad():
        p = model(x).softmax(1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(maps, p.view(2, 1, 1).expand(2, 16, 16))


def test_rise_is_the_probability_weighted_mean_of_the_masks():
    """A plain loop over masks, one forward pass each, against the chunked batch."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(2, 3, 20, 20)
    targets = torch.tensor([1, 2])
    masks = RiseMasks.random(9, 20, seed=3)
    assert torch.equal(masks.grids, RiseMasks.random(9, 20, seed=3).grids)  # seeded
    assert not torch.equal(masks.grids, RiseMasks.random(9, 20, seed=4).grids)
    expected = torch.zeros(2, 20, 20)
    with torch.no_grad():
        for i in range(len(masks)):
            mask = masks.chunk(i, i + 1, x.device)[0, 0]
            assert float(mask.min()) >= 0 and float(mask.max()) <= 1 + 1e-6
            p = model(x * mask).softmax(1).gather(1, targets[:, None])[:, 0]
            expected += p.view(2, 1, 1) * mask
    expected /= len(masks) * 0.5
    counter = _Counting(model)
    maps = rise(model, x, targets, masks, chunk_size=4)
    counter.handle.remove()
    torch.testing.assert_close(maps, expected)
    assert max(counter.sizes) == 4


def test_rise_masks_come_from_the_seed_and_an_images_map_ignores_its_batch():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(3, 3, 16, 16)
    targets = torch.tensor([1, 2, 3])
    options = MethodOptions(rise_masks=10, chunk_size=4, seed=5)
    together = compute_methods(model, x, ["features.3"], ["rise"], targets, options)
    alone = compute_methods(model, x[1:2], ["features.3"], ["rise"], targets[1:2], options)
    maps = together.maps["rise"]["input"]
    torch.testing.assert_close(alone.maps["rise"]["input"][0], maps[1])
    other = MethodOptions(rise_masks=10, chunk_size=4, seed=6)
    reseeded = compute_methods(model, x[1:2], ["features.3"], ["rise"], targets[1:2], other)
    assert not torch.allclose(reseeded.maps["rise"]["input"][0], maps[1])


def test_integrated_gradients_do_not_depend_on_the_chunk():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    b = torch.zeros_like(x)
    targets = torch.tensor([1, 2])
    small, _ = integrated_gradients(model, x, b, targets, steps=6, chunk_size=5)
    large, _ = integrated_gradients(model, x, b, targets, steps=6, chunk_size=12)
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-6)


# --- faithfulness scores -----------------------------------------------------------------------


class _SumNet(nn.Module):
    """Two classes: logit 0 = sum of the input, logit 1 = 0; so p0 = sigmoid(sum)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([total, torch.zeros_like(total)], dim=1)


def test_deletion_and_drop_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).expand(1, 3, 2, 2).clone() / 3
    saliency = torch.tensor([[[0.1, 0.4], [0.3, 0.2]]])  # order: 2, 3, 4, 1
    scores = faithfulness(
        _SumNet(), x, torch.tensor([0]), {"m": saliency}, ("deletion", "drop"), 4, 3
    )["m"]
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    curve = [sig(10), sig(8), sig(5), sig(1), sig(0)]  # remove 2, then 3, then 4, then 1
    area = (sum(curve) - (curve[0] + curve[-1]) / 2) / 4
    assert float(scores["deletion"][0]) == pytest.approx(area, rel=1e-5)
    # drop: the image times the map scaled to [0, 1] (maximum 0.4)
    masked = (1 * 0.25 + 2 * 1.0 + 3 * 0.75 + 4 * 0.5) / 1
    expected = (sig(10) - sig(masked)) / sig(10)
    assert float(scores["drop"][0]) == pytest.approx(expected, rel=1e-5)
    assert float(scores["increase"][0]) == 0.0


def test_insertion_orders_pixels_and_a_perfect_map_beats_its_reverse():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    brightness = x.sum(1)  # what _SumNet's class 0 responds to
    both = faithfulness(
        _SumNet(),
        x,
        torch.tensor([0, 0]),
        {"good": brightness, "bad": -brightness},
        parse_metrics("all"),
        8,
        5,
    )
    assert (both["good"]["insertion"] > both["bad"]["insertion"]).all()
    assert (both["good"]["deletion"] < both["bad"]["deletion"]).all()


def test_scores_are_chunked():
    model = TinyNet().eval()
    counter = _Counting(model)
    faithfulness(
        model,
        torch.randn(3, 3, 16, 16),
        torch.tensor([1, 2, 3]),
        {"m": torch.rand(3, 16, 16)},
        ("deletion", "insertion", "drop"),
        5,
        4,
    )
    counter.handle.remove()
    assert max(counter.sizes) <= 4 and len(counter.sizes) > 3


def test_parse_metrics_reads_all_and_refuses_unknown_names():
    assert parse_metrics("drop, deletion") == ("deletion", "drop")
    assert parse_metrics("all") == ("deletion", "insertion", "drop")
    with pytest.raises(ValueError, match="unknown metric 'area'"):
        parse_metrics("area")


# --- every new method on the families, batch sizes 1 and 3, channels-last ---------------------


def _family(name: str) -> tuple[nn.Module, str]:
    from camcli.models.registry import EMBEDDED_MODEL, load_model

    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        return load_model(EMBEDDED_MODEL, offline=True).module, "bn2"
    layer = {"resnet18": "layer4", "vgg11": "features.19", "densenet121": "features"}[name]
    return getattr(torchvision.models, name)(weights=None), layer


@pytest.mark.parametrize(
    ("name", "batch"),
    [
        ("resnet18", 1),
        ("resnet18", 3),
        ("efficientnet_lite0", 1),
        ("efficientnet_lite0", 3),
        ("vgg11", 1),
        ("densenet121", 3),
    ],
)
def test_new_methods_run_on_the_families_channels_last(name: str, batch: int):
    options = MethodOptions(chunk_size=8, rise_masks=2, ig_steps=2)
    model, layer = _family(name)
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    methods = ["rise", "ig"] if name == "densenet121" else NEW  # lrp refuses DenseNet
    result = compute_methods(model, x, [layer], methods, None, options)
    assert result.maps["rise"]["input"].shape == (batch, 32, 32)
    for method in methods[1:]:
        assert result.images[method].shape == (batch, 3, 32, 32), method
        assert torch.isfinite(result.images[method]).all(), method
        assert result.images[method].abs().sum() > 0, method


# --- the CLI -----------------------------------------------------------------------------------


def _explain(root: Path, out: Path, *extra: str) -> Result:
    args = ["explain", str(root), "-o", str(out), "--model", TINY, "-j", "0", *extra]
    return CliRunner().invoke(main, args)


def test_cli_new_methods_and_scores_in_record_index_and_run_json(image_folder, tmp_path: Path):
    root = image_folder({"tabby/a.jpg": (40, 30), "b.png": (30, 50), "c.jpg": (32, 32)})
    out = tmp_path / "out"
    result = _explain(
        root,
        out,
        "--method",
        "gradcam,rise,lrp,ig",
        "--rise-masks",
        "12",
        "--ig-steps",
        "32",
        "--ig-baseline",
        "blur",
        "--metrics",
        "all",
        "--metric-steps",
        "4",
        "--chunk-size",
        "8",
        "--jsonl",
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["rise"]["masks"] == 12 and record["maps"]["rise"]["layer"] == "input"
        assert record["lrp"]["composite"] == "EpsilonPlusFlat"
        lrp = record["lrp"]
        assert lrp["kept"] == pytest.approx(lrp["relevance_sum"] / lrp["logit"], abs=1e-4)
        assert "biases" in lrp["rest"]
        assert record["integrated_gradients"]["baseline"] == "blur"
        ig = record["integrated_gradients"]
        assert ig["completeness_error"] == pytest.approx(
            abs(ig["attribution_sum"] - ig["logit_difference"]) / abs(ig["logit_difference"]),
            abs=1e-4,  # both sides are rounded to 6 decimals
        )
        scores = record["faithfulness"]
        assert scores["steps"] == 4
        assert set(scores) - {"steps"} == {"gradcam", "rise", "lrp", "ig"}
        assert set(scores["rise"]) == {"deletion", "insertion", "drop", "increase"}
        for name in ("rise", "lrp", "ig"):
            assert (out / record["files"][name][next(iter(record["files"][name]))]).parent
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert all(
        entry["faithfulness"] == rec["faithfulness"]
        for entry, rec in zip(
            sorted(index, key=lambda e: e["image"]),
            sorted(records, key=lambda r: r["image"]),
            strict=True,
        )
    )
    summary = json.loads((out / "run.json").read_text())
    for method in ("gradcam", "rise", "lrp", "ig"):
        mean = sum(r["faithfulness"][method]["insertion"] for r in records) / 3
        assert summary["faithfulness"][method]["insertion"] == pytest.approx(mean, abs=1e-5)
        assert summary["faithfulness"][method]["images"] == 3
    assert summary["settings"]["method_options"]["rise_masks"] == 12
    # A re-run reuses the records and still averages them.
    again = _explain(
        root,
        out,
        "--method",
        "gradcam,rise,lrp,ig",
        "--rise-masks",
        "12",
        "--ig-baseline",
        "blur",
        "--metrics",
        "all",
        "--metric-steps",
        "4",
    )
    assert again.exit_code == 0, again.output
    assert json.loads((out / "run.json").read_text())["counts"]["skipped"] == 3
    assert json.loads((out / "run.json").read_text())["faithfulness"]["rise"]["images"] == 3


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--metrics", "area"], "'--metrics'"),
        (["--ig-baseline", "white"], "'--ig-baseline'"),
        (["--rise-masks", "0"], "'--rise-masks'"),
        (["--metric-steps", "1"], "'--metric-steps'"),
    ],
)
def test_cli_new_options_refuse_bad_values(image_folder, tmp_path: Path, args, needle):
    root = image_folder({"a.jpg": (20, 20)})
    result = _explain(root, tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.output


class _FixedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 16 * 16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


@pytest.fixture
def fixed_head():
    name = "fixed-head-test"

    def load(weights: Path | None, offline: bool) -> LoadedModel:
        from camcli.models.classes import imagenet_classes

        torch.manual_seed(0)
        return LoadedModel(
            name=name,
            module=_FixedHead().eval(),
            preprocessing=Preprocessing(16, 18, (0.5,) * 3, (0.25,) * 3),
            classes=imagenet_classes(),
            default_layer="features.1",
            weights="random",
        )

    register_model(name)(load)
    yield name
    unregister_model(name)


def test_cli_input_size_explains_at_the_larger_size(image_folder, tmp_path: Path):
    root = image_folder({"a.jpg": (60, 60)})
    result = _explain(root, tmp_path / "out", "--input-size", "64", "--jsonl", "--save-raw")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["view"]["size"] == 64
    assert record["settings_key"]
    import numpy as np

    raw = np.load(tmp_path / "out" / record["files"]["gradcam"]["raw"])
    assert raw.shape == (64, 64)


def test_cli_input_size_and_lrp_refusals_are_one_sentence(image_folder, tmp_path, fixed_head):
    root = image_folder({"a.jpg": (20, 20)})
    out = tmp_path / "out"
    args = ["explain", str(root), "-o", str(out), "--model", fixed_head, "-j", "0"]
    result = CliRunner().invoke(main, [*args, "--input-size", "32"])
    assert result.exit_code == 2, result.output
    assert "'--input-size'" in result.stderr and "default input size 16" in result.stderr
    result = CliRunner().invoke(main, [*args, "--method", "lrp"])
    assert result.exit_code == 2, result.output
    assert "'--method'" in result.stderr and "use gradcam" in result.stderr
    assert "Traceback" not in result.output


def test_rise_and_scores_read_a_sigmoid_model_with_the_sigmoid():
    """A one-logit model is shown as logits [-z, z]: its probabilities are sigmoid(+-z).

    The softmax of [-z, z] would be sigmoid(2z), neither class's probability.
    """
    from camcli.methods.metrics import faithfulness

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model[0].weight.data *= 10
    signed = _SignedLogits(nn.Sequential(*model, nn.Linear(2, 1))).eval()
    x = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([1, 0])
    ones = RiseMasks(torch.ones(3, 1, 7, 7), torch.zeros(3, 2, dtype=torch.long), 16, 1.0)
    maps = rise(signed, x, targets, ones, chunk_size=2, binary=True)
    with torch.no_grad():
        z = signed(x)
    p = z.sigmoid().gather(1, targets[:, None])[:, 0]
    assert not torch.allclose(p, z.softmax(1).gather(1, targets[:, None])[:, 0])
    torch.testing.assert_close(maps, p.view(2, 1, 1).expand(2, 16, 16))
    half = torch.zeros(2, 16, 16)
    half[:, :, :8] = 1.0
    scores = faithfulness(signed, x, targets, {"m": half}, ["drop"], 4, 8, binary=True)
    with torch.no_grad():
        masked = signed(x * half[:, None]).sigmoid().gather(1, targets[:, None])[:, 0]
    expected = (p - masked).clamp(min=0) / p
    torch.testing.assert_close(scores["m"]["drop"], expected)


class _SignedLogits(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        return torch.cat([-z, z], dim=1)
