"""Several targets in one run (`--target pred,label`): one forward pass, maps per target."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from torch import nn

import camcli.cli.frame as common
from camcli.cli import main
from camcli.methods.forward import explain_batch, explain_targets
from camcli.models.classes import imagenet_classes
from camcli.models.loaded import LoadedModel, Preprocessing
from camcli.models.registry import load_model, register_model, unregister_model
from camcli.runs.settings import TargetSpec
from camcli.runs.targets import parse_targets

from .conftest import TinyNet, save_image

SPLIT = "split-test"


class SplitNet(nn.Module):
    """Class 0 is the red evidence, class 1 the blue evidence; other classes are far below.

    The layer holds two channels, the red and the blue of the [0, 1] input, so Grad-CAM for
    class 0 is the red channel (peak on a red square) and for class 1 the blue one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(3, 2, 1, bias=False)
        weight = torch.zeros(2, 3, 1, 1)
        weight[0, 0] = 1.0
        weight[1, 2] = 1.0
        self.layer.weight.data.copy_(weight)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 1000)
        self.fc.weight.data.zero_()
        self.fc.weight.data[0, 0] = 10.0
        self.fc.weight.data[1, 1] = 10.0
        self.fc.bias.data.fill_(-100.0)
        self.fc.bias.data[:2] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.layer(x))), 1))


