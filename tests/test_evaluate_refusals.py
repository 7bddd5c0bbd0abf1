"""`camcli evaluate` never scores nothing and exits 0 (issue 38, items 3, 6 and 10).

Each way of scoring nothing is one sentence naming the option that fits (exit 2, nothing
written; before the model loads where its task is known), or, when annotations exist but
nothing matched after the run, one sentence and exit 1. RGB class masks in Pascal VOC's
colours are classes; methods left out are named; one directory holds one evaluation per
model and task; evaluate's records name only its own files; Eigen-CAM maps of detectors
and segmenters have their max and peak.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from camcli.cli import main
from camcli.io.annotations import AnnotationError, class_mask_values, read_class_mask

from .conftest import BRIGHT, TINY, save_image, square_image
from .tiny_detection import MODELS, scene

CLASSES = MODELS.with_name("classes.txt")
DETECTOR = ["--model", f"{MODELS}:detector", "--classes", str(CLASSES)]
SEGMENTER = ["--model", f"{MODELS}:segmenter", "--classes", str(CLASSES)]
RED, GREEN = (8, 10, 28, 30), (50, 25, 72, 50)  # scene()'s rectangles, end exclusive
VOC_RED, VOC_GREEN = (128, 0, 0), (0, 128, 0)  # classes 1 and 2 in VOC's palette


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["evaluate", *(str(a) for a in args)])


def voc(path: Path, objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    """A VOC file; boxes as (left, top, right, bottom), 0-based, end exclusive."""
    body = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1) in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation>{body}</annotation>")


def class_indices() -> np.ndarray:
    """scene()'s objects as class indices: 1 red, 2 green, 255 a VOC boundary pixel."""
    truth = np.zeros((60, 80), np.uint8)
    x0, y0, x1, y1 = RED
    truth[y0:y1, x0:x1] = 1
    x0, y0, x1, y1 = GREEN
    truth[y0:y1, x0:x1] = 2
    truth[0, 0] = 255
    return truth


def in_voc_colours(indices: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*indices.shape, 3), np.uint8)
    rgb[indices == 1], rgb[indices == 2] = VOC_RED, VOC_GREEN
    rgb[indices == 255] = (224, 224, 192)
    return rgb


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """One scene with a red and a green rectangle, and its boxes in photos/boxes."""
    root = tmp_path / "photos"
    root.mkdir()
    scene().save(root / "one.png")
    voc(root.parent / "boxes" / "one.xml", [("red", RED), ("green", GREEN)])
    return root


def one_sentence(result: Result, option: str) -> str:
    """The usage error's sentence, checked: exit 2, naming the option, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error: ")]
    assert line.startswith(f"Error: Invalid value for '{option}': ")
    return line


def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading a model fail the test: the refusal must come before it."""
    import camcli.cli.frame

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(camcli.cli.frame, "prepare_run", refuse)


# --- annotations of the wrong kind, or none -------------------------------------------------


