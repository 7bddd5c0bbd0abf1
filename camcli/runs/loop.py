"""The batch loop every batch command shares: reuse, decode, device work, bounded writes.

A command supplies its device work as a :class:`BatchWork`: ``launch`` queues a batch's
computations (and their copies back to the host), ``finish`` turns a launched batch into
per-image records and file jobs. The loop does the rest, the same way for every command:
images whose outputs are up to date are reused, failures are reported and indexed, decoding
runs in loader workers ahead of the device, on a GPU each batch is launched before the
previous one is finished (the host prepares one batch while the device computes the next; on
the CPU a launch computes the batch, which is then finished at once), a batch that runs out
of device memory is retried in halves, a batch whose work raises is retried image by image
(the image that fails alone gets its error record), and encoding/writing runs in a thread
pool behind with a bounded number of images (and bytes) in flight.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from camcli.io.decode import Batch, make_loader
from camcli.io.discover import ImageItem
from camcli.io.resume import input_stat, up_to_date
from camcli.io.storage import Source
from camcli.io.write import IndexWriter, atomic_write_bytes, record_path
from camcli.methods.stopping import Stopped, stop_between_chunks
from camcli.models.loaded import LoadedModel
from camcli.runs.failures import failure_reason, is_run_error
from camcli.runs.settings import Settings
from camcli.runs.work import (
    MAX_PENDING_BYTES,
    BatchWork,
    EngineRun,
    ImageOutput,
    Reporter,
    RunSummary,
    WriteFailed,
    WriteFiles,
    backend_settings,
    complete_record,
    device_inputs,
    module_on_device,
    normalisation,
    report_passes,
    write_image_files,
)

__all__ = ["reusable_records", "run_batches"]


@dataclass
class _Pending:
    item: ImageItem
    record: dict[str, Any]
    future: Future[None]
    size: int  # bytes of pictures the write holds


@dataclass
class _Launched:
    part: Batch
    positions: list[int]
    work: Any


def run_batches(
    items: Sequence[ImageItem],
    model: LoadedModel,
    settings: Settings,
    reporter: Reporter,
    key: str,
    start_work: Callable[[torch.nn.Module], BatchWork],
    index_entry: Callable[[ImageItem, dict[str, Any]], dict[str, Any]],
    stop: threading.Event | None = None,
    write_files: WriteFiles = write_image_files,
    max_pending_bytes: int = MAX_PENDING_BYTES,
    still_valid: Callable[[ImageItem, dict[str, Any]], bool] | None = None,
) -> RunSummary:
    """Run a command's batch work over every image; write files, the index and records.

    Images whose outputs are up to date (same input content, same ``key``, every file
    present) are reused unless ``settings.force``. When ``stop`` is set, no new batch is
    started; what is in flight is finished and written.

    Args:
        items: the images, in output order.
        model: the loaded model (moved to ``settings.device``).
        settings: run settings (device, batching, precision, output directory, force).
        reporter: receives records and progress.
        key: the settings key that decides what a re-run reuses.
        start_work: given the model's module on the device, the command's batch work.
        index_entry: the index line of an image from its record.
        stop: set it (from a signal handler) to end the run early and cleanly.
        write_files: writes one image's files and record (in a writer thread).
        max_pending_bytes: bytes of pictures that may wait to be written.
        still_valid: a command's own check of an up-to-date record (``evaluate``: the
            image's annotation has not changed); a record it rejects is redone.

    Returns:
        Counts and failures; ``status`` is ``complete`` or ``interrupted``.

    Raises:
        WriteFailed: when an output cannot be written; files already written stay valid and
            are indexed, and the exception's ``summary`` counts them (status ``failed``).

    """
    start = time.perf_counter()
    device = settings.device
    summary = RunSummary(total=len(items))
    index = IndexWriter(settings.output_dir, settings.index_name)
    stats = _input_stats(items)

    def fail(item: ImageItem, message: str) -> None:
        summary.failed += 1
        summary.failures.append((str(item.relative), message))
        entry = {
            "image": str(item.relative),
            "source": str(item.path),
            "status": "error",
            "error": message,
        }
        reporter.record(entry)
        index.add(entry)
        reporter.advance(1)

    completed = False
    pool = ThreadPoolExecutor(
        max_workers=max(1, settings.write_threads), thread_name_prefix="camcli-write"
    )
    try:
        todo = []
        reusable = reusable_records(items, settings, key)
        claimed: dict[str, Source] = {}  # output path -> the input that writes it
        for position, item in enumerate(items):
            first = claimed.setdefault(str(item.relative), item.path)
            if ".." in item.relative.parts or item.relative.is_absolute():
                fail(
                    item,
                    "a relative path that climbs out of the input root with '..' (its outputs "
                    "would leave the output directory): pass --root DIR with a folder that "
                    "holds it, or list absolute paths",
                )
            elif first != item.path:
                # A mirrored absolute path can spell a root-relative one: never overwrite.
                fail(
                    item,
                    f"its outputs would overwrite those of {first}, listed earlier under the "
                    "same output path: pass --root DIR so the two differ",
                )
            elif (record := reusable[position]) is not None and (
                still_valid is None or still_valid(item, record)
            ):
                summary.skipped += 1
                reporter.record({**record, "reused": True})
                index.add({**index_entry(item, record), "reused": True})
                reporter.advance(1)
            else:
                todo.append(position)
        if todo:
            on_device = (
                torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
            )
            if settings.engine == "ray":
                from camcli.runs.on_ray import run_on_ray

                run_on_ray(
                    EngineRun(todo, items, model, settings, key, stats, summary, reporter, index,
                           fail, write_files, index_entry, start_work),
                    stop,
                )  # fmt: skip
            else:
                module = module_on_device(model, settings)
                with backend_settings(settings), on_device:
                    loop = _Loop(
                    todo, items, model, settings, key, stats, summary, reporter, index, pool,
                        fail, write_files, max_pending_bytes, index_entry,
                    )  # fmt: skip
                    loop.run(start_work(module), stop)
        completed = True
    except WriteFailed as exc:
        # The files written so far are complete and indexed; run.json says why it stopped.
        summary.status, summary.error = "failed", str(exc)
        summary.seconds = time.perf_counter() - start
        exc.summary = summary
        completed = True
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        index.close(complete=completed)
    if stop is not None and stop.is_set():
        summary.status = "interrupted"
    summary.seconds = time.perf_counter() - start
    return summary


def _input_stats(items: Sequence[ImageItem]) -> list[dict[str, int] | None]:
    # Taken before decoding: a file changed afterwards is found changed by the next run.
    with ThreadPoolExecutor(max_workers=8) as threads:
        return list(threads.map(lambda item: input_stat(item.path), items))


def reusable_records(
    items: Sequence[ImageItem], settings: Settings, key: str
) -> list[dict[str, Any] | None]:
    """Per image, its stored record when its outputs are up to date under ``key``, else None."""
    if settings.force:
        return [None] * len(items)

    def check(item: ImageItem) -> dict[str, Any] | None:
        if ".." in item.relative.parts:
            return None
        return up_to_date(
            record_path(settings.output_dir, item.relative, settings.kind), item.path, key
        )

    with ThreadPoolExecutor(max_workers=8) as threads:
        return list(threads.map(check, items))


class _BatchPasses:
    """A batch's passes (planned and done, by the methods' chunked loops) to the reporter."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.planned = 0
        self.finished = 0
        self.method = ""

    def plan(self, passes: int, method: str) -> None:
        self.planned += passes
        self.method = method
        self.tell()

    def done(self, passes: int) -> None:
        self.finished += passes
        self.tell()

    def tell(self, over: bool = False) -> None:
        if over:
            report_passes(self.reporter, 0, 0, "")
        else:
            report_passes(self.reporter, self.finished, self.planned, self.method)


