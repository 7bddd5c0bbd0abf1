"""`features` and `compare` need a classifier: a detector or a segmenter is one sentence.

A zoo detector or segmenter is refused by its name, before any model is loaded; an own one
(FILE.py:FUNC) once loaded, before the run takes the output directory: nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

import camcli.cli.frame as frame
import camcli.models.registry as registry
from camcli.cli import main

from .conftest import TINY, save_image

REGIONS = Path(__file__).resolve().parents[1] / "configs" / "regions"
MODELS = REGIONS / "models.py"
CLASSES = REGIONS / "classes.txt"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    array = np.zeros((40, 48, 3), np.uint8)
    array[8:24, 8:24, 0] = 230  # a red square, as the tiny models' scenes have
    return save_image(tmp_path / "in" / "a.png", array).parent


def _says_what_to_use(result: Result, model: str, noun: str, command: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert (
        f"Invalid value for '--model': {model} is a {noun}; {command} needs a classifier"
        in result.stderr
    )
    assert f"'camcli explain --model {model}' explains each" in result.stderr
    if noun == "segmenter":
        assert "or with --task classify its logits averaged over the image" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["features", "compare"])
@pytest.mark.parametrize("kind", ["detector", "segmenter"])
def test_an_own_detector_or_segmenter_is_refused_once_loaded_and_nothing_is_written(
    photos: Path, tmp_path: Path, command: str, kind: str
) -> None:
    model = f"{MODELS}:{kind}"
    out = tmp_path / "out"
    result = run(command, photos, "-o", out, "-m", model, "--classes", CLASSES, "-j", "0")
    _says_what_to_use(result, model, kind, command)
    assert not out.exists()  # no lock, no index, no folder
    # an output directory that exists is left as it was: no lock, no partial index
    out.mkdir()
    again = run(command, photos, "-o", out, "-m", model, "-j", "0")
    _says_what_to_use(again, model, kind, command)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", ["features", "compare"])
@pytest.mark.parametrize(
    ("model", "noun"),
    [("fasterrcnn_resnet50_fpn", "detector"), ("deeplabv3_resnet50", "segmenter")],
)
def test_a_zoo_detector_or_segmenter_is_refused_by_name_before_loading_anything(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, model: str,
    noun: str,
) -> None:  # fmt: skip
    def no_loading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded or its weights looked for")

    monkeypatch.setattr(frame, "load_model", no_loading)
    monkeypatch.setattr(registry, "load_model", no_loading)
    monkeypatch.setattr(registry, "fetch_zoo_weights", no_loading)
    out = tmp_path / "out"
    result = run(command, photos, "-o", out, "-m", model)
    _says_what_to_use(result, model, noun, command)
    assert not out.exists()


def test_compare_refuses_a_later_own_segmenter_before_the_first_model_and_the_run(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []
    real = frame.load_model

    def loading(name: str, *args: Any, **kwargs: Any) -> Any:
        loaded.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(frame, "load_model", loading)
    model = f"{MODELS}:segmenter"
    out = tmp_path / "out"
    result = run("compare", photos, "-o", out, "-m", TINY, "-m", model, "-j", "0")
    _says_what_to_use(result, model, "segmenter", "compare")
    assert loaded == [model]  # the first model was never loaded
    assert not out.exists()
    # a zoo detector later in the list is refused by name, before any model loads
    loaded.clear()
    zoo = run("compare", photos, "-o", out, "-m", TINY, "-m", "retinanet_resnet50_fpn")
    _says_what_to_use(zoo, "retinanet_resnet50_fpn", "detector", "compare")
    assert loaded == [] and not out.exists()


def test_what_the_segmenter_refusal_points_to_runs(photos: Path, tmp_path: Path) -> None:
    # What the refusal points to works: explain --task classify on the segmenter.
    model = f"{MODELS}:segmenter"
    result = run("explain", photos, "-o", tmp_path / "out", "-m", model, "--classes", CLASSES,
                 "--task", "classify", "-j", "0", "--jsonl", "--no-guided")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert '"task": "classify"' in result.stdout
