"""Unattended runs: resume, kills and signals, locks, bad input, resource faults, pipelines."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

import camcli.io.write
from camcli.cli import main
from camcli.runs import explain as pipeline

from .conftest import TINY, random_photo, save_image


def run(*args: object, input: bytes | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def explain(root: object, out: Path, *extra: object, input: bytes | None = None):
    return run("explain", root, "-o", out, "--model", TINY, "-j", "0", *extra, input=input)


def records(out: Path) -> dict[str, dict]:
    return {
        str(p.relative_to(out))[: -len(".json")]: json.loads(p.read_text())
        for p in out.rglob("*.json")
        if p.name != "run.json" and not p.name.startswith("run.")
    }


def index_lines(out: Path, name: str = "index.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def assert_outputs_valid(out: Path) -> None:
    """Every record's files exist and decode; no temporary file remains."""
    for name, record in records(out).items():
        folder = (out / name).parent
        for listing in record["files"].values():
            for file_name in listing.values():
                path = folder / file_name
                if path.suffix == ".png":
                    with Image.open(path) as image:
                        image.load()
                else:
                    np.load(path)
    assert not [p for p in out.rglob(".*.tmp")]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for i in range(6):
        save_image(
            root / ("tabby" if i % 2 else "espresso") / f"img{i}.png", random_photo(i, 40, 30)
        )
    return root


# --- resume ------------------------------------------------------------------------------


