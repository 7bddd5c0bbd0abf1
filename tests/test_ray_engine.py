"""``--engine ray``: the same files, records, index and exit codes as the local engine.

A local Ray with two CPUs is started once for the module (Ray's start-up stays out of the
other tests); the module's local runs use the torch threads of one CPU actor (one). The runs
use the embedded model on the sample photos plus a corrupt file, in batches of two, so that
the pipeline carries several batches and a per-image failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from camcli.cli import main
from tests.conftest import SAMPLES

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

ENGINE_RAY = ["--engine", "ray"]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray (2 CPUs) for the module, shut down afterwards."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=400 * 1024 * 1024,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos in their class folders, and a corrupt JPEG among them."""
    folder = tmp_path_factory.mktemp("photos") / "in"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.md"))
    (folder / "tripod" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def explain(photos: Path, out: Path, *extra: str) -> Any:
    return CliRunner().invoke(
        main, ["explain", str(photos), "-o", str(out), "-b", "2", "--jsonl", *extra]
    )


def outputs(out: Path) -> dict[str, bytes]:
    """Every file of a run by relative path, but run.json (timings) and the lock."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "run.json" and not p.name.startswith(".camcli")
    }


@pytest.fixture(scope="module")
def both(
    local_ray: None, actor_threads: int, photos: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """The local engine's and the Ray engine's run of the same photos and options.

    The local run uses the actors' torch threads: the bytes are then the same.
    """
    base = tmp_path_factory.mktemp("engines")
    local = explain(photos, base / "local")
    on_ray = explain(photos, base / "ray", *ENGINE_RAY)
    return base / "local", local, base / "ray", on_ray


def test_ray_writes_the_local_engines_files_records_and_index(both: Any) -> None:
    local_out, local, ray_out, on_ray = both
    assert local.exit_code == on_ray.exit_code == 1, on_ray.output  # the corrupt file
    mine, theirs = outputs(local_out), outputs(ray_out)
    assert sorted(mine) == sorted(theirs)
    assert (
        len([name for name in mine if name.endswith(".png.json") or name.endswith(".jpg.json")])
        == 5
    )
    # every picture and record byte for byte (records carry no timings)
    for name in mine:
        if name != "index.jsonl":
            assert mine[name] == theirs[name], name
    # the index: the same lines (the Ray engine writes them in input order)
    local_index = sorted(mine["index.jsonl"].decode().splitlines())
    assert local_index == sorted(theirs["index.jsonl"].decode().splitlines())
    assert sum('"status": "error"' in line for line in local_index) == 1
    # --jsonl on stdout: the same records
    assert sorted(local.stdout.splitlines()) == sorted(on_ray.stdout.splitlines())
    assert "broken.jpg" in on_ray.stderr


def test_ray_run_json_names_the_engine_and_counts_like_the_local_one(both: Any) -> None:
    local_out, _, ray_out, _ = both
    local = json.loads((local_out / "run.json").read_text())
    on_ray = json.loads((ray_out / "run.json").read_text())
    assert (
        on_ray["counts"]
        == local["counts"]
        == {
            "total": 6,
            "explained": 5,
            "skipped": 0,
            "failed": 1,
        }
    )
    assert on_ray["exit_code"] == local["exit_code"] == 1
    assert on_ray["engine"]["name"] == "ray"
    assert on_ray["engine"]["resources"]["CPU"] == 2
    assert "engine" not in local


def test_ray_resumes_from_the_local_engines_records_and_force_redoes_them(
    both: Any, tmp_path: Path, photos: Path
) -> None:
    local_out, *_ = both
    out = tmp_path / "out"
    shutil.copytree(local_out, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = explain(photos, out, *ENGINE_RAY)
    assert again.exit_code == 1, again.output  # the corrupt file fails again
    summary = json.loads((out / "run.json").read_text())["counts"]
    assert summary["skipped"] == 5 and summary["explained"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    forced = explain(photos, out, *ENGINE_RAY, "--force")
    assert json.loads((out / "run.json").read_text())["counts"]["explained"] == 5, forced.output
    redone, expected = outputs(out), outputs(local_out)
    assert redone.keys() == expected.keys()
    for name in expected:
        if name != "index.jsonl":
            assert redone[name] == expected[name], name


def test_relative_input_and_output_paths_mean_the_drivers_directory(
    both: Any, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's workers run in another directory: the files still land where the user said."""
    local_out, *_ = both
    here = photos.parent
    workers_cwd = Path(ray.get(ray.remote(lambda: os.getcwd()).remote()))
    assert workers_cwd != here  # else this test could not fail
    monkeypatch.chdir(here)
    relative = CliRunner().invoke(
        main, ["explain", "in", "-o", "relative-out", "-b", "2", "--jsonl", *ENGINE_RAY]
    )
    assert relative.exit_code == 1, relative.output  # the corrupt file
    assert not (workers_cwd / "relative-out").exists()
    written, expected = outputs(here / "relative-out"), outputs(local_out)
    assert written.keys() == expected.keys()
    for name in expected:  # the records' sources too: the same resolved photos
        if name != "index.jsonl":
            assert written[name] == expected[name], name
    assert sorted(written["index.jsonl"].splitlines()) == sorted(
        expected["index.jsonl"].splitlines()
    )


def _kill_the_model_actor() -> int:
    for process in psutil.process_iter(["pid", "cmdline"]):
        if "MapBatches(_ExplainActor)" in " ".join(process.info["cmdline"] or []):
            os.kill(process.info["pid"], signal.SIGKILL)
            return int(process.info["pid"])
    return 0


def test_a_killed_actor_is_restarted_and_nothing_is_lost_or_counted_twice(
    both: Any, tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_out, *_ = both
    from camcli.cli import frame

    killed: list[int] = []
    record = frame.Reporter.record

    def kill_after_the_first(self: Any, entry: dict[str, Any]) -> None:
        record(self, entry)
        if entry.get("status") != "error" and not killed:
            killed.append(_kill_the_model_actor())

    monkeypatch.setattr(frame.Reporter, "record", kill_after_the_first)
    out = tmp_path / "out"
    result = explain(photos, out, *ENGINE_RAY)
    assert killed and killed[0] > 0, "no model actor was found to kill"
    assert result.exit_code == 1, result.output
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts == {"total": 6, "explained": 5, "skipped": 0, "failed": 1}
    index = (out / "index.jsonl").read_text().splitlines()
    images = [json.loads(line)["image"] for line in index]
    assert len(images) == len(set(images)) == 6
    assert outputs(out).keys() == outputs(local_out).keys()
    for name, data in outputs(out).items():
        if name != "index.jsonl":
            assert data == outputs(local_out)[name], name


class _DiesOnce:
    """A command's writer whose worker is SIGKILLed after an image's first file, once."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, jobs: list[Any], record_file: Path, record: dict[str, Any]) -> None:
        from camcli.io.write import atomic_write_bytes, write_image_files

        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            path, produce = jobs[0]
            atomic_write_bytes(path, produce())  # one picture written, the record not
            os.kill(os.getpid(), signal.SIGKILL)
        write_image_files(jobs, record_file, record)


def test_a_killed_writing_task_is_retried_and_nothing_is_lost_or_counted_twice(
    both: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photos: Path
) -> None:
    """The worker of a writing task dies mid-image; Ray runs the task again."""
    import sys

    from ray import cloudpickle

    from camcli.runs import explain as explain_run

    local_out, *_ = both
    marker = tmp_path / "killed"
    # The writer travels to Ray's workers by value (they cannot import the tests).
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(explain_run, "write_image_files", _DiesOnce(marker))
    try:
        out = tmp_path / "out"
        result = explain(photos, out, *ENGINE_RAY)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists(), "the writer was never called"
    assert int(marker.read_text()) != os.getpid()  # it died in a worker, not here
    assert result.exit_code == 1, result.output
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts == {"total": 6, "explained": 5, "skipped": 0, "failed": 1}
    images = [json.loads(line)["image"] for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(images) == len(set(images)) == 6
    assert outputs(out).keys() == outputs(local_out).keys()  # no partial file left behind
    for name, data in outputs(out).items():
        if name != "index.jsonl":
            assert data == outputs(local_out)[name], name


def test_actor_plan_one_per_gpu_or_one_thread_per_cpu() -> None:
    from camcli.runs.on_ray import CPU_ACTOR_SHARE, TASK_CPUS, ActorPlan, actor_plan

    assert actor_plan("cuda", {"CPU": 16.0, "GPU": 4.0}, 100) == ActorPlan(1, 4, 1, 1)
    assert actor_plan("cuda", {"CPU": 16.0}, 100) == ActorPlan(1, 1, 1, 1)  # GPUs yet to join
    assert actor_plan("cpu", {"CPU": 2.0}, 100) == ActorPlan(2, 2, CPU_ACTOR_SHARE, 0)
    assert actor_plan("cpu", {"CPU": 0.5}, 100) == ActorPlan(1, 1, CPU_ACTOR_SHARE, 0)
    # never more actors (each loading the model) than batches to give them
    assert actor_plan("cpu", {"CPU": 64.0}, 3) == ActorPlan(3, 3, CPU_ACTOR_SHARE, 0)
    assert actor_plan("cuda", {"CPU": 64.0, "GPU": 8.0}, 2) == ActorPlan(1, 2, 1, 1)
    # every node keeps room for a decoding or writing task next to its actors
    assert CPU_ACTOR_SHARE + TASK_CPUS <= 1


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_unreachable_ray_address_is_one_sentence_at_once(
    how: str, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens there: exit 1 within seconds (Ray's own client retries for minutes)."""
    import time

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    address = f"127.0.0.1:{_closed_port()}"
    extra = [*ENGINE_RAY, "--ray-address", address] if how == "option" else ENGINE_RAY
    if how == "environment":
        monkeypatch.setenv("RAY_ADDRESS", address)
    started = time.monotonic()
    result = explain(photos, tmp_path / "out", *extra)
    assert time.monotonic() - started < 60
    assert result.exit_code == 1, result.output
    option = "--ray-address" if how == "option" else "RAY_ADDRESS"
    assert f"cannot reach Ray at {address} ({option}): connection refused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not (tmp_path / "out" / "index.jsonl").exists()


def test_ray_address_needs_the_ray_engine(photos: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["explain", str(photos), "-o", str(tmp_path), "--ray-address", "127.0.0.1:1"]
    )
    assert result.exit_code == 2
    assert "--ray-address needs --engine ray" in result.stderr
    assert "Traceback" not in result.output


def test_the_ray_engine_without_ray_installed_is_a_usage_error(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.split(".")[0] == "ray" else real(name, *a),
    )
    result = CliRunner().invoke(main, ["explain", str(photos), "-o", str(tmp_path), *ENGINE_RAY])
    assert result.exit_code == 2
    assert "pip install 'camcli[ray]'" in result.stderr
    assert "'--engine'" in result.stderr
    assert "Traceback" not in result.output


def test_a_stop_request_ends_a_ray_run_with_nothing_half_written(
    local_ray: None, tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from camcli.cli import frame

    record = frame.Reporter.record

    def stop_after_the_first(self: Any, entry: dict[str, Any]) -> None:
        record(self, entry)
        if entry.get("status") != "error":
            threading.Timer(0, os.kill, (os.getpid(), signal.SIGTERM)).start()

    monkeypatch.setattr(frame.Reporter, "record", stop_after_the_first)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["explain", str(photos), "-o", str(out), "-b", "1", *ENGINE_RAY]
    )
    assert result.exit_code == 143, result.output
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["counts"]["explained"] < 5
    # every record written vouches for complete files (the next run reuses them)
    monkeypatch.undo()
    again = explain(photos, out, *ENGINE_RAY)
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert again.exit_code == 1 and counts["explained"] + counts["skipped"] == 5
    assert not list(out.rglob("*.tmp*")) and not list(out.rglob("*.partial"))


@pytest.mark.parametrize(
    "command",
    [
        ["features"],
        ["evaluate", "--method", "gradcam,guided"],
        ["compare", "-m", "efficientnet_lite0"],  # a maps pass, then a sheets pass, on Ray
    ],
    ids=["features", "evaluate", "compare"],
)
def test_the_other_batch_commands_run_on_ray_with_the_same_files(
    local_ray: None, actor_threads: int, photos: Path, tmp_path: Path, command: list[str]
) -> None:
    def run(out: Path, *extra: str) -> Any:
        return CliRunner().invoke(
            main, [command[0], str(photos), "-o", str(out), "-b", "2", *command[1:], *extra]
        )

    local, on_ray = run(tmp_path / "local"), run(tmp_path / "ray", *ENGINE_RAY)
    assert local.exit_code == on_ray.exit_code == 1, on_ray.output  # the corrupt file
    kind = command[0]

    def files(out: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(out)): p.read_bytes()
            for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".camcli")
            and p.name not in (f"{kind}.run.json", f"{kind}.index.jsonl")
        }  # fmt: skip

    mine, theirs = files(tmp_path / "local"), files(tmp_path / "ray")
    assert sorted(mine) == sorted(theirs)
    assert len([name for name in mine if name.endswith(f".{kind}.json")]) == 5
    for name, data in mine.items():
        assert theirs[name] == data, name
    index = [f"{kind}.index.jsonl"]
    assert sorted((tmp_path / "local").joinpath(*index).read_text().splitlines()) == sorted(
        (tmp_path / "ray").joinpath(*index).read_text().splitlines()
    )


