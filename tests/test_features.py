"""`camcli layers` and `camcli features`: shapes, marks, grids of known feature maps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from torch import nn

from camcli.cli import main
from camcli.models.classes import imagenet_classes
from camcli.models.loaded import LoadedModel, Preprocessing
from camcli.models.probe import probe_layers
from camcli.models.registry import register_model, unregister_model
from camcli.pictures.grids import grid_layout, select_channels, viridis_lut

from .conftest import TINY, save_image

COLOUR = "colour-test"
TWICE = "twice-test"


class ColourNet(nn.Module):
    """Feature maps known by hand: channels R, G, B and 2 R of the [0, 1] input."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 4, 1, bias=False)
        weight = torch.zeros(4, 3, 1, 1)
        weight[0, 0] = 1.0
        weight[1, 1] = 1.0
        weight[2, 2] = 1.0
        weight[3, 0] = 2.0
        self.mix.weight.data.copy_(weight)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.mix(x)), 1))


class TwiceNet(nn.Module):
    """A module used twice per forward pass: not usable as a CAM layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))


def _loaded(name: str, module: nn.Module, layer: str) -> LoadedModel:
    return LoadedModel(
        name=name,
        module=module.eval(),
        preprocessing=Preprocessing(32, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear"),
        classes=imagenet_classes(),
        default_layer=layer,
        weights="constant",
    )


@pytest.fixture(scope="module", autouse=True)
def _models() -> Iterator[None]:
    register_model(COLOUR)(lambda w, o: _loaded(COLOUR, ColourNet(), "mix"))
    register_model(TWICE)(lambda w, o: _loaded(TWICE, TwiceNet(), "conv"))
    yield
    unregister_model(COLOUR)
    unregister_model(TWICE)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def red_blue(path: Path) -> Path:
    """64 x 32: left half pure red, right half pure blue."""
    array = np.zeros((32, 64, 3), np.uint8)
    array[:, :32, 0] = 255
    array[:, 32:, 2] = 255
    return save_image(path, array)


# --- layers ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["layers", "features", "compare"])
def test_new_commands_have_help_and_version(command: str):
    for flag in ("--help", "-h"):
        result = run(command, flag)
        assert result.exit_code == 0 and "Usage:" in result.stdout
    assert run(command, "--version").stdout.strip().endswith("0.1.0")


def test_layers_json_lists_every_module_with_its_shape_and_marks():
    result = run("layers", TINY, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["input"] == [3, 32, 32] and document["default_layer"] == "features.3"
    by_name = {layer["name"]: layer for layer in document["layers"]}
    # TinyNet: 32 px input, two stride-2 convolutions, global pool, 1000 logits
    assert list(by_name) == [
        "features",
        "features.0",
        "features.1",
        "features.2",
        "features.3",
        "features.4",
        "pool",
        "fc",
    ]
    assert by_name["features.0"]["shape"] == [8, 16, 16]
    assert by_name["features.3"]["shape"] == [16, 8, 8]
    assert by_name["pool"]["shape"] == [16, 1, 1] and not by_name["pool"]["spatial"]
    assert by_name["fc"]["shape"] == [1000] and not by_name["fc"]["spatial"]
    assert by_name["features.3"]["default"] and by_name["features.3"]["spatial"]
    assert [n for n, layer in by_name.items() if layer["default"]] == ["features.3"]
    assert by_name["features.0"]["parameters"] == 8 * 3 * 9 + 8


def test_layers_plain_columns_spatial_only_and_repeated_modules():
    plain = run("layers", TWICE)
    assert plain.exit_code == 0
    lines = {line.split()[0]: line.split()[1:] for line in plain.stdout.splitlines()}
    assert lines["conv"] == ["Conv2d", "3x32x32", "default", "repeated"]
    assert lines["fc"] == ["Linear", "1000", "-"]
    spatial = run("layers", TINY, "--spatial-only")
    names = [line.split()[0] for line in spatial.stdout.splitlines()]
    assert names == ["features", "features.0", "features.1", "features.2", "features.3",
                     "features.4"]  # fmt: skip
    assert "default spatial" in spatial.stdout.splitlines()[4]


def test_layers_of_a_torchvision_model_without_its_weights():
    result = run("layers", "resnet18", "--json")
    assert result.exit_code == 0, result.output
    assert "random weights" in result.stderr
    document = json.loads(result.stdout)
    shapes = {layer["name"]: layer["shape"] for layer in document["layers"]}
    assert document["default_layer"] == "layer4" and shapes["layer4"] == [512, 7, 7]
    assert shapes["conv1"] == [64, 112, 112] and shapes["fc"] == [1000]


def test_layers_of_a_zoo_detector_need_no_weights_file():
    # CAMCLI_OFFLINE and an empty torch cache (conftest): no published weights at hand
    result = run("layers", "fasterrcnn_mobilenet_v3_large_320_fpn", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        "camcli: weights of fasterrcnn_mobilenet_v3_large_320_fpn are not available; shapes "
        "from the architecture with random weights"
    ]
    document = json.loads(result.stdout)
    assert document["weights"] == "none (architecture only)"
    layers = {layer["name"]: layer for layer in document["layers"]}
    # the default layer of a detector: the backbone's last stage, as with its weights
    assert document["default_layer"] == "backbone.body.16"
    assert layers["backbone.body.16"]["default"] and layers["backbone.body.16"]["spatial"]
    assert "backbone.fpn" in layers and "roi_heads.box_predictor.cls_score" in layers
    # 91 COCO categories: the head has the published shape
    assert layers["roi_heads.box_predictor.cls_score"]["parameters"] == 91 * 1024 + 91


def test_layers_unknown_model_is_a_usage_error():
    result = run("layers", "resnet1")
    assert result.exit_code == 2
    assert "'MODEL': unknown model 'resnet1'" in result.stderr
    assert "Traceback" not in result.output


def test_probe_layers_restores_training_mode_and_removes_hooks():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2)).train()
    probe_layers(net, 8)
    assert net.training and all(m.training for m in net.modules())
    assert all(not m._forward_hooks for m in net.modules())


# --- features ----------------------------------------------------------------------------


def test_select_channels_first_and_strongest_with_stable_ties():
    acts = torch.zeros(2, 5, 2, 2)
    acts[0, 3] = 4.0
    acts[0, 1] = 1.0
    acts[1, 0] = -1.0
    assert select_channels(acts, 3, False).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert select_channels(acts, 3, True).tolist() == [[3, 1, 0], [1, 2, 3]]
    assert select_channels(acts, 9, True).shape == (2, 5)


def test_feature_grid_shows_the_known_maps_on_one_colour_scale(tmp_path: Path):
    red_blue(tmp_path / "in" / "rb.png")
    out = tmp_path / "out"
    result = run(
        "features", tmp_path / "in", "-o", out, "--model", COLOUR, "-j", "0", "--strongest",
        "--cell-size", "64", "--save-raw", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    entry = record["features"]["mix"]
    # mean activations: 2R = 1.0, R = 0.5, B = 0.5, G = 0 (ties keep channel order)
    assert entry["channels"] == [3, 0, 2, 1]
    assert entry["mean_activation"] == pytest.approx([1.0, 0.5, 0.5, 0.0], abs=0.02)
    assert entry["scale"] == {"min": 0.0, "max": 2.0}
    assert entry["shape"] == [4, 32, 32]
    assert record["files"] == {
        "mix": {"grid": "rb.png.features.mix.png", "raw": "rb.png.features.mix.npy"}
    }
    raw = np.load(out / "rb.png.features.mix.npy")
    assert raw.shape == (4, 32, 32) and raw.dtype == np.float32
    assert raw[3, :, :8] == pytest.approx(2.0) and raw[3, :, -8:] == pytest.approx(0.0)
    picture = np.asarray(Image.open(out / "rb.png.features.mix.png").convert("RGB"))
    layout = grid_layout(4, 64)
    assert picture.shape == (layout.height, layout.width, 3)
    lut = viridis_lut().numpy()
    # one scale for the grid: 2R's left is the top colour, R's left the middle, B's right too
    expected = {  # cell: (left-quarter value, right-quarter value) on the 0-255 scale
        0: (255, 0),
        1: (128, 0),
        2: (0, 128),
        3: (0, 0),
    }
    for cell, (left, right) in expected.items():
        x, y = layout.origin(cell)
        middle = y + 32
        assert tuple(picture[middle, x + 8]) == tuple(lut[left]), cell
        assert tuple(picture[middle, x + 56]) == tuple(lut[right]), cell
    # the label band above the first cell holds dark text (its channel index)
    x, y = layout.origin(0)
    assert picture[y - layout.label : y, x : x + 20].min() < 100


def test_features_first_channels_several_layers_index_and_resume(tmp_path: Path):
    for i in range(3):
        red_blue(tmp_path / "in" / "c" / f"{i}.png")
    out = tmp_path / "out"
    args = ["features", tmp_path / "in", "-o", out, "--model", TINY, "-j", "0", "-n", "5",
            "--layer", "features.0", "--layer", "features.3"]  # fmt: skip
    first = run(*args)
    assert first.exit_code == 0, first.output
    record = json.loads((out / "c" / "0.png.features.json").read_text())
    assert record["features"]["features.0"]["channels"] == [0, 1, 2, 3, 4]
    assert record["features"]["features.3"]["shape"] == [16, 8, 8]
    assert record["files"]["features.3"] == {"grid": "0.png.features.features.3.png"}
    assert (out / "c" / "0.png.features.features.0.png").is_file()
    index = [json.loads(line) for line in (out / "features.index.jsonl").read_text().splitlines()]
    assert [e["image"] for e in index] == ["c/0.png", "c/1.png", "c/2.png"]
    assert index[0]["layers"] == ["features.0", "features.3"]
    assert record["label"] == {"folder": "c", "index": None, "name": None}
    again = run(*args)
    assert again.exit_code == 0 and "3 up to date (reused)" in again.stderr
    assert "camcli: processed 0 of 3 images" in again.stderr
    changed = run(*args, "--strongest")
    assert changed.exit_code == 0 and "up to date" not in changed.stderr
    assert json.loads((out / "features.run.json").read_text())["counts"]["explained"] == 3


def test_features_usage_errors_and_a_corrupt_file(tmp_path: Path):
    red_blue(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.jpg").write_bytes(b"not a picture")
    base = ["features", tmp_path / "in", "-o", tmp_path / "out", "--model", TINY, "-j", "0"]
    unknown = run(*base, "--layer", "features.33")
    assert unknown.exit_code == 2 and "'--layer': the model has no layer named" in unknown.stderr
    flat = run(*base, "--layer", "fc")
    assert flat.exit_code == 2 and "'--layer': layer 'fc' outputs" in flat.stderr
    # The shape per image, not the batch's ("(1, 1000)" before).
    assert "outputs 1000 per image; a map needs a C x H x W feature map" in flat.stderr
    assert "Traceback" not in flat.output
    corrupt = run(*base, "--jsonl")
    assert corrupt.exit_code == 1
    statuses = sorted(json.loads(line)["status"] for line in corrupt.stdout.splitlines())
    assert statuses == ["error", "ok"]
