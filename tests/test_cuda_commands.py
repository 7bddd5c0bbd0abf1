"""layers, features, compare and several targets on CUDA: same results as on the CPU.

Skipped without a CUDA device.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from camcli.cli import main

from .conftest import BRIGHT, TINY, save_image, square_image

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    save_image(root / "1" / "a.png", square_image(80, 40, (4, 8, 24, 28)))
    save_image(root / "1" / "b.png", square_image(50, 70, (20, 30, 40, 60)))
    return root


@pytest.mark.parametrize("resize_on", ["loader", "device"])
def test_features_on_cuda_match_the_cpu(photos: Path, tmp_path: Path, resize_on: str):
    pictures = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = run("features", photos, "-o", out, "--model", TINY, "--device", device,
                     "--strongest", "--save-raw", "-j", "0", "--resize-on", resize_on)  # fmt: skip
        assert result.exit_code == 0, result.output
        record = json.loads((out / "1" / "a.png.features.json").read_text())
        pictures[device] = (record, np.load(out / "1" / "a.png.features.features.3.npy"))
    (cpu_record, cpu_raw), (gpu_record, gpu_raw) = pictures["cpu"], pictures["cuda"]
    np.testing.assert_allclose(gpu_raw, cpu_raw, rtol=1e-3, atol=1e-4)
    cpu_entry, gpu_entry = (
        cpu_record["features"]["features.3"],
        gpu_record["features"]["features.3"],
    )
    assert gpu_entry["channels"] == cpu_entry["channels"]
    assert gpu_entry["scale"]["max"] == pytest.approx(cpu_entry["scale"]["max"], rel=1e-3)


def test_compare_and_several_targets_on_cuda(photos: Path, tmp_path: Path):
    sheets = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = run("compare", photos, "-o", out, "-m", TINY, "-m", BRIGHT, "--device",
                     device, "-j", "0")  # fmt: skip
        assert result.exit_code == 0, result.output
        sheets[device] = np.asarray(Image.open(out / "1" / "a.png.compare.png")).astype(int)
        targets = run("explain", photos, "-o", tmp_path / f"t-{device}", "--model", TINY,
                      "--device", device, "--target", "pred,label", "-j", "0")  # fmt: skip
        assert targets.exit_code == 0, targets.output
    assert sheets["cpu"].shape == sheets["cuda"].shape
    # overlays and text: a few pixels may round differently
    assert np.mean(np.abs(sheets["cpu"] - sheets["cuda"]) > 8) < 0.01
    for name in ("a.png.json", "b.png.json"):  # explain's records
        cpu = json.loads((tmp_path / "t-cpu" / "1" / name).read_text())
        gpu = json.loads((tmp_path / "t-cuda" / "1" / name).read_text())
        assert [t["index"] for t in gpu["targets"]] == [t["index"] for t in cpu["targets"]]
        assert gpu["targets"][1]["probability"] == pytest.approx(
            cpu["targets"][1]["probability"], rel=1e-3
        )


def test_evaluate_on_cuda_matches_the_cpu(photos: Path, tmp_path: Path):
    boxes = tmp_path / "boxes"
    (boxes / "1").mkdir(parents=True)
    for name, (x0, y0, x1, y1) in (("a", (4, 8, 24, 28)), ("b", (20, 30, 40, 60))):
        (boxes / "1" / f"{name}.xml").write_text(
            f"<annotation><object><name>tench</name><bndbox><xmin>{x0 + 1}</xmin>"
            f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            "</annotation>"
        )
    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = run("evaluate", photos, "-o", out, "--model", BRIGHT, "--device", device,
                     "--method", "gradcam,guided", "--boxes", boxes, "--metrics", "all",
                     "--metric-steps", "4", "--sanity", "--sanity-stages", "2")  # fmt: skip
        assert result.exit_code == 0, result.output
        results[device] = json.loads((out / "evaluation.json").read_text())
    cpu, gpu = results["cpu"], results["cuda"]
    for method, scores in cpu["methods"].items():
        for name, value in scores.items():
            if isinstance(value, float):
                assert gpu["methods"][method][name] == pytest.approx(value, abs=2e-3), name
    assert [s["stage"] for s in gpu["sanity"]["gradcam"]] == [
        s["stage"] for s in cpu["sanity"]["gradcam"]
    ]


def test_the_records_small_maps_and_summarize_on_cuda_match_the_cpu(
    photos: Path, tmp_path: Path
) -> None:
    """The 32 x 32 copy of each map is made on the device: the CPU's, within a level."""
    from camcli.io.mapgrid import decode_grid

    save_image(photos / "1" / "c.png", square_image(64, 48, (30, 10, 50, 30)))
    grids, summaries = {}, {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = run("explain", photos, "-o", out, "--model", BRIGHT, "--device", device,
                     "--target", "3")  # fmt: skip
        assert result.exit_code == 0, result.output
        grids[device] = {
            p.name: decode_grid(json.loads(p.read_text())["maps"]["gradcam"]["grid"])
            for p in sorted(out.rglob("*.png.json"))
        }
        assert run("summarize", out).exit_code == 0
        summary = json.loads((out / "summary.json").read_text())
        summary.pop("seconds")
        summaries[device] = summary
    assert sorted(grids["cpu"]) == sorted(grids["cuda"]) and len(grids["cpu"]) == 3
    for name, grid in grids["cpu"].items():
        assert np.abs(grids["cuda"][name] - grid).max() <= 1.5 / 255, name
    cpu, gpu = summaries["cpu"], summaries["cuda"]
    assert [c["images"] for c in gpu["classes"]["tiger shark"]["clusters"]] == [
        c["images"] for c in cpu["classes"]["tiger shark"]["clusters"]
    ]
