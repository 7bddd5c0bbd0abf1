"""``camcli summarize``: SpRAy's pieces against scikit-learn, and a shortcut found end to end.

The end-to-end test trains a small CNN here on two classes of our own making: "horse"
images hold a red blob, "other" images a blue one, and a third of the horses hold a grey
blob with a small white mark in the top-left corner instead (the only evidence of their
class: a shortcut, like the copyright tag of Lapuschkin et al.'s horses). After ``explain``
and ``summarize``, the marked horses must form the horse class's most suspicious cluster,
with its peak on the mark.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from camcli.cli import main
from camcli.methods.spray import (
    affinity,
    cluster_maps,
    eigengap,
    normalise,
    spray_features,
    suspicion,
)

from .browser import Page
from .conftest import REPO


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


SIZE, SCALE, MARK = 32, 2, (1, 6)  # the demo's input, photo scale, its mark's first/last pixel


def readme_shortcut_commands() -> list[str]:
    """The README's shortcut example: the code block that runs ``make_demo.py``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for block in text.split("```")[1::2]:
        if "make_demo.py" in block:
            return [line.strip() for line in block.splitlines() if line.strip()]
    raise AssertionError("the README has no shortcut example")


@pytest.fixture(scope="module")
def shortcut_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The README's shortcut example run as written, in a folder of its own.

    Its first line makes the photos and trains the demo's model (a few seconds); the
    ``camcli`` lines run through the command line, in that folder. The summarize line is
    kept for the tests to run with their own options.
    """
    folder = tmp_path_factory.mktemp("shortcut")
    shutil.copytree(REPO / "configs" / "shortcut", folder / "configs" / "shortcut")
    commands = readme_shortcut_commands()
    assert commands[0].startswith("python configs/shortcut/make_demo.py ")
    assert [c.split()[:2] for c in commands[1:]] == [["camcli", "explain"], ["camcli", "summarize"]]
    before = os.getcwd()
    os.chdir(folder)
    try:
        made = subprocess.run(
            [sys.executable, *shlex.split(commands[0])[1:]], capture_output=True, text=True
        )
        assert made.returncode == 0, made.stderr
        result = CliRunner().invoke(main, [*shlex.split(commands[1])[1:], "--device", "cpu"])
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(before)
    demo = folder / shlex.split(commands[0])[2]
    out = folder / shlex.split(commands[1])[shlex.split(commands[1]).index("-o") + 1]
    names = sorted(p.relative_to(demo / "photos").as_posix() for p in demo.rglob("*.png"))
    marked = set((demo / "marked.txt").read_text().split())
    return {
        "out": out,
        "names": names,
        "marked": marked,
        "folder": folder,
        "summarize": commands[2],
    }


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the summary's) by relative path: its SHA-256."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not relative.startswith(("summary", "report/")):
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_the_shortcut_cluster_is_found_first_with_its_peak_on_the_mark(
    shortcut_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's example as written: the marked horses are the first cluster."""
    out: Path = shortcut_run["out"]
    before = _tree(out)
    monkeypatch.chdir(shortcut_run["folder"])
    result = CliRunner().invoke(main, shlex.split(shortcut_run["summarize"])[1:])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert line["summary"] == "shortcut-out/summary.json" and line["images"] == 48
    assert _tree(out) == before  # explain's files byte for byte
    summary = json.loads((out / "summary.json").read_text())
    # The fixed keys.
    assert {"method", "group_by", "images", "classes", "confusions"} <= set(summary)
    assert summary["method"] == "gradcam" and summary["group_by"] == "target"
    assert set(summary["classes"]) == {"horse", "other"}
    horse = summary["classes"]["horse"]
    assert {"images", "correct", "mean_map", "clusters"} <= set(horse)
    for cluster in horse["clusters"]:
        assert {"rank", "size", "score", "peak", "images", "mean_map"} <= set(cluster)
        assert (out / cluster["mean_map"]).is_file()
    assert [c["rank"] for c in horse["clusters"]] == list(range(1, len(horse["clusters"]) + 1))
    scores = [c["score"] for c in horse["clusters"]]
    assert scores == sorted(scores, reverse=True)
    marked: set[str] = shortcut_run["marked"]
    first = horse["clusters"][0]
    members = set(first["images"])
    # The marked horses, and only they, make the most suspicious cluster.
    assert len(members & marked) >= 0.8 * len(marked), (members, marked)
    assert len(members - marked) <= 0.2 * len(members), (members, marked)
    # Its peak is on the mark (fractions of the frame; the mark spans 1/32 to 7/32).
    low, high = MARK[0] / SIZE, (MARK[1] + 1) / SIZE
    margin = 1 / 32
    assert low - margin <= first["peak"]["x"] <= high + margin, first["peak"]
    assert low - margin <= first["peak"]["y"] <= high + margin, first["peak"]
    assert first["parts"]["edge"] > 0.2 and first["parts"]["distinct"] > 0.2
    assert first["parts"]["tight"] > 0.9 and first["parts"]["concentrated"] > 0.5
    # The pictures and the tables for people.
    assert (out / horse["mean_map"]).is_file() and (out / horse["embedding"]).is_file()
    assert "## horse" in (out / "summary.md").read_text()
    # Every image once in its class's clusters; images are the records' own paths.
    for entry in summary["classes"].values():
        listed = [i for c in entry["clusters"] for i in c["images"]]
        assert len(listed) == len(set(listed)) == entry["images"]
        assert set(listed) <= set(shortcut_run["names"])


