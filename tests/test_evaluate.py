"""`camcli evaluate`: scores of known maps, the outputs, annotations, resume and errors."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from camcli.cli import main

from .conftest import BRIGHT, TINY, save_image, square_image
from .test_stops import FACTORY

ROOT = Path(__file__).resolve().parents[1]
SQUARE = (8, 8, 24, 24)  # left, top, right, bottom: the white square, in a 64 x 48 image
KEYS = {
    "pointing_game",
    "energy_pointing_game",
    "box_accuracy",
    "mass_accuracy",
    "rank_accuracy",
    "deletion",
    "insertion",
    "drop",
    "road_morf",
    "road_lerf",
    "images",
}


def run(args: list[str]) -> Result:
    return CliRunner().invoke(main, args, catch_exceptions=False)


def voc(path: Path, objects: list[tuple[str, tuple[int, int, int, int]]]) -> None:
    """Write a VOC file; boxes as (left, top, right, bottom) in 0-based half-open pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ["<annotation>"]
    for name, (x0, y0, x1, y1) in objects:
        parts.append(
            f"<object><name>{name}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    path.write_text("".join(parts) + "</annotation>", encoding="utf-8")


@pytest.fixture
def squares(tmp_path: Path) -> tuple[Path, Path]:
    """Two images with a white square at SQUARE; a box on it for a.png, elsewhere for b.png."""
    images, boxes = tmp_path / "images", tmp_path / "boxes"
    for name in ("a.png", "b.png"):
        save_image(images / "set" / name, square_image(64, 48, SQUARE))
    voc(boxes / "set" / "a.xml", [("tench", (6, 6, 26, 26)), ("goldfish", (40, 0, 64, 48))])
    voc(boxes / "set" / "b.xml", [("tench", (40, 4, 62, 44))])
    return images, boxes


def test_scores_of_a_map_known_by_hand(squares: tuple[Path, Path], tmp_path: Path):
    """BrightnessNet's Grad-CAM is the brightness: it points at the square."""
    images, boxes = squares
    out = tmp_path / "out"
    result = run(
        [
            "evaluate", str(images), "-o", str(out), "-m", BRIGHT, "--method", "gradcam",
            "--boxes", str(boxes), "--metrics", "none", "--device", "cpu",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    a = json.loads((out / "set" / "a.png.evaluate.json").read_text())
    b = json.loads((out / "set" / "b.png.evaluate.json").read_text())
    # All logits are equal: the top-1 is class 0, tench; goldfish's box does not count.
    assert a["target"]["name"] == "tench"
    assert a["annotation"]["objects"] == 2 and a["annotation"]["target_boxes"] == 1
    assert a["annotation"]["mask"] is None and len(a["annotation"]["digest"]) == 16
    ga, gb = a["scores"]["gradcam"], b["scores"]["gradcam"]
    assert (ga["pointing_game"], gb["pointing_game"]) == (1.0, 0.0)
    assert (ga["box_accuracy"], gb["box_accuracy"]) == (1.0, 0.0)
    assert ga["energy_pointing_game"] > 0.9 and gb["energy_pointing_game"] < 0.05
    assert ga["mass_accuracy"] is None and ga["deletion"] is None  # not asked for
    evaluation = json.loads((out / "evaluation.json").read_text())
    scores = evaluation["methods"]["gradcam"]
    assert set(scores) >= KEYS
    assert scores["pointing_game"] == 0.5 and scores["box_accuracy"] == 0.5
    assert scores["images"] == 2 and scores["mass_accuracy"] is None
    assert evaluation["annotated"] == 2 and evaluation["sanity"] == {}
    table = (out / "evaluation.md").read_text()
    assert "| gradcam | **0.500** |" in table
    index = [json.loads(line) for line in (out / "evaluate.index.jsonl").read_text().splitlines()]
    assert [e["image"] for e in index] == ["set/a.png", "set/b.png"]
    summary = json.loads((out / "evaluate.run.json").read_text())
    assert summary["counts"]["explained"] == 2
    assert summary["settings"]["target"]["mode"] == "annotated"


def test_no_score_measured_gives_a_sentence_not_a_broken_table(
    squares: tuple[Path, Path], tmp_path: Path
):
    """The top-1 (tench) has no box, --metrics none: the files say so, and the exit is 1."""
    images, _boxes = squares
    only_goldfish = tmp_path / "goldfish"
    for name in ("a", "b"):
        voc(only_goldfish / "set" / f"{name}.xml", [("goldfish", (40, 0, 64, 48))])
    out = tmp_path / "out"
    result = run(
        [
            "evaluate", str(images), "-o", str(out), "-m", BRIGHT, "--method", "gradcam",
            "--boxes", str(only_goldfish), "--target", "pred", "--metrics", "none",
        ]
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "2 annotated image(s) have boxes only of other classes" in result.stderr
    assert (
        "camcli: nothing was scored: no image had a box or mask of the class explained, and "
        "--metrics is none\n"
    ) in result.stderr
    table = (out / "evaluation.md").read_text()
    assert "No score was measured" in table and "| method |" not in table


def test_masks_give_mass_and_rank_accuracy(squares: tuple[Path, Path], tmp_path: Path):
    images, _ = squares
    masks = tmp_path / "masks"
    full = np.zeros((48, 64), dtype=np.uint8)
    full[8:24, 8:24] = 255
    save_image(masks / "set" / "a.png", full)
    save_image(masks / "set" / "b.png", np.roll(full, 32, axis=1))
    out = tmp_path / "out"
    result = run(
        [
            "evaluate", str(images), "-o", str(out), "-m", BRIGHT, "--method", "gradcam",
            "--masks", str(masks), "--metrics", "none", "--device", "cpu",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    a = json.loads((out / "set" / "a.png.evaluate.json").read_text())["scores"]["gradcam"]
    b = json.loads((out / "set" / "b.png.evaluate.json").read_text())["scores"]["gradcam"]
    assert a["mass_accuracy"] > 0.9 and b["mass_accuracy"] < 0.05
    assert a["rank_accuracy"] > 0.9 and b["rank_accuracy"] < 0.05
    # Without boxes the pointing games read the mask; box accuracy needs boxes.
    assert a["pointing_game"] == 1.0 and b["pointing_game"] == 0.0
    assert a["box_accuracy"] is None
    # An empty mask marks no object: no localisation scores, counted, said on stderr.
    save_image(masks / "set" / "b.png", np.zeros((48, 64), dtype=np.uint8))
    again = run(
        [
            "evaluate", str(images), "-o", str(out), "-m", BRIGHT, "--method", "gradcam",
            "--masks", str(masks), "--metrics", "none", "--device", "cpu",
        ]
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    b = json.loads((out / "set" / "b.png.evaluate.json").read_text())
    assert b["scores"]["gradcam"]["mass_accuracy"] is None
    assert b["annotation"]["mask"] == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["without_target_box"] == 1 and evaluation["empty_masks"] == 1
    assert "--masks: 1 mask(s) have no non-zero pixel" in again.stderr
    assert "--target" not in again.stderr  # the hint says what is wrong with the mask


def test_a_coco_file_scores_like_voc_files(squares: tuple[Path, Path], tmp_path: Path):
    images, boxes = squares
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "set/b.png"}],
        "annotations": [
            {"image_id": 1, "category_id": 7, "bbox": [6, 6, 20, 20]},
            {"image_id": 2, "category_id": 7, "bbox": [40, 4, 22, 40]},
        ],
        "categories": [{"id": 7, "name": "tench"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    results = {}
    for source, name in ((boxes, "voc"), (tmp_path / "coco.json", "coco")):
        out = tmp_path / name
        result = run(
            [
                "evaluate", str(images), "-o", str(out), "-m", BRIGHT, "--method", "gradcam",
                "--boxes", str(source), "--metrics", "none", "--device", "cpu",
            ]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        results[name] = json.loads((out / "evaluation.json").read_text())["methods"]
    assert results["coco"] == results["voc"]


def test_faithfulness_road_and_sanity_on_the_tiny_model(squares: tuple[Path, Path], tmp_path: Path):
    images, boxes = squares
    save_image(images / "set" / "c.png", square_image(64, 48, (30, 10, 50, 30)))  # no box file
    out = tmp_path / "out"
    result = run(
        [
            "evaluate", str(images), "-o", str(out), "-m", TINY,
            "--method", "gradcam,guided,guided-gradcam", "--boxes", str(boxes),
            "--metrics", "all", "--metric-steps", "4", "--sanity", "--sanity-stages", "2",
            "--target", "tench", "--device", "cpu", "--jsonl",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in lines] == ["set/a.png", "set/b.png", "set/c.png"]
    record = lines[2]
    assert record["annotation"] is None  # counted, scored for faithfulness only
    scores = record["scores"]["guided"]
    assert scores["pointing_game"] is None
    for name in ("deletion", "insertion", "drop", "road_morf", "road_lerf"):
        assert 0.0 <= scores[name] <= 1.0, name
    assert len(record["curves"]["guided"]["deletion"]) == 5
    assert len(record["curves"]["guided"]["road_morf"]) == 9
    stages = record["sanity"]["gradcam"]
    assert [s["stage"] for s in stages] == ["fc", "features.0"]
    assert all(-1.0 <= s["spearman"] <= 1.0 and -1.0 <= s["ssim"] <= 1.0 for s in stages)
    with Image.open(out / "set" / "c.png.sanity.png") as sheet:
        assert sheet.width > 3 * 96 and sheet.height > 3 * 96  # 3 stages x 3 methods
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["images"] == 3 and evaluation["annotated"] == 2
    assert evaluation["unannotated"] == 1
    assert evaluation["methods"]["guided"]["images"] == 3
    assert evaluation["methods"]["guided"]["scored"]["pointing_game"] == 2
    assert [s["stage"] for s in evaluation["sanity"]["guided"]] == ["fc", "features.0"]
    for picture in ("sanity", "curves", "road", "stages"):
        assert (out / evaluation["pictures"][picture]).is_file(), picture
    assert evaluation["stages_image"] == "set/a.png"


def test_a_rerun_reuses_records_and_rewrites_the_same_evaluation(
    squares: tuple[Path, Path], tmp_path: Path
):
    images, boxes = squares
    out = tmp_path / "out"
    args = [
        "evaluate", str(images), "-o", str(out), "-m", TINY, "--method", "gradcam",
        "--boxes", str(boxes), "--sanity", "--sanity-stages", "2", "--metric-steps", "4",
        "--device", "cpu",
    ]  # fmt: skip
    assert run(args).exit_code == 0
    first = json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation" / "stages.png").is_file()
    record = (out / "set" / "a.png.evaluate.json").read_bytes()
    again = run([*args, "--jsonl"])
    assert again.exit_code == 0
    assert all(json.loads(line)["reused"] for line in again.stdout.splitlines())
    assert (out / "set" / "a.png.evaluate.json").read_bytes() == record
    assert json.loads((out / "evaluation.json").read_text())["methods"] == first["methods"]
    # A sanity sheet that went missing makes its image count as not done.
    (out / "set" / "b.png.sanity.png").unlink()
    redone = run([*args, "--jsonl"])
    reused = {
        json.loads(line)["image"]: json.loads(line).get("reused")
        for line in redone.stdout.splitlines()
    }
    assert reused == {"set/a.png": True, "set/b.png": False}
    # An edited box file redoes its image only.
    (boxes / "set" / "b.xml").write_text((boxes / "set" / "a.xml").read_text())
    edited = [json.loads(line) for line in run([*args, "--jsonl"]).stdout.splitlines()]
    assert {r["image"]: r.get("reused") for r in edited} == {"set/a.png": True, "set/b.png": False}
    # Other settings: redone.
    changed = run([*args[:-2], "--metric-steps", "5", "--device", "cpu", "--jsonl"])
    assert not any(json.loads(line).get("reused") for line in changed.stdout.splitlines())


def test_evaluate_leaves_explain_results_alone(squares: tuple[Path, Path], tmp_path: Path):
    images, boxes = squares
    out = tmp_path / "out"
    assert run(["explain", str(images), "-o", str(out), "-m", TINY]).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = run(["evaluate", str(images), "-o", str(out), "-m", TINY, "--boxes", str(boxes)])
    assert result.exit_code == 0, result.output
    for path, content in before.items():
        assert path.read_bytes() == content, path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("<annotation><object>", "does not parse as XML"),
        ("<annotation><object><name>tench</name></object></annotation>", "no <bndbox>"),
        (
            "<annotation><object><name>no such class</name><bndbox><xmin>1</xmin><ymin>1"
            "</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>",
            "'no such class', which the model does not have",
        ),
    ],
)
def test_a_bad_box_file_is_a_usage_error(
    squares: tuple[Path, Path], tmp_path: Path, content: str, message: str
):
    images, boxes = squares
    (boxes / "set" / "b.xml").write_text(content)
    result = run(["evaluate", str(images), "-o", str(tmp_path / "out"), "-m", TINY,
                  "--boxes", str(boxes)])  # fmt: skip
    assert result.exit_code == 2
    assert "--boxes" in result.output and message in result.output
    assert "b.xml" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "evaluate.index.jsonl").exists()


def test_a_mask_of_another_size_fails_that_image_only(squares: tuple[Path, Path], tmp_path: Path):
    images, _ = squares
    masks = tmp_path / "masks"
    save_image(masks / "set" / "a.png", np.zeros((48, 64), dtype=np.uint8))
    save_image(masks / "set" / "b.png", np.zeros((10, 10), dtype=np.uint8))
    out = tmp_path / "out"
    result = run(["evaluate", str(images), "-o", str(out), "-m", TINY, "--masks", str(masks),
                  "--metrics", "none"])  # fmt: skip
    assert result.exit_code == 1
    assert "10 x 10 pixels, the image 64 x 48" in result.output
    index = [json.loads(line) for line in (out / "evaluate.index.jsonl").read_text().splitlines()]
    assert {e["image"]: e["status"] for e in index} == {"set/a.png": "ok", "set/b.png": "error"}


def test_usage_errors_name_the_option(squares: tuple[Path, Path], tmp_path: Path):
    images, _ = squares
    for args, option in (
        (["--metrics", "speed"], "--metrics"),
        (["--method", "nope"], "--method"),
        (["--target", "no such class"], "--target"),
        (["--sanity-stages", "0"], "--sanity-stages"),
    ):
        result = run(["evaluate", str(images), "-o", str(tmp_path / "o"), "-m", TINY, *args])
        assert result.exit_code == 2, args
        assert option in result.output and "Traceback" not in result.output


def readme_section_commands(title: str) -> list[str]:
    """The plain code blocks' lines of one README section, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    lines, in_block = [], False
    for raw in section.splitlines():
        if raw.startswith("```"):
            in_block = not in_block
            continue
        if in_block and raw.strip():
            lines.append(raw.strip())
    return lines


@pytest.mark.real_model
def test_the_readme_collages_example_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The embedded model on collages of the sample photos, their tiles as boxes."""
    commands = readme_section_commands("Which map to trust")
    assert commands[0].startswith("python benchmarks/collages.py sample_images collages")
    assert commands[1].startswith("camcli evaluate collages/images --boxes collages/boxes")
    shutil.copytree(ROOT / "sample_images", tmp_path / "sample_images")
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "collages.py", tmp_path / "benchmarks")
    monkeypatch.chdir(tmp_path)
    words = shlex.split(commands[0])
    subprocess.run([sys.executable, *words[1:]], check=True, capture_output=True, timeout=120)
    result = run(shlex.split(commands[1])[1:])
    assert result.exit_code == 0, result.output
    out = tmp_path / "evaluation-out"
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["annotated"] == 4 and evaluation["without_target_box"] == 0
    gradcam = evaluation["methods"]["gradcam"]
    assert gradcam["pointing_game"] >= 0.75
    assert gradcam["insertion"] > gradcam["deletion"]
    # Adebayo et al.: Grad-CAM changes once the classifier is random; guided backprop barely.
    first = {m: stages[0] for m, stages in evaluation["sanity"].items()}
    assert first["gradcam"]["stage"] == "classifier"
    assert first["guided"]["spearman"] > 0.8 > first["gradcam"]["spearman"]
    assert (out / "report" / "evaluation.html").is_file()
    assert "| gradcam |" in (out / "evaluation.md").read_text()


def test_scores_do_not_depend_on_batching_layout_or_workers(
    squares: tuple[Path, Path], tmp_path: Path
):
    images, boxes = squares
    save_image(images / "set" / "c.png", square_image(64, 48, (30, 10, 50, 30)))
    scores = {}
    for name, extra in (
        ("one", ["--batch-size", "1", "--workers", "0", "--chunk-size", "3"]),
        ("three", ["--batch-size", "3", "--channels-last", "--chunk-size", "64"]),
    ):
        out = tmp_path / name
        result = run(
            [
                "evaluate", str(images), "-o", str(out), "-m", TINY, "--target", "tench",
                "--method", "gradcam,guided,ig", "--boxes", str(boxes), "--metrics", "all",
                "--metric-steps", "4", "--sanity", "--sanity-stages", "2", "--device", "cpu",
                "--ig-max-steps", "32", *extra,
            ]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        scores[name] = {
            p.name: {k: json.loads(p.read_text())[k] for k in ("scores", "sanity", "target")}
            for p in sorted((out / "set").glob("*.evaluate.json"))
        }
    assert len(scores["one"]) == 3
    for image, one in scores["one"].items():
        three = scores["three"][image]
        assert one["target"] == three["target"]
        for method, values in one["scores"].items():
            for key, value in values.items():
                if value is None:
                    assert three["scores"][method][key] is None
                else:
                    assert three["scores"][method][key] == pytest.approx(value, abs=2e-4)
        for method, stages in one["sanity"].items():
            for a, b in zip(stages, three["sanity"][method], strict=True):
                assert a["stage"] == b["stage"]
                assert a["spearman"] == pytest.approx(b["spearman"], abs=2e-3)


def test_sigterm_during_a_long_evaluation_stops_in_seconds(tmp_path: Path):
    import signal
    import time

    images = tmp_path / "images"
    for i in range(2):
        save_image(images / f"p{i}.png", square_image(40, 30, (4, 4, 20, 20)))
    factory = tmp_path / "net.py"
    factory.write_text(FACTORY)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "camcli", "evaluate", str(images), "-o", str(out),
        "--model", f"{factory}:build", "--input-size", "32", "--method", "gradcam,rise",
        "--rise-masks", "2000000", "--chunk-size", "16", "-b", "1", "-j", "0",
        "--metrics", "road", "--device", "cpu",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "evaluate.index.jsonl.partial").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        latency = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr.decode()
    assert latency < 15, latency
    assert not list(out.rglob("*.evaluate.json"))  # the stopped batch left nothing that counts
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["status"] == "interrupted" and evaluation["images"] == 0


def test_shards_write_their_own_evaluation_and_a_full_run_merges_them(
    squares: tuple[Path, Path], tmp_path: Path
):
    images, boxes = squares
    save_image(images / "set" / "c.png", square_image(64, 48, (30, 10, 50, 30)))
    out = tmp_path / "out"
    args = ["evaluate", str(images), "-o", str(out), "-m", BRIGHT, "--method", "gradcam",
            "--boxes", str(boxes), "--metrics", "none"]  # fmt: skip
    counts = []
    for k in range(2):
        assert run([*args, "--shard", f"{k}/2"]).exit_code == 0
        shard = json.loads((out / f"evaluation.shard-{k}-of-2.json").read_text())
        counts.append(shard["images"])
    assert sum(counts) == 3 and not (out / "evaluation.json").exists()
    result = run([*args, "--jsonl"])
    assert result.exit_code == 0
    assert all(json.loads(line)["reused"] for line in result.stdout.splitlines())
    merged = json.loads((out / "evaluation.json").read_text())
    assert merged["images"] == 3 and merged["methods"]["gradcam"]["pointing_game"] == 0.5


def test_annotations_that_match_no_image_are_said_and_refused(
    squares: tuple[Path, Path], tmp_path: Path
):
    """Boxes in a flat folder match by bare name; boxes for nothing are exit 2, not silence."""
    images, boxes = squares
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a", "b"):
        (flat / f"{name}.xml").write_text((boxes / "set" / f"{name}.xml").read_text())
    (flat / "stray.xml").write_text((boxes / "set" / "a.xml").read_text())
    out = tmp_path / "out"
    result = run(
        ["evaluate", str(images), "-o", str(out), "-m", TINY, "--boxes", str(flat),
         "--metrics", "none", "--device", "cpu"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--boxes: 2 of 2 image(s) have annotations" in result.stderr
    assert "1 of 3 annotation entries match no image (e.g. stray.xml)" in result.stderr
    record = json.loads((out / "set" / "a.png.evaluate.json").read_text())
    assert record["annotation"]["objects"] == 2
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    (nowhere / "other.xml").write_text((boxes / "set" / "a.xml").read_text())
    refused = run(
        ["evaluate", str(images), "-o", str(tmp_path / "out2"), "-m", TINY, "--boxes",
         str(nowhere), "--metrics", "none", "--device", "cpu"]
    )  # fmt: skip
    assert refused.exit_code == 2
    assert "'--boxes'" in refused.stderr and "e.g. other.xml" in refused.stderr
    assert "bare file name" in refused.stderr and "Traceback" not in refused.output
    coco = tmp_path / "coco.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "images/elsewhere.png"}],
                "annotations": [{"image_id": 1, "category_id": 0, "bbox": [1, 1, 5, 5]}],
                "categories": [{"id": 0, "name": "tench"}],
            }
        )
    )
    refused = run(
        ["evaluate", str(images), "-o", str(tmp_path / "out3"), "-m", TINY, "--boxes",
         str(coco), "--metrics", "none", "--device", "cpu"]
    )  # fmt: skip
    assert refused.exit_code == 2 and "images/elsewhere.png" in refused.stderr
    masks = tmp_path / "masks"
    save_image(masks / "a.png", np.full((48, 64), 255, dtype=np.uint8))
    partly = run(
        ["evaluate", str(images), "-o", str(tmp_path / "out4"), "-m", TINY, "--masks",
         str(masks), "--metrics", "none", "--device", "cpu"]
    )  # fmt: skip
    assert partly.exit_code == 0, partly.output
    assert "--masks: 1 of 2 image(s) have annotations (not set/b.png)" in partly.stderr


def test_boxes_are_fitted_to_their_image_and_said_so(squares: tuple[Path, Path], tmp_path: Path):
    """Boxes on a copy of twice the size are scaled; outside, inverted ones said and handled."""
    images, _ = squares
    boxes = tmp_path / "fitted"
    (boxes / "set").mkdir(parents=True)
    # a.png is 64 x 48; its boxes were drawn on a 128 x 96 copy: (12, 12)-(52, 52) there.
    (boxes / "set" / "a.xml").write_text(
        "<annotation><size><width>128</width><height>96</height></size><object><name>tench"
        "</name><bndbox><xmin>13</xmin><ymin>13</ymin><xmax>52</xmax><ymax>52</ymax></bndbox>"
        "</object></annotation>"
    )
    # b.png: one box partly outside (clipped), one inverted and one wholly outside (left out).
    voc(
        boxes / "set" / "b.xml",
        [("tench", (40, 4, 100, 44)), ("tench", (30, 4, 10, 44)), ("tench", (1000, 0, 1010, 9))],
    )
    out = tmp_path / "out"
    result = run(
        ["evaluate", str(images), "-o", str(out), "-m", TINY, "--boxes", str(boxes),
         "--target", "tench", "--metrics", "none", "--device", "cpu"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    a = json.loads((out / "set" / "a.png.evaluate.json").read_text())["annotation"]
    b = json.loads((out / "set" / "b.png.evaluate.json").read_text())["annotation"]
    assert a["boxes_scaled_from"] == [128, 96] and a["objects"] == 1
    assert b["boxes_clipped"] == 1 and b["boxes_skipped"] == 2 and b["objects"] == 1
    assert "were drawn on a copy of another size (e.g. set/a.png: <size> 128 x 96)" in (
        result.stderr
    )
    assert "1 box(es) partly outside their image were clipped" in result.stderr
    assert "2 box(es) empty, inverted" in result.stderr


def test_fitted_boxes_by_hand() -> None:
    from camcli.io.annotations import ObjectBox, fit_boxes
    from camcli.methods.localisation import Box

    scaled = fit_boxes([ObjectBox(0, "x", Box(10, 20, 50, 60), drawn_on=(200, 100))], 100, 50)
    assert scaled.objects[0].box == Box(5, 10, 25, 30) and scaled.scaled_from == (200, 100)
    same = fit_boxes([ObjectBox(0, "x", Box(10, 20, 50, 40), drawn_on=(100, 50))], 100, 50)
    assert same.objects[0].box == Box(10, 20, 50, 40) and same.notes() == {}
    outside = fit_boxes([ObjectBox(0, "x", Box(-5, 10, 120, 20))], 100, 50)
    assert outside.objects[0].box == Box(0, 10, 100, 20) and outside.clipped == 1
    gone = fit_boxes(
        [ObjectBox(0, "x", Box(50, 10, 40, 20)), ObjectBox(0, "x", Box(0, 60, 9, 70))], 100, 50
    )
    assert gone.objects == [] and gone.skipped == 2
