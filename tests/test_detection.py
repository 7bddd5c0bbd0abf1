"""Detectors and segmenters: the maths against pytorch-grad-cam, D-RISE by hand, tiny models."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner, Result
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from camcli.cli import main
from camcli.methods.detection import box_iou, drise, explain_detections
from camcli.methods.rise import RiseMasks
from camcli.methods.segmentation import explain_segments

from .tiny_detection import MODELS, detector, scene, segmenter


def _r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_gradcam_per_box_equals_pytorch_grad_cam() -> None:
    """Faster R-CNN (seeded random weights), a 320 x 320 input that the detector neither
    resizes nor pads (so pytorch-grad-cam's stretched map is on the same pixels): each
    detection's Grad-CAM and HiResCAM against FasterRCNNBoxScoreTarget, r >= 0.99."""
    from pytorch_grad_cam import GradCAM, HiResCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=320, max_size=320
    ).eval()
    image = torch.rand(3, 320, 320)
    result = explain_detections(
        model, [image], "backbone.body.16", ["gradcam", "hirescam"], score_threshold=0.0,
        max_detections=2,
    )[0]  # fmt: skip
    assert len(result.detections) == 2
    layer = model.backbone.body._modules["16"]
    for method, reference in (("gradcam", GradCAM), ("hirescam", HiResCAM)):
        for k, det in enumerate(result.detections):
            target = FasterRCNNBoxScoreTarget([det.label], [np.array(det.box)])
            with reference(model=model, target_layers=[layer]) as cam:
                theirs = cam(image[None], targets=[target])[0]
            assert _r(theirs, result.maps[method][k].numpy()) >= 0.99, (method, k)


def test_seg_gradcam_per_class_equals_pytorch_grad_cam() -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    with torch.no_grad():  # two classes present: split the image by the input's first channel
        model.classifier.low_classifier.bias.zero_()
        model.classifier.high_classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
    x = torch.randn(1, 3, 96, 96)
    x[:, :, :, :48] += 3.0
    result = explain_segments(model, x, "backbone.16", ["gradcam"], 0.0)[0]
    assert result.segments

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return self.inner(batch)["out"]

    for k, segment in enumerate(result.segments):
        mask = (result.mask == segment.index).float().numpy()
        with GradCAM(model=Logits(), target_layers=[model.backbone._modules["16"]]) as cam:
            theirs = cam(x, targets=[SemanticSegmentationTarget(segment.index, mask)])[0]
        ours = F.interpolate(result.maps["gradcam"][k][None, None], size=(96, 96), mode="bilinear")
        assert _r(theirs, ours[0, 0].numpy()) >= 0.99


def _photo(**kwargs: tuple[int, int, int, int]) -> torch.Tensor:
    return pil_to_tensor(scene(**kwargs)).float() / 255.0


def _peak(values: torch.Tensor) -> tuple[int, int]:
    y, x = divmod(int(values.flatten().argmax()), values.shape[-1])
    return x, y


def test_each_detection_is_explained_by_its_own_object() -> None:
    """Two photos of other sizes in one batch (the detector resizes and pads them): every
    detection's Grad-CAM-family and D-RISE peak lies in its own object, not the other."""
    model = detector()
    boxes = [
        {"red": (8, 10, 28, 30), "green": (50, 25, 72, 50)},
        {"red": (60, 40, 90, 70), "green": (5, 5, 30, 25)},
    ]
    photos = [_photo(**boxes[0]), _photo(width=100, height=80, **boxes[1])]
    methods = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "drise"]
    results = explain_detections(model, photos, "features", methods, 0.5, 20, drise_masks=1000)
    for photo, result, where in zip(photos, results, boxes, strict=True):
        assert sorted(d.label for d in result.detections) == [1, 2]
        for k, det in enumerate(result.detections):
            own, other = (
                (where["red"], where["green"]) if det.label == 1 else (where["green"], where["red"])
            )
            x1, y1, x2, y2 = own
            assert det.box[0] < x1 + 3 and det.box[2] > x2 - 3  # the box is on the object
            for method in methods:
                values = result.maps[method][k]
                assert values.shape == photo.shape[1:]
                x, y = _peak(values)
                # D-RISE, a mean over random masks, is noisy around its floor: its peak is
                # not tested, only that its own object outweighs the other one
                assert (x1 <= x < x2 and y1 <= y < y2) or method == "drise", (method, (x, y))
                ox1, oy1, ox2, oy2 = other
                above = values - values.min()  # D-RISE has a floor, as RISE
                inside = above[y1:y2, x1:x2].mean()
                margin = 0.8 if method == "drise" else 0.5
                assert above[oy1:oy2, ox1:ox2].mean() < margin * inside, method