def test_summarize_reads_a_ray_run_as_the_local_one(both: Any) -> None:
    """camcli summarize on the Ray engine's output: the local run's summary, file for file."""
    local_out, _, ray_out, _ = both
    made = {}
    for out in (local_out, ray_out):
        result = CliRunner().invoke(main, ["summarize", str(out), "--group", "label"])
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        summary.pop("seconds")
        pictures = {
            str(p.relative_to(out)): p.read_bytes()
            for p in sorted((out / "summary").rglob("*"))
            if p.is_file()
        }
        made[out] = (summary, pictures)
    assert made[local_out] == made[ray_out]
    assert made[local_out][0]["images"] == 5


_FILTER_SCRIPT = r"""
import os, sys
from camcli.runs.on_ray import _quiet_ray_core_logs
verbose = sys.argv[1] == "verbose"
with _quiet_ray_core_logs(enabled=not verbose):
    os.write(2, b"camcli: before\n")
    os.write(2, b"[2026-12-04 16:36:55,324 E 1474 1474] core_worker.cc:2465: Actor with ")
    os.write(2, b"class name: 'MapWorker(MapBatches(_ExplainActor))' ... restart will fail.\n")
    sys.stderr.write("progress 1/5\r")
    sys.stderr.flush()
    os.write(2, b"[not ray] a bracket line of someone else\n")
    print("a Python warning", file=sys.stderr)
os.write(2, b"camcli: after\n")
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_rays_core_log_lines_stay_out_of_stderr_unless_verbose(mode: str) -> None:
    """The line Ray printed on every successful run is dropped; nothing else is."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FILTER_SCRIPT, mode], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.decode()
    for kept in ("camcli: before", "progress 1/5\r", "[not ray] a bracket line", "a Python warning",
                 "camcli: after"):  # fmt: skip
        assert kept in lines
    assert ("core_worker.cc" in lines) == (mode == "verbose")
    assert lines.index("camcli: before") < lines.index("progress") < lines.index("camcli: after")


