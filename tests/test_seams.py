"""What a new user hit between the commands: messages, rates, warnings, missing weights."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from camcli.cli import main

from .conftest import REPO, TINY, random_photo, save_image


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(3):
        save_image(root / "tabby" / f"p{i}.png", random_photo(i, 40, 30))
    return root


def test_a_text_file_named_jpg_is_reported_without_a_memory_address(photos: Path, tmp_path: Path):
    (photos / "tabby" / "notes.jpg").write_text("not a picture\n")
    out = tmp_path / "out"
    result = run("explain", photos, "-o", out, "--model", TINY, "-j", "0")
    assert result.exit_code == 1, result.output
    line = next(x for x in result.stderr.splitlines() if "notes.jpg" in x)
    assert "not an image file" in line
    for text in (result.stderr, (out / "index.jsonl").read_text(), (out / "run.json").read_text()):
        assert not re.search(r"0x[0-9a-f]{6,}", text), text
        assert "BytesIO" not in text


def test_unknown_layer_points_to_camcli_layers(photos: Path, tmp_path: Path):
    result = run("explain", photos, "-o", tmp_path / "o", "--model", TINY, "--layer", "layer4")
    assert result.exit_code == 2
    assert f"'camcli layers {TINY}' lists every layer" in result.stderr
    assert "Traceback" not in result.output


def test_a_fully_reused_run_gives_no_rate(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = run("explain", photos, "-o", out, "--model", TINY, "-j", "0")
    assert first.exit_code == 0
    assert re.search(r"\((\d+|\d\.\d|0\.\d+) images/s\)", first.stderr)
    again = run("explain", photos, "-o", out, "--model", TINY, "-j", "0")
    assert again.exit_code == 0
    assert "3 up to date (reused)" in again.stderr
    assert "images/s" not in again.stderr


def test_a_run_stopped_before_its_first_batch_says_its_wall_time_and_no_rate(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import camcli.runs.explain as explain_run

    def interrupted(*_args: object, **_kwargs: object) -> None:
        time.sleep(0.2)
        raise KeyboardInterrupt

    monkeypatch.setattr(explain_run, "compute_methods", interrupted)
    result = run("explain", photos, "-o", tmp_path / "out", "--model", TINY, "-j", "0")
    assert result.exit_code == 130, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert "explained 0 of 3 images" in last and "images/s" not in last
    seconds = float(re.search(r"; (\d+\.\d) s in all", last).group(1))
    assert seconds >= 0.2
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["wall_seconds"] >= 0.2


def test_compare_names_every_missing_model_at_once_without_a_foreign_option(
    photos: Path, tmp_path: Path
):
    result = run(
        "compare",
        photos,
        "-o",
        tmp_path / "o",
        "-m",
        "alexnet",
        "-m",
        "vgg16",
        "-m",
        TINY,
        "--offline",
    )
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "weights of 2 models are missing" in message
    assert "alexnet" in message and "vgg16" in message
    assert "--weights" not in message
    assert not (tmp_path / "o").exists()  # refused before the run


def test_timm_without_a_network_fails_fast_in_one_sentence(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    pytest.importorskip("timm")
    import camcli.models.own as own

    monkeypatch.delenv("CAMCLI_OFFLINE")  # downloads allowed, but the hub is not reachable
    monkeypatch.setattr(own, "_reachable", lambda host, port, timeout=3.0: False)
    started = time.monotonic()
    result = run("explain", photos, "-o", tmp_path / "o", "--model", "timm/resnet18.a1_in1k")
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert "cannot be reached" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert elapsed < 30  # was ~50 s of the hub client's retries


def test_a_factory_without_weights_says_so_once(photos: Path, tmp_path: Path):
    config = REPO / "configs" / "own-model" / "config.toml"
    text = config.read_text(encoding="utf-8")
    assert re.search(r"^#\s*weights", text, re.M), "the example's weights line is commented out"
    result = run("explain", photos, "-o", tmp_path / "o", "--config", config, "-j", "0")
    assert result.exit_code in (0, 1), result.output
    assert result.stderr.count("no --weights for") == 1
    assert "random unless it loads trained ones" in result.stderr


def test_the_closing_line_names_a_layer_only_for_methods_that_read_one(
    photos: Path, tmp_path: Path
):
    layerless = run(
        "explain",
        photos,
        "-o",
        tmp_path / "a",
        "--model",
        TINY,
        "-j",
        "0",
        "--method",
        "guided,ig",
        "--ig-max-steps",
        "32",
    )
    assert layerless.exit_code == 0, layerless.output
    assert f"with {TINY} (guided, ig); " in layerless.stderr
    with_layer = run("explain", photos, "-o", tmp_path / "b", "--model", TINY, "-j", "0")
    assert f"with {TINY} at features.3; " in with_layer.stderr