def test_guided_backprop_per_detection_stays_on_its_object() -> None:
    """Each detection's guided gradient (to the photo, through the detector's own resizing)
    lies on its own object; the CAMs from the same forward pass equal those without it."""
    model = detector()
    photo = _photo()
    both = explain_detections(model, [photo], "features", ["gradcam", "guided"], 0.5, 20)[0]
    alone = explain_detections(model, [photo], "features", ["gradcam"], 0.5, 20)[0]
    torch.testing.assert_close(both.maps["gradcam"], alone.maps["gradcam"])
    assert both.gradients is not None and both.gradients.shape == (2, 3, 60, 80)
    for k, det in enumerate(both.detections):
        x1, y1, x2, y2 = (8, 10, 28, 30) if det.label == 1 else (50, 25, 72, 50)
        energy = both.gradients[k].abs().sum(dim=0)
        inside = energy[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1].sum()
        assert inside > 0.9 * energy.sum(), det.label


def test_a_detector_that_finds_nothing_gives_no_maps() -> None:
    model = detector()
    dark = torch.full((3, 40, 50), 0.08)
    result = explain_detections(model, [dark], "features", ["gradcam", "drise"], 0.5, 20, 8)[0]
    assert result.detections == []
    assert result.maps["gradcam"].shape == (0, 40, 50) and result.maps["drise"].shape == (0, 40, 50)


def test_drise_is_the_weighted_mean_of_the_masks_by_hand() -> None:
    model = detector()
    photo = _photo()
    found = explain_detections(model, [photo], None, ["drise"], 0.5, 20, drise_masks=6)[0]
    ours = drise(model, photo, found.detections, masks=6, chunk_size=4, seed=3)
    masks = RiseMasks.random(6, 80, 3, cells=16, keep=0.5).chunk(0, 6, torch.device("cpu"))
    expected = torch.zeros(len(found.detections), 60, 80)
    for m in range(6):
        mask = masks[m, 0, :60, :80]
        with torch.no_grad():
            out = model([photo * mask])[0]
        for k, target in enumerate(found.detections):
            best = 0.0
            for box, label, score in zip(out["boxes"], out["labels"], out["scores"], strict=True):
                iou = float(box_iou(torch.tensor([target.box]), box[None])[0, 0])
                best = max(best, iou * float(label == target.label) * float(score))
            expected[k] += best * mask
    torch.testing.assert_close(ours, expected / 6, rtol=1e-4, atol=1e-6)


def test_each_segment_is_explained_by_its_own_pixels() -> None:
    model = segmenter()
    photo = _photo()
    x = F.interpolate(photo[None], size=(64, 64), mode="bilinear") * 2 - 1  # mean 0.5, std 0.5
    result = explain_segments(model, x, "features", ["gradcam", "hirescam", "layercam"], 0.01)[0]
    assert [s.index for s in result.segments] == [2, 1]  # green is larger
    for k, segment in enumerate(result.segments):
        own = result.mask == segment.index
        for method in ("gradcam", "hirescam", "layercam"):
            values = F.interpolate(result.maps[method][k][None, None], size=(64, 64))[0, 0]
            x0, y0 = _peak(values)
            assert own[y0, x0], (method, segment.index)
        assert segment.pixels == int(own.sum())
        assert segment.fraction == pytest.approx(segment.pixels / 64**2)


def test_box_iou_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[25 / 175, 0.0, 1.0]]))


# --- the command line ---------------------------------------------------------------------

TINY_FILE = MODELS


def _explain(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["explain", *(str(a) for a in args)])


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    scene().save(root / "one.png")
    scene(width=100, height=80, red=(60, 40, 90, 70), green=(5, 5, 30, 25)).save(
        root / "b" / "two.png"
    )
    Image.new("RGB", (50, 40), (20, 20, 20)).save(root / "dark.png")
    return root


