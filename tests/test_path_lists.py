"""Paths on stdin as users pipe them: find from anywhere, -print0, odd names, mistakes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from camcli.cli import main

from .conftest import SAMPLES, TINY, random_photo, save_image


def explain_list(paths: bytes, out: Path, *extra: str | Path) -> Result:
    args = ["explain", "-", "-o", str(out), "--model", TINY, "-j", "0", "--jsonl"]
    return CliRunner().invoke(main, [*args, *map(str, extra)], input=paths)


def records(result: Result) -> dict[str, dict]:
    return {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "photos"
    for i, name in enumerate(["cat/a.png", "cat/b c.png", "dog/d.png"]):
        save_image(root / name, random_photo(i, 20, 16))
    return root


def test_absolute_paths_from_another_directory_are_mirrored(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    listed = sorted(str(p) for p in photos.rglob("*.png"))
    result = explain_list("\n".join(listed).encode() + b"\n", Path("out"))
    assert result.exit_code == 0, result.output
    got = records(result)
    assert sorted(got) == [p.lstrip("/") for p in listed]
    assert all(r["status"] == "ok" and r["label"] is None for r in got.values())
    for image in got:  # inside the output directory, under the file's whole path
        assert (elsewhere / "out" / f"{image}.json").is_file()
    assert "mirrored below the output directory" in result.stderr
    assert result.stderr.count("mirrored") == 1
    again = explain_list("\n".join(listed).encode(), Path("out"))  # stable output paths
    assert again.exit_code == 0 and all(r["reused"] for r in records(again).values())


def test_absolute_paths_under_the_root_keep_labels(photos: Path, tmp_path: Path) -> None:
    listed = "\n".join(str(p) for p in sorted(photos.rglob("*.png"))).encode()
    result = explain_list(listed, tmp_path / "out", "--root", photos)
    assert result.exit_code == 0
    got = records(result)
    assert got["cat/a.png"]["label"]["folder"] == "cat"
    assert "mirrored" not in result.stderr


def test_print0_with_spaces_and_newlines(tmp_path: Path) -> None:
    root = tmp_path / "odd names"
    names = ["two words.png", "line\nbreak.png", "tab\there.png"]
    for i, name in enumerate(names):
        save_image(root / name, random_photo(i, 12, 10))
    listed = b"".join(str(root / n).encode() + b"\0" for n in names)
    result = explain_list(listed, tmp_path / "out", "--null", "--root", root)
    assert result.exit_code == 0, result.output
    assert sorted(records(result)) == sorted(names)
    for name in names:
        assert (tmp_path / "out" / f"{name}.gradcam.png").is_file()


def test_a_path_listed_twice_is_explained_once(photos: Path, tmp_path: Path) -> None:
    a = photos / "cat" / "a.png"
    listed = f"{a}\ncat/a.png\n{photos}/cat/../cat/a.png\n".encode()
    result = explain_list(listed, tmp_path / "out", "--root", photos)
    assert result.exit_code == 0
    assert list(records(result)) == ["cat/a.png"]


def test_missing_paths_and_directories_are_reported_and_the_rest_explained(
    photos: Path, tmp_path: Path
) -> None:
    listed = b"cat/a.png\ncat/missing.png\ncat\ndog/d.png\n"
    result = explain_list(listed, tmp_path / "out", "--root", photos)
    assert result.exit_code == 1
    got = records(result)
    assert got["cat/a.png"]["status"] == "ok" and got["dog/d.png"]["status"] == "ok"
    assert "No such file" in got["cat/missing.png"]["error"]
    assert "directory" in got["cat"]["error"].lower()
    assert "failed cat/missing.png" in result.stderr and "Traceback" not in result.output
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    assert summary["counts"]["failed"] == 2 and summary["counts"]["explained"] == 2


def test_relative_path_climbing_out_names_the_fix(photos: Path, tmp_path: Path) -> None:
    result = explain_list(b"../photos/cat/a.png\n", tmp_path / "out", "--root", photos / "dog")
    assert result.exit_code == 1
    (record,) = records(result).values()
    assert record["status"] == "error" and "--root DIR" in record["error"]
    assert not any((tmp_path / "out").rglob("*.png"))


def test_empty_list_is_one_sentence(tmp_path: Path) -> None:
    result = explain_list(b"\n\n", tmp_path / "out")
    assert result.exit_code == 1
    assert "no paths on standard input" in result.stderr and "Traceback" not in result.output


@pytest.mark.real_model
def test_readme_find_pipeline_from_another_directory(tmp_path: Path) -> None:
    """The README's pipeline, pasted into a shell from a directory unrelated to the photos."""
    photos = tmp_path / "data" / "photos"
    shutil.copytree(SAMPLES, photos)
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    camcli = f"{shlex_quote(sys.executable)} -m camcli"
    command = (
        f"find {shlex_quote(str(photos))} -name '*.jpg' -print0 "
        f"| {camcli} explain - --null -o out --jsonl "
        "| python3 -c 'import json,sys; [print(json.loads(l)[\"status\"]) for l in sys.stdin]'"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    count = len(list(photos.rglob("*.jpg")))
    assert count == 2 and done.stdout.split() == ["ok"] * count
    assert len(list((elsewhere / "out").rglob("*.jpg.json"))) == count


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def test_listed_outputs_of_an_earlier_run_are_not_inputs(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(photos)
    first = explain_list(b"cat/a.png\n", Path("camcli-out"))
    assert first.exit_code == 0
    # `find . -name '*.png'` run again now also lists the heatmaps camcli wrote
    listed = "\n".join(str(p) for p in sorted(Path(".").rglob("*.png"))).encode()
    second = explain_list(listed, Path("camcli-out"))
    assert second.exit_code == 0, second.output
    assert sorted(records(second)) == ["cat/a.png", "cat/b c.png", "dog/d.png"]
    assert "ignored" in second.stderr and "inside the output directory" in second.stderr


def test_a_mirrored_path_never_overwrites_a_root_relative_one(photos: Path, tmp_path: Path) -> None:
    """``/x/a.png`` mirrored is ``x/a.png``, which ROOT/x/a.png also writes: never both."""
    outside = tmp_path / "x" / "a.png"
    save_image(outside, random_photo(7, 12, 10))
    inside = photos / str(outside).lstrip("/")
    save_image(inside, random_photo(8, 12, 10))
    listed = f"{outside}\n{str(outside).lstrip('/')}\n".encode()
    result = explain_list(listed, tmp_path / "out", "--root", photos)
    assert result.exit_code == 1
    by_status = {r["status"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert sorted(by_status) == ["error", "ok"]
    error = by_status["error"]
    assert error["source"] == str(inside) and "would overwrite those of" in error["error"]
    assert "--root DIR" in error["error"]
    record = json.loads((tmp_path / "out" / (str(outside).lstrip("/") + ".json")).read_text())
    assert record["source"] == str(outside.resolve())
