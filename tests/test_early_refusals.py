"""Every combination the model's name decides is refused before torch, a model or a file.

And what cannot be known before the model loads (an own model's task, a ``cam`` without a
linear head, an input size the layer cannot resolve) is refused right after it loads, before
the output directory is made; options that the run does not read are named on stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from camcli.cli import main
from camcli.methods import detection, names, segmentation

from .conftest import TINY, held_lock, random_photo, save_image
from .test_cli import _REFUSE
from .tiny_detection import MODELS

DETECTOR = f"{MODELS}:detector"
SEGMENTER = f"{MODELS}:segmenter"


def _refuse_command(command: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``camcli COMMAND ARGS`` in a process that says whether it imported torch."""
    return subprocess.run(
        [sys.executable, "-c", _REFUSE, command, *(str(a) for a in args)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _refuse(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return _refuse_command("explain", *args)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return save_image(tmp_path / "in" / "a.png", random_photo(0, 48, 40))


def test_method_typos_get_a_did_you_mean_before_torch(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    typo = _refuse(photo, "--method", "gradcamm", "-o", out)
    assert typo.returncode == 2, typo.stderr
    assert "Invalid value for '--method': unknown method 'gradcamm'; did you mean gradcam" in (
        typo.stderr
    )
    assert "torch not loaded" in typo.stderr and "Traceback" not in typo.stderr
    assert not out.exists()


def test_a_detectors_method_on_a_classifier_names_method_before_torch(
    photo: Path, tmp_path: Path
) -> None:
    """Before, '--method gradcam,drise' said "Invalid value for '--target': no method given"
    after the model had loaded."""
    out = tmp_path / "out"
    drise = _refuse(photo, "--method", "gradcam,drise", "-o", out)
    assert drise.returncode == 2, drise.stderr
    assert "Invalid value for '--method': drise explains a detector's detections" in drise.stderr
    assert "torch not loaded" in drise.stderr and not out.exists()


def test_the_same_on_an_own_classifier_once_it_is_loaded(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["explain", str(photo), "--model", TINY, "--method", "gradcam,drise", "-o", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--method': drise explains a detector's detections" in result.output
    assert "'--target'" not in result.output and not out.exists()


def test_a_zoo_detectors_options_are_checked_before_torch(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = _refuse(photo, "--model", "fasterrcnn_resnet50_fpn", "--target", "3", "-o", out)
    assert target.returncode == 2 and "Invalid value for '--target'" in target.stderr
    assert "each detection is explained" in target.stderr
    raw = _refuse(photo, "--model", "fasterrcnn_resnet50_fpn", "--save-raw", "-o", out)
    assert raw.returncode == 2 and "Invalid value for '--save-raw'" in raw.stderr
    # --save-raw gets its own reason, not --target's
    assert "raw maps are a classifier's" in raw.stderr and "each detection" not in raw.stderr
    method = _refuse(photo, "--model", "fasterrcnn_resnet50_fpn", "--method", "rise", "-o", out)
    assert method.returncode == 2 and "rise does not apply to a detector" in method.stderr
    for result in (target, raw, method):
        assert "torch not loaded" in result.stderr
    assert not out.exists()


def test_cam_without_a_linear_head_is_refused_before_the_output_folder(
    photo: Path, tmp_path: Path
) -> None:
    """A segmenter run as a classifier (--task classify) has no linear head: cam is refused
    once the model is loaded, before the lock and the index make the output folder (before,
    the refusal came from the first batch, after the folder was made)."""
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(photo), "--model", SEGMENTER, "--task",
                                       "classify", "--method", "cam", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--method': cam needs a model whose logits" in result.output
    assert not out.exists()
    # a model whose head is linear on the pooled layer takes cam as before
    fine = CliRunner().invoke(
        main, ["explain", str(photo), "--model", TINY, "--method", "cam", "-o", str(out)]
    )
    assert fine.exit_code == 0, fine.output


def test_an_input_size_the_layer_cannot_resolve_is_refused(photo: Path, tmp_path: Path) -> None:
    """At --input-size 8 the tiny model's layer (stride 4) is a 2 x 2 grid; at 3 it is 1 x 1,
    and every map would be flat (before: all-zero maps, peak at (0, 0))."""
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["explain", str(photo), "--model", TINY, "--input-size", "3", "-o", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--input-size': at 3 x 3 the layer features.3 has a 1 x 1 grid" in (
        result.output
    )
    assert "use at least 5 (a 2 x 2 grid)" in result.output  # the least: at 4 it is 1 x 1
    assert not out.exists()
    ok = CliRunner().invoke(
        main, ["explain", str(photo), "--model", TINY, "--input-size", "8", "-o", str(out)]
    )
    assert ok.exit_code == 0, ok.output


def _explain(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["explain", *(str(a) for a in args)])


def test_options_of_another_task_are_named_on_stderr(photo: Path, tmp_path: Path) -> None:
    classifier = _explain(photo, "--model", TINY, "--method", "gradcam", "--score-threshold",
                          "0.3", "--min-pixels", "0.2", "--rise-masks", "10", "-o",
                          tmp_path / "a")  # fmt: skip
    assert classifier.exit_code == 0, classifier.output
    assert (
        "camcli: --score-threshold, --min-pixels, --rise-masks not used: they do not apply to a "
        "classifier with gradcam" in classifier.stderr
    )
    with_rise = _explain(photo, "--model", TINY, "--method", "rise", "--rise-masks", "8", "-o",
                         tmp_path / "b")  # fmt: skip
    assert with_rise.exit_code == 0 and "not used" not in with_rise.stderr
    detector = _explain(photo, "--model", DETECTOR, "--method", "gradcam", "--rise-masks", "10",
                        "--smooth-samples", "4", "--drise-masks", "8", "-o",
                        tmp_path / "c")  # fmt: skip
    assert detector.exit_code == 0, detector.output
    assert (
        "camcli: --drise-masks, --rise-masks, --smooth-samples not used: they do not apply to a "
        "detector with gradcam" in detector.stderr
    )
    plain = _explain(photo, "--model", DETECTOR, "-o", tmp_path / "d")
    assert plain.exit_code == 0 and "not used" not in plain.stderr
    # a detector resizes the photos itself: camcli's input size is not its
    sized = _explain(photo, "--model", DETECTOR, "--input-size", "7", "-o", tmp_path / "e")
    assert sized.exit_code == 0, sized.output
    assert "camcli: --input-size not used: it does not apply to a detector" in sized.stderr


def test_the_command_lines_method_names_are_the_methods_own() -> None:
    """The names checked before torch loads are the tuples the methods run."""
    assert names.DETECTION_METHODS == detection.DETECTION_METHODS
    assert names.SEGMENTATION_METHODS == segmentation.SEGMENTATION_METHODS


def test_explain_help_lists_every_method_of_every_task() -> None:
    text = " ".join(CliRunner().invoke(main, ["explain", "--help"]).stdout.split())
    method_help = text[text.index("--method") : text.index("--target")]
    for method in {*names.ALL_METHODS, *names.DETECTION_METHODS, *names.SEGMENTATION_METHODS}:
        assert f" {method}," in method_help or f" {method} " in method_help, method
    assert "drise (D-RISE)" in method_help


@pytest.mark.parametrize(
    "command",
    [
        ["explain"],
        ["explain", "--model", DETECTOR],
        ["features"],
        ["compare"],
        ["evaluate", "--metrics", "deletion"],
        ["evaluate", "--model", DETECTOR, "--boxes", "{boxes}"],
    ],
    ids=["explain", "explain-detector", "features", "compare", "evaluate", "evaluate-detector"],
)
def test_a_held_output_directory_is_refused_before_torch_by_every_command(
    photo: Path, tmp_path: Path, command: list[str]
) -> None:
    """A second run on a locked folder: before, compare loaded torch (2.7 s) to refuse it."""
    held = tmp_path / "held"
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    words = [w.replace("{boxes}", str(boxes)) for w in command]
    with held_lock(held):
        result = _refuse_command(words[0], photo.parent, *words[1:], "-o", held)
    assert result.returncode == 1, result.stderr
    assert "is in use by camcli pid" in result.stderr
    assert "torch not loaded" in result.stderr


@pytest.mark.parametrize(
    ("model", "task", "noun"),
    [
        ("fasterrcnn_resnet50_fpn_v2", "segment", "is a detector, not a segmenter"),
        ("deeplabv3_resnet50", "detect", "is a segmenter, not a detector"),
        ("efficientnet_lite0", "detect", "is a classifier, not a detector"),
    ],
)
def test_a_task_the_named_model_cannot_run_as_is_refused_before_torch(
    photo: Path, tmp_path: Path, model: str, task: str, noun: str
) -> None:
    """Before, a zoo model's --task mismatch went on to load its weights (exit 1 offline), and
    the embedded model's was refused after 5 s of loading."""
    for command in ("explain", "evaluate"):
        result = _refuse_command(
            command, photo, "--model", model, "--task", task, "-o", tmp_path / "out"
        )
        assert result.returncode == 2, result.stderr
        assert f"Invalid value for '--task': {model} {noun}" in result.stderr
        assert "torch not loaded" in result.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_detectors_method_on_a_classifier_before_torch(
    photo: Path, tmp_path: Path
) -> None:
    """Before, 'evaluate --method drise,gradcam' on a classifier dropped every method, scored
    nothing and exited 1 after loading the model."""
    result = _refuse_command("evaluate", photo, "--method", "drise,gradcam", "-o", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--method': drise explains a detector's detections" in result.stderr
    assert "torch not loaded" in result.stderr
    own = CliRunner().invoke(main, ["evaluate", str(photo), "--model", TINY, "--method",
                                    "drise,gradcam", "-o", str(tmp_path / "own")])  # fmt: skip
    assert own.exit_code == 2, own.output
    assert "drise explains a detector's detections" in own.output
    assert not (tmp_path / "own").exists()


def test_summarize_on_a_folder_a_run_is_writing_says_so(tmp_path: Path) -> None:
    """Before, it said "run 'camcli explain INPUT -o DIR' first" while a run was writing."""
    held = tmp_path / "held"
    with held_lock(held) as holder:
        result = CliRunner().invoke(main, ["summarize", str(held)])
    assert result.exit_code == 1, result.output
    assert f"is in use by camcli pid {holder.pid}" in result.output
    assert "first" not in result.output


def test_evaluate_names_unused_options_and_checks_a_zoo_detectors_methods_early(
    photo: Path, tmp_path: Path
) -> None:
    noted = CliRunner().invoke(main, ["evaluate", str(photo), "--model", TINY, "--method",
                                      "gradcam", "--metrics", "deletion", "--metric-steps", "2",
                                      "--score-threshold", "0.3", "-o",
                                      str(tmp_path / "a")])  # fmt: skip
    assert noted.exit_code == 0, noted.output
    assert (
        "camcli: --score-threshold not used: it does not apply to a classifier with gradcam"
        in noted.stderr
    )
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    rise = _refuse_command("evaluate", photo, "--model", "fasterrcnn_resnet50_fpn", "--boxes",
                           boxes, "--method", "gradcam,rise", "-o", tmp_path / "b")  # fmt: skip
    assert rise.returncode == 2, rise.stderr
    assert "rise does not apply to a detector" in rise.stderr
    assert "torch not loaded" in rise.stderr
