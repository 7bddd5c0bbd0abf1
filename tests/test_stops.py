"""A stop request lands between the chunks of a method's passes, not after the batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import camcli.methods.rise as rise_module
import camcli.runs.explain as explain_run
from camcli.io.discover import discover_images
from camcli.methods.batch import MethodOptions
from camcli.methods.stopping import Stopped, check_stop, stop_between_chunks
from camcli.models.registry import load_model
from camcli.runs.runtime import stop_on_signals
from camcli.runs.settings import Settings

from .conftest import TINY, random_photo, save_image

FACTORY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4),
    )
"""


class Collect:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def advance(self, count: int) -> None:
        pass


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(3):
        save_image(root / f"p{i}.png", random_photo(i, 40, 30))
    return root


def test_check_stop_raises_only_inside_a_block_whose_event_is_set():
    event = threading.Event()
    check_stop()  # no block: nothing to see
    with stop_between_chunks(event):
        check_stop()
        event.set()
        with pytest.raises(Stopped):
            check_stop()
    check_stop()  # the block is over


def test_a_stop_during_a_batch_abandons_it_and_writes_the_finished_one(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    stop = threading.Event()
    real = rise_module.rise
    calls: list[int] = []
    chunks: list[int] = []

    def rise_then_stop(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:  # the second batch: the request comes during its passes
            stop.set()
        return real(*args, **kwargs)

    real_check = rise_module.check_stop

    def counting_check() -> None:
        chunks.append(len(calls))
        real_check()

    monkeypatch.setattr("camcli.methods.batch.rise", rise_then_stop)
    monkeypatch.setattr(rise_module, "check_stop", counting_check)
    out = tmp_path / "out"
    settings = Settings(
        output_dir=out,
        layers=("features.3",),
        methods=("rise",),
        batch_size=1,
        workers=0,
        method_options=MethodOptions(rise_masks=64, chunk_size=8),
    )
    reporter = Collect()
    summary = explain_run.run_explain(
        discover_images(photos), load_model(TINY), settings, reporter, stop
    )
    assert summary.status == "interrupted"
    assert [r["image"] for r in reporter.records] == ["p0.png"]
    assert (out / "p0.png.json").exists()
    assert not (out / "p1.png.json").exists() and not (out / "p2.png.json").exists()
    assert chunks.count(2) == 1  # the second batch stopped at its first chunk, not its eighth
    assert len(calls) == 2  # the third batch was never started


def test_a_second_sigterm_interrupts_at_once():
    with stop_on_signals() as request, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert request.event.is_set() and request.exit_code == 143
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert request.exit_code == 143


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_during_a_long_rise_batch_ends_the_run_in_seconds(
    photos: Path, tmp_path: Path, signum: int, code: int
):
    factory = tmp_path / "net.py"
    factory.write_text(FACTORY)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "camcli", "explain", str(photos), "-o", str(out),
        "--model", f"{factory}:build", "--input-size", "32", "--method", "rise",
        "--rise-masks", "2000000", "--chunk-size", "16", "-b", "1", "-j", "0",
        "--device", "cpu",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "index.jsonl.partial").exists():  # the batch loop has started
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)  # inside the first batch's masks (about a minute of passes)
        sent = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        latency = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == code, stderr.decode()
    assert latency < 15, latency  # one chunk of 16 masks, not the batch's 125,000 chunks
    assert not list(out.rglob("*.png.json"))  # the stopped batch left nothing that counts
    assert not list(out.rglob("*.png")) and not list(out.rglob(".*.tmp"))
    summary = json.loads((out / "run.json").read_text())
    assert summary["status"] == "interrupted" and summary["exit_code"] == code
