"""The batch loop's schedule: a batch is launched before the previous one's files are made."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import camcli.pipeline as pipeline
from camcli.config import Settings
from camcli.discover import discover_images
from camcli.models import load_model
from camcli.render import PendingRender

from .conftest import TINY


class Collect:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def advance(self, count: int) -> None:
        pass


def test_next_batch_is_launched_before_the_previous_one_is_collected(
    image_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root = image_folder({f"c/img{i}.jpg": (30 + i, 20 + i) for i in range(5)})
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
    settings = Settings(
        output_dir=tmp_path / "out", layers=("features.3",), batch_size=2, workers=0
    )
    reporter = Collect()
    summary = pipeline.run_explain(discover_images(root), load_model(TINY), settings, reporter)
    assert summary.explained == 5
    assert events == [
        "launch 2",
        "launch 2",
        "collect 2",
        "launch 1",
        "collect 2",
        "collect 1",
    ]
    assert sorted(r["image"] for r in reporter.records) == [f"c/img{i}.jpg" for i in range(5)]
    for record in reporter.records:  # each record holds its own image's numbers
        name = record["image"]
        width = 30 + int(name[5])
        assert (record["width"], record["height"]) == (width, width - 10)
        assert (tmp_path / "out" / f"{name}.gradcam.png").is_file()


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