def test_explain_a_detector_per_detection(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    classes = tmp_path / "classes.txt"
    classes.write_text("background\nred\ngreen\n")
    args = [scenes, "--model", f"{TINY_FILE}:detector", "--classes", classes, "--method",
            "gradcam,eigencam,drise,guided", "--drise-masks", "64", "-o", out,
            "--jsonl"]  # fmt: skip
    result = _explain(*args)
    assert result.exit_code == 0, result.output
    records = {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(records) == {"one.png", "b/two.png", "dark.png"}
    assert records["dark.png"]["status"] == "ok" and records["dark.png"]["detections"] == []
    assert (out / "dark.png.detections.png").is_file()
    one = records["one.png"]
    assert one["task"] == "detect" and one["layers"] == ["features"]
    by_name = {d["name"]: d for d in one["detections"]}
    assert set(by_name) == {"red", "green"} and [d["rank"] for d in one["detections"]] == [1, 2]
    for name, (x1, y1, x2, y2) in (("red", (8, 10, 28, 30)), ("green", (50, 25, 72, 50))):
        det = by_name[name]
        peak = det["maps"]["gradcam"]["peak"]
        assert x1 <= peak["x"] < x2 and y1 <= peak["y"] < y2
        assert det["box"][0] < x1 + 3 and det["box"][2] > x2 - 3 and 0.5 <= det["score"] <= 1
        for method in ("gradcam", "drise"):
            for role in ("heatmap", "overlay"):
                picture = Image.open(out / det["files"][method][role])
                assert picture.size == (80, 60)
    assert one["files"]["eigencam"]["overlay"] == "one.png.eigencam.overlay.png"
    guided = Image.open(out / by_name["red"]["files"]["guided"]["picture"])
    assert guided.size == (80, 60) and guided.mode == "RGB"
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert {e["image"]: e["detections"] for e in index} == {"one.png": 2, "b/two.png": 2,
                                                             "dark.png": 0}  # fmt: skip
    again = _explain(*args)  # up to date: nothing redone
    assert again.exit_code == 0
    assert all(json.loads(line).get("reused") for line in again.stdout.splitlines())


def test_explain_a_segmenter_per_class(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    classes = tmp_path / "classes.txt"
    classes.write_text("background\nred\ngreen\n")
    result = _explain(scenes / "one.png", "--model", f"{TINY_FILE}:segmenter", "--classes",
                      classes, "--method", "gradcam,eigencam", "-o", out, "--jsonl")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["task"] == "segment"
    assert [s["name"] for s in record["segments"]] == ["green", "red"]
    for segment, (x1, y1, x2, y2) in zip(
        record["segments"], ((50, 25, 72, 50), (8, 10, 28, 30)), strict=True
    ):
        peak = segment["maps"]["gradcam"]["peak"]
        assert x1 - 2 <= peak["x"] < x2 + 2 and y1 - 2 <= peak["y"] < y2 + 2
        assert abs(segment["pixels"] - (x2 - x1) * (y2 - y1)) < 0.2 * (x2 - x1) * (y2 - y1)
        assert Image.open(out / segment["files"]["gradcam"]["overlay"]).size == (80, 60)
    mask = np.asarray(Image.open(out / "one.png.mask.png").convert("RGB"))
    assert mask.shape == (60, 80, 3) and (out / "one.png.eigencam.png").is_file()
    assert Path(record["segments"][1]["files"]["gradcam"]["heatmap"]).name.startswith(
        "one.png.red."
    )


def test_a_zoo_detector_by_name_with_a_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    weights = tmp_path / "w.pt"
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None
    )
    # Random weights spread the score over 91 classes (about 0.01 each, under the model's own
    # 0.05 floor: nothing found, PITFALLS 19); a biased class head finds "person" everywhere.
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 8.0
    torch.save(model.state_dict(), weights)
    scene().save(tmp_path / "one.png")
    result = _explain(tmp_path / "one.png", "--model", name, "--weights", weights,
                      "--max-detections", "2", "-o", tmp_path / "out", "--jsonl")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["task"] == "detect" and record["layers"] == ["backbone.body.16"]
    assert 1 <= len(record["detections"]) <= 2
    assert (
        record["detections"][0]["name"]
        in torchvision.models.get_model_weights(name).DEFAULT.meta["categories"]
    )


def test_wrong_use_is_one_sentence_and_exit_2(scenes: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd.py"
    odd.write_text(
        "import torch\n"
        "class Odd(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 2, 3)\n"
        "    def forward(self, x):\n        y = self.conv(x)\n        return y, y\n"
        "def build():\n    return Odd()\n"
    )
    cases = [
        (["--model", f"{odd}:build"], "'--model'", "returned a tuple of 2"),
        (["--model", f"{TINY_FILE}:detector", "--score-threshold", "1.5"], "'--score-threshold'",
         "1.5 is not in the range"),
        (["--model", f"{TINY_FILE}:detector", "--method", "cam"], "'--method'",
         "cam needs a classifier's global pooling and linear head; a detector's maps come from"),
        (["--model", f"{TINY_FILE}:segmenter", "--method", "drise"], "'--method'",
         "drise does not apply to a segmenter"),
        (["--model", f"{TINY_FILE}:detector", "--task", "segment"], "'--task'",
         "the model is a detector: it returns one dict of boxes, labels and scores per image, "
         "and a segmenter returns N x C x H x W logits"),
        (["--model", f"{TINY_FILE}:segmenter", "--task", "detect"], "'--task'",
         "the model is a segmenter: it returns N x C x H x W logits, and a detector returns"),
        (["--model", f"{TINY_FILE}:detector", "--target", "label"], "'--target'",
         "does not apply to a detector"),
    ]  # fmt: skip
    for args, option, words in cases:
        result = _explain(scenes / "one.png", "-o", tmp_path / "o", *args)
        assert result.exit_code == 2, (args, result.output)
        assert option in result.output and words in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "one.png.json").exists()


def test_task_classify_runs_a_segmenter_as_a_classifier_of_its_mean_logits(
    tmp_path: Path,
) -> None:
    """``--task classify`` on a segmenter: its predictions are the softmax of its per-pixel
    logits averaged (computed here from the module), its record says so, its maps are a
    classifier's; the library's ``task`` argument does the same, and a run without it is
    a segmenter's run that redoes the image."""
    import camcli

    photo = tmp_path / "in" / "s.png"
    photo.parent.mkdir()
    # 64 x 64, the model's input size: the model sees the photo's pixels as they are
    scene(width=64, height=64, red=(8, 8, 40, 48), green=(44, 20, 60, 30)).save(photo)
    out = tmp_path / "out"
    args = [photo, "--model", f"{TINY_FILE}:segmenter", "--method", "gradcam", "-o", out]
    result = _explain(*args, "--task", "classify", "--jsonl")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["task"] == "classify" and "segments" not in record
    assert record["pooled"] == "a segmenter's per-pixel logits, averaged over the image"
    pixels = pil_to_tensor(Image.open(photo)).float()[None] / 255
    with torch.no_grad():
        logits = segmenter()((pixels - 0.5) / 0.5)["out"].mean(dim=(2, 3))[0]
    chances = logits.softmax(0)
    # the red object covers the most pixels: class 1 is the top-1
    assert [p["index"] for p in record["predictions"]] == logits.argsort(descending=True).tolist()
    assert record["predictions"][0]["index"] == 1
    for prediction in record["predictions"]:
        assert prediction["probability"] == pytest.approx(
            float(chances[prediction["index"]]), abs=1e-5
        )
        assert prediction["logit"] == pytest.approx(float(logits[prediction["index"]]), abs=1e-3)
    peak = record["maps"]["gradcam"]["peak"]
    assert 8 <= peak["x"] < 40 and 8 <= peak["y"] < 48
    as_segmenter = _explain(*args, "--jsonl")  # another task: redone, not reused
    assert as_segmenter.exit_code == 0, as_segmenter.output
    again = json.loads(as_segmenter.stdout)
    assert again["task"] == "segment" and not again.get("reused")
    library = camcli.Explainer(f"{TINY_FILE}:segmenter", ["gradcam"], device="cpu", task="classify")
    explained = next(library.explain(photo))
    assert explained.task == "classify" and explained.predictions[0].index == 1
    assert explained.predictions[0].probability == pytest.approx(float(chances[1]), abs=1e-5)
    with pytest.raises(ValueError, match="task: the model is a segmenter: it returns"):
        camcli.Explainer(f"{TINY_FILE}:segmenter", device="cpu", task="detect")


def test_the_readme_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The README's detection and segmentation block, line by line, in a folder of its own."""
    text = (MODELS.parents[2] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in text.split("```")[1::2] if "configs/regions/make_scenes.py" in b)
    commands = [line.strip() for line in block.splitlines() if line.strip()]
    assert commands[0].startswith("python configs/regions/make_scenes.py ")
    shutil.copytree(MODELS.parent, tmp_path / "configs" / "regions")
    monkeypatch.chdir(tmp_path)
    made = subprocess.run([sys.executable, *shlex.split(commands[0])[1:]], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr
    for command in commands[1:]:
        words = shlex.split(command)
        assert words[:2] == ["camcli", "explain"]
        result = CliRunner().invoke(main, words[1:])
        assert result.exit_code == 0, (command, result.output)
    # the evaluate example, on the same photos and their boxes
    evaluate = next(
        line.strip()
        for b in text.split("```")[1::2]
        for line in b.splitlines()
        if line.startswith("camcli evaluate regions-demo")
    )
    result = CliRunner().invoke(main, shlex.split(evaluate)[1:])
    assert result.exit_code == 0, result.output
    # into the explain run's folder (the same model and task): its pictures stay explain's
    evaluation = json.loads((tmp_path / "detect-out" / "evaluation.json").read_text())
    assert evaluation["objects"] == evaluation["matched"] == 8  # 4 scenes x 2 boxes
    assert evaluation["methods"]["gradcam"]["pointing_game"] == 1.0
    detect = json.loads((tmp_path / "detect-out" / "scene-1.png.json").read_text())
    assert sorted(d["name"] for d in detect["detections"]) == ["green", "red"]
    assert set(detect["detections"][0]["files"]) == {"gradcam", "drise", "guided"}
    dark = json.loads((tmp_path / "detect-out" / "dark.png.json").read_text())
    assert dark["detections"] == []
    segment = json.loads((tmp_path / "segment-out" / "scene-1.png.json").read_text())
    assert sorted(s["name"] for s in segment["segments"]) == ["green", "red"]
    assert (tmp_path / "segment-out" / "scene-1.png.mask.png").is_file()
    # the library's example, in the same folder
    code = next(
        b.removeprefix("python\n")
        for b in text.split("```")[1::2]
        if b.startswith("python\n") and "configs/regions/models.py:detector" in b
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith("(150, 200)") for line in lines), lines
    assert sorted(line.split()[0] for line in lines) == ["1", "2"]


def test_layers_lists_a_detectors_and_summarize_says_what_it_needs(
    scenes: Path, tmp_path: Path
) -> None:
    listed = CliRunner().invoke(main, ["layers", f"{MODELS}:detector"])
    assert listed.exit_code == 0 and "features" in listed.stdout and "default" in listed.stdout
    missing = CliRunner().invoke(main, ["layers", str(tmp_path / "none.py") + ":build"])
    assert missing.exit_code == 2 and "factory file" in missing.output
    assert "Traceback" not in missing.output
    out = tmp_path / "out"
    assert _explain(scenes / "one.png", "--model", f"{MODELS}:detector", "-o", out).exit_code == 0
    summary = CliRunner().invoke(main, ["summarize", str(out)])
    assert summary.exit_code == 2
    assert "holds a detector's records; summarize clusters a classifier's maps" in summary.output


def test_the_report_shows_detections_and_says_when_there_is_none(
    browser: Any, scenes: Path, tmp_path: Path
) -> None:
    from .browser import Page

    out = tmp_path / "out"
    result = _explain(scenes, "--model", f"{MODELS}:detector", "--classes",
                      MODELS.with_name("classes.txt"), "-o", out, "--report")  # fmt: skip
    assert result.exit_code == 0, result.output
    page = Page(browser)
    tab = page.open(out / "report" / "index.html")
    captions = tab.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.innerText)")
    assert any("2 detections" in c for c in captions) and any("no detection" in c for c in captions)
    tab = page.open(out / "report" / "image.html", "?image=one.png")
    tab.wait_for_function("() => document.getElementById('verdict').textContent.length > 0")
    assert tab.inner_text("#verdict") == "2 detections with a score of at least 0.5"
    rows = tab.eval_on_selector_all("section table tr", "rs => rs.map(r => r.innerText)")
    assert any(r.startswith("1\t") and ("red" in r or "green" in r) for r in rows), rows
    shown = page.images_resolve()
    assert len(shown) == 5 and all(width > 0 for _src, width in shown)  # sheet + 2 x 2 maps
    tab = page.open(out / "report" / "image.html", "?image=dark.png")
    tab.wait_for_function("() => document.getElementById('verdict').textContent.length > 0")
    assert tab.inner_text("#verdict") == "no detection with a score of at least 0.5"
    assert page.problems == []
    page.close()


def test_the_library_explains_a_detector_and_a_segmenter(scenes: Path, tmp_path: Path) -> None:
    """``camcli.Explainer`` on own models: the results carry the detections or segments and
    their maps at the photo's size; explain_folder writes what the command line writes."""
    import camcli
    from camcli.models.registry import load_model

    explainer = camcli.Explainer(
        load_model(f"{MODELS}:detector"), ["gradcam", "guided", "eigencam"], device="cpu"
    )
    result = next(explainer.explain(scenes / "one.png"))
    assert result.task == "detect" and result.predictions == [] and result.target is None
    assert sorted(d.index for d in result.detections) == [1, 2]
    assert result.maps["eigencam"].shape == (60, 80)
    for det in result.detections:
        x1, y1, x2, y2 = (8, 10, 28, 30) if det.index == 1 else (50, 25, 72, 50)
        values = det.maps["gradcam"]
        assert values.shape == (60, 80) and values.max() == pytest.approx(1.0)
        y, x = np.unravel_index(int(values.argmax()), values.shape)
        assert x1 <= x < x2 and y1 <= y < y2
        assert det.maps["guided"].shape == (60, 80, 3) and det.score is not None
    segmenter = camcli.Explainer(load_model(f"{MODELS}:segmenter"), device="cpu")
    assert segmenter.methods == ("gradcam",)
    segmented = next(segmenter.explain(scenes / "one.png"))
    assert [s.index for s in segmented.segments] == [2, 1]
    assert segmented.segments[0].maps["gradcam"].shape == (60, 80)
    with pytest.raises(
        ValueError, match="drise does not apply to a segmenter; its maps come from gradcam"
    ):
        camcli.Explainer(load_model(f"{MODELS}:segmenter"), ["drise"], device="cpu")
    written = explainer.explain_folder(scenes, tmp_path / "lib")
    assert written.explained == 3
    by_cli = _explain(scenes, "--model", f"{MODELS}:detector", "--method",
                      "gradcam,eigencam,guided", "-o", tmp_path / "cli", "-b", "8")  # fmt: skip
    assert by_cli.exit_code == 0, by_cli.output
    for name in ("one.png.json", "b/two.png.json", "dark.png.json"):
        lib = json.loads((tmp_path / "lib" / name).read_text())
        cli = json.loads((tmp_path / "cli" / name).read_text())
        assert lib["detections"] == cli["detections"], name


def _voc(path: Path, objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    body = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, (x1, y1, x2, y2) in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation>{body}</annotation>")


def test_evaluate_matches_detections_to_boxes_and_scores_their_maps(
    scenes: Path, tmp_path: Path
) -> None:
    boxes = tmp_path / "boxes"
    _voc(boxes / "one.xml", [("red", (8, 10, 28, 30)), ("green", (50, 25, 72, 50))])
    # two.png: its green box is annotated as red (no match), its red one is right
    _voc(boxes / "b" / "two.xml", [("red", (60, 40, 90, 70)), ("red", (5, 5, 30, 25))])
    out = tmp_path / "out"
    model = ["--model", f"{MODELS}:detector", "--classes", str(MODELS.with_name("classes.txt"))]
    explained = _explain(scenes, *model, "-o", out)
    assert explained.exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    result = CliRunner().invoke(main, ["evaluate", str(scenes), *model, "--boxes", str(boxes),
                                       "--method", "gradcam,drise", "--drise-masks", "64",
                                       "-o", str(out), "--jsonl"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before  # explain's pictures
    records = {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}
    one = records["one.png"]
    assert one["annotated"] == {"objects": 2, "matched": 2}
    for det in one["detections"]:
        assert det["match"]["name"] == det["name"] and det["match"]["iou"] >= 0.5
        assert det["localisation"]["gradcam"]["pointing_game"] == 1.0
        assert det["localisation"]["gradcam"]["energy_pointing_game"] > 0.5
    two = records["b/two.png"]
    assert two["annotated"] == {"objects": 2, "matched": 1}
    assert [d["match"] is None for d in two["detections"]].count(True) == 1
    assert records["dark.png"].get("annotated") is None  # no box file
    assert (out / "one.png.evaluate.json").is_file() and (out / "one.png.json").is_file()
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["task"] == "detect" and summary["matched"] == 3 and summary["objects"] == 4
    assert summary["methods"]["gradcam"]["pointing_game"] == 1.0
    assert summary["methods"]["gradcam"]["images"] == 3
    assert "| gradcam | 1.000 |" in (out / "evaluation.md").read_text()
    report = CliRunner().invoke(main, ["report", str(out)])
    assert report.exit_code == 0, report.output
    assert "gradcam" in (out / "report" / "evaluation.html").read_text()


def test_evaluate_scores_each_segment_against_the_annotated_mask(
    scenes: Path, tmp_path: Path
) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    truth = np.zeros((60, 80), np.uint8)
    truth[10:30, 8:28] = 1
    truth[25:50, 50:72] = 2
    Image.fromarray(truth).save(masks / "one.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["evaluate", str(scenes / "one.png"), "--model",
                                       f"{MODELS}:segmenter", "--masks", str(masks), "-o",
                                       str(out), "--jsonl"])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["annotated"] == {"objects": 2, "matched": 2}
    for segment in record["segments"]:
        assert segment["localisation"]["gradcam"]["pointing_game"] == 1.0
    assert json.loads((out / "evaluation.json").read_text())["matched"] == 2


def test_a_class_file_shorter_than_the_labels_is_said_and_nothing_is_lost(
    scenes: Path, tmp_path: Path
) -> None:
    short = tmp_path / "short.txt"
    short.write_text("background\nred\n")
    result = _explain(scenes / "one.png", "--model", f"{MODELS}:detector", "--classes", short,
                      "-o", tmp_path / "out", "--jsonl")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        f"--classes {short} names 2 classes (index 0 the background), but the detector "
        "returned labels 2 (1 detection): they are named class_N in the records"
    ) in result.stderr
    names = sorted(d["name"] for d in json.loads(result.stdout)["detections"])
    assert names == ["class_2", "red"]


def test_shards_of_a_detector_run_are_the_whole_run(scenes: Path, tmp_path: Path) -> None:
    """Two shards write the files of one run over every photo; the merging run redoes none."""
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    common = ["--model", f"{MODELS}:detector", "--classes", MODELS.parent / "classes.txt",
              "--method", "gradcam,guided"]  # fmt: skip
    assert _explain(scenes, "-o", whole, *common).exit_code == 0
    seen: list[str] = []
    for k in (0, 1):
        result = _explain(scenes, "-o", sharded, *common, "--shard", f"{k}/2", "--jsonl")
        assert result.exit_code == 0, result.output
        seen += [json.loads(line)["image"] for line in result.stdout.splitlines()]
        assert (sharded / f"index.shard-{k}-of-2.jsonl").is_file()
    assert sorted(seen) == ["b/two.png", "dark.png", "one.png"]
    merged = _explain(scenes, "-o", sharded, *common, "--jsonl")
    assert merged.exit_code == 0, merged.output
    assert all(json.loads(line).get("reused") for line in merged.stdout.splitlines())

    def pictures(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}

    assert pictures(sharded) == pictures(whole) and len(pictures(whole)) == 3 + 2 * 2 * 3
    for name in ("one.png.json", "b/two.png.json"):
        assert (
            json.loads((sharded / name).read_text())["detections"]
            == json.loads((whole / name).read_text())["detections"]
        )
    index = [json.loads(line) for line in (sharded / "index.jsonl").read_text().splitlines()]
    assert sorted((e["image"], e["detections"]) for e in index) == [
        ("b/two.png", 2), ("dark.png", 0), ("one.png", 2)]  # fmt: skip
