"""The library face: camcli.Explainer gives what the command line gives."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import camcli
from camcli.cli import main

from .conftest import REPO, TINY, random_photo, save_image

README = REPO / "README.md"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i, (width, height) in enumerate([(48, 40), (31, 57), (64, 64)]):
        save_image(root / "tabby" / f"p{i}.png", random_photo(i, width, height))
    return root


def cli_explain(root: Path, out: Path, *extra: str) -> list[dict]:
    result = CliRunner().invoke(
        main,
        [
            "explain",
            str(root),
            "-o",
            str(out),
            "--model",
            TINY,
            "--device",
            "cpu",
            "-j",
            "0",
            "--jsonl",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_import_camcli_is_light_and_explainer_loads_on_use():
    code = (
        "import sys, camcli\n"
        "assert 'torch' not in sys.modules, 'import camcli imported torch'\n"
        "assert camcli.Explainer.__name__ == 'Explainer'\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_predictions_and_pictures_equal_the_command_line(photos: Path, tmp_path: Path):
    out = tmp_path / "cli"
    records = {r["image"]: r for r in cli_explain(photos, out, "--method", "gradcam,guided")}
    explainer = camcli.Explainer(TINY, methods=["gradcam", "guided"], device="cpu")
    paths = sorted(photos.rglob("*.png"))
    results = list(explainer.explain(paths))
    assert [r.source for r in results] == [str(p) for p in paths]
    for path, result in zip(paths, results, strict=True):
        record = records[path.relative_to(photos).as_posix()]
        assert [p.index for p in result.predictions] == [p["index"] for p in record["predictions"]]
        for mine, theirs in zip(result.predictions, record["predictions"], strict=True):
            assert mine.name == theirs["name"]
            assert mine.probability == pytest.approx(theirs["probability"], abs=1e-6)
        assert result.target.index == record["target"]["index"]
        with Image.open(path) as original:
            size = original.size
        assert result.maps["gradcam"].shape == (size[1], size[0])
        assert result.maps["gradcam"].dtype == np.float32
        assert result.maps["gradcam"].min() >= 0.0 and result.maps["gradcam"].max() <= 1.0
        assert result.maps["guided"].shape == (size[1], size[0], 3)
        folder = out / path.relative_to(photos).parent
        for mine_picture, file_name in (
            (result.overlay("gradcam"), record["files"]["gradcam"]["overlay"]),
            (result.heatmap("gradcam"), record["files"]["gradcam"]["heatmap"]),
            (result.picture("guided"), record["files"]["guided"]["image"]),
        ):
            with Image.open(folder / file_name) as theirs_picture:
                theirs = np.asarray(theirs_picture.convert("RGB"), dtype=np.int16)
            mine = np.asarray(mine_picture, dtype=np.int16)
            assert mine.shape == theirs.shape, file_name
            assert np.abs(mine - theirs).max() <= 1, file_name


def test_paths_pil_images_and_tensors_give_the_same_maps(photos: Path):
    explainer = camcli.Explainer(TINY, methods=["gradcam"], device="cpu", batch_size=2)
    path = sorted(photos.rglob("*.png"))[0]
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    by_path, by_image, by_tensor = (
        next(iter(explainer.explain(source))) for source in ([path], [image], tensor[None])
    )
    assert by_image.source is None
    for other in (by_image, by_tensor):
        np.testing.assert_allclose(other.maps["gradcam"], by_path.maps["gradcam"], atol=1e-6)
        assert [p.index for p in other.predictions] == [p.index for p in by_path.predictions]


def test_explain_folder_writes_what_the_command_line_writes(photos: Path, tmp_path: Path):
    cli_records = {r["image"]: r for r in cli_explain(photos, tmp_path / "cli")}
    explainer = camcli.Explainer(TINY, device="cpu")
    summary = explainer.explain_folder(photos, tmp_path / "lib")
    assert (summary.total, summary.explained, summary.failed) == (3, 3, 0)
    for image, record in cli_records.items():
        mine = json.loads((tmp_path / "lib" / f"{image}.json").read_text())
        assert record.pop("reused") is False  # said on stdout, not stored in the record
        assert mine == record
        folder = Path(image).parent
        for files in record["files"].values():
            for name in files.values():
                assert (tmp_path / "lib" / folder / name).read_bytes() == (
                    tmp_path / "cli" / folder / name
                ).read_bytes(), name
    # the same settings key: the command line reuses what the library wrote
    again = cli_explain(photos, tmp_path / "lib")
    assert again == [] or all(r.get("reused") for r in again)
    result = CliRunner().invoke(
        main,
        [
            "explain",
            str(photos),
            "-o",
            str(tmp_path / "lib"),
            "--model",
            TINY,
            "--device",
            "cpu",
            "-j",
            "0",
        ],
    )
    assert "3 up to date (reused)" in result.stderr


def test_a_module_object_is_a_model(photos: Path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    module.train()  # the caller's state: kept (methods run in eval mode, then restore it)
    explainer = camcli.Explainer(module, methods=["gradcam"], layers=["1"], device="cpu")
    (result,) = explainer.explain(sorted(photos.rglob("*.png"))[:1])
    assert len(result.predictions) == 3
    assert result.maps["gradcam"].shape == (40, 48)
    assert all(part.training for part in module.modules())
    assert all(p.requires_grad for p in module.parameters())


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        camcli.Explainer(TINY, methods=["nope"], device="cpu")
    with pytest.raises(ValueError, match="not 'pred', 'label', a class index"):
        camcli.Explainer(TINY, target="no such class", device="cpu")
    from camcli.models.hooks import UnknownLayer

    with pytest.raises(UnknownLayer):
        camcli.Explainer(TINY, layers=["layer99"], device="cpu")


@pytest.mark.real_model
def test_readme_python_examples_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """Every python block of the README, pasted as it is, in a folder with sample_images/."""
    shutil.copytree(REPO / "sample_images", tmp_path / "sample_images")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    # the detectors' example runs on the photos its section makes (tests/test_detection.py)
    blocks = [b for b in blocks if "configs/regions" not in b]
    assert blocks, "the README has a Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("sample_images/tiger_cat/chelsea.png ")
    assert " cat " in printed[0] and printed[0].endswith("(300, 451)")
    assert printed[1].startswith("sample_images/espresso/coffee.png espresso")
    assert printed[2] == "5 explained, 0 up to date"
    for name, photo in (("chelsea", "tiger_cat/chelsea.png"), ("coffee", "espresso/coffee.png")):
        with (
            Image.open(tmp_path / f"{name}.overlay.png") as overlay,
            Image.open(tmp_path / "sample_images" / photo) as original,
        ):
            assert overlay.size == original.size
    assert (tmp_path / "camcli-out" / "tiger_cat" / "chelsea.png.json").exists()
    assert (tmp_path / "camcli-out" / "tiger_cat" / "chelsea.png.gradcam.overlay.png").exists()


def test_one_path_or_one_image_is_a_batch_of_one(tmp_path: Path) -> None:
    photo = save_image(tmp_path / "a.png", random_photo(0, 48, 40))
    explainer = camcli.Explainer(TINY, ["gradcam"], device="cpu")
    from_path = list(explainer.explain(str(photo)))
    from_image = list(explainer.explain(Image.open(photo)))
    from_list = list(explainer.explain([photo]))
    assert len(from_path) == len(from_image) == len(from_list) == 1
    np.testing.assert_array_equal(from_path[0].maps["gradcam"], from_list[0].maps["gradcam"])
    np.testing.assert_array_equal(from_image[0].maps["gradcam"], from_list[0].maps["gradcam"])
    with pytest.raises(ValueError, match=r"images: '.*missing.png' is not an image file"):
        list(explainer.explain([tmp_path / "missing.png"]))
    with pytest.raises(TypeError, match="images: int is not a path, a PIL image or a tensor"):
        list(explainer.explain([3]))  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"model": "efficientnet_lite"},
            ValueError,
            r"model: unknown model 'efficientnet_lite'; did you mean efficientnet_lite0",
        ),
        ({"model": 3}, TypeError, "model: int is not a model name"),
        ({"methods": ["gradcamm"]}, ValueError, "methods: .*gradcamm"),
        ({"methods": [1]}, TypeError, "methods: give method names"),
        ({"layers": [3]}, TypeError, "layers: give layer names"),
        ({"device": "gpu"}, ValueError, "device: 'gpu' is not auto, cpu, cuda or cuda:N"),
        ({"device": 0}, TypeError, "device: 0 is not"),
        ({"weights": 5}, TypeError, "weights: int is not a path"),
        ({"weights": "nope.pt"}, ValueError, "weights: 'nope.pt' is not a file"),
        ({"target": "tabbby"}, ValueError, "target: 'tabbby' is not .* did you mean 'tabby'"),
        ({"target": 1.5}, TypeError, "target: 1.5 is not"),
        ({"top_k": 0}, ValueError, "top_k: 0 is not a whole number of at least 1"),
        ({"crop": "yes"}, TypeError, "crop: 'yes' is not True or False"),
        ({"batch_size": 0}, ValueError, "batch_size: 0 is not a whole number"),
        ({"method_options": {"rise_masks": 10}}, TypeError, "method_options: dict is not"),
    ],
)
def test_explainer_arguments_are_checked_one_sentence_each(
    kwargs: dict, error: type[Exception], message: str
) -> None:
    arguments = {"model": TINY, "device": "cpu", **kwargs}
    with pytest.raises(error, match=message):
        camcli.Explainer(**arguments)


def test_explainer_methods_and_layers_as_one_string() -> None:
    explainer = camcli.Explainer(TINY, "gradcam,guided", layers="features.3", device="cpu")
    assert explainer.methods == ("gradcam", "guided") and explainer.layers == ("features.3",)