@pytest.fixture(scope="module", autouse=True)
def _split_model() -> Iterator[None]:
    def load(weights: Any, offline: bool) -> LoadedModel:
        return LoadedModel(
            name=SPLIT,
            module=SplitNet().eval(),
            preprocessing=Preprocessing(64, 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear"),
            classes=imagenet_classes(),
            default_layer="layer",
            weights="constant",
        )

    register_model(SPLIT)(load)
    yield
    unregister_model(SPLIT)


RED_BOX = (4, 4, 36, 36)  # big red square: the model predicts class 0
BLUE_BOX = (44, 44, 60, 60)  # small blue square: the folder label is class 1


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    array = np.zeros((64, 64, 3), np.uint8)
    array[RED_BOX[1] : RED_BOX[3], RED_BOX[0] : RED_BOX[2], 0] = 255
    array[BLUE_BOX[1] : BLUE_BOX[3], BLUE_BOX[0] : BLUE_BOX[2], 2] = 255
    root = tmp_path / "in"
    save_image(root / "1" / "a.png", array)
    save_image(root / "1" / "b.png", array[:, ::-1].copy())  # mirrored: squares swap sides
    return root


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def inside(point: dict[str, int], box: tuple[int, int, int, int]) -> bool:
    return box[0] <= point["x"] < box[2] and box[1] <= point["y"] < box[3]


def test_pred_and_label_maps_point_at_their_own_evidence(labelled: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = run("explain", labelled, "-o", out, "--model", SPLIT, "-j", "0", "--jsonl",
                 "--target", "pred,label", "--method", "gradcam,guided")  # fmt: skip
    assert result.exit_code == 0, result.output
    records = {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}
    record = records["1/a.png"]
    assert record["target"]["index"] == 0 and record["target"]["mode"] == "pred"
    first, second = record["targets"]
    assert first["index"] == 0 and first["suffix"] is None
    assert first["maps"] == record["maps"]
    assert second["mode"] == "label" and second["index"] == 1 and second["suffix"] == "label"
    assert inside(record["maps"]["gradcam"]["peak"], RED_BOX)
    assert inside(second["maps"]["gradcam"]["peak"], BLUE_BOX)
    assert second["probability"] < first["probability"]
    assert record["files"]["gradcam"] == {
        "heatmap": "a.png.gradcam.png",
        "overlay": "a.png.gradcam.overlay.png",
        "label.heatmap": "a.png.gradcam.label.png",
        "label.overlay": "a.png.gradcam.label.overlay.png",
    }
    assert record["files"]["guided"] == {
        "image": "a.png.guided.png",
        "label.image": "a.png.guided.label.png",
    }
    # the pictures on disk: the label heatmap is hot on the blue square, the pred one on red
    pred_map = np.asarray(Image.open(out / "1" / "a.png.gradcam.png"))[..., 0].astype(int)
    label_map = np.asarray(Image.open(out / "1" / "a.png.gradcam.label.png"))[..., 0].astype(int)
    assert pred_map[20, 20] > 100 and pred_map[52, 52] < 50  # JET red channel: hot vs cold
    assert label_map[52, 52] > 100 and label_map[20, 20] < 50
    guided = np.asarray(Image.open(out / "1" / "a.png.guided.png")).astype(int)
    guided_label = np.asarray(Image.open(out / "1" / "a.png.guided.label.png")).astype(int)
    assert np.abs(guided - guided_label).max() > 20
    mirrored = records["1/b.png"]
    # mirrored: the squares swap sides, and so do the peaks
    assert inside(mirrored["maps"]["gradcam"]["peak"], (28, 4, 60, 36))
    assert inside(mirrored["targets"][1]["maps"]["gradcam"]["peak"], (4, 44, 20, 60))


def test_several_targets_make_one_forward_pass_per_batch(
    labelled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    forwards: list[int] = []

    def loading(name: str, weights: Any = None, offline: bool = False, **kw: Any) -> Any:
        loaded = load_model(name, weights, offline, **kw)
        loaded.module.register_forward_pre_hook(lambda _m, args: forwards.append(len(args[0])))
        return loaded

    monkeypatch.setattr(common, "load_model", loading)
    base = ["explain", labelled, "--model", SPLIT, "-j", "0", "-b", "2", "--method",
            "gradcam,gradcam++,guided"]  # fmt: skip
    one = run(*base, "-o", tmp_path / "one")
    assert one.exit_code == 0 and forwards == [2]
    forwards.clear()
    several = run(*base, "-o", tmp_path / "two", "--target", "pred,label,5")
    assert several.exit_code == 0, several.output
    assert forwards == [2]  # one batch of two images, three targets, one forward pass
    record = json.loads((tmp_path / "two" / "1" / "a.png.json").read_text())
    assert [t["index"] for t in record["targets"]] == [0, 1, 5]
    assert record["files"]["gradcam++"]["class-5.overlay"] == "a.png.gradcam++.class-5.overlay.png"


def test_single_target_keeps_its_record_and_resume_tells_the_runs_apart(
    labelled: Path, tmp_path: Path
):
    out = tmp_path / "out"
    base = ["explain", labelled, "-o", out, "--model", SPLIT, "-j", "0"]
    single = run(*base)
    assert single.exit_code == 0
    record = json.loads((out / "1" / "a.png.json").read_text())
    assert "targets" not in record
    assert not list(out.rglob("*.label.*"))
    several = run(*base, "--target", "pred,label")
    assert several.exit_code == 0 and "up to date" not in several.stderr
    again = run(*base, "--target", "pred,label")
    assert "2 up to date (reused)" in again.stderr
    bad = run(*base, "--target", "pred,no such class")
    assert bad.exit_code == 2 and "'--target'" in bad.stderr and "'no such class'" in bad.stderr


def test_explain_targets_equals_one_explanation_per_target():
    torch.manual_seed(0)
    model = TinyNet().eval()
    inputs = torch.randn(3, 3, 32, 32)
    sets = [None, torch.tensor([1, 2, 3]), torch.tensor([7, 7, 7])]
    together = explain_targets(model, inputs, ["features.3"], sets)
    for targets, joint in zip(sets, together, strict=True):
        alone = explain_batch(model, inputs, ["features.3"], targets)
        assert torch.equal(joint.targets, alone.targets)
        torch.testing.assert_close(joint.gradients["features.3"], alone.gradients["features.3"])
        assert joint.guided is not None and alone.guided is not None
        torch.testing.assert_close(joint.guided, alone.guided)
    assert not torch.equal(together[1].guided, together[2].guided)  # type: ignore[arg-type]


def test_parse_targets_splits_on_commas_and_drops_repeats():
    classes = imagenet_classes()

    def parse(text: str) -> TargetSpec:
        from camcli.runs.settings import parse_target

        return parse_target(text, classes)

    assert parse_targets("pred", parse) == (TargetSpec("pred"), ())
    assert parse_targets("pred,label,pred", parse) == (TargetSpec("pred"), (TargetSpec("label"),))
    assert parse_targets("label, 3", parse) == (TargetSpec("label"), (TargetSpec("class", 3),))
    with pytest.raises(ValueError, match="nope"):
        parse_targets("pred,nope", parse)


def test_several_targets_with_methods_that_have_no_layer(labelled: Path, tmp_path: Path):
    """RISE's map has no layer, IG's picture is a magnitude: both work for further targets."""
    out = tmp_path / "out"
    result = run(
        "explain", labelled, "-o", out, "--model", SPLIT, "-j", "0", "--jsonl",
        "--target", "pred,label", "--method", "gradcam,rise,ig", "--rise-masks", "8",
        "--ig-steps", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    for role in ("label.heatmap", "label.overlay"):
        assert (out / record["image"]).with_name(record["files"]["rise"][role]).is_file()
    assert (out / record["image"]).with_name(record["files"]["ig"]["label.image"]).is_file()


def test_imagenet_classes_are_read_without_torch_and_equal_the_libraries() -> None:
    """The names, WordNet ids and lemmas come from torchvision's and timm's files without
    importing either (the early --target check), and equal what their APIs give."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom camcli.models.classes import imagenet_classes\n"
        "c = imagenet_classes()\nprint(len(c), c.names[281], c.wordnet_ids[281], "
        "'torch' in sys.modules, 'timm' in sys.modules, 'torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["1000", "tabby", "n02123045", "False", "False", "False"]
    from timm.data import ImageNetInfo
    from torchvision.models import ResNet50_Weights

    from camcli.models.classes import imagenet_classes

    classes = imagenet_classes()
    info = ImageNetInfo()
    assert list(classes.names) == list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    assert list(classes.wordnet_ids) == [info.index_to_label_name(i) for i in range(1000)]
    assert [list(a) for a in classes.aliases] == [
        [part.strip() for part in info.index_to_description(i).split(",") if part.strip()]
        for i in range(1000)
    ]