def test_grouping_by_label_counts_the_right_answers_and_the_confusions(
    shortcut_run: dict[str, Any],
) -> None:
    out: Path = shortcut_run["out"]
    result = run("summarize", out, "--group", "label", "--clusters", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["group_by"] == "label"
    records = [json.loads(p.read_text()) for p in out.rglob("*.png.json")]
    for name in ("horse", "other"):
        mine = [r for r in records if r["label"]["name"] == name]
        entry = summary["classes"][name]
        assert entry["images"] == len(mine)
        assert entry["correct"] == sum(r["correct"] for r in mine)
        assert len(entry["clusters"]) == 2
        assert entry["clusters_chosen_by"] == "--clusters"
    wrong = [r for r in records if not r["correct"]]
    assert sum(c["count"] for c in summary["confusions"]) == len(wrong)
    for pair in summary["confusions"]:
        assert {"label", "predicted", "count", "images"} <= set(pair)
        assert pair["count"] == len(pair["images"])


def test_boxes_add_the_share_outside_the_objects(shortcut_run: dict[str, Any]) -> None:
    """With boxes around the blobs only, the marked cluster's maps lie outside them."""
    out: Path = shortcut_run["out"]
    boxes = shortcut_run["folder"] / "boxes"
    for name in shortcut_run["names"]:
        side = SIZE * SCALE
        xml = (
            f"<annotation><size><width>{side}</width><height>{side}</height></size>"
            f"<object><name>{name.split('/')[0]}</name><bndbox><xmin>{20}</xmin>"
            f"<ymin>20</ymin><xmax>{side - 1}</xmax><ymax>{side - 1}</ymax></bndbox>"
            "</object></annotation>"
        )
        path = boxes / name.replace(".png", ".xml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml, encoding="utf-8")
    result = run("summarize", out, "--boxes", boxes)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    first = summary["classes"]["horse"]["clusters"][0]
    assert first["parts"]["outside"] is not None and first["parts"]["outside"] > 0.5
    assert set(first["images"]) & shortcut_run["marked"]


# --- SpRAy's pieces -----------------------------------------------------------------------


def _blob_maps(groups: list[tuple[float, float, int]], seed: int, sigma: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    maps = []
    for cx, cy, count in groups:
        for _ in range(count):
            x, y = cx + rng.normal(0, 1), cy + rng.normal(0, 1)
            blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
            maps.append(blob + rng.uniform(0, 0.05, (32, 32)))
    return np.array(maps)


def test_normalisation_ignores_brightness_and_floor() -> None:
    maps = _blob_maps([(8, 8, 3), (20, 20, 3)], seed=0)
    brighter = maps * 7.0 + 3.0  # a stronger map with a floor, as RISE's
    assert np.allclose(spray_features(maps), spray_features(brighter))
    assert np.allclose(normalise(maps), normalise(brighter))
    assert np.allclose(normalise(maps).sum(axis=(1, 2)), 1.0)
    flat = normalise(np.zeros((1, 4, 4)))
    assert np.allclose(flat, 1 / 16)  # a flat map points nowhere: uniform, not NaN
    assert np.allclose(np.linalg.norm(spray_features(maps), axis=1), 1.0)


def test_affinity_and_clusters_equal_scikit_learns_spectral_clustering() -> None:
    """On a connected graph, SpRAy here is SpectralClustering(affinity="nearest_neighbors")."""
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics import adjusted_rand_score

    # Maps whose peaks lie along a line: one connected graph, split in two by position.
    steps = np.linspace(6, 26, 80)
    maps = _blob_maps([(x, x, 1) for x in steps], seed=1, sigma=4.0)
    features = spray_features(maps)
    reference = SpectralClustering(
        n_clusters=2, affinity="nearest_neighbors", n_neighbors=10, random_state=0
    ).fit(features)
    graph, k, components = affinity(features, 10)
    assert k == 10 and components == 1
    assert abs(graph - reference.affinity_matrix_).max() == 0  # the same matrix
    ours = cluster_maps(features, clusters=2)
    assert adjusted_rand_score(ours.labels, reference.labels_) == 1.0
    assert ours.forced and ours.count == 2


@pytest.mark.parametrize("groups", [2, 3, 4])
def test_the_eigengap_counts_groups_of_maps_that_point_at_different_places(groups: int) -> None:
    places = [(5, 5, 20), (26, 8, 30), (16, 26, 25), (26, 26, 15)][:groups]
    maps = _blob_maps(places, seed=groups)
    truth = np.concatenate([[i] * count for i, (_, _, count) in enumerate(places)])
    clustering = cluster_maps(spray_features(maps))
    assert clustering.count == groups and not clustering.forced
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, clustering.labels) == 1.0
    # The graph's groups were separate components: joined, one zero eigenvalue remains.
    graph, _, components = affinity(spray_features(maps))
    from scipy.sparse.csgraph import connected_components

    assert components == groups and connected_components(graph, directed=False)[0] == 1
    _, values = eigengap(graph, 8)
    assert values[0] == pytest.approx(0.0, abs=1e-9)
    assert (values[:groups] < 1e-3).all() and values[groups] > 0.1  # one near 0 per group


def test_the_eigengap_counts_groups_in_a_connected_graph() -> None:
    """Two groups of maps that share neighbours: the eigengap, not the components, decides."""
    from scipy.sparse.csgraph import laplacian

    # A graph by hand: two cliques of 6 joined by one edge; the eigengap says 2.
    block = np.ones((6, 6))
    matrix = np.zeros((12, 12))
    matrix[:6, :6] = matrix[6:, 6:] = block
    matrix[5, 6] = matrix[6, 5] = 1.0
    from scipy.sparse import csr_matrix

    count, values = eigengap(csr_matrix(matrix), 4)
    reference = np.linalg.eigvalsh(laplacian(matrix, normed=True))[:5]
    assert np.allclose(values, reference, atol=1e-9)
    assert count == 2


def test_suspicion_parts_by_hand() -> None:
    """A tight corner spot unlike its class scores high; the class's own centre scores 0."""
    spot = np.zeros((4, 4))
    spot[0, 0] = 1.0
    centre = np.zeros((4, 4))
    centre[1:3, 1:3] = 0.25
    members = np.stack([spot, spot])
    class_mean = (2 * spot + 6 * centre) / 8
    score = suspicion(members, class_mean)
    cosine = float((spot * class_mean).sum() / np.linalg.norm(spot) / np.linalg.norm(class_mean))
    assert score.distinct == pytest.approx(1 - cosine)
    assert score.tight == pytest.approx(1.0)
    assert score.concentrated == pytest.approx(1.0)  # all the mass in the top cell
    assert score.edge == pytest.approx(1 - (0.125 / 0.2))  # peak cell centre at 1/8
    assert score.score == pytest.approx(score.distinct * (1.0 + 1.0 + score.edge) / 3)
    same = suspicion(np.stack([class_mean, class_mean]), class_mean)
    assert same.distinct == pytest.approx(0.0, abs=1e-9) and same.score == pytest.approx(0.0)
    alone = suspicion(spot[None], class_mean, outside=np.array([0.9]))
    assert alone.tight == 0.0 and alone.outside == pytest.approx(0.9)


# --- bad input, old runs, interruptions ---------------------------------------------------


def test_a_directory_without_explain_records_is_a_usage_error(tmp_path: Path) -> None:
    result = run("summarize", tmp_path)
    assert result.exit_code == 2
    assert "holds no record of camcli explain" in result.output
    assert "camcli explain" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "summary.json").exists()
    missing = run("summarize", tmp_path / "nope")
    assert missing.exit_code == 2 and "is not a directory" in missing.output


def _explain_tiny(out: Path, photos: Path, *extra: str) -> None:
    result = run("explain", photos, "--model", "tiny-test", "-o", out, "--device", "cpu", *extra)
    assert result.exit_code == 0, result.output


def test_records_without_the_methods_map_name_what_to_run(
    tmp_path: Path, image_folder: Any
) -> None:
    photos = image_folder({f"cls/{i}.png": (40, 32) for i in range(4)})
    out = tmp_path / "out"
    _explain_tiny(out, photos, "--method", "guided")
    result = run("summarize", out)
    assert result.exit_code == 2 and "--method gradcam" in result.output
    _explain_tiny(out, photos, "--method", "gradcam")
    wrong = run("summarize", out, "--method", "layercam")
    assert wrong.exit_code == 2
    assert "has a layercam map" in wrong.output and "--method layercam" in wrong.output


def test_small_classes_are_listed_not_clustered(tmp_path: Path, image_folder: Any) -> None:
    photos = image_folder({f"cls/{i}.png": (40, 32) for i in range(2)})
    out = tmp_path / "out"
    _explain_tiny(out, photos, "--target", "3")
    result = run("summarize", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    (entry,) = summary["classes"].values()
    assert entry["clusters"] == [] and entry["clustered"] is False
    assert "too few to cluster" in entry["note"]
    assert sorted(entry["members"]) == ["cls/0.png", "cls/1.png"]
    assert "Not clustered" in (out / "summary.md").read_text()


def test_records_of_two_models_are_refused_unless_one_is_picked(
    tmp_path: Path, image_folder: Any
) -> None:
    photos = image_folder({f"cls/{i}.png": (40, 32) for i in range(4)})
    out = tmp_path / "out"
    _explain_tiny(out, photos)
    other = tmp_path / "other"
    result = run("explain", photos, "--model", "bright-test", "-o", other, "--device", "cpu")
    assert result.exit_code == 0, result.output
    for record in other.rglob("*.png.json"):  # one directory, two models' records
        target = out / "more" / record.relative_to(other)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(record.read_text())
        data["image"] = "more/" + data["image"]
        target.write_text(json.dumps(data))
    refused = run("summarize", out)
    assert refused.exit_code == 2
    assert "bright-test" in refused.output and "tiny-test" in refused.output
    assert "--model" in refused.output
    picked = run("summarize", out, "--model", "tiny-test")
    assert picked.exit_code == 0, picked.output
    assert json.loads(picked.stdout)["images"] == 4


def test_records_without_the_small_map_are_read_from_their_heatmaps(
    tmp_path: Path, image_folder: Any
) -> None:
    """A run made before records kept a small map: the heatmap PNGs give the same maps."""
    photos = image_folder({f"cls/{i}.png": (64, 48) for i in range(5)})
    out = tmp_path / "out"
    _explain_tiny(out, photos, "--target", "7")
    assert run("summarize", out).exit_code == 0
    new = json.loads((out / "summary.json").read_text())
    for path in out.rglob("*.png.json"):
        record = json.loads(path.read_text())
        record["maps"]["gradcam"].pop("grid")
        path.write_text(json.dumps(record))
    result = run("summarize", out)
    assert result.exit_code == 0, result.output
    old = json.loads((out / "summary.json").read_text())
    assert old["read_from_heatmaps"] == 5 and new["read_from_heatmaps"] == 0
    (a,), (b,) = new["classes"].values(), old["classes"].values()
    assert a["peak"] == pytest.approx(b["peak"], abs=1 / 16)


def test_an_interrupted_summary_keeps_the_previous_one_whole(
    tmp_path: Path, image_folder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = image_folder({f"cls/{i}.png": (40, 32) for i in range(4)})
    out = tmp_path / "out"
    _explain_tiny(out, photos, "--target", "3")
    assert run("summarize", out).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    from camcli.runs import summarize as module

    original = module.read_maps

    def read_then_sigterm(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # as a service manager stopping the job
        return found

    monkeypatch.setattr(module, "read_maps", read_then_sigterm)
    result = run("summarize", out, "--clusters", "2")
    assert result.exit_code == 143, result.output
    assert "stopped" in result.output
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the previous summary whole, nothing half-written, no leftovers
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# --- the report's summary page, in a real browser -----------------------------------------


def test_browser_summary_page_from_the_grid(browser: Any, shortcut_run: dict[str, Any]) -> None:
    """summarize --report: the grid links the summary page; its tables and pictures load."""
    from urllib.parse import unquote

    out: Path = shortcut_run["out"]
    result = run("summarize", out, "--report")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    page = Page(browser)
    tab = page.open(out / "report" / "index.html")
    tab.click("#summary-link")
    tab.wait_for_load_state("load")
    assert tab.url.endswith("/report/summary.html")
    shown = tab.eval_on_selector_all("#classes tbody tr", "rows => rows.map(r => r.dataset.class)")
    assert shown == list(summary["classes"])
    horse = summary["classes"]["horse"]
    ranks = tab.eval_on_selector_all(
        "section#class-" + str(list(summary["classes"]).index("horse")) + " figure.cluster",
        "fs => fs.map(f => [Number(f.dataset.rank), Number(f.dataset.score)])",
    )
    assert ranks == [[c["rank"], c["score"]] for c in horse["clusters"]]
    pictures = page.images_resolve()
    prefix = out.as_uri() + "/"
    names = {unquote(src).removeprefix(prefix) for src, _ in pictures}
    expected = {horse["mean_map"], horse["embedding"]} | {c["mean_map"] for c in horse["clusters"]}
    assert expected <= names, (expected, names)
    assert all(width > 0 for _src, width in pictures), pictures
    assert page.problems == []
    page.close()


def test_a_sharded_run_once_merged_summarises_as_one_run(tmp_path: Path, image_folder: Any) -> None:
    photos = image_folder({f"cls/{i}.png": (40, 32) for i in range(8)})
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    _explain_tiny(whole, photos, "--target", "3")
    for shard in ("0/2", "1/2"):
        _explain_tiny(sharded, photos, "--target", "3", "--shard", shard)
    _explain_tiny(sharded, photos, "--target", "3")  # the merge: every shard's records reused
    found = []
    for out in (whole, sharded):
        result = run("summarize", out)
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        summary.pop("seconds")
        found.append(summary)
    assert found[0] == found[1] and found[0]["images"] == 8


def test_images_named_like_summaries_are_read_and_left_out_ones_are_said(
    tmp_path: Path, image_folder: Any
) -> None:
    """A photo called run.png or summary.png at the top is an image like any other; images
    without a label folder, under --group label, are left out with a word on stderr."""
    photos = image_folder(
        {
            "run.png": (40, 32),
            "summary.png": (40, 32),
            **{f"cls/{i}.png": (40, 32) for i in range(3)},
        }
    )
    out = tmp_path / "out"
    _explain_tiny(out, photos, "--target", "3")
    result = run("summarize", out)
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((out / "summary.json").read_text())["classes"].values()
    listed = {image for cluster in entry["clusters"] for image in cluster["images"]}
    assert {"run.png", "summary.png"} <= listed and entry["images"] == 5
    by_label = run("summarize", out, "--group", "label")
    assert by_label.exit_code == 0, by_label.output
    assert "2 record(s) have no label: left out" in by_label.stderr
    assert json.loads(by_label.stdout)["images"] == 3