def test_a_detector_without_boxes_is_refused_and_nothing_is_written(
    photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    line = one_sentence(run(photos, *DETECTOR, "-o", out), "--boxes")
    assert "a detector's maps are scored against annotated boxes" in line
    assert "Pascal VOC XML" in line and "COCO JSON" in line
    assert not out.exists()


def test_a_segmenter_with_boxes_is_told_to_give_masks(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    boxes = tmp_path / "boxes"
    line = one_sentence(run(photos, *SEGMENTER, "--boxes", boxes, "-o", out), "--boxes")
    assert "scored against class masks, not boxes: give --masks" in line
    assert not out.exists()
    line = one_sentence(run(photos, *SEGMENTER, "-o", out), "--masks")
    assert "a segmenter's maps are scored against class masks" in line
    assert not out.exists()


def test_a_detector_with_masks_is_told_to_give_boxes(photos: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    save_image(masks / "one.png", class_indices())
    out = tmp_path / "out"
    line = one_sentence(
        run(photos, *DETECTOR, "--boxes", tmp_path / "boxes", "--masks", masks, "-o", out),
        "--masks",
    )
    assert "matched to annotated boxes, not to masks: give --boxes" in line
    assert not out.exists()


def test_a_zoo_detector_or_segmenter_is_refused_before_it_loads(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_model_loads(monkeypatch)
    out = tmp_path / "out"
    one_sentence(run(photos, "--model", "fasterrcnn_resnet50_fpn", "-o", out), "--boxes")
    one_sentence(
        run(photos, "--model", "deeplabv3_resnet50", "--boxes", tmp_path / "boxes", "-o", out),
        "--boxes",
    )
    # --task says it too: a factory run as a detector
    one_sentence(run(photos, *DETECTOR, "--task", "detect", "-o", out), "--boxes")
    assert not out.exists()


def test_a_classifier_with_nothing_to_score_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    save_image(images / "a.png", square_image(64, 48, (8, 8, 24, 24)))
    out = tmp_path / "out"
    line = one_sentence(run(images, "-m", BRIGHT, "--metrics", "none", "-o", out), "--metrics")
    assert "no --boxes or --masks were given, so there is nothing to score" in line
    assert not out.exists()
    # boxes, but none of the one class --target explains
    voc(tmp_path / "boxes" / "a.xml", [("goldfish", (8, 8, 24, 24))])
    line = one_sentence(
        run(images, "-m", BRIGHT, "--boxes", tmp_path / "boxes", "--target", "tiger shark",
            "--metrics", "none", "-o", out),
        "--target",
    )  # fmt: skip
    assert "no box of --boxes is of that class" in line and "tiger shark" in line
    assert not out.exists()


def test_only_methods_that_are_not_scored_are_refused(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = one_sentence(
        run(photos, *DETECTOR, "--boxes", tmp_path / "boxes", "--method", "eigencam,guided",
            "-o", out),
        "--method",
    )  # fmt: skip
    assert "eigencam (one class-agnostic map per image, not one per detection)" in line
    assert "guided (a picture of each detection's input gradients" in line
    assert not out.exists()


# --- RGB class masks ------------------------------------------------------------------------


def test_rgb_class_masks_in_voc_colours_are_read_as_classes(tmp_path: Path) -> None:
    truth = class_indices()
    rgb = tmp_path / "rgb.png"
    Image.fromarray(in_voc_colours(truth)).save(rgb)
    assert np.array_equal(read_class_mask(rgb, 60, 80), truth)
    grey_as_rgb = tmp_path / "grey.png"
    Image.fromarray(np.repeat(truth[..., None], 3, axis=2)).save(grey_as_rgb)
    assert np.array_equal(class_mask_values(grey_as_rgb), truth)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(in_voc_colours(truth)).convert("RGBA").save(rgba)
    assert np.array_equal(class_mask_values(rgba), truth)


def test_rgb_masks_in_other_colours_are_refused_with_the_colour(tmp_path: Path) -> None:
    rgb = in_voc_colours(class_indices())
    rgb[40, 70] = (255, 0, 0)
    path = tmp_path / "odd.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(AnnotationError) as caught:
        class_mask_values(path)
    assert "(255, 0, 0) (at x=70, y=40; 5 colour(s) in all)" in str(caught.value)
    assert "not one of Pascal VOC's class colours" in str(caught.value)


def test_a_segmenter_scores_voc_rgb_masks_as_the_same_masks_in_grey(
    photos: Path, tmp_path: Path
) -> None:
    truth = class_indices()
    scores = []
    for name, pixels in (("grey", truth), ("rgb", in_voc_colours(truth))):
        save_image(tmp_path / name / "one.png", pixels)
        out = tmp_path / f"out-{name}"
        result = run(photos, *SEGMENTER, "--masks", tmp_path / name, "-o", out)
        assert result.exit_code == 0, result.output
        evaluation = json.loads((out / "evaluation.json").read_text())
        assert (evaluation["objects"], evaluation["matched"]) == (2, 2)
        scores.append(evaluation["methods"])
    assert scores[0] == scores[1] and scores[0]["gradcam"]["pointing_game"] == 1.0


def test_a_segmenter_refuses_rgb_masks_of_unknown_colours_before_writing(
    photos: Path, tmp_path: Path
) -> None:
    rgb = in_voc_colours(class_indices())
    rgb[rgb[..., 0] == 128] = (255, 0, 0)  # pure red: no VOC colour
    save_image(tmp_path / "masks" / "one.png", rgb)
    out = tmp_path / "out"
    line = one_sentence(run(photos, *SEGMENTER, "--masks", tmp_path / "masks", "-o", out),
                        "--masks")  # fmt: skip
    assert "its colour (255, 0, 0)" in line and "VOC's colours" in line
    assert not out.exists()


# --- annotations that matched nothing after the run ------------------------------------------


def test_masks_with_no_object_score_nothing_and_exit_1(photos: Path, tmp_path: Path) -> None:
    save_image(tmp_path / "masks" / "one.png", np.zeros((60, 80), np.uint8))
    out = tmp_path / "out"
    result = run(photos, *SEGMENTER, "--masks", tmp_path / "masks", "-o", out)
    assert result.exit_code == 1, result.output
    assert (
        "camcli: nothing was scored: the 1 annotated image(s) hold no object (their masks are "
        "background only)\n"
    ) in result.stderr
    assert json.loads((out / "evaluation.json").read_text())["methods"] == {}
    assert "No score was measured" in (out / "evaluation.md").read_text()


def test_masks_unread_beside_background_ones_are_said_with_the_reason(
    photos: Path, tmp_path: Path
) -> None:
    """The first mask (checked before the run) is background only, the second in colours that
    are not VOC's: the closing sentence counts only the masks that could be read as holding
    no object, and names the ones that could not (before, it said 'the 1 annotated image(s)
    hold no object' of a run whose other mask was unreadable)."""
    scene().save(photos / "two.png")
    save_image(tmp_path / "masks" / "one.png", np.zeros((60, 80), np.uint8))
    rgb = in_voc_colours(class_indices())
    rgb[rgb[..., 0] == 128] = (255, 0, 0)  # pure red: no VOC colour
    save_image(tmp_path / "masks" / "two.png", rgb)
    result = run(photos, *SEGMENTER, "--masks", tmp_path / "masks", "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    (said,) = [x for x in result.stderr.splitlines() if "nothing was scored" in x]
    assert said.startswith(
        "camcli: nothing was scored: the 1 annotated image(s) whose masks could be read hold no "
        "object (their masks are background only), and 1 mask(s) could not be read as class "
        "masks (e.g. "
    ), said


def test_boxes_that_match_no_detection_exit_1_with_the_reason(photos: Path, tmp_path: Path) -> None:
    voc(tmp_path / "far" / "one.xml", [("red", (60, 0, 80, 12)), ("green", (0, 45, 20, 60))])
    out = tmp_path / "out"
    result = run(photos, *DETECTOR, "--boxes", tmp_path / "far", "-o", out)
    assert result.exit_code == 1, result.output
    (said,) = [x for x in result.stderr.splitlines() if "nothing was scored" in x]
    assert said.startswith("camcli: nothing was scored: none of the 2 annotated object(s) has a ")
    assert "IoU >= 0.5" in said and "--score-threshold 0.5" in said
    assert json.loads((out / "evaluation.json").read_text())["matched"] == 0


# --- methods left out, records, Eigen-CAM -----------------------------------------------------


def test_methods_left_out_are_named_and_records_name_no_explain_pictures(
    photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run(photos, *DETECTOR, "--boxes", tmp_path / "boxes", "--method",
                 "gradcam,eigencam,guided", "-o", out, "--jsonl", "--report")  # fmt: skip
    assert result.exit_code == 0, result.output
    page = (out / "report" / "evaluation.html").read_text()  # --report: its page is the report
    assert "data-method='gradcam'" in page and "Not scored: eigencam (" in page
    (said,) = [x for x in result.stderr.splitlines() if x.startswith("camcli: not scored: ")]
    assert said == (
        "camcli: not scored: eigencam (one class-agnostic map per image, not one per "
        "detection), guided (a picture of each detection's input gradients, not a map of its "
        "class)"
    )
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert list(evaluation["not_scored"]) == ["eigencam", "guided"]
    assert list(evaluation["methods"]) == ["gradcam"]
    assert "Not scored: eigencam (" in (out / "evaluation.md").read_text()
    record = json.loads((out / "one.png.evaluate.json").read_text())
    assert record["files"] == {}  # evaluate writes no picture
    assert record["detections"] and all("files" not in d for d in record["detections"])
    assert not list(out.glob("*.png")) and not (out / "report" / "index.html").exists()


def test_a_classifier_evaluation_names_its_own_sheet(tmp_path: Path) -> None:
    images = tmp_path / "images"
    save_image(images / "a.png", square_image(64, 48, (8, 8, 24, 24)))
    out = tmp_path / "out"
    result = run(images, "-m", TINY, "--method", "gradcam", "--metrics", "none", "--sanity",
                 "--sanity-stages", "2", "-o", out, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "a.png.evaluate.json").read_text())
    assert record["files"] == {"sanity": {"sheet": "a.png.sanity.png"}}
    assert (out / "a.png.sanity.png").is_file() and record["task"] == "classify"
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["task"] == "classify" and evaluation["not_scored"] == {}


@pytest.mark.parametrize("kind", ["detector", "segmenter"])
def test_eigencam_maps_have_max_and_peak(photos: Path, tmp_path: Path, kind: str) -> None:
    from camcli import Explainer
    from camcli.models.registry import load_model

    out = tmp_path / "out"
    model = DETECTOR if kind == "detector" else SEGMENTER
    result = CliRunner().invoke(main, ["explain", str(photos), *model, "--method",
                                       "gradcam,eigencam", "-o", str(out), "--jsonl"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    eigen = record["maps"]["eigencam"]
    assert eigen["layer"] == "features" and eigen["max"] > 0
    # the peak is a maximum of the library's Eigen-CAM map, on the photo (a plateau: any)
    explainer = Explainer(load_model(f"{MODELS}:{kind}"), ["eigencam"], device="cpu")
    (library,) = explainer.explain([photos / "one.png"])
    values = library.maps["eigencam"]
    assert values.shape == (60, 80)
    assert values[eigen["peak"]["y"], eigen["peak"]["x"]] >= values.max() - 1e-4


# --- one evaluation per model and task ------------------------------------------------------


def test_an_evaluation_of_another_model_or_task_is_refused(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    boxes = tmp_path / "boxes"
    assert run(photos, *DETECTOR, "--boxes", boxes, "-o", out).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # a classifier (of the same photos) would replace the detector's evaluation.json
    line = one_sentence(run(photos, "-m", TINY, "--device", "cpu", "-o", out), "--output-dir")
    assert f"{MODELS}:detector (a detector, evaluation.json)" in line
    assert "evaluates tiny-test (a classifier)" in line and "another --output-dir" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # the same model run as another task: a segmenter's evaluation, then the segmenter as a
    # classifier of its pooled logits
    save_image(tmp_path / "masks" / "one.png", class_indices())
    segments = tmp_path / "segments"
    assert run(photos, *SEGMENTER, "--masks", tmp_path / "masks", "-o", segments).exit_code == 0
    line = one_sentence(
        run(photos, *SEGMENTER, "--task", "classify", "--metrics", "drop", "-o", segments),
        "--output-dir",
    )
    assert "(a segmenter, evaluation.json)" in line and "(a classifier)" in line
    # the same model and task again is a rerun
    assert run(photos, *DETECTOR, "--boxes", boxes, "-o", out).exit_code == 0
    # a zoo name that is not the evaluation's: refused before the model loads
    no_model_loads(monkeypatch)
    one_sentence(run(photos, "-m", "resnet18", "-o", out), "--output-dir")


def test_a_stopped_evaluation_counts_too(photos: Path, tmp_path: Path) -> None:
    """Without evaluation.json (a run stopped early), the index's records say whose it is."""
    out = tmp_path / "out"
    assert run(photos, *DETECTOR, "--boxes", tmp_path / "boxes", "-o", out).exit_code == 0
    (out / "evaluation.json").unlink()
    one_sentence(run(photos, "-m", TINY, "--device", "cpu", "-o", out), "--output-dir")


def test_the_report_links_only_an_evaluation_of_its_own_model(tmp_path: Path) -> None:
    images = tmp_path / "images"
    save_image(images / "a.png", square_image(64, 48, (8, 8, 24, 24)))
    common = ["--method", "gradcam", "--device", "cpu"]
    for out, evaluated in ((tmp_path / "same", TINY), (tmp_path / "other", BRIGHT)):
        explained = CliRunner().invoke(main, ["explain", str(images), "-m", TINY, *common,
                                              "-o", str(out)])  # fmt: skip
        assert explained.exit_code == 0, explained.output
        result = run(images, "-m", evaluated, *common, "--metrics", "drop", "-o", out)
        assert result.exit_code == 0, result.output
        assert CliRunner().invoke(main, ["report", str(out)]).exit_code == 0
    data = {}
    for name in ("same", "other"):
        text = (tmp_path / name / "report" / "data.js").read_text()
        data[name] = json.loads(text.split(" = ", 1)[1].rstrip().rstrip(";"))
        assert (tmp_path / name / "report" / "evaluation.html").is_file()
    assert data["same"]["evaluation"] == "evaluation.html"
    assert "evaluation" not in data["other"]  # bright-test's evaluation under tiny-test's maps