@pytest.mark.parametrize("factory", ["detector", "segmenter"])
def test_ray_explains_an_own_detector_and_segmenter_as_the_local_engine(
    local_ray: None, actor_threads: int, tmp_path: Path, factory: str
) -> None:
    """An own model from a file (its code travels to the actors by value) and the regions'
    batch work: the same records and pictures byte for byte. One photo per batch: a
    detector pads a batch to its largest photo, so its maps depend on the batch's company."""
    from tests.tiny_detection import MODELS, scene

    photos = tmp_path / "in"
    photos.mkdir()
    scene().save(photos / "one.png")
    scene(width=100, height=80, red=(60, 40, 90, 70), green=(5, 5, 30, 25)).save(photos / "two.png")
    model = ["--model", f"{MODELS}:{factory}", "--classes", str(MODELS.with_name("classes.txt")),
             "-b", "1"]  # fmt: skip
    local = explain(photos, tmp_path / "local", *model)
    on_ray = explain(photos, tmp_path / "ray", *model, *ENGINE_RAY)
    assert local.exit_code == on_ray.exit_code == 0, on_ray.output
    mine, theirs = outputs(tmp_path / "local"), outputs(tmp_path / "ray")
    assert sorted(mine) == sorted(theirs) and len(mine) > 6
    for name in mine:
        if name != "index.jsonl":
            assert mine[name] == theirs[name], name
    record = json.loads(mine["one.png.json"])
    assert record["task"] == ("detect" if factory == "detector" else "segment")


def test_an_exception_inside_the_model_fails_only_its_image_on_ray(
    local_ray: None, tmp_path: Path
) -> None:
    """As the local engine: a batch whose forward pass raises is retried image by image in
    the actor, and only the marked photo fails, with the model's message."""
    import numpy as np

    from tests.conftest import save_image
    from tests.test_image_failures import RAISING, _check_run, _good_scenes

    factory = tmp_path / "raising.py"
    factory.write_text(RAISING)
    folder = tmp_path / "photos"
    folder.mkdir()
    good = _good_scenes(folder, 2)
    save_image(folder / "marked.png", np.full((48, 64, 3), 90, dtype=np.uint8))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", str(folder), "--model", f"{factory}:classifier",
                                       "--method", "gradcam", "-o", str(out), "-b", "4",
                                       *ENGINE_RAY])  # fmt: skip
    _check_run(out, result, good, {"marked.png": "ValueError: marked input"})