@dataclass
class _Loop:
    """Decode, launch, finish and write the images at ``todo`` positions of ``items``."""

    todo: list[int]
    items: Sequence[ImageItem]
    model: LoadedModel
    settings: Settings
    key: str
    stats: list[dict[str, int] | None]
    summary: RunSummary
    reporter: Reporter
    index: IndexWriter
    pool: ThreadPoolExecutor
    fail: Callable[[ImageItem, str], None]
    write_files: WriteFiles
    max_pending_bytes: int
    index_entry: Callable[[ImageItem, dict[str, Any]], dict[str, Any]]
    pending: deque[_Pending] = field(default_factory=deque)
    pending_bytes: int = 0
    in_flight: _Launched | None = None

    def run(self, work: BatchWork, stop: threading.Event | None) -> None:
        """Run the loop; after a write failure, index what the writers still completed."""
        try:
            self._run(work, stop)
        except WriteFailed:
            self._keep_written()
            raise

    def _keep_written(self) -> None:
        """Count and index the images whose writes completed after another's failed.

        Writes not started yet are cancelled; those already under way end, and each one
        whose record was written is counted and indexed, so that what the index and
        ``run.json`` say was written is what a rerun finds up to date.
        """
        while self.pending:
            entry = self.pending.popleft()
            if entry.future.cancel():
                continue
            try:
                entry.future.result()
            except Exception:  # this one failed too: not written, not indexed
                continue
            self._written(entry)

    def _run(self, work: BatchWork, stop: threading.Event | None) -> None:
        settings = self.settings
        device = settings.device
        prep = self.model.preprocessing
        self.work = work
        self.mean, self.std = normalisation(prep, device)
        self.largest_ok = settings.batch_size
        loader = make_loader(
            [self.items[p].path for p in self.todo],
            prep,
            settings.crop,
            settings.batch_size,
            settings.workers,
            pin_memory=device.type == "cuda",
            max_pixels=settings.max_pixels,
            resize=not settings.resize_on_device,
        )
        max_pending = max(2 * settings.batch_size, 8)
        pending = self.pending
        for batch in loader:
            if stop is not None and stop.is_set():
                break  # a signal came while this batch was decoded: do not start it
            for failure in batch.failures:
                self.fail(self.items[self.todo[failure.index]], failure.message)
            try:
                # The methods' chunked passes check the stop request between chunks: a
                # stop abandons this batch (a re-run does it) and keeps the finished ones.
                passes = _BatchPasses(self.reporter)
                with stop_between_chunks(stop, passes):
                    for part in batch.split(self.largest_ok) if len(batch) else []:
                        self._with_fallback(part)
            except Stopped:
                break
            finally:
                passes.tell(over=True)
            while pending and (
                pending[0].future.done()
                or len(pending) > max_pending
                or self.pending_bytes > self.max_pending_bytes
            ):
                self._finish_write(pending.popleft())
            if stop is not None and stop.is_set():
                break
        if self.in_flight is not None:
            self._finish_part(self.in_flight)
        while pending:
            self._finish_write(pending.popleft())

    def _finish_write(self, entry: _Pending) -> None:
        self.pending_bytes -= entry.size
        try:
            entry.future.result()
        except OSError as exc:
            raise WriteFailed(f"cannot write outputs for {entry.item.relative}: {exc}") from exc
        except Exception as exc:  # a picture that cannot be made: this image's
            # record is not written (it is written last), so nothing of it counts as done
            _pass_on(exc)
            self._image_failed(entry.item, exc)
            return
        self._written(entry)

    def _written(self, entry: _Pending) -> None:
        """An image's files and record are written: count, report and index it."""
        self.summary.explained += 1
        self.reporter.record({**entry.record, "reused": False})
        self.index.add({**self.index_entry(entry.item, entry.record), "reused": False})
        self.reporter.advance(1)

    def _launch(self, part: Batch) -> _Launched:
        positions = [self.todo[i] for i in part.indices]
        pixels, inputs = device_inputs(part, self.model, self.settings, self.mean, self.std)
        return _Launched(part, positions, self.work.launch(part, positions, pixels, inputs))

    def _finish_part(self, done: _Launched) -> None:
        """Records and file jobs of a launched batch, once its copies have landed.

        When the batch's work fails as a whole, its images are done again one by one: the
        one that fails alone gets its error record, the others their outputs.
        """
        try:
            outputs = self.work.finish(done.work)
        except Exception as exc:  # one image's failure is that image's record
            _pass_on(exc)
            self._one_by_one(done.part, exc)
            return
        self._submit(done, outputs)

    def _submit(self, done: _Launched, outputs: list[ImageOutput]) -> None:
        """Queue the writes of a finished batch's outputs (error records are reported)."""
        for j, (position, output) in enumerate(zip(done.positions, outputs, strict=True)):
            item = self.items[position]
            record = output.record
            if record.get("status") == "error":
                self.fail(item, str(record.get("error")))
                continue
            complete_record(record, self.key, self.stats[position], done.part.sha256[j])
            future = self.pool.submit(
                self._write_image,
                output,
                record_path(self.settings.output_dir, item.relative, self.settings.kind),
                record,
            )
            self.pending.append(_Pending(item, record, future, output.size))
            self.pending_bytes += output.size

    def _write_image(self, output: ImageOutput, record_file: Path, record: dict[str, Any]) -> None:
        self.write_files(output.jobs, record_file, record)
        for path, produce in output.after:
            with contextlib.suppress(OSError):
                atomic_write_bytes(path, produce())

    def _step(self, part: Batch) -> None:
        """Launch ``part``, then finish the batch launched before it while the device works.

        On the CPU a launch computes the whole batch before it returns, so nothing overlaps
        by waiting: the batch is finished at once, and its records and progress come as soon
        as it is computed instead of a batch later.
        """
        launched = self._launch(part)
        previous, self.in_flight = self.in_flight, launched
        if previous is not None:
            self._finish_part(previous)
        overlap = self.settings.overlap_batches
        if not (self.settings.device.type == "cuda" if overlap is None else overlap):
            self.in_flight = None
            self._finish_part(launched)

    def _with_fallback(self, part: Batch) -> None:
        out_of_memory = False
        failure: Exception | None = None
        try:
            self._step(part)
        except torch.OutOfMemoryError:
            out_of_memory = True
        except Exception as exc:  # the launch of ``part`` failed
            _pass_on(exc)
            failure = exc
        if failure is not None:
            self._one_by_one(part, failure)
            return
        # Retry outside the except block: its traceback would keep the failed attempt's
        # activations and graph alive while the smaller batches run.
        if out_of_memory:
            if self.settings.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(part) == 1:
                self.fail(
                    self.items[self.todo[part.indices[0]]],
                    "out of memory even as a batch of one image",
                )
                return
            self.largest_ok = max(1, len(part) // 2)
            print(
                f"camcli: out of memory with a batch of {len(part)} images; "
                f"retrying in batches of {self.largest_ok}",
                file=sys.stderr,
            )
            for half in part.split(self.largest_ok):
                self._with_fallback(half)

    def _one_by_one(self, part: Batch, exc: Exception) -> None:
        """A batch whose work raised: each image alone, so only the failing ones fail."""
        if len(part) == 1:
            self._image_failed(self.items[self.todo[part.indices[0]]], exc)
            return
        print(
            f"camcli: a batch of {len(part)} images failed ({failure_reason(exc)}); "
            "retrying its images one by one",
            file=sys.stderr,
        )
        for single in part.split(1):
            try:
                launched = self._launch(single)
                outputs = self.work.finish(launched.work)
            except Exception as alone:  # this image's failure
                _pass_on(alone)
                if self.settings.device.type == "cuda" and isinstance(
                    alone, torch.OutOfMemoryError
                ):
                    torch.cuda.empty_cache()
                self._image_failed(self.items[self.todo[single.indices[0]]], alone)
                continue
            self._submit(launched, outputs)

    def _image_failed(self, item: ImageItem, exc: Exception) -> None:
        """Report ``item`` as failed by ``exc`` (its traceback too with ``--debug``)."""
        if isinstance(exc, torch.OutOfMemoryError):
            message = "out of memory even as a batch of one image"
        else:
            message = failure_reason(exc)
        if self.settings.debug:
            print(f"camcli: traceback of {item.relative}:", file=sys.stderr)
            traceback.print_exception(exc, file=sys.stderr)
        self.fail(item, message)


def _pass_on(exc: Exception) -> None:
    """Raise ``exc`` again when it is not one image's failure.

    A stop request, a write failure (the run stops) and an error of the run's settings
    (:func:`~camcli.runs.failures.is_run_error`) end the batch as they would without the
    image-by-image retry.
    """
    if isinstance(exc, (Stopped, WriteFailed)) or is_run_error(exc):
        raise exc
