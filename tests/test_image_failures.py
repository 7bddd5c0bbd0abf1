"""One bad image never ends a run: thin, 1 x 1 and model-raising images become error records.

For a classifier, a detector and a segmenter, on the local engine (and the Ray engine for one
model): the good images are explained, each bad one gets its record with the reason, the
index is complete, nothing is left ``.partial``, ``run.json`` lists the failures and the
exit status is 1, with no traceback unless ``--debug``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from camcli.cli import main

from .conftest import TINY, save_image
from .tiny_detection import MODELS, scene

CLASSES = MODELS.with_name("classes.txt")

# Wraps the tiny models of configs/regions/models.py and the test classifier: each raises
# inside its forward pass when a photo of the batch is uniform (the marked input), but for
# the blank inputs (0 or 0.5) with which camcli probes a model's output.
RAISING = f"""
import importlib.util
import torch
from torch import nn

_spec = importlib.util.spec_from_file_location("regions_models", {str(MODELS)!r})
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)


def _check(images):
    for image in images:
        image = image.detach().float()
        value = float(image.flatten()[0])
        probe = abs(value) < 1e-6 or abs(value - 0.5) < 1e-6  # camcli's probes: 0 and 0.5
        if float(image.flatten(1).std(1).max()) < 1e-5 and not probe:
            raise ValueError("marked input: the model refuses uniform photos")


class RaisingDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = models.detector()

    def forward(self, images):
        _check(images)
        return self.inner(images)


class RaisingSegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = models.segmenter()

    def forward(self, x):
        _check(x)
        return self.inner(x)


class RaisingClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        _check(x)
        return self.head(self.features(x).mean(dim=(2, 3)))


def detector():
    return RaisingDetector().eval()


def segmenter():
    return RaisingSegmenter().eval()


def classifier():
    return RaisingClassifier().eval()
"""


def _run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["explain", *(str(a) for a in args)])


def _good_scenes(folder: Path, count: int = 2) -> list[str]:
    names = []
    for k in range(count):
        red = (8 + 4 * k, 10, 40 + 4 * k, 40)
        green = (60, 30 + 2 * k, 100, 70)
        scene(red=red, green=green).save(folder / f"good-{k}.png")
        names.append(f"good-{k}.png")
    return names


def _check_run(out: Path, result: Result, good: list[str], bad: dict[str, str]) -> None:
    """Every good image explained, each bad one an error record naming ``bad[name]``."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert not list(out.rglob("*.partial")), "a half-written index or file was left"
    index = {e["image"]: e for e in map(json.loads, (out / "index.jsonl").read_text().splitlines())}
    assert set(index) == set(good) | set(bad)
    for name in good:
        assert index[name]["status"] == "ok", index[name]
        assert (out / f"{name}.json").exists()
    summary = json.loads((out / "run.json").read_text())
    assert summary["counts"]["explained"] == len(good)
    assert summary["counts"]["failed"] == len(bad)
    failures = {f["image"]: f["error"] for f in summary["failures"]}
    for name, reason in bad.items():
        assert index[name]["status"] == "error"
        assert reason in index[name]["error"], index[name]
        assert reason in failures[name]
        assert not (out / f"{name}.json").exists()
    assert f"{len(bad)} failed" in result.output


