"""The batch loop's schedule: a batch is launched before the previous one's files are made."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import camcli.runs.explain as pipeline
from camcli.io.discover import discover_images
from camcli.models.registry import load_model
from camcli.pictures.render import PendingRender
from camcli.runs.settings import Settings

from .conftest import TINY


class Collect:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def advance(self, count: int) -> None:
        pass


def _run(root: Path, out: Path, batch_size: int, **extra: Any) -> Collect:
    # The GPU's schedule (a batch launched before the last is finished), checked on the CPU,
    # where a run finishes each batch at once unless asked to overlap them.
    settings = Settings(
        output_dir=out, layers=("features.3",), batch_size=batch_size, workers=0,
        overlap_batches=True, **extra,
    )  # fmt: skip
    reporter = Collect()
    summary = pipeline.run_explain(discover_images(root), load_model(TINY), settings, reporter)
    assert summary.explained == summary.total
    return reporter


def test_next_batch_is_launched_before_the_previous_one_is_collected(
    image_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # sizes repeat, so batches render groups of several images
    root = image_folder({f"c/img{i}.jpg": (30 + 4 * (i % 2), 20 + 4 * (i % 2)) for i in range(5)})
    alone = {r["image"]: r for r in _run(root, tmp_path / "alone", 1).records}
    events: list[str] = []
    launch = pipeline.launch_render
    collect = PendingRender.collect

    def logged_launch(*args: Any, **kwargs: Any) -> PendingRender:
        pending = launch(*args, **kwargs)
        events.append(f"launch {len(pending.widths)}")
        return pending

    def logged_collect(self: PendingRender) -> Any:
        events.append(f"collect {len(self.widths)}")
        return collect(self)

    monkeypatch.setattr(pipeline, "launch_render", logged_launch)
    monkeypatch.setattr(PendingRender, "collect", logged_collect)
    batched = _run(root, tmp_path / "out", 2).records
    assert events == [
        "launch 2",
        "launch 2",
        "collect 2",
        "launch 1",
        "collect 2",
        "collect 1",
    ]
    assert sorted(r["image"] for r in batched) == sorted(alone)
    for record in batched:  # each record holds its own image's numbers, as when alone
        reference = alone[record["image"]]
        for key in ("width", "height", "files"):
            assert record[key] == reference[key], key
        assert record["target"]["index"] == reference["target"]["index"]
        got_map, want_map = record["maps"]["gradcam"], reference["maps"]["gradcam"]
        assert got_map["peak"] == want_map["peak"]
        assert got_map["max"] == pytest.approx(want_map["max"], rel=1e-4)
        for got, want in zip(record["predictions"], reference["predictions"], strict=True):
            assert got["index"] == want["index"]
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)


def test_pictures_waiting_to_be_written_are_bounded_in_bytes(
    image_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With no byte allowance, a batch's writes finish before the batch after next starts."""
    root = image_folder({f"c/img{i}.jpg": (30, 20) for i in range(6)})
    written: list[str] = []
    write = pipeline.write_image_files

    def slow_write(jobs: Any, record_file: Path, record: dict[str, Any]) -> None:
        time.sleep(0.05)
        write(jobs, record_file, record)
        written.append(record["image"])

    done_at_launch: list[int] = []
    launch = pipeline.launch_render

    def counting_launch(*args: Any, **kwargs: Any) -> PendingRender:
        done_at_launch.append(len(written))
        return launch(*args, **kwargs)

    monkeypatch.setattr(pipeline, "write_image_files", slow_write)
    monkeypatch.setattr(pipeline, "launch_render", counting_launch)
    monkeypatch.setattr(pipeline, "MAX_PENDING_BYTES", 0)
    _run(root, tmp_path / "out", 2, write_threads=1)
    assert done_at_launch[2] >= 2 and done_at_launch[1] == 0
    assert len(written) == 6


def test_interrupt_finishes_the_launched_batch(image_folder, tmp_path: Path, monkeypatch):
    """A stop during the first batch: that launched batch's files are still made."""

    root = image_folder({f"c/img{i}.jpg": (30, 20) for i in range(6)})
    stop = threading.Event()
    launch = pipeline.launch_render

    def launch_then_stop(*args: Any, **kwargs: Any) -> PendingRender:
        stop.set()
        return launch(*args, **kwargs)

    monkeypatch.setattr(pipeline, "launch_render", launch_then_stop)
    settings = Settings(
        output_dir=tmp_path / "out", layers=("features.3",), batch_size=2, workers=0
    )
    reporter = Collect()
    summary = pipeline.run_explain(
        discover_images(root), load_model(TINY), settings, reporter, stop
    )
    assert summary.status == "interrupted"
    assert summary.explained == 2 and len(reporter.records) == 2
    for record in reporter.records:
        assert (tmp_path / "out" / f"{record['image']}.json").is_file()
