"""`camcli compare`: sheets of models x methods, one model at a time, records per cell."""

from __future__ import annotations

import gc
import json
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

import camcli.cli.frame as common
import camcli.models.registry as registry
from camcli.cli import main
from camcli.models import EMBEDDED_MODEL
from camcli.models.registry import load_model
from camcli.pictures.sheet import sheet_layout

from .conftest import BRIGHT, TINY, save_image, square_image


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def squares(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    save_image(root / "left.png", square_image(80, 40, (4, 8, 24, 28)))  # square on the left
    save_image(root / "right.png", square_image(80, 40, (56, 12, 76, 32)))
    save_image(root / "sub" / "wide.png", square_image(120, 30, (50, 5, 70, 25)))
    return root


def compare(root: Path, out: Path, *extra: str | Path) -> Result:
    return run("compare", root, "-o", out, "-m", TINY, "-m", BRIGHT, "-j", "0", *extra)


def test_one_sheet_per_image_a_row_per_model_a_column_per_method(squares: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = compare(squares, out, "--method", "gradcam,gradcam++", "--jsonl", "--cell-size", "96")
    assert result.exit_code == 0, result.output
    assert "camcli: compared 3 of 3 images" in result.stderr
    records = {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert sorted(records) == ["left.png", "right.png", "sub/wide.png"]
    for image, record in records.items():
        assert record["models"] == [TINY, BRIGHT] and record["methods"] == ["gradcam", "gradcam++"]
        assert [(c["model"], c["method"]) for c in record["cells"]] == [
            (TINY, "gradcam"),
            (TINY, "gradcam++"),
            (BRIGHT, "gradcam"),
            (BRIGHT, "gradcam++"),
        ]
        sheet = np.asarray(Image.open(out / f"{image}.compare.png"))
        layout = sheet_layout(2, 2, record["width"], record["height"], 96)
        assert sheet.shape == (layout.height, layout.width, 3)
        assert record["files"] == {"compare": {"sheet": f"{Path(image).name}.compare.png"}}
    # each row's top-1 is the class explain explains with that model alone (--target pred)
    for model in (TINY, BRIGHT):
        alone = run("explain", squares, "-o", tmp_path / model, "--model", model, "-j", "0",
                    "--jsonl", "--no-guided")  # fmt: skip
        for record in map(json.loads, alone.stdout.splitlines()):
            (row,) = [r for r in records[record["image"]]["rows"] if r["model"] == model]
            top = record["target"]  # the brightness model ties every class: argmax's pick
            assert row["prediction"]["index"] == top["index"]
            assert row["prediction"]["probability"] == pytest.approx(top["probability"], abs=1e-5)
            # and its Grad-CAM is explain's: same unnormalised maximum
            (cell,) = [
                c
                for c in records[record["image"]]["cells"]
                if c["model"] == model and c["method"] == "gradcam"
            ]
            expected = record["maps"]["gradcam"]["max"]
            assert cell["map"]["max"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # the brightness model's map is the photo's brightness: its peak lies on the square
    for image, box in (("left.png", (4, 8, 24, 28)), ("right.png", (56, 12, 76, 32))):
        cell = records[image]["cells"][2]
        assert cell["model"] == BRIGHT
        x, y = cell["map"]["peak"]["x"], cell["map"]["peak"]["y"]
        assert box[0] <= x < box[2] and box[1] <= y < box[3], (image, x, y)
    assert records["left.png"]["label"] is None
    # "sub" is a WordNet synonym of submarine, so the folder is a label
    wide = records["sub/wide.png"]
    assert wide["label"] == {"folder": "sub", "index": 833, "name": "submarine"}
    assert [r["correct"] for r in wide["rows"]] == [
        r["prediction"]["index"] == 833 for r in wide["rows"]
    ]
    assert not any(p.name.startswith(".camcli-compare") for p in out.iterdir())
    index = [json.loads(line) for line in (out / "compare.index.jsonl").read_text().splitlines()]
    assert len(index) == 3 and set(index[0]["predictions"]) == {TINY, BRIGHT}


def test_models_run_one_after_another_one_in_memory(
    squares: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[str] = []
    alive: list[weakref.ref[Any]] = []

    def loading(name: str, weights: Any = None, offline: bool = False, **kw: Any) -> Any:
        gc.collect()
        assert all(ref() is None for ref in alive), "the previous model is still in memory"
        loaded = load_model(name, weights, offline, **kw)
        loaded.module.register_forward_pre_hook(lambda *_: calls.append(name))
        alive.append(weakref.ref(loaded.module))
        return loaded

    monkeypatch.setattr(common, "load_model", loading)
    monkeypatch.setattr(registry, "load_model", loading)
    result = compare(squares, tmp_path / "out", "-b", "1", "--method", "gradcam")
    assert result.exit_code == 0, result.output
    # batch of one, three images: every image through the first model, then the second
    assert calls == [TINY] * 3 + [BRIGHT] * 3


def test_resume_and_a_changed_method_list(squares: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert compare(squares, out).exit_code == 0
    again = compare(squares, out)
    assert again.exit_code == 0 and "3 up to date (reused)" in again.stderr
    assert "model 1 of 2" not in again.stderr  # nothing to compute: no model pass
    changed = compare(squares, out, "--method", "layercam")
    assert changed.exit_code == 0 and "up to date" not in changed.stderr
    record = json.loads((out / "left.png.compare.json").read_text())
    assert record["methods"] == ["layercam"] and len(record["cells"]) == 2


def test_compare_usage_errors_and_a_corrupt_file(squares: Path, tmp_path: Path):
    guided = compare(squares, tmp_path / "o1", "--method", "guided")
    assert guided.exit_code == 2 and "'--method': guided gives no map" in guided.stderr
    unknown = run("compare", squares, "-m", "resnet1")
    assert unknown.exit_code == 2 and "'--model': unknown model 'resnet1'" in unknown.stderr
    names = squares / "left.png"
    counted = compare(squares, tmp_path / "o0", *["--classes", names] * 3)
    assert counted.exit_code == 2
    assert "'--classes': given 3 times for 2 models: give it once" in counted.stderr
    assert not (tmp_path / "o0").exists()
    (squares / "broken.jpg").write_bytes(b"nope")
    corrupt = compare(squares, tmp_path / "o2", "--jsonl")
    assert corrupt.exit_code == 1
    statuses = sorted(json.loads(line)["status"] for line in corrupt.stdout.splitlines())
    assert statuses == ["error", "ok", "ok", "ok"]
    assert "Traceback" not in corrupt.output


def test_an_image_a_model_failed_on_is_reported_and_the_others_are_made(
    squares: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import torch

    import camcli.runs.compare as compare_run

    real = compare_run.compute_methods
    calls: list[str] = []

    def failing_once(model: Any, *args: Any, **kwargs: Any) -> Any:
        name = type(model).__name__
        calls.append(name)
        if name == "BrightnessNet" and calls.count(name) == 2:
            raise torch.OutOfMemoryError("simulated")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(compare_run, "compute_methods", failing_once)
    out = tmp_path / "out"
    result = compare(squares, out, "-b", "1", "--jsonl")
    assert result.exit_code == 1, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    failed = [r for r in records if r["status"] == "error"]
    assert len(records) == 3 and len(failed) == 1
    assert "pass over this image failed" in failed[0]["error"]
    assert failed[0]["image"] in result.stderr
    assert not (out / f"{failed[0]['image']}.compare.png").exists()
    assert sum((out / f"{r['image']}.compare.png").is_file() for r in records) == 2
    assert not any(p.name.startswith(".camcli-compare") for p in out.iterdir())


def test_config_file_table_for_compare(squares: Path, tmp_path: Path):
    config = tmp_path / "camcli.toml"
    names = _class_file(tmp_path / "names.txt", "n")
    config.write_text(
        f'[explain]\ntop-k = 3\n\n[compare]\nmodel = ["{BRIGHT}", "{TINY}"]\nmethod = "layercam"\n'
        f'cell-size = 80\nworkers = 0\nclasses = "{names}"\n'
    )
    out = tmp_path / "out"
    result = run("compare", squares, "-o", out, "--config", config)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "left.png.compare.json").read_text())
    assert record["models"] == [BRIGHT, TINY] and record["methods"] == ["layercam"]
    assert [row["prediction"]["name"][0] for row in record["rows"]] == ["n", "n"]


def test_a_stop_after_the_first_model_loads_no_other_and_leaves_no_scratch(
    squares: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import os
    import signal

    import camcli.runs.compare as compare_run

    real = compare_run._maps_pass
    passes: list[str] = []

    def pass_then_sigterm(items: Any, model: Any, *args: Any) -> None:
        passes.append(model.name)
        real(items, model, *args)
        os.kill(os.getpid(), signal.SIGTERM)

    loads: list[str] = []

    def loading(name: str, *args: Any, **kw: Any) -> Any:
        loads.append(name)
        return load_model(name, *args, **kw)

    monkeypatch.setattr(compare_run, "_maps_pass", pass_then_sigterm)
    monkeypatch.setattr(registry, "load_model", loading)
    out = tmp_path / "out"
    result = compare(squares, out)
    assert result.exit_code == 143, result.output
    assert passes == [TINY] and loads == []  # the second model is never loaded
    assert not list(out.rglob("*.compare.png"))
    assert not any(p.name.startswith(".camcli-compare") for p in out.iterdir())
    assert json.loads((out / "compare.run.json").read_text())["status"] == "interrupted"


def test_rise_takes_its_mask_count_and_the_time_covers_every_model_pass(
    squares: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import camcli.runs.compare as compare_run

    passes = compare_run._maps_pass

    def slow_pass(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # each model pass takes at least this long
        return passes(*args, **kwargs)

    monkeypatch.setattr(compare_run, "_maps_pass", slow_pass)
    out = tmp_path / "out"
    result = compare(squares, out, "--method", "gradcam,rise", "--rise-masks", "8", "--jsonl")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "compare.run.json").read_text())
    assert summary["wall_seconds"] >= 1.0  # two model passes, not only the sheets
    assert summary["settings"]["method_options"]["rise_masks"] == 8
    record = json.loads(result.stdout.splitlines()[0])
    assert {(cell["method"], cell["map"]["layer"]) for cell in record["cells"]} == {
        ("gradcam", "features.3"),
        ("rise", "input"),
        ("gradcam", "layer"),
    }
    again = compare(squares, out, "--method", "gradcam,rise", "--rise-masks", "9")
    assert again.exit_code == 0 and "up to date" not in again.stderr


def test_missing_weights_of_several_models_are_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    result = CliRunner().invoke(
        main,
        ["compare", str(tmp_path), "--model", "resnet18", "--model", "resnet50", "--model",
         "vgg11", "-o", str(tmp_path / "out"), "--method", "gradcam", "--offline"],
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0] == "Error: weights of 3 models are missing:"
    assert [line.split()[2] for line in lines[1:]] == ["resnet18", "resnet50", "vgg11"]
    assert all(len(line) < 300 for line in lines)


def test_without_model_it_compares_the_default_model_as_every_command(
    squares: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []

    def loading(name: str, *args: Any, **kw: Any) -> Any:
        loaded.append(name)  # the embedded model, stood in for by the tiny one (fast)
        return load_model(TINY, *args, **kw)

    monkeypatch.setattr(common, "load_model", loading)
    out = tmp_path / "out"
    result = run("compare", squares, "-o", out, "--method", "gradcam", "-j", "0")
    assert result.exit_code == 0, result.output
    assert loaded == [EMBEDDED_MODEL]
    record = json.loads((out / "left.png.compare.json").read_text())
    assert record["models"] == [EMBEDDED_MODEL] and len(record["cells"]) == 1
    assert f"[default: {EMBEDDED_MODEL}]" in run("compare", "--help").stdout


def _class_file(path: Path, prefix: str, count: int = 1000) -> Path:
    path.write_text("".join(f"{prefix}{i}\n" for i in range(count)))
    return path


def test_classes_once_for_every_model_or_once_per_model(squares: Path, tmp_path: Path) -> None:
    shared = _class_file(tmp_path / "shared.txt", "s")
    out = tmp_path / "out"
    once = compare(squares, out, "--method", "gradcam", "--classes", shared, "--jsonl")
    assert once.exit_code == 0, once.output
    for record in map(json.loads, once.stdout.splitlines()):
        names = [row["prediction"]["name"] for row in record["rows"]]
        assert [n.startswith("s") for n in names] == [True, True]
        assert (
            record["rows"][0]["prediction"]["name"]
            == f"s{record['rows'][0]['prediction']['index']}"
        )
    # one per model, in --model order: other names, so no record is reused
    other = _class_file(tmp_path / "other.txt", "o")
    each = compare(squares, out, "--method", "gradcam", "--classes", shared, "--classes", other,
                   "--jsonl")  # fmt: skip
    assert each.exit_code == 0 and "up to date" not in each.stderr
    for record in map(json.loads, each.stdout.splitlines()):
        assert [row["prediction"]["name"][0] for row in record["rows"]] == ["s", "o"]
    same = compare(squares, out, "--method", "gradcam", "--classes", shared, "--classes", other)
    assert same.exit_code == 0 and "3 up to date (reused)" in same.stderr
    # and without --classes, each model's own (ImageNet) names again
    own = compare(squares, out, "--method", "gradcam", "--jsonl")
    assert own.exit_code == 0 and "up to date" not in own.stderr
    assert json.loads(own.stdout.splitlines()[0])["rows"][1]["prediction"]["name"][0] not in "so"


def test_a_class_file_that_does_not_fit_a_later_model_is_refused_before_the_run(
    squares: Path, tmp_path: Path
) -> None:
    shared = _class_file(tmp_path / "shared.txt", "s")
    short = _class_file(tmp_path / "short.txt", "x", 10)
    out = tmp_path / "out"
    result = compare(squares, out, "--classes", shared, "--classes", short)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'--classes': " in result.stderr and "names 10 classes, but the model has 1000" in (
        result.stderr
    )
    assert not out.exists()  # refused before the run took the output directory
