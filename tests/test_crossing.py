"""Every method x architecture x memory format x batch size, through the CLI.

Score-CAM once broke on the CPU's default (channels-last activations) because no test crossed
the methods with the defaults a user gets. Here every ``--method`` runs on ResNet-18,
DenseNet-121, VGG-11 and the embedded EfficientNet-Lite0 architecture (random weights, small
inputs so it stays fast), with channels-last on and off and batches of 1 and 3 images of
different sizes: the run must exit 0, every file a record lists must exist and decode at the
image's original size, and every map must be finite.

Score-CAM costs one forward pass per channel and image (512 to 1,280 channels here), so it
runs on two images in one batch, with channels-last (the CPU default that once broke it) on
every architecture and contiguous on one; ``test_methods.py`` checks exactly, on a tiny model,
that every method gives the same result in both memory formats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from camcli.cli import main
from camcli.methods.names import ALL_METHODS
from camcli.models.classes import imagenet_classes
from camcli.models.layers import default_layer
from camcli.models.loaded import LoadedModel, Preprocessing
from camcli.models.registry import register_model, unregister_model

from .conftest import random_photo, save_image

SIZE = 64  # the model input side: every default layer still gives a 2 x 2 map
ARCHITECTURES = ("resnet18", "densenet121", "vgg11", "efficientnet_lite0")
# Methods that need a model property some architectures lack: CAM needs one linear layer on
# the pooled layer (VGG's classifier has three); LRP needs zennit canonizers, which DenseNet's
# batch norms after concatenations do not fit.
NOT_APPLICABLE = {("vgg11", "cam"), ("densenet121", "lrp")}


def _build(architecture: str) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    if architecture == "efficientnet_lite0":
        import timm

        return timm.create_model("tf_efficientnet_lite0", pretrained=False), "bn2"
    import torchvision.models as tvm

    module = tvm.get_model(architecture, weights=None).eval()
    return module, default_layer(architecture, module, SIZE)


def _loader(architecture: str):  # type: ignore[no-untyped-def]
    def load(weights: Path | None, offline: bool) -> LoadedModel:
        module, layer = _build(architecture)
        return LoadedModel(
            name=f"cross-{architecture}",
            module=module.eval(),
            preprocessing=Preprocessing(
                SIZE, SIZE + 8, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
            ),
            classes=imagenet_classes(),
            default_layer=layer,
            weights="random",
        )

    return load


@pytest.fixture(scope="module", autouse=True)
def crossing_models() -> Iterator[None]:
    for architecture in ARCHITECTURES:
        register_model(f"cross-{architecture}")(_loader(architecture))
    yield
    for architecture in ARCHITECTURES:
        unregister_model(f"cross-{architecture}")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    # Each test reads its own copy: no test's run can see another's files or leftovers.
    root = tmp_path / "crossing"
    for i, (width, height) in enumerate([(40, 30), (23, 57), (64, 64)]):
        save_image(root / "tabby" / f"p{i}.png", random_photo(i, width, height))
    return root


def _assert_outputs(out: Path, records: list[dict], methods: list[str], count: int) -> None:
    assert len(records) == count
    for record in records:
        assert record["status"] == "ok", record
        assert set(record["methods"]) == set(methods)
        folder = (out / record["image"]).parent
        size = (record["width"], record["height"])
        listed = [name for files in record["files"].values() for name in files.values()]
        assert len(listed) >= len(methods)
        for name in listed:
            path = folder / name
            assert path.is_file(), name
            if name.endswith(".png"):
                with Image.open(path) as picture:
                    assert picture.size == size, name
                    picture.load()
            else:
                assert np.isfinite(np.load(path)).all(), name
        for method, entry in record["maps"].items():
            assert np.isfinite(entry["max"]), method


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("memory_format", ["--channels-last", "--no-channels-last"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_method_runs(
    architecture: str, memory_format: str, batch_size: int, photos: Path, tmp_path: Path
) -> None:
    methods = [
        m for m in ALL_METHODS if (architecture, m) not in NOT_APPLICABLE and m != "scorecam"
    ]
    _run_and_check(photos, tmp_path / "out", architecture, memory_format, batch_size, methods, 3)


@pytest.mark.parametrize(
    ("architecture", "memory_format"),
    [(a, "--channels-last") for a in ARCHITECTURES] + [("resnet18", "--no-channels-last")],
)
def test_scorecam_runs(architecture: str, memory_format: str, tmp_path: Path) -> None:
    root = tmp_path / "two"
    for i, (width, height) in enumerate([(40, 30), (23, 57)]):
        save_image(root / f"p{i}.png", random_photo(i, width, height))
    _run_and_check(root, tmp_path / "out", architecture, memory_format, 2, ["scorecam"], 2)


def _run_and_check(
    root: Path,
    out: Path,
    architecture: str,
    memory_format: str,
    batch_size: int,
    methods: list[str],
    count: int,
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "explain",
            str(root),
            "-o",
            str(out),
            "--model",
            f"cross-{architecture}",
            "--device",
            "cpu",
            memory_format,
            "--batch-size",
            str(batch_size),
            "-j",
            "0",
            "--method",
            ",".join(methods),
            "--smooth-samples",
            "2",
            "--rise-masks",
            "16",
            "--ig-steps",
            "4",
            "--metrics",
            "all",
            "--metric-steps",
            "4",
            "--chunk-size",
            "256",
            "--save-raw",
            "--jsonl",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    _assert_outputs(out, records, methods, count)


@pytest.mark.parametrize(("architecture", "method"), sorted(NOT_APPLICABLE))
def test_inapplicable_method_is_one_sentence(
    architecture: str, method: str, photos: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        main,
        [
            "explain",
            str(photos),
            "-o",
            str(tmp_path / "out"),
            "--model",
            f"cross-{architecture}",
            "--device",
            "cpu",
            "-j",
            "0",
            "--method",
            method,
        ],
    )
    assert result.exit_code == 2
    assert "'--method'" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()[-1]) < 400
