"""benchmarks/gpu_run.py --dry-run: every stage runs on the CPU and writes every output file."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_run.py"


def _table(markdown: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header starts with ``| first_header |``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True)))
    return rows


def test_dry_run_writes_every_output(tmp_path: Path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # what comes back from a device call: at most 8 files, plain names
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "cuda_tests.txt",
        "gpu_run.log",
        "profile.txt",
        "profile_trace.json.gz",
        "results.json",
        "results.md",
    ]

    results = json.loads((out / "results.json").read_text())
    assert results["dry_run"] and results["finished"]
    assert {s["name"]: s["status"] for s in results["stages"]} == {
        "install": "skipped (dry run)",
        "prepare": "ok",
        "cuda_tests": "ok",
        "throughput-resnet18": "ok",
        "profile": "ok",
    }
    (row,) = results["rows"]
    assert (row["model"], row["precision"], row["status"]) == ("resnet18", "fp32", "ok")
    assert row["images"] == 8 and row["camcli_files"] >= 4 * 8
    assert row["camcli_images_per_second"] > 0 and row["bare_images_per_second"] > 0
    assert row["ratio"] > 0

    table = _table((out / "results.md").read_text(), "model")
    assert [(r["model"], r["precision"], r["status"]) for r in table] == [
        ("resnet18", "fp32", "ok")
    ]
    assert float(table[0]["camcli / bare"]) > 0
    assert float(table[0]["camcli images/s"]) > 0

    cuda_tests = (out / "cuda_tests.txt").read_text()
    assert "RESULT:" in cuda_tests
    if not torch.cuda.is_available():
        assert results["cuda_tests"]["status"].startswith("skipped")
        assert results["cuda_tests"]["passed"] == 0 and results["cuda_tests"]["skipped"] > 0
        assert "RESULT: skipped" in cuda_tests

    profile = (out / "profile.txt").read_text()
    for section in ("1. Rates", "2. Each stage alone", "3. Where camcli's threads are",
                    "4. torch.profiler", "5. Chrome trace"):  # fmt: skip
        assert section in profile
    assert "camcli/" in profile  # the sampler saw camcli's frames
    stages = results["profile"]["stages"]
    assert len(stages) >= 8 and all("error" not in s for s in stages)
    assert all(s["ms_per_image"] >= 0 for s in stages)
    trace = json.loads(gzip.decompress((out / "profile_trace.json.gz").read_bytes()))
    assert trace["traceEvents"]


def test_a_stage_past_its_limit_is_stopped_and_recorded(tmp_path: Path):
    """The throughput child is killed at its limit; the run records it and still finishes."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--skip",
         "cuda_tests,profile", "--stage-limit", "throughput=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    statuses = {s["name"]: s["status"] for s in results["stages"]}
    assert statuses["cuda_tests"] == statuses["profile"] == "skipped (--skip)"
    assert statuses["throughput-resnet18"] == "timed out after 1 s"
    assert results["finished"]
    assert results["rows"][0]["status"] == "timed out after 1 s"
    assert "timed out after 1 s" in (out / "results.md").read_text()


def test_the_device_collects_only_the_cuda_test_files(tmp_path: Path):
    """The device image has no quantus, ray or moto: the CUDA stage collects only the files
    that hold CUDA tests, and they collect with those packages hidden (one collection error
    stopped the first device run before any test)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_run
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    files = gpu_run.cuda_test_files()
    assert {"tests/test_cuda.py", "tests/test_cuda_commands.py"} <= set(files)
    hide = tmp_path / "hide"
    for name in ("quantus", "ray", "moto"):  # importing any of them fails
        (hide / name).mkdir(parents=True)
        (hide / name / "__init__.py").write_text("raise ImportError('not on the device')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "--collect-only", "-q",
         "-p", "no:cacheprovider", *files],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "error" not in done.stdout.lower()
    assert "tests/test_cuda_commands.py::" in done.stdout
    everything = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "--collect-only", "-q",
         "-p", "no:cacheprovider", "tests"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert everything.returncode != 0  # the whole folder does not collect there: the reason