def test_rerun_reuses_up_to_date_images_and_redoes_what_changed(folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert explain(folder, out).exit_code == 0
    first = {k: (out / f"{k}.json").stat().st_mtime_ns for k in records(out)}
    again = explain(folder, out, "--jsonl")
    assert again.exit_code == 0
    closing = "explained 0 of 6 images with tiny-test at features.3; 6 up to date (reused)"
    assert closing in again.stderr
    assert {k: (out / f"{k}.json").stat().st_mtime_ns for k in records(out)} == first
    assert all(json.loads(line)["reused"] for line in again.stdout.splitlines())
    assert all(e["reused"] for e in index_lines(out))

    # new content in one file, a touched (same content) other, a deleted output of a third
    save_image(folder / "tabby" / "img1.png", random_photo(99, 40, 30))
    os.utime(folder / "tabby" / "img3.png", ns=(1, 1))
    (out / "espresso" / "img0.png.gradcam.png").unlink()
    result = explain(folder, out, "--jsonl")
    redone = {
        r["image"] for r in map(json.loads, result.stdout.splitlines()) if not r.get("reused")
    }
    assert redone == {"tabby/img1.png", "espresso/img0.png"}

    changed_setting = explain(folder, out, "--top-k", "3")
    assert "explained 6 of 6 images" in changed_setting.stderr
    forced = explain(folder, out, "--top-k", "3", "--force")
    assert "explained 6 of 6 images" in forced.stderr
    assert_outputs_valid(out)


def test_run_summary_has_settings_versions_counts_and_failures(folder: Path, tmp_path: Path):
    (folder / "tabby" / "bad.jpg").write_text("not an image")
    out = tmp_path / "out"
    result = explain(folder, out)
    assert result.exit_code == 1
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "complete" and summary["exit_code"] == 1
    assert summary["counts"] == {"total": 7, "explained": 6, "skipped": 0, "failed": 1}
    assert summary["failures"][0]["image"] == "tabby/bad.jpg"
    assert summary["versions"]["torch"] == torch.__version__
    assert summary["versions"]["camcli"] == "0.1.0" and "cuda" in summary["versions"]
    assert summary["device"].startswith("cpu")
    assert summary["settings"]["model"] == TINY and summary["settings"]["methods"] == [
        "gradcam",
        "guided",
    ]
    assert summary["wall_seconds"] > 0 and summary["images_per_second"] > 0


# --- bad input ---------------------------------------------------------------------------


def _bad_and_odd_files(root: Path) -> dict[str, str | None]:
    """Make one file of each kind; map name -> expected error fragment (None: explained)."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    (root / "zero.jpg").write_bytes(b"")
    expected["zero.jpg"] = "the file is empty"
    (root / "text.jpg").write_text("hello, I am not a JPEG")
    expected["text.jpg"] = "cannot decode image"
    full = root / "full.jpg"
    Image.fromarray(random_photo(1, 64, 48)).save(full, quality=90)
    (root / "truncated.jpg").write_bytes(full.read_bytes()[:300])
    full.unlink()
    expected["truncated.jpg"] = "cannot decode image"
    Image.fromarray(random_photo(2, 32, 24)).convert("CMYK").save(root / "cmyk.jpg")
    expected["cmyk.jpg"] = None
    gray16 = (np.arange(30 * 20, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    Image.fromarray(gray16).save(root / "gray16.png")
    expected["gray16.png"] = None
    palette = Image.fromarray(random_photo(3, 20, 20)).convert("P")
    palette.info["transparency"] = 0
    palette.save(root / "palette.png", transparency=0)
    expected["palette.png"] = None
    Image.fromarray(np.dstack([random_photo(4, 20, 20), np.full((20, 20), 128, np.uint8)])).save(
        root / "rgba.png"
    )
    expected["rgba.png"] = None
    Image.fromarray(random_photo(5, 20, 20)[..., 0]).convert("LA").save(root / "la.png")
    expected["la.png"] = None
    frames = [Image.fromarray(random_photo(6 + k, 24, 16)) for k in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    expected["anim.gif"] = None
    Image.fromarray(random_photo(9, 1, 1)).save(root / "one.png")
    expected["one.png"] = None
    Image.fromarray(random_photo(10, 300, 300)).save(root / "big.png")
    expected["big.png"] = "more than the limit of 50000 (--max-pixels)"
    save_image(root / "ünï cødé" / "with space.png", random_photo(11, 20, 20))
    expected["ünï cødé/with space.png"] = None
    os.symlink(root / "missing.png", root / "dangling.png")
    expected["dangling.png"] = "cannot read file"
    return expected


def test_every_kind_of_bad_or_odd_file(tmp_path: Path):
    expected = _bad_and_odd_files(tmp_path / "in")
    out = tmp_path / "out"
    result = explain(tmp_path / "in", out, "--jsonl", "--max-pixels", "50000")
    assert result.exit_code == 1
    by_name = {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(by_name) == set(expected)
    for name, error in expected.items():
        record = by_name[name]
        if error is None:
            assert record["status"] == "ok", (name, record)
            with Image.open(tmp_path / "in" / name) as original:
                assert (record["width"], record["height"]) == original.size
        else:
            assert record["status"] == "error" and error in record["error"], (name, record)
            assert f"failed {name}: " in result.stderr
    gif = json.loads((out / "anim.gif.json").read_text())
    assert (gif["width"], gif["height"]) == (24, 16)
    assert_outputs_valid(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(folder: Path, tmp_path: Path):
    path = folder / "tabby" / "secret.png"
    save_image(path, random_photo(1, 10, 10))
    path.chmod(0)
    result = explain(folder, tmp_path / "out")
    assert result.exit_code == 1 and "failed tabby/secret.png: cannot read file" in result.stderr


# --- resource faults ---------------------------------------------------------------------


def test_out_of_memory_halves_the_batch_and_loses_nothing(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real = pipeline.compute_methods

    def limited(model, inputs, *args, **kwargs):
        if inputs.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(pipeline, "compute_methods", limited)
    out = tmp_path / "out"
    result = explain(folder, out, "-b", "6")
    assert result.exit_code == 0, result.output
    assert "out of memory with a batch of 6 images; retrying in batches of 3" in result.stderr
    assert "out of memory with a batch of 3 images; retrying in batches of 1" in result.stderr
    assert len(records(out)) == 6


def test_disk_full_stops_with_one_sentence_and_the_next_run_resumes(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real = camcli.io.write.atomic_write_bytes
    calls = []

    def filling(path, data):
        calls.append(path)
        if len(calls) > 7:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(camcli.io.write, "atomic_write_bytes", filling)
    out = tmp_path / "out"
    result = explain(folder, out, "-b", "2")
    assert result.exit_code == 1
    assert (
        "cannot write outputs for" in result.stderr and "No space left on device" in result.stderr
    )
    assert "Traceback" not in result.output
    done = records(out)
    assert 1 <= len(done) < 6
    assert_outputs_valid(out)
    # run.json says the run failed, and why; the index lists what was written, in full
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "failed" and summary["exit_code"] == 1
    assert "No space left on device" in summary["error"]
    assert summary["counts"]["explained"] == len(done)
    assert not list(out.rglob("*.partial"))
    indexed = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(indexed) == len(done) and {e["status"] for e in indexed} == {"ok"}
    monkeypatch.setattr(camcli.io.write, "atomic_write_bytes", real)
    resumed = explain(folder, out)
    assert resumed.exit_code == 0
    assert f"{len(done)} up to date (reused)" in resumed.stderr
    assert len(records(out)) == 6


# --- locks -------------------------------------------------------------------------------


def test_second_run_on_the_same_output_refuses_and_stale_locks_are_taken_over(
    folder: Path, tmp_path: Path
):
    out = tmp_path / "out"
    lock = out / ".camcli.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from camcli.io.lock import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n"
            "    time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = explain(folder, out)
        assert result.exit_code == 1
        assert (
            f"is in use by camcli pid {holder.pid} on {os.uname().nodename} since" in result.stderr
        )
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its file remains, its lock does not
    assert lock.exists()
    assert explain(folder, out).exit_code == 0
    assert not lock.exists()


# --- pipelines ---------------------------------------------------------------------------


def test_paths_from_stdin_newline_and_nul_separated(folder: Path, tmp_path: Path):
    names = ["espresso/img0.png", "tabby/img1.png", "tabby/img3.png"]
    out = tmp_path / "a"
    result = explain("-", out, "--root", folder, "--jsonl", input="\n".join(names).encode())
    assert result.exit_code == 0, result.output
    assert [r["image"] for r in map(json.loads, result.stdout.splitlines())] == names
    assert (out / "tabby" / "img3.png.json").exists()
    absolute = b"\0".join(str(folder / n).encode() for n in names) + b"\0"
    result = explain("-", tmp_path / "b", "--null", "--jsonl", "--root", folder, input=absolute)
    assert result.exit_code == 0, result.output
    assert [r["image"] for r in map(json.loads, result.stdout.splitlines())] == names


def test_stdin_paths_default_to_the_working_directory(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(folder)
    out = tmp_path / "out"
    # one file per run: its output path must not depend on what else is listed
    for name in ("tabby/img1.png", "espresso/img0.png"):
        result = explain("-", out, "--jsonl", input=name.encode())
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["image"] == name
        assert (out / f"{name}.json").exists()
    result = explain("-", tmp_path / "o2", "--jsonl", input=str(tmp_path / "x.png").encode())
    assert result.exit_code == 1 and "outside the input root" in result.stderr


def test_no_output_escapes_the_output_directory(folder: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere" / "x.png"
    climbing = tmp_path / "elsewhere" / "y.png"
    save_image(outside, random_photo(3, 10, 10))
    save_image(climbing, random_photo(4, 10, 10))
    out = tmp_path / "out"
    # An absolute path outside the root is mirrored by its full path; the same file spelled
    # relatively is one entry; a relative path climbing out with '..' is refused.
    paths = f"tabby/img1.png\n{outside}\n../elsewhere/x.png\n../elsewhere/y.png\n".encode()
    result = explain("-", out, "--root", folder, "--jsonl", input=paths)
    assert result.exit_code == 1
    records = {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert len(records) == 3
    assert records[str(outside).lstrip("/")]["status"] == "ok"
    assert (out / (str(outside).lstrip("/") + ".json")).is_file()
    assert records["../elsewhere/y.png"]["status"] == "error"
    assert "--root DIR" in records["../elsewhere/y.png"]["error"]
    assert "climbs out of the input root" in result.stderr
    written = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()}
    assert all(
        p.is_relative_to(out.resolve())
        or p.is_relative_to(folder)
        or p in (outside.resolve(), climbing.resolve())
        for p in written
    )


def test_shards_are_disjoint_complete_and_stable(folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    seen: list[str] = []
    for k in range(3):
        result = explain(folder, out, "--shard", f"{k}/3", "--jsonl")
        assert result.exit_code == 0
        seen += [r["image"] for r in map(json.loads, result.stdout.splitlines())]
        assert (out / f"index.shard-{k}-of-3.jsonl").exists()
        assert (out / f"run.shard-{k}-of-3.json").exists()
    assert sorted(seen) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    again = explain(folder, out, "--shard", "1/3", "--jsonl")
    assert all(json.loads(line)["reused"] for line in again.stdout.splitlines())
    for bad in ("3/3", "a/b", "1"):
        result = explain(folder, out, "--shard", bad)
        assert result.exit_code == 2 and "'--shard'" in result.stderr


# --- processes: kills, signals, closed pipes, torchrun -----------------------------------


@pytest.fixture(scope="module")
def squeezenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "squeezenet.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    return path


def _command(folder: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "camcli",
        "explain",
        str(folder),
        "-o",
        str(out),
        "--model",
        "squeezenet1_1",
        "--weights",
        str(weights),
        "-b",
        "2",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "CAMCLI_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _wait_for_records(out: Path, count: int, process: subprocess.Popen, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if len([p for p in out.rglob("*.jpg.json")]) >= count:
            return
        time.sleep(0.05)


@pytest.fixture
def many(tmp_path: Path) -> Path:
    root = tmp_path / "many"
    for i in range(24):
        save_image(root / f"c{i % 3}" / f"p{i}.jpg", random_photo(i, 96, 72))
    return root


def test_sigkill_at_any_moment_then_rerun_explains_each_image_once(
    many: Path, tmp_path: Path, squeezenet_weights: Path
):
    out = tmp_path / "out"
    for target in (2, 7, 13):
        process = subprocess.Popen(
            _command(many, out, squeezenet_weights, "-j", "1"),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _wait_for_records(out, target, process)
        process.kill()
        process.wait()
        assert_outputs_valid_after_kill(out)
    final = subprocess.run(
        _command(many, out, squeezenet_weights, "-j", "0"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr
    index = index_lines(out)
    assert sorted(e["image"] for e in index) == sorted(
        str(p.relative_to(many)) for p in many.rglob("*.jpg")
    )
    assert len(records(out)) == 24
    assert_outputs_valid(out)


def assert_outputs_valid_after_kill(out: Path) -> None:
    """After a kill: every final-named file is complete; only dot-temporaries may be partial."""
    for path in out.rglob("*"):
        if path.is_file() and not path.name.startswith(".") and path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        if path.is_file() and path.suffix == ".json" and not path.name.startswith("."):
            json.loads(path.read_text())


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_finish_in_flight_work_and_exit_128_plus_signal(
    many: Path, tmp_path: Path, squeezenet_weights: Path, sig: int, code: int
):
    out = tmp_path / "out"
    process = subprocess.Popen(
        _command(many, out, squeezenet_weights, "-j", "2"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_records(out, 2, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "interrupted" and summary["exit_code"] == code
    assert 0 < summary["counts"]["explained"] < 24
    assert len(index_lines(out)) == summary["counts"]["explained"]
    assert_outputs_valid(out)


def test_closed_stdout_ends_quietly(many: Path, tmp_path: Path, squeezenet_weights: Path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        _command(many, out, squeezenet_weights, "-j", "0", "--jsonl"),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = process.stdout.readline()
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert json.loads(first)["status"] == "ok"
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr
    assert process.returncode == 141
    assert_outputs_valid(out)
    # The summary and the index count what was written: nothing done is denied.
    summary = json.loads((out / "run.json").read_text())
    records = list(out.rglob("*.jpg.json")) + list(out.rglob("*.png.json"))
    assert summary["status"] == "broken-pipe" and summary["exit_code"] == 141
    assert summary["counts"]["explained"] == len(records) > 0
    assert not (out / "index.jsonl.partial").exists()
    assert len(index_lines(out)) == len(records)
    # The next run reuses them and completes the index.
    again = subprocess.run(
        _command(many, out, squeezenet_weights, "-j", "0"), env=_env(), capture_output=True
    )
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "run.json").read_text())["counts"]["skipped"] == len(records)
    assert len(index_lines(out)) == 24


def test_torchrun_two_processes_one_merged_summary(
    many: Path, tmp_path: Path, squeezenet_weights: Path
):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-port=29517",
        "-m",
        "camcli",
        *_command(many, out, squeezenet_weights, "-j", "0")[3:],
    ]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "run.json").read_text())
    assert summary["processes"] == 2 and summary["counts"]["explained"] == 24
    index = index_lines(out)
    assert sorted(e["image"] for e in index) == sorted(
        str(p.relative_to(many)) for p in many.rglob("*.jpg")
    )
    assert not list(out.glob("index.rank-*"))
    assert len(records(out)) == 24


def test_a_forked_child_outliving_the_lock_holder_does_not_keep_the_lock(tmp_path: Path):
    from camcli.io.lock import run_lock

    lock = tmp_path / ".camcli.lock"
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from camcli.io.lock import release_inherited_locks, run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        release_inherited_locks()  # what every loader worker does\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    print(child, flush=True)\n"
        "    time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(lock)], stdout=subprocess.PIPE, text=True
    )
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the child is still alive...
        with run_lock(lock):  # ...and the lock is free at once
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_record_source_resolves_links_like_path_resolve(tmp_path: Path):
    from camcli.io.discover import resolved_source

    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "dirlink").symlink_to(real)
    (real / "sub" / "b.jpg").symlink_to(real / "sub" / "a.jpg")
    for path in (
        tmp_path / "dirlink" / "sub" / "a.jpg",  # a linked directory
        real / "sub" / "b.jpg",  # a linked file
        real / "sub" / ".." / "sub" / "a.jpg",
        tmp_path / "dirlink" / ".." / "real" / "sub" / "a.jpg",  # ".." after a link
        Path(os.path.relpath(real / "sub" / "a.jpg")),  # relative to the working directory
    ):
        assert resolved_source(path) == str(Path(path).resolve()), path


def test_without_a_terminal_a_progress_line_comes_at_a_steady_interval(
    many: Path, tmp_path: Path, squeezenet_weights: Path
):
    """Under cron or nohup: done / to do, rate and time left every --progress-interval."""
    out = tmp_path / "out"
    done = subprocess.run(
        _command(many, out, squeezenet_weights, "-j", "0", "-b", "2", "--progress-interval",
                 "0.2"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if " images after " in line]
    assert len(lines) >= 2, done.stderr
    assert re.fullmatch(r"camcli: \d+ of 24 images after \d+:\d\d(, .*)?", lines[0])
    assert any(re.search(r", [\d.e+]+ images/s, about \d+:\d\d left$", line) for line in lines)
    assert done.stdout == ""  # stdout stays pure data
    # The closing line: the command's whole time, and the loop's time with its rate, named.
    assert re.search(
        r"explained 24 of 24 images .*; \d+\.\d s in all, \d+\.\d s of it on the 24 images "
        r"\([\d.e+]+ images/s\); outputs in ",
        done.stderr,
    )
    # Up to date: the wall time, no rate; the lines count only what is left to do.
    again = subprocess.run(
        _command(many, out, squeezenet_weights, "-j", "0", "--progress-interval", "0"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert " images after " not in again.stderr  # 0: no lines
    closing = again.stderr.strip().splitlines()[-1]
    assert "24 up to date (reused)" in closing and "images/s" not in closing
    wall = float(re.search(r"; (\d+\.\d) s in all", closing).group(1))
    assert wall > 0.0


def test_reused_images_leave_the_bars_total_and_rate() -> None:
    from camcli.cli.frame import Reporter

    reporter = Reporter(jsonl=False, total=10, interval=0)
    for i in range(4):
        reporter.record({"image": f"{i}.png", "status": "ok", "reused": True})
        reporter.advance(1)
    reporter.record({"image": "4.png", "status": "ok"})
    reporter.advance(1)
    assert (reporter.reused, reporter.done, reporter.bar.total) == (4, 1, 6)
    line = reporter.line()
    assert line.startswith("camcli: 1 of 6 images (4 up to date) after 0:00")
    assert "images/s, about" in line
    reporter.close()


def test_a_rank_with_no_image_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """torchrun on fewer images than ranks: not 'explained 0 of 0 images in 0.0 s'."""
    from camcli.cli.frame import _report
    from camcli.runs.runtime import Rank
    from camcli.runs.work import RunSummary

    _report(RunSummary(total=0), tmp_path, "tiny", "explained", 0.4, Rank(1, 2, 1))
    err = capsys.readouterr().err
    assert err.strip() == "camcli: rank 1 of 2 had no image to do (fewer images than ranks)"


def test_progress_moves_within_a_batch_by_its_passes(
    many: Path, tmp_path: Path, squeezenet_weights: Path
):
    """A batch of many passes (RISE's masks) shows passes done of planned, not a frozen 0."""
    photos = tmp_path / "two"
    for name in ("c0/p0.jpg", "c0/p3.jpg"):
        photos.joinpath(name).parent.mkdir(parents=True, exist_ok=True)
        photos.joinpath(name).write_bytes((many / name).read_bytes())
    done = subprocess.run(
        _command(photos, tmp_path / "out", squeezenet_weights, "-j", "0", "--method", "rise",
                 "--rise-masks", "600", "--chunk-size", "8", "--progress-interval", "0.3"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    within = re.findall(r"camcli: 0 of 2 images after [\d:]+; batch: (\d+)/(\d+) passes \(rise\)"
                        r"(, about [\d:]+ left in it)?", done.stderr)  # fmt: skip
    assert within, done.stderr
    assert all(int(planned) == 2 * 600 for _, planned, _ in within)
    assert any(int(passes) > 0 and eta for passes, _, eta in within), within
