"""The HTML report: what `camcli report` and `explain --report` write, checked in Python and in
a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from torch import nn

from camcli.cli import main
from camcli.models.classes import imagenet_classes
from camcli.models.loaded import LoadedModel, Preprocessing
from camcli.models.registry import register_model, unregister_model
from camcli.report.build import collect_entries, write_report

from .browser import Page
from .conftest import save_image

SORTER = "report-sorter-test"


class BrightOrDark(nn.Module):
    """Top-1 is known by construction: 'tench' (0) for bright images, 'goldfish' (1) for dark.

    The layer is the input's brightness; the head gives logit 10 b to tench, 5 - 10 b to
    goldfish and -100 to every other class, so the classes swap at brightness 0.25.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.layer.weight, 1.0 / 3.0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 1000)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.fill_(-100.0)
            self.fc.weight[0, 0], self.fc.bias[0] = 10.0, 0.0
            self.fc.weight[1, 0], self.fc.bias[1] = -10.0, 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layer(x)), 1))


def _sorter_loader(weights: Path | None, offline: bool) -> LoadedModel:
    return LoadedModel(
        name=SORTER,
        module=BrightOrDark().eval(),
        preprocessing=Preprocessing(32, 36, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear"),
        classes=imagenet_classes(),
        default_layer="layer",
        weights="constant",
    )


@pytest.fixture(scope="module", autouse=True)
def sorter_model() -> Iterator[None]:
    register_model(SORTER)(_sorter_loader)
    yield
    unregister_model(SORTER)


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def shade(seed: int, bright: bool, width: int = 40, height: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = (200, 256) if bright else (0, 50)
    return rng.integers(low, high, size=(height, width, 3), dtype=np.uint8)


# image -> bright? in folders named by their label: tench (bright is right), goldfish (dark).
LABELLED = {
    "tench/bright 1.png": True,
    "tench/bright #2 é.png": True,  # a name that must be percent-encoded in URLs
    "tench/bright3.jpg": True,
    "tench/dark1.png": False,
    "tench/dark2.png": False,
    "goldfish/dark1.png": False,
    "goldfish/dark10.png": False,
    "goldfish/bright1.png": True,
}
MISCLASSIFIED = {"tench/dark1.png", "tench/dark2.png", "goldfish/bright1.png"}


LARGE = "tench/bright3.jpg"  # 320 x 240: its thumbnail is scaled down; the others are smaller


def make_images(root: Path, broken: bool = True) -> Path:
    for seed, (name, bright) in enumerate(LABELLED.items()):
        size = (320, 240) if name == LARGE else (40, 32)
        save_image(root / name, shade(seed, bright, *size))
    if broken:
        (root / "goldfish" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def explain_run(root: Path, out: Path, *extra: str) -> Result:
    return cli(
        "explain",
        root,
        "-o",
        out,
        "--model",
        SORTER,
        "-j",
        "0",
        "--method",
        "gradcam,gradcam++,guided",
        "-k",
        "3",
        *extra,
    )


def read_script(path: Path, variable: str) -> Any:
    text = path.read_text(encoding="ascii")
    prefix = f"{variable} = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix) : -2])


def report_data(out: Path) -> dict[str, Any]:
    return read_script(out / "report" / "data.js", "window.CAMCLI_REPORT")


def records(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in out.rglob("*.json"):
        data = json.loads(path.read_text())
        if "image" in data:
            found[data["image"]] = data
    return found


@pytest.fixture(scope="module")
def sorted_run(tmp_path_factory: pytest.TempPathFactory, sorter_model: None) -> Path:
    """A finished run on LABELLED plus one broken file, with its report."""
    base = tmp_path_factory.mktemp("sorted")
    out = base / "out"
    result = explain_run(make_images(base / "images"), out, "--report")
    assert result.exit_code == 1, result.output  # the broken file
    return out


# --- the files -------------------------------------------------------------------------


def test_report_command_writes_the_report_and_one_json_line(tmp_path: Path):
    out = tmp_path / "out"
    assert explain_run(make_images(tmp_path / "images"), out).exit_code == 1
    result = cli("report", out)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout is one JSON document, nothing else
    assert summary["report"] == str(out / "report" / "index.html")
    assert summary["images"] == len(LABELLED) + 1
    assert summary["errors"] == 1
    assert summary["misclassified"] == len(MISCLASSIFIED)
    assert summary["thumbnails"] == {"written": len(LABELLED), "reused": 0}
    for name in ("index.html", "image.html", "report.js", "report.css", "data.js", "details/0.js"):
        assert (out / "report" / name).is_file(), name
    data = report_data(out)
    ok = records(out)
    assert [item["i"] for item in data["items"]] == [
        "goldfish/bright1.png",
        "goldfish/broken.jpg",
        "goldfish/dark1.png",
        "goldfish/dark10.png",  # natural order: 1 before 10
        "tench/bright3.jpg",
        "tench/bright 1.png",
        "tench/bright #2 é.png",
        "tench/dark1.png",
        "tench/dark2.png",
    ]
    for item in data["items"]:
        if item["i"] == "goldfish/broken.jpg":
            assert item["s"] == "error" and "cannot decode" in item["e"] and "t" not in item
            continue
        record = ok[item["i"]]
        top = record["predictions"][0]
        assert item["p"] == top["name"] == ("tench" if LABELLED[item["i"]] else "goldfish")
        assert item["q"] == round(top["probability"], 4)
        assert item["l"] == record["label"]["name"]
        assert item["c"] is (item["i"] not in MISCLASSIFIED)
        with Image.open(out / "report" / unquote(item["t"])) as thumb:
            assert thumb.size == ((160, 120) if item["i"] == LARGE else (40, 32))
            assert thumb.format == "JPEG"
            assert (item["w"], item["h"]) == thumb.size
    assert data["run"]["summaries"][0]["status"] == "complete"
    assert data["run"]["partial_indexes"] == []


def test_details_list_every_file_with_encoded_urls(sorted_run: Path):
    data = report_data(sorted_run)
    details = read_script(sorted_run / "report" / "details" / "0.js", "window.CAMCLI_DETAILS[0]")
    assert [d["image"] for d in details] == [item["i"] for item in data["items"]]
    detail = details[[d["image"] for d in details].index("tench/bright #2 é.png")]
    stem = "../tench/bright%20%232%20%C3%A9.png"
    assert detail["record"] == f"{stem}.json"
    assert [(p["caption"], p["src"]) for p in detail["pictures"]] == [
        ("gradcam · heatmap", f"{stem}.gradcam.png"),
        ("gradcam · overlay", f"{stem}.gradcam.overlay.png"),
        ("gradcam++ · heatmap", f"{stem}.gradcam%2B%2B.png"),
        ("gradcam++ · overlay", f"{stem}.gradcam%2B%2B.overlay.png"),
        ("guided · image", f"{stem}.guided.png"),
    ]
    assert len(detail["predictions"]) == 3
    assert set(detail["maps"]) == {"gradcam", "gradcam++"}


def test_thumbnails_are_made_once_and_remade_when_their_source_changes(sorted_run: Path):
    thumbs = sorted((sorted_run / "report" / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == len(LABELLED)
    before = {t: t.stat().st_mtime_ns for t in thumbs}
    result = cli("report", sorted_run)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["thumbnails"] == {"written": 0, "reused": len(LABELLED)}
    assert {t: t.stat().st_mtime_ns for t in thumbs} == before
    overlay = sorted_run / "tench" / "dark1.png.gradcam.overlay.png"
    later = time.time() + 5
    os.utime(overlay, (later, later))
    result = cli("report", sorted_run)
    assert json.loads(result.stdout)["thumbnails"] == {"written": 1, "reused": len(LABELLED) - 1}
    changed = [t for t in thumbs if t.stat().st_mtime_ns != before[t]]
    assert changed == [sorted_run / "report" / "thumbs" / "tench" / "dark1.png.jpg"]
    gone = sorted_run / "report" / "thumbs" / "goldfish" / "dark10.png.jpg"
    (sorted_run / "goldfish" / "dark10.png.json").rename(sorted_run / "dark10.json.bak")
    assert cli("report", sorted_run).exit_code == 0
    assert not gone.exists() and len(list(gone.parent.glob("*.jpg"))) == 2
    (sorted_run / "dark10.json.bak").rename(sorted_run / "goldfish" / "dark10.png.json")
    result = cli("report", sorted_run, "--thumb-size", "64")
    assert json.loads(result.stdout)["thumbnails"] == {"written": len(LABELLED), "reused": 0}
    with Image.open(sorted_run / "report" / "thumbs" / "tench" / "bright3.jpg.jpg") as thumb:
        assert thumb.size == (64, 48)


def test_explain_report_keeps_stdout_pure_and_the_exit_code(tmp_path: Path):
    root = make_images(tmp_path / "images", broken=False)
    out = tmp_path / "out"
    result = explain_run(root, out, "--report", "--jsonl")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["image"] for r in lines) == sorted(LABELLED)
    assert f"report in {out / 'report' / 'index.html'}" in result.stderr
    assert len(report_data(out)["items"]) == len(LABELLED)


def test_explain_report_after_sigint_shows_what_was_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from camcli.runs import loop

    original = loop._Loop._with_fallback
    launched: list[int] = []

    def launch_then_interrupt(self: Any, part: Any) -> None:
        original(self, part)
        launched.append(len(part))
        if len(launched) == 2:
            # As Ctrl-C while the second batch runs: the run stops taking batches. (Sent at
            # a record, it came too late on a busy machine: with -b 1 up to 8 images are in
            # flight before the first record is reported.)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop._Loop, "_with_fallback", launch_then_interrupt)
    out = tmp_path / "out"
    result = explain_run(make_images(tmp_path / "images", broken=False), out, "-b", "1", "--report")
    assert result.exit_code == 130, result.output
    done = set(records(out))
    assert 2 <= len(done) < len(LABELLED)
    data = report_data(out)
    assert {item["i"] for item in data["items"]} == done
    assert data["run"]["summaries"][0]["status"] == "interrupted"


def test_report_of_an_interrupted_run_shows_what_exists(tmp_path: Path):
    out = tmp_path / "out"
    explain_run(make_images(tmp_path / "images"), out)
    # As a killed run leaves it: a partial index, no summary, some records not yet written.
    (out / "index.jsonl").rename(out / "index.jsonl.partial")
    (out / "run.json").unlink()
    (out / "tench" / "dark2.png.json").unlink()
    result = cli("report", out)
    assert result.exit_code == 0, result.output
    data = report_data(out)
    shown = {item["i"] for item in data["items"]}
    assert shown == (set(LABELLED) - {"tench/dark2.png"}) | {"goldfish/broken.jpg"}
    assert data["run"] == {"summaries": [], "partial_indexes": ["index.jsonl.partial"]}


def test_failures_come_from_every_index_and_records_win(tmp_path: Path):
    out = tmp_path / "out"
    save_image(out / "a.png.gradcam.overlay.png", shade(0, True))
    record = {
        "image": "a.png",
        "status": "ok",
        "files": {"gradcam": {"overlay": "a.png.gradcam.overlay.png"}},
    }
    (out / "a.png.json").write_text(json.dumps(record))
    lines = {
        "index.shard-0-of-2.jsonl": [
            {"image": "a.png", "status": "error", "error": "an old failure"},
            {"image": "b.png", "status": "error", "error": "cannot decode image"},
        ],
        "index.shard-1-of-2.jsonl.partial": [
            {"image": "c.png", "status": "error", "error": "too many pixels"},
            {"image": "d.png", "status": "error", "error": "failed, then explained"},
            {"image": "d.png", "status": "ok", "record": "d.png.json"},
        ],
    }
    for name, entries in lines.items():
        text = "".join(json.dumps(e) + "\n" for e in entries)
        (out / name).write_text(text + '{"image": "e.png", "sta')  # a line being written
    entries = collect_entries(out)
    assert [(e.image, e.error) for e in entries] == [
        ("a.png", None),
        ("b.png", "cannot decode image"),
        ("c.png", "too many pixels"),
    ]


def test_any_record_layout_shows_every_picture_and_stays_inside(tmp_path: Path):
    out = tmp_path / "out"
    names = [
        "x.jpg.pred.gradcam.overlay.png",
        "x.jpg.label.gradcam.overlay.png",
        "x.jpg.features.layer4.png",
    ]
    for seed, name in enumerate(names):
        save_image(out / "cats" / name, shade(seed, True))
    record = {
        "image": "cats/x.jpg",
        "status": "ok",
        "predictions": [{"rank": 1, "index": 7, "name": "cock", "probability": 0.5}],
        "files": {
            "targets": {
                "pred": {"gradcam": {"overlay": names[0]}},
                "label": {"gradcam": {"overlay": names[1]}},
            },
            "features": [names[2]],
            "raw": {"gradcam": "x.jpg.gradcam.npy"},
            "escape": {"image": "../../outside.png"},
        },
    }
    (out / "cats" / "x.jpg.json").write_text(json.dumps(record))
    (out / "notes.json").write_text('["not a record"]')
    (out / "cats" / "broken.json").write_text("{")
    summary = write_report(out)
    assert summary.images == 1 and summary.thumbnails_written == 1
    detail = read_script(out / "report" / "details" / "0.js", "window.CAMCLI_DETAILS[0]")[0]
    assert [(p["caption"], p["src"]) for p in detail["pictures"]] == [
        ("targets · pred · gradcam · overlay", f"../cats/{names[0]}"),
        ("targets · label · gradcam · overlay", f"../cats/{names[1]}"),
        ("features · 0", f"../cats/{names[2]}"),
    ]
    assert detail["files"] == [{"caption": "raw · gradcam", "href": "../cats/x.jpg.gradcam.npy"}]
    item = report_data(out)["items"][0]
    assert item["t"] == "thumbs/cats/x.jpg.jpg" and "c" not in item and "l" not in item


def test_a_record_with_a_row_per_model_shows_its_first_model(tmp_path: Path):
    out = tmp_path / "out"
    save_image(out / "a.png.compare.png", shade(0, True))
    rows = [
        {
            "model": "m1",
            "layer": "l1",
            "prediction": {"index": 1, "name": "goldfish", "probability": 0.7},
            "correct": False,
        },
        {
            "model": "m2",
            "layer": "l2",
            "prediction": {"index": 0, "name": "tench", "probability": 0.9},
            "correct": True,
        },
    ]
    record = {
        "image": "a.png",
        "status": "ok",
        "rows": rows,
        "files": {"compare": {"sheet": "a.png.compare.png"}},
    }
    (out / "a.png.json").write_text(json.dumps(record))
    write_report(out)
    item = report_data(out)["items"][0]
    assert (item["p"], item["q"], item["c"], item["m"]) == ("goldfish", 0.7, False, "m1")
    assert item["t"] == "thumbs/a.png.jpg"
    detail = read_script(out / "report" / "details" / "0.js", "window.CAMCLI_DETAILS[0]")[0]
    assert detail["rows"] == rows


def test_records_without_correct_are_judged_by_their_label(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    top = [{"rank": 1, "index": 1, "name": "goldfish", "probability": 0.6}]
    for name, label in (("a.png", 1), ("b.png", 0), ("c.png", None)):
        record = {"image": name, "status": "ok", "predictions": top}
        if label is not None:
            record["label"] = {"folder": str(label), "index": label, "name": str(label)}
        (out / f"{name}.json").write_text(json.dumps(record))
    write_report(out)
    assert [item.get("c") for item in report_data(out)["items"]] == [True, False, None]


def test_an_image_named_like_the_run_summary_is_shown(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "runner.jpg.json").write_text(json.dumps({"image": "runner.jpg", "status": "ok"}))
    (out / "run.shard-0-of-2.json").write_text(json.dumps({"status": "interrupted"}))
    write_report(out)
    data = report_data(out)
    assert [item["i"] for item in data["items"]] == ["runner.jpg"]
    assert [s["file"] for s in data["run"]["summaries"]] == ["run.shard-0-of-2.json"]


def test_report_usage_and_empty_directory(tmp_path: Path):
    missing = cli("report", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    (tmp_path / "file").write_text("x")
    assert cli("report", tmp_path / "file").exit_code == 2
    assert cli("report", tmp_path, "--thumb-size", "8").exit_code == 2
    (tmp_path / "empty").mkdir()
    empty = cli("report", tmp_path / "empty")
    assert empty.exit_code == 1 and empty.stdout == ""
    assert "holds no record of camcli explain" in empty.stderr and "Traceback" not in empty.output
    for option in ("--help", "-h"):
        help_text = cli("report", option)
        assert help_text.exit_code == 0 and "Usage:" in help_text.stdout
    assert cli("report", "--version").stdout.strip().endswith("0.1.0")
    assert "--report" in cli("explain", "--help").stdout


# --- in a real browser -------------------------------------------------------------------


def test_browser_index_loads_clean_every_image_resolves_and_screenshot(
    browser: Any, sorted_run: Path, tmp_path: Path
):
    page = Page(browser)
    tab = page.open(sorted_run / "report" / "index.html")
    assert sorted(page.cards()) == sorted([*LABELLED, "goldfish/broken.jpg"])
    shown = page.images_resolve()
    assert len(shown) == len(LABELLED)  # one thumbnail per explained image
    assert all(width > 0 for _src, width in shown), shown
    assert "9 of 9" in tab.inner_text("#count")
    tab.screenshot(path=str(tmp_path / "report-index.png"), full_page=True)
    with Image.open(tmp_path / "report-index.png") as screenshot:
        assert screenshot.size[0] == 1200
    assert page.problems == []
    page.close()


def test_browser_filters_show_exactly_the_matching_images(browser: Any, sorted_run: Path):
    ok = records(sorted_run)
    assert {name for name, r in ok.items() if r["correct"] is False} == MISCLASSIFIED
    page = Page(browser)
    tab = page.open(sorted_run / "report" / "index.html")
    tab.check("#f-mis")
    page.wait_drawn("mis=1")
    assert sorted(page.cards()) == sorted(MISCLASSIFIED)
    assert "filtered from 9" in tab.inner_text("#count")
    tab.click("#f-reset")
    page.wait_drawn()  # the reset is drawn before the next filter is set
    tab.select_option("#f-pred", "goldfish")
    page.wait_drawn("pred=goldfish")
    goldfish = {n for n, r in ok.items() if r["predictions"][0]["name"] == "goldfish"}
    assert sorted(page.cards()) == sorted(goldfish) and goldfish
    tab.click("#f-reset")
    page.wait_drawn()  # the reset is drawn before the next filter is set
    tab.select_option("#f-label", "tench")
    page.wait_drawn("label=tench")
    assert sorted(page.cards()) == sorted(n for n in LABELLED if n.startswith("tench/"))
    tab.click("#f-reset")
    page.wait_drawn()  # the reset is drawn before the next filter is set
    probabilities = sorted(r["predictions"][0]["probability"] for r in ok.values())
    middle = round((probabilities[3] + probabilities[4]) / 2, 6)
    tab.fill("#f-min", str(middle))
    tab.dispatch_event("#f-min", "change")
    page.wait_drawn("min=")
    high = {n for n, r in ok.items() if r["predictions"][0]["probability"] >= middle}
    assert sorted(page.cards()) == sorted(high) and 0 < len(high) < len(ok)
    tab.click("#f-reset")
    page.wait_drawn()  # the reset is drawn before the next filter is set
    tab.select_option("#f-status", "error")
    page.wait_drawn("status=error")
    assert page.cards() == ["goldfish/broken.jpg"]
    assert page.problems == []
    page.close()


def test_browser_image_page_shows_every_picture_and_the_top_k(browser: Any, sorted_run: Path):
    page = Page(browser)
    tab = page.open(sorted_run / "report" / "index.html")
    tab.check("#f-mis")
    page.wait_drawn("mis=1")
    first = page.cards()[0]
    tab.click("#grid .card >> nth=0")
    tab.wait_for_selector("#topk")
    assert "image.html?i=" in tab.url and "mis=1" in tab.url
    assert tab.inner_text("#image-path") == first
    assert "misclassified" in tab.inner_text("#verdict")
    record = records(sorted_run)[first]
    pictures = [name for listing in record["files"].values() for name in listing.values()]
    shown = page.images_resolve()
    assert len(shown) == len(pictures) == 5
    assert sorted(unquote(src.rsplit("/", 1)[1]) for src, _ in shown) == sorted(pictures)
    assert all(width > 0 for _src, width in shown)
    rows = tab.eval_on_selector_all("#topk tr", "rs => rs.map(r => r.innerText)")
    assert len(rows) == 1 + len(record["predictions"])
    assert record["predictions"][0]["name"] in rows[1]
    assert tab.inner_text("#position") == f"1 of {len(MISCLASSIFIED)}"
    tab.click("#next")
    tab.wait_for_function(f"() => document.getElementById('image-path').textContent !== {first!r}")
    assert tab.inner_text("#image-path") in MISCLASSIFIED - {first}
    tab.click("#back")
    page.wait_drawn("mis=1")
    assert sorted(page.cards()) == sorted(MISCLASSIFIED)
    assert page.problems == []
    page.close()


def test_browser_paginates_a_large_run(browser: Any, tmp_path: Path):
    out = tmp_path / "out"
    total = 2000
    out.mkdir()
    tile = Image.fromarray(shade(0, True, 24, 16))
    for n in range(1, total + 1):
        name = f"img{n}.png"
        tile.save(out / f"{name}.gradcam.overlay.png")
        record = {
            "image": name,
            "status": "ok",
            "predictions": [{"rank": 1, "index": 0, "name": "tench", "probability": n / total}],
            "label": {
                "folder": "x",
                "index": 0 if n % 7 else 1,
                "name": "tench" if n % 7 else "goldfish",
            },
            "correct": n % 7 != 0,
            "files": {"gradcam": {"overlay": f"{name}.gradcam.overlay.png"}},
        }
        (out / f"{name}.json").write_text(json.dumps(record))
    summary = write_report(out)
    assert summary.images == total and summary.thumbnails_written == total
    page = Page(browser)
    tab = page.open(out / "report" / "index.html")
    assert page.cards() == [f"img{n}.png" for n in range(1, 101)]
    assert tab.inner_text(".page-info >> nth=0") == "page 1 of 20"
    tab.click(".pager .next >> nth=0")
    page.wait_drawn("page=2")
    assert page.cards() == [f"img{n}.png" for n in range(101, 201)]
    tab.goto((out / "report" / "index.html").as_uri() + "#page=20")
    page.wait_drawn("page=20")
    assert page.cards()[-1] == f"img{total}.png"
    assert tab.is_disabled(".pager .next >> nth=0")
    tab.select_option("#f-size", "500")
    tab.check("#f-mis")
    page.wait_drawn("mis=1", "size=500")
    wrong = [f"img{n}.png" for n in range(7, total + 1, 7)]
    assert page.cards() == wrong  # 285 of them: one page
    assert tab.inner_text(".page-info >> nth=0") == "page 1 of 1"
    assert all(width > 0 for _src, width in page.images_resolve())
    assert page.problems == []
    page.close()


def test_browser_opens_a_copied_report(browser: Any, sorted_run: Path, tmp_path: Path):
    """The report uses relative links only: a copy of the output directory works elsewhere."""
    copy = tmp_path / "moved"
    shutil.copytree(sorted_run, copy)
    page = Page(browser)
    page.open(copy / "report" / "image.html", "?i=0")
    page.page.wait_for_selector("#topk")
    shown = page.images_resolve()
    assert shown and all(src.startswith(copy.as_uri()) and w > 0 for src, w in shown)
    assert page.problems == []
    page.close()


def test_browser_image_page_by_the_images_path(browser: Any, sorted_run: Path):
    """An address written by hand names the image by its path; a wrong one says what to hold."""
    name = sorted(records(sorted_run))[0]
    page = Page(browser)
    for address in (f"?image={quote(name)}", f"#{quote(name)}", f"?i={quote(name)}"):
        tab = page.open(sorted_run / "report" / "image.html", address)
        tab.wait_for_selector("#topk")
        assert tab.inner_text("#image-path") == name, address
    tab = page.open(sorted_run / "report" / "image.html", "#no/such.png")
    text = tab.inner_text("#detail")
    assert "No image no/such.png in this report" in text
    assert "?i=N" in text and "?image=PATH" in text
    assert page.problems == []
    page.close()


def test_browser_image_page_of_other_record_layouts(browser: Any, tmp_path: Path):
    """Several targets, a row per model, nested files: shown without a script error."""
    out = tmp_path / "out"
    names = ["x.png.gradcam.png", "x.png.gradcam.overlay.png", "x.png.gradcam.label.overlay.png"]
    for seed, name in enumerate(names):
        save_image(out / "goldfish" / name, shade(seed, True))
    targets = [
        {
            "mode": "pred",
            "index": 0,
            "name": "tench",
            "probability": 0.8,
            "maps": {"gradcam": {"layer": "l", "max": 0.5, "peak": {"x": 1, "y": 2}}},
        },
        {
            "mode": "label",
            "index": 1,
            "name": "goldfish",
            "probability": 0.1,
            "maps": {"gradcam": {"layer": "l", "max": 0.25, "peak": {"x": 3, "y": 4}}},
        },
    ]
    record = {
        "image": "goldfish/x.png",
        "status": "ok",
        "label": {"folder": "goldfish", "index": 1, "name": "goldfish"},
        "predictions": [{"rank": 1, "index": 0, "name": "tench", "probability": 0.8}],
        "target": targets[0],
        "targets": targets,
        "maps": {"gradcam": targets[0]["maps"]["gradcam"]},
        "rows": [{"model": "m", "layer": "l", "prediction": targets[0], "correct": False}],
        "files": {"gradcam": {"heatmap": names[0], "overlay": names[1], "label.overlay": names[2]}},
    }
    (out / "goldfish" / "x.png.json").write_text(json.dumps(record))
    write_report(out)
    page = Page(browser)
    tab = page.open(out / "report" / "image.html", "?i=0")
    tab.wait_for_selector("#topk")
    shown = page.images_resolve()
    assert sorted(unquote(src.rsplit("/", 1)[1]) for src, _ in shown) == sorted(names)
    assert all(width > 0 for _src, width in shown)
    tables = tab.eval_on_selector_all("table", "ts => ts.map(t => t.rows.length)")
    assert tables == [2, 2, 3]  # top-k, models, one row per target
    text = tab.inner_text("#detail")
    assert "label: goldfish (10.0 %)" in text and "(3, 4)" in text
    assert "misclassified" in tab.inner_text("#verdict")
    assert page.problems == []
    page.close()


def test_browser_evaluation_page_from_the_grid_and_alone(browser: Any, tmp_path: Path):
    """camcli evaluate's page: linked from the grid, its tables and plots load clean."""
    images, boxes = tmp_path / "images", tmp_path / "boxes"
    for i in range(3):
        save_image(images / f"p{i}.png", shade(i, bright=i % 2 == 0))
        (boxes / f"p{i}.xml").parent.mkdir(parents=True, exist_ok=True)
        (boxes / f"p{i}.xml").write_text(
            "<annotation><object><name>tench</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>20</xmax><ymax>16</ymax></bndbox></object></annotation>"
        )
    alone, both = tmp_path / "alone", tmp_path / "both"
    for out in (alone, both):
        result = cli(
            "evaluate", images, "-o", out, "-m", "tiny-test", "--method", "gradcam,guided",
            "--boxes", boxes, "--metrics", "deletion,insertion", "--metric-steps", "4",
            "--sanity", "--sanity-stages", "2", "--report",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    assert cli("explain", images, "-o", both, "-m", "tiny-test").exit_code == 0
    assert cli("report", both).exit_code == 0
    # Only an evaluation: its page is the report.
    assert not (alone / "report" / "index.html").exists()
    evaluation = json.loads((both / "evaluation.json").read_text())
    for out, start in ((alone, "evaluation.html"), (both, "index.html")):
        page = Page(browser)
        tab = page.open(out / "report" / start)
        if start == "index.html":
            tab.click("#evaluation-link")
            tab.wait_for_load_state("load")
        assert tab.url.endswith("/report/evaluation.html")
        methods = tab.eval_on_selector_all(
            "#leaderboard tbody tr", "rows => rows.map(r => r.dataset.method)"
        )
        assert methods == list(evaluation["methods"]) == ["gradcam", "guided"]
        assert tab.eval_on_selector_all("#sanity tbody tr", "rows => rows.length") == 2
        assert tab.locator("td.best").count() >= 1
        shown = page.images_resolve()
        assert sorted(unquote(src).rsplit("/", 1)[-1] for src, _ in shown) == [
            "curves.png",
            "sanity.png",
            "stages.png",
        ]
        assert all(width > 0 for _src, width in shown), shown
        assert page.problems == []
        page.close()
