"""INPUT and ``--output-dir`` in object storage, against a real S3 endpoint on localhost.

moto's server mode is started once for the module (a threaded HTTP server speaking the S3
protocol); the clients are the real ones (s3fs over aiobotocore), pointed at it by
``AWS_ENDPOINT_URL`` as a user points them at MinIO or Ceph.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from camcli.cli import main
from tests.conftest import REPO, SAMPLES

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

BUCKET = "camcli-test"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[dict[str, str]]:
    """moto's S3 server on a free port; the environment that points clients at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    fs.put(str(SAMPLES) + "/", f"{BUCKET}/photos/", recursive=True)
    yield env
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    s3fs.S3FileSystem.clear_instance_cache()


def s3() -> Any:
    return s3fs.S3FileSystem()


def objects(prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` by relative key."""
    fs = s3()
    fs.invalidate_cache()
    return {key.removeprefix(prefix + "/"): fs.cat_file(key) for key in fs.find(prefix)}


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".camcli")
    }


def same_outputs(remote: dict[str, bytes], local: dict[str, bytes]) -> None:
    """The pictures byte for byte; the records equal but for the input's name and identity."""
    assert sorted(remote) == sorted(local)
    for name, data in local.items():
        if name.endswith((".png.json", ".jpg.json")):
            mine, theirs = json.loads(data), json.loads(remote[name])
            for record in (mine, theirs):
                record.pop("source")
                record.pop("input")
            assert mine == theirs, name
        elif name.endswith(".png"):
            assert remote[name] == data, name


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, actor_threads: int) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    result = CliRunner().invoke(main, ["explain", str(SAMPLES), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_explain_reads_and_writes_object_storage(endpoint: dict[str, str], local_run: Path) -> None:
    result = CliRunner().invoke(
        main, ["explain", f"s3://{BUCKET}/photos", "-o", f"s3://{BUCKET}/out", "--jsonl"]
    )
    assert result.exit_code == 0, result.output
    written = objects(f"{BUCKET}/out")
    same_outputs(written, files(local_run))
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["source"] for r in records} == {f"s3://{BUCKET}/photos/{r['image']}" for r in records}
    index = written["index.jsonl"].decode().splitlines()
    assert len(index) == 5 and not any(name.endswith(".partial") for name in written)
    assert json.loads(written["run.json"])["counts"]["explained"] == 5


def test_a_rerun_reuses_the_objects_and_redoes_a_changed_input(
    endpoint: dict[str, str],
) -> None:
    out = f"s3://{BUCKET}/resume"
    first = CliRunner().invoke(main, ["explain", f"s3://{BUCKET}/photos", "-o", out])
    assert first.exit_code == 0, first.output
    fs = s3()
    before = {key: fs.info(key)["ETag"] for key in fs.find(f"{BUCKET}/resume")}
    again = CliRunner().invoke(main, ["explain", f"s3://{BUCKET}/photos", "-o", out])
    assert again.exit_code == 0, again.output
    counts = json.loads(fs.cat_file(f"{BUCKET}/resume/run.json"))["counts"]
    assert counts["skipped"] == 5 and counts["explained"] == 0
    # a changed photo (another image under the same key) is redone, the others reused
    fs.pipe_file(
        f"{BUCKET}/photos/tripod/camera.png", (SAMPLES / "espresso/coffee.png").read_bytes()
    )
    try:
        third = CliRunner().invoke(main, ["explain", f"s3://{BUCKET}/photos", "-o", out])
        assert third.exit_code == 0, third.output
        fs.invalidate_cache()
        counts = json.loads(fs.cat_file(f"{BUCKET}/resume/run.json"))["counts"]
        assert counts["skipped"] == 4 and counts["explained"] == 1
        after = {key: fs.info(key)["ETag"] for key in fs.find(f"{BUCKET}/resume")}
        changed = {key for key in before if before[key] != after[key]}
        assert any("tripod/camera.png" in key for key in changed)
        assert not any("tiger_cat" in key for key in changed)
    finally:
        fs.pipe_file(
            f"{BUCKET}/photos/tripod/camera.png", (SAMPLES / "tripod/camera.png").read_bytes()
        )


def test_local_photos_to_storage_and_stored_photos_to_a_folder(
    endpoint: dict[str, str], local_run: Path, tmp_path: Path
) -> None:
    up = CliRunner().invoke(main, ["explain", str(SAMPLES), "-o", f"s3://{BUCKET}/up/"])
    assert up.exit_code == 0, up.output
    same_outputs(objects(f"{BUCKET}/up"), files(local_run))
    down = CliRunner().invoke(main, ["explain", f"s3://{BUCKET}/photos", "-o", str(tmp_path)])
    assert down.exit_code == 0, down.output
    same_outputs(files(tmp_path), files(local_run))


@pytest.mark.parametrize("where", ["INPUT", "--output-dir"])
def test_a_missing_bucket_is_one_sentence_naming_the_option(
    endpoint: dict[str, str], tmp_path: Path, where: str
) -> None:
    if where == "INPUT":
        args = ["explain", "s3://no-such-bucket/photos", "-o", str(tmp_path)]
    else:
        args = ["explain", str(SAMPLES), "-o", "s3://no-such-bucket/out"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{where}'" in result.stderr
    assert "the bucket 'no-such-bucket'" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.output


def test_missing_credentials_are_one_sentence(
    endpoint: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        result = CliRunner().invoke(
            main, ["explain", f"s3://{BUCKET}/photos", "-o", str(tmp_path / "out")]
        )
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2, result.output
    assert "no credentials" in result.stderr and "AWS_ACCESS_KEY_ID" in result.stderr
    assert "Traceback" not in result.output


def test_report_into_storage_is_refused(endpoint: dict[str, str]) -> None:
    result = CliRunner().invoke(
        main, ["explain", str(SAMPLES), "-o", f"s3://{BUCKET}/rep", "--report"]
    )
    assert result.exit_code == 2
    assert "'--report'" in result.stderr and "object storage" in result.stderr
    assert not objects(f"{BUCKET}/rep")


def test_the_ray_engine_reads_and_writes_storage_with_the_shells_credentials(
    endpoint: dict[str, str], local_run: Path
) -> None:
    """A separate process starts its own local Ray; the workers get the endpoint and keys."""
    env = {**os.environ, **endpoint, "RAY_DISABLE_USAGE_STATS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "camcli", "explain", f"s3://{BUCKET}/photos",
         "-o", f"s3://{BUCKET}/ray", "--engine", "ray"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    written = objects(f"{BUCKET}/ray")
    same_outputs(written, files(local_run))
    # and the same bytes as the local engine writing to the same storage
    result = CliRunner().invoke(
        main, ["explain", f"s3://{BUCKET}/photos", "-o", f"s3://{BUCKET}/ray-local"]
    )
    assert result.exit_code == 0, result.output
    local_engine = objects(f"{BUCKET}/ray-local")
    for name, data in local_engine.items():
        if name not in ("run.json", "index.jsonl"):
            assert written[name] == data, name
    assert sorted(written["index.jsonl"].decode().splitlines()) == sorted(
        local_engine["index.jsonl"].decode().splitlines()
    )


def test_the_library_explains_a_prefix_into_a_prefix(endpoint: dict[str, str]) -> None:
    import camcli

    explainer = camcli.Explainer("efficientnet_lite0", methods=["gradcam"])
    summary = explainer.explain_folder(f"s3://{BUCKET}/photos", f"s3://{BUCKET}/lib")
    assert summary.explained == 5
    written = objects(f"{BUCKET}/lib")
    assert len([name for name in written if name.endswith(".gradcam.png")]) == 5


def test_the_readmes_object_storage_example_runs_as_written(endpoint: dict[str, str]) -> None:
    """The README's block, against a bucket named as it names it (``bucket``)."""
    import re
    import shlex

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("#### Object storage", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line.startswith("camcli ")]
    assert commands, "the README's object storage block has a command to run here"
    fs = s3()
    fs.mkdir("bucket")
    fs.put(str(SAMPLES) + "/", "bucket/photos/", recursive=True)
    for command in commands:
        result = CliRunner().invoke(main, shlex.split(command)[1:])
        assert result.exit_code == 0, (command, result.output)
    written = objects("bucket/camcli-out")
    assert len([name for name in written if name.endswith((".png.json", ".jpg.json"))]) == 5


def test_summarize_reads_and_writes_object_storage(
    endpoint: dict[str, str], tmp_path: Path, image_folder: Any
) -> None:
    """An explain run into a bucket, summarised there: the local run's summary."""
    photos = image_folder({f"cls/{i}.png": (40, 32) for i in range(6)})
    local = tmp_path / "local"

    for out in (str(local), f"s3://{BUCKET}/summarised"):
        result = CliRunner().invoke(
            main, ["explain", str(photos), "-o", out, "-m", "tiny-test", "--target", "3"]
        )
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(main, ["summarize", out])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["summary"] == f"{out}/summary.json"
    written = objects(f"{BUCKET}/summarised")
    for name, data in written.items():
        if name.startswith("summary/"):
            assert data == (local / name).read_bytes(), name
    remote = json.loads(written["summary.json"])
    mine = json.loads((local / "summary.json").read_text())
    for summary in (remote, mine):
        summary.pop("seconds")
    assert remote == mine and mine["images"] == 6
    assert {n for n in written if n.startswith("summary/")} == {
        p.relative_to(local).as_posix() for p in (local / "summary").rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("model", ["detector", "segmenter"])
def test_a_detector_and_a_segmenter_read_and_write_object_storage(
    endpoint: dict[str, str], tmp_path: Path, model: str
) -> None:
    """Scenes in a bucket, explained into a bucket: the local run's files; a rerun reuses."""
    from tests.tiny_detection import MODELS, scene

    photos = tmp_path / "scenes"
    (photos / "b").mkdir(parents=True)
    scene().save(photos / "one.png")
    scene(width=100, height=80, red=(60, 40, 90, 70), green=(5, 5, 30, 25)).save(
        photos / "b" / "two.png"
    )
    fs = s3()
    fs.put(str(photos) + "/", f"{BUCKET}/scenes-{model}/", recursive=True)
    classes = MODELS.parent / "classes.txt"
    common = ["--model", f"{MODELS}:{model}", "--classes", str(classes),
              "--method", "gradcam,eigencam"]  # fmt: skip
    local = tmp_path / "local"
    result = CliRunner().invoke(main, ["explain", str(photos), "-o", str(local), *common])
    assert result.exit_code == 0, result.output
    remote = f"s3://{BUCKET}/regions-{model}"
    args = ["explain", f"s3://{BUCKET}/scenes-{model}", "-o", remote, *common, "--jsonl"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    found = "detections" if model == "detector" else "segments"
    assert len(records) == 2 and all(len(r[found]) == 2 for r in records)
    assert {r["source"] for r in records} == {
        f"s3://{BUCKET}/scenes-{model}/{name}" for name in ("one.png", "b/two.png")
    }
    written = objects(f"{BUCKET}/regions-{model}")
    same_outputs(written, files(local))
    assert any(name.endswith(".det-1.gradcam.overlay.png" if model == "detector"
                             else ".red.gradcam.overlay.png") for name in written)  # fmt: skip
    index = [json.loads(line) for line in written["index.jsonl"].decode().splitlines()]
    assert sorted(e[found] for e in index) == [2, 2]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert all(json.loads(line).get("reused") for line in again.stdout.splitlines())
    fs.invalidate_cache()
    counts = json.loads(fs.cat_file(f"{BUCKET}/regions-{model}/run.json"))["counts"]
    assert counts["skipped"] == 2 and counts["explained"] == 0
