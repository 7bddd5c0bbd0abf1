"""The contract between a command and the engines that run it, and what both engines share.

A command supplies its device work as a :class:`BatchWork` (``launch`` queues a batch's
computations, ``finish`` turns them into per-image :class:`ImageOutput`: a record and file
jobs); an engine (the local loop of :mod:`camcli.runs.loop`, or Ray, :mod:`camcli.runs.on_ray`)
decodes, runs the work, writes the files and reports to a :class:`Reporter`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from camcli.io.decode import Batch, model_inputs_on_device, unpack_pixels
from camcli.io.discover import ImageItem
from camcli.io.write import IndexWriter, write_image_files
from camcli.models.loaded import LoadedModel, Preprocessing
from camcli.runs.settings import Settings

__all__ = [
    "MAX_PENDING_BYTES",
    "BatchWork",
    "EngineRun",
    "FileJob",
    "ImageOutput",
    "Reporter",
    "RunSummary",
    "WriteFailed",
    "WriteFiles",
    "backend_settings",
    "complete_record",
    "device_inputs",
    "module_on_device",
    "normalisation",
    "report_passes",
    "write_image_files",
]


class WriteFailed(RuntimeError):
    """An output file could not be written (disk full, permissions); the run stops.

    Attributes:
        summary: the run's counts when it stopped (status ``failed``), set by the run loop;
            the files it counts are complete and indexed.

    """

    summary: RunSummary | None = None


class Reporter(Protocol):
    """Receives what a run produces, as it happens."""

    def record(self, record: dict[str, Any]) -> None:
        """An image was explained and its files written, or it failed (``status`` says)."""

    def advance(self, count: int) -> None:
        """``count`` more images are finished."""

    def passes(self, done: int, planned: int, method: str) -> None:
        """Within the current batch: ``done`` of ``planned`` passes, now of ``method``.

        ``planned`` is known when the batch's first pass starts and never grows; it shrinks
        when an adaptive method needs fewer levels than planned; ``(0, 0, "")`` when the
        batch is over.
        """


def report_passes(reporter: object, done: int, planned: int, method: str) -> None:
    """Give ``reporter`` the progress within a batch, when it takes it.

    Reporters written before :meth:`Reporter.passes` existed (a library user's) have none.
    """
    passes = getattr(reporter, "passes", None)
    if passes is not None:
        passes(done, planned, method)


@dataclass
class RunSummary:
    """Counts of a finished run."""

    total: int
    explained: int = 0
    skipped: int = 0
    failed: int = 0
    status: str = "complete"
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # why a run with status "failed" stopped
    counted: bool = True  # False: the run failed before its loop could count anything
    extra: dict[str, Any] = field(default_factory=dict)  # more fields for run.json


# One file to write: its path and a function producing its bytes (run in a writer thread).
FileJob = tuple[Path, Callable[[], bytes]]
# Writes one image's files and then its record: (jobs, record file, record).
WriteFiles = Callable[[list[FileJob], Path, dict[str, Any]], None]

MAX_PENDING_BYTES = 2 << 30  # pictures waiting to be written: large photos wait sooner
SWITCH_INTERVAL_S = 0.0002  # GIL hand-over during a run (see backend_settings)


@dataclass
class ImageOutput:
    """What a command made for one image of a batch.

    Attributes:
        record: the image's JSON record (the loop adds ``settings_key`` and ``input``); a
            record with ``"status": "error"`` and an ``error`` message reports the image as
            failed instead (nothing is written).
        jobs: its files.
        size: bytes of pictures the jobs hold (bounds the writes in flight).
        after: files derived from the outputs, written after the record (the report's
            thumbnail, which must be newer than the record to count as up to date); one that
            cannot be written is left to the report, which makes it again.

    """

    record: dict[str, Any]
    jobs: list[FileJob]
    size: int
    after: list[FileJob] = field(default_factory=list)


class BatchWork(Protocol):
    """A command's device work on a batch, in two steps so batches can overlap."""

    def launch(
        self, part: Batch, positions: list[int], pixels: list[torch.Tensor], inputs: torch.Tensor
    ) -> Any:
        """Queue the batch's device work and its copies back; return what ``finish`` needs.

        Args:
            part: the decoded batch.
            positions: each image's position in the run's item list.
            pixels: the original photos on the device, ``(H, W, 3)`` uint8 each.
            inputs: the normalised model inputs on the device, ``(N, 3, S, S)``.

        """

    def finish(self, launched: Any) -> list[ImageOutput]:
        """Once the copies have landed: one output per image, in batch order."""


@dataclass
class EngineRun:
    """What an engine other than the local loop needs from :func:`~camcli.runs.loop.run_batches`.

    Attributes:
        todo: positions in ``items`` of the images to explain (the rest were reused or failed).
        items: the run's images.
        model: the loaded model.
        settings: the run's settings.
        key: the settings key the records carry.
        stats: each item's file identity, taken before decoding.
        summary: the counts to update.
        reporter: receives records and progress.
        index: the run index, written by the driver.
        fail: reports an image as failed (index, reporter, summary).
        write_files: writes one image's files and record (in a writing task).
        index_entry: an image's index line from its record.
        start_work: the command's batch work, given the model's module on the device.

    """

    todo: list[int]
    items: Sequence[ImageItem]
    model: LoadedModel
    settings: Settings
    key: str
    stats: list[dict[str, int] | None]
    summary: RunSummary
    reporter: Reporter
    index: IndexWriter
    fail: Callable[[ImageItem, str], None]
    write_files: WriteFiles
    index_entry: Callable[[ImageItem, dict[str, Any]], dict[str, Any]]
    start_work: Callable[[torch.nn.Module], BatchWork]


@contextlib.contextmanager
def backend_settings(settings: Settings) -> Iterator[None]:
    """TF32, cuDNN autotuning and a short GIL switch interval for the run, restored afterwards.

    The writer threads encode and write three pictures per image. Each of them lets go of the
    GIL several times per file (NumPy, deflate, each system call) and must then wait for the
    main thread, which holds it while it launches the model's work, to hand it back: by
    default up to 5 ms each time. On a 16-core GPU host ten writer threads managed about
    200 images/s that way, a tenth of what they do alone; a 0.2 ms interval shortens each wait.
    """
    cuda = settings.device.type == "cuda"
    saved_interval = sys.getswitchinterval()
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    try:
        tf32 = settings.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = cuda  # fixed input size: autotuned kernels pay off
        sys.setswitchinterval(min(saved_interval, SWITCH_INTERVAL_S))
        yield
    finally:
        sys.setswitchinterval(saved_interval)
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = saved


def module_on_device(model: LoadedModel, settings: Settings) -> torch.nn.Module:
    """The model's module moved to the run's device (and layout)."""
    module = model.module.to(settings.device)
    if settings.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def normalisation(prep: Preprocessing, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mean and std as ``(1, C, 1, 1)`` tensors on ``device``."""
    mean = torch.tensor(prep.mean, device=device).view(1, -1, 1, 1)
    return mean, torch.tensor(prep.std, device=device).view(1, -1, 1, 1)


def device_inputs(
    part: Batch,
    model: LoadedModel,
    settings: Settings,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A decoded batch on the device: the original photos and the normalised model inputs.

    Args:
        part: the decoded batch.
        model: the loaded model (its preprocessing).
        settings: the run's settings (device, resizing, layout).
        mean: from :func:`normalisation`.
        std: from :func:`normalisation`.

    Returns:
        ``(pixels, inputs)``: ``(H, W, 3)`` uint8 photos and ``(N, C, S, S)`` float inputs.

    """
    device = settings.device
    pixels = unpack_pixels(part.pixel_data.to(device, non_blocking=True), part.shapes)
    if settings.resize_on_device:
        inputs = model_inputs_on_device(pixels, model.preprocessing, settings.crop)
        inputs = inputs.div_(255.0)
    else:
        inputs = part.inputs.to(device, non_blocking=True).float().div_(255.0)
    inputs = (inputs - mean) / std
    if settings.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return pixels, inputs


def complete_record(
    record: dict[str, Any], key: str, stat: dict[str, int] | None, sha256: str
) -> None:
    """Add what resuming checks to an image's record: the settings key and the input's identity."""
    record["settings_key"] = key
    record["input"] = {**(stat or {}), "sha256": sha256}