TASKS = {
    # task: (model, methods)
    "classify": (TINY, "gradcam,guided"),
    "detect": (f"{MODELS}:detector", "gradcam,drise,guided"),
    "segment": (f"{MODELS}:segmenter", "gradcam,eigencam"),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_thin_and_one_pixel_images_do_not_end_the_run(tmp_path: Path, task: str) -> None:
    """A 5000 x 20 and a 20 x 5000 photo and a 1 x 1 photo among good scenes, batch 8.

    Before, the thin photo's resize raised in the detector's batch and the whole run ended
    with a traceback and a 0-byte index.jsonl.partial. Now a photo the model cannot take is
    that photo's error record (the reason is the model's), and the rest is explained.
    """
    model, methods = TASKS[task]
    photos = tmp_path / "photos"
    photos.mkdir()
    good = _good_scenes(photos)
    rng = np.random.default_rng(0)
    save_image(photos / "wide.png", rng.integers(0, 256, (20, 5000, 3), dtype=np.uint8))
    save_image(photos / "tall.png", rng.integers(0, 256, (5000, 20, 3), dtype=np.uint8))
    save_image(photos / "dot.png", np.array([[[200, 30, 90]]], dtype=np.uint8))
    out = tmp_path / "out"
    extra = ["--classes", CLASSES, "--drise-masks", "16"] if task == "detect" else []
    if task == "segment":
        extra = ["--classes", CLASSES]
    result = _run(photos, "--model", model, "--method", methods, "-o", out, *extra)
    index = {e["image"]: e for e in map(json.loads, (out / "index.jsonl").read_text().splitlines())}
    failed = {name: e["error"] for name, e in index.items() if e["status"] == "error"}
    if task == "detect":
        # torchvision's resizing scales the shorter side to 800, the longer to at most 1333:
        # a 5000 x 20 photo would be 5 pixels high; the tiny detector's transform is smaller.
        assert {"wide.png", "tall.png"} <= set(failed), index
    if not failed:  # the classifier and the segmenter take every photo
        assert result.exit_code == 0, result.output
        assert {e["status"] for e in index.values()} == {"ok"}
        assert len(index) == len(good) + 3
        return
    bad = {name: reason.split(":")[0] for name, reason in failed.items()}
    _check_run(out, result, [n for n in index if n not in failed], bad)
    assert {"good-0.png", "good-1.png"}.isdisjoint(failed)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("batch", ["1", "8"])
def test_an_exception_inside_the_model_fails_only_its_image(
    tmp_path: Path, task: str, batch: str
) -> None:
    """A factory whose forward pass raises on a marked (uniform) photo: in a batch of 8 the
    whole batch fails, so its images are retried one by one; the marked photo alone fails,
    with the model's own message, and the good ones are explained."""
    factory = tmp_path / "raising.py"
    factory.write_text(RAISING)
    name = {"classify": "classifier", "detect": "detector", "segment": "segmenter"}[task]
    photos = tmp_path / "photos"
    photos.mkdir()
    good = _good_scenes(photos, 3)
    save_image(photos / "marked.png", np.full((48, 64, 3), 90, dtype=np.uint8))
    out = tmp_path / "out"
    methods = TASKS[task][1].replace("drise", "gradcam")
    extra = [] if task == "classify" else ["--classes", CLASSES]
    result = _run(
        photos, "--model", f"{factory}:{name}", "--method", methods, "-o", out, "-b", batch,
        *extra,
    )  # fmt: skip
    _check_run(out, result, good, {"marked.png": "ValueError: marked input"})
    if batch == "8":
        assert "retrying its images one by one" in result.output
    rerun = _run(
        photos, "--model", f"{factory}:{name}", "--method", methods, "-o", out, "-b", batch,
        *extra,
    )  # fmt: skip
    assert rerun.exit_code == 1  # the marked photo fails again; the good ones are reused
    summary = json.loads((out / "run.json").read_text())
    assert summary["counts"] == {"total": 4, "explained": 0, "skipped": 3, "failed": 1}


def test_debug_prints_the_failed_images_traceback(tmp_path: Path) -> None:
    factory = tmp_path / "raising.py"
    factory.write_text(RAISING)
    photos = tmp_path / "photos"
    photos.mkdir()
    _good_scenes(photos, 1)
    save_image(photos / "marked.png", np.full((48, 64, 3), 90, dtype=np.uint8))
    result = _run(photos, "--model", f"{factory}:classifier", "--method", "gradcam", "-o",
                  tmp_path / "out", "--debug")  # fmt: skip
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.output
    assert 'raise ValueError("marked input' in result.output


def test_progress_rate_and_time_left_come_from_explained_images_only() -> None:
    """Two files that fail to decode at once must not make the run look fast: before, the
    plain line said '2 of 9 images after 0:02, 1 images/s, about 0:07 left' from failures."""
    from camcli.cli.frame import Reporter

    reporter = Reporter(jsonl=False, total=9, interval=0)
    try:
        for name in ("corrupt.jpg", "empty.png"):
            reporter.record({"image": name, "status": "error", "error": "cannot decode image"})
            reporter.advance(1)
        line = reporter.line()
        assert line.startswith("camcli: 2 of 9 images (2 failed) after "), line
        assert "images/s" not in line and "left" not in line
        reporter.record({"image": "a.png", "status": "ok"})
        reporter.advance(1)
        line = reporter.line()
        assert line.startswith("camcli: 3 of 9 images (2 failed) after "), line
        assert "images/s, about" in line
    finally:
        reporter.close()


def test_on_the_cpu_a_batch_is_finished_before_the_next_is_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a batch's records waited for the next batch's passes (the overlap is the
    GPU's): with RISE at 10 s a batch, 'camcli: 0 of 5 images' stood for 20 s."""
    import camcli.runs.explain as explain_run
    import camcli.runs.loop as loop

    finished: list[int] = []  # batches finished so far, at each batch's computation
    done = 0
    real_compute, real_finish = explain_run.compute_methods, loop._Loop._finish_part

    def compute(*args: object, **kwargs: object) -> object:
        finished.append(done)
        return real_compute(*args, **kwargs)

    def finish(self: object, launched: object) -> None:
        nonlocal done
        real_finish(self, launched)  # type: ignore[arg-type]
        done += 1

    monkeypatch.setattr(explain_run, "compute_methods", compute)
    monkeypatch.setattr(loop._Loop, "_finish_part", finish)
    photos = tmp_path / "photos"
    for k in range(4):
        save_image(photos / f"p{k}.png", np.full((20, 24, 3), 40 * k + 10, dtype=np.uint8))
    result = _run(photos, "--model", TINY, "--method", "gradcam", "-o", tmp_path / "out",
                  "-b", "1", "-j", "0", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert finished == [0, 1, 2, 3]  # before: [0, 0, 1, 2]


def test_after_a_write_error_every_record_on_disk_is_indexed_and_counted(tmp_path: Path) -> None:
    """An output subfolder that is a file: the run stops (exit 1, run.json failed), and the
    records the writers completed after the failure are in the index and counted. Before,
    a record written after the failure was on disk but in neither."""
    photos = tmp_path / "photos"
    for folder, count in (("a", 2), ("b", 1), ("c", 6)):
        for k in range(count):
            save_image(photos / folder / f"{k}.png", np.full((20, 24, 3), 30 * k, dtype=np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "b").write_text("a file where the run needs a folder")
    result = _run(photos, "--model", TINY, "--method", "gradcam,guided", "-o", out, "-j", "0")
    assert result.exit_code == 1, result.output
    assert "cannot write outputs for b/0.png" in result.output and "Traceback" not in result.output
    on_disk = {p.relative_to(out).as_posix()[: -len(".json")] for p in out.rglob("*.png.json")}
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "failed" and "Not a directory" in summary["error"]
    assert {e["image"] for e in index} == on_disk
    assert summary["counts"]["explained"] == len(on_disk) >= 2
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))
    (out / "b").unlink()
    again = _run(photos, "--model", TINY, "--method", "gradcam,guided", "-o", out, "-j", "0")
    assert again.exit_code == 0, again.output
    assert f"{len(on_disk)} up to date (reused)" in again.output


def test_a_fault_of_the_run_itself_is_one_sentence_and_a_failed_run_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not an image's failure: the run's own (here, reading the inputs' identities)."""
    import camcli.runs.loop as loop

    def broken(*_args: object) -> None:
        raise RuntimeError("the disk went away\nsecond line")

    monkeypatch.setattr(loop, "_input_stats", broken)
    photos = tmp_path / "photos"
    photos.mkdir()
    _good_scenes(photos, 1)
    out = tmp_path / "out"
    result = _run(photos, "--model", TINY, "--method", "gradcam", "-o", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "second line" not in result.output
    assert (
        "Error: the run failed: RuntimeError: the disk went away (--debug prints the "
        "traceback); the files written before it stopped are complete"
    ) in result.output
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "failed" and summary["counted"] is False
    assert summary["error"].startswith("the run failed: RuntimeError: the disk went away")
    debug = _run(photos, "--model", TINY, "--method", "gradcam", "-o", out, "--debug")
    assert debug.exit_code == 1 and "Traceback (most recent call last)" in debug.output
