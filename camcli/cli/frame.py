"""The frame every batch command runs in: preparing a run, the lock, signals, the summary.

A batch command (``explain`` and the commands built like it) is::

    @click.command(context_settings=CONTEXT)
    @input_options
    @model_options
    @runtime_options
    @output_options
    ... its own options ...
    @config_option
    def command(ctx, **options):
        from camcli.cli.frame import prepare_run, run_in_frame   # torch loads here
        run = prepare_run(CommonOptions.take(options))      # device, images, model
        ... build the command's settings ...
        code = run_in_frame(run, body, payload)  # lock, leftovers, signals, summary, report
        ctx.exit(code)

so the options, their checks and messages, the resume/lock/summary rules and the exit codes
are the same for every command. No tensor maths here.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import torch
from tqdm import tqdm

from camcli.cli import STARTED
from camcli.cli.options import PROGRESS_INTERVAL, CommonOptions, ModelOptions, RuntimeOptions
from camcli.io.discover import (
    ImageItem,
    NoImagesFound,
    discover_images,
    discover_remote_images,
    images_from_list,
    in_shard,
    read_path_list,
)
from camcli.io.lock import LockHeld, run_lock
from camcli.io.storage import StorageError, local_lock_path, output_location
from camcli.io.write import fast_deflate_available, index_name, remove_leftovers, summary_name
from camcli.models.hooks import UnknownLayer, resolve_layer
from camcli.models.loaded import LoadedModel, ModelUnavailable
from camcli.models.names import unknown_model
from camcli.models.own import (
    ModelSpecError,
    OptionProblem,
    OutputMismatch,
    customise_model,
    is_factory_spec,
)
from camcli.models.registry import load_model
from camcli.runs.explain import RunSummary, WriteFailed
from camcli.runs.failures import failure_reason
from camcli.runs.on_ray import RayUnavailable
from camcli.runs.runtime import (
    Rank,
    StopRequest,
    build_summary,
    current_rank,
    gather_summaries,
    init_group,
    merge_indexes,
    parse_shard,
    run_name_suffix,
    stop_on_signals,
    write_summary,
)
from camcli.runs.settings import Settings, host_parallelism, resolve_device

__all__ = [
    "PreparedRun",
    "Reporter",
    "RunBody",
    "UsageErrors",
    "check_model_name",
    "checked_layers",
    "discover_inputs",
    "load_checked_model",
    "prepare_run",
    "resolve_device_option",
    "run_in_frame",
    "unknown_layer",
]

# --- preparing a run --------------------------------------------------------------------


@dataclass
class PreparedRun:
    """The checked common options of a batch command, with its images and model loaded.

    Attributes:
        device: where the model runs.
        items: the images this process handles (after --shard and torchrun's split).
        model: the loaded model.
        output_dir: where outputs go.
        rank: the torchrun rank, or ``None`` outside torchrun.
        shard: ``(K, N)`` of ``--shard`` (``(0, 1)`` when not sharded).
        name_suffix: added to index, summary and lock names (per shard and rank).
        batch_size: images per forward pass.
        workers: decoding processes.
        write_threads: threads that encode and write files.
        precision: ``fp32``, ``tf32`` or ``bf16``.
        channels_last: run the model in channels-last memory format.
        resize_on_device: make model inputs from the photos on the device.
        jsonl: print records on stdout.
        force: redo up-to-date images.
        png_level: zlib level, or ``None`` for the fast encoder.
        max_pixels: refuse larger images.
        engine: ``local`` or ``ray``.
        ray_address: the Ray cluster of ``--engine ray`` (``None``: RAY_ADDRESS or local).

    """

    device: torch.device
    items: list[ImageItem]
    model: LoadedModel
    output_dir: Path
    rank: Rank | None
    shard: tuple[int, int]
    name_suffix: str
    batch_size: int
    workers: int
    write_threads: int
    precision: str
    channels_last: bool
    resize_on_device: bool
    jsonl: bool
    force: bool
    png_level: int | None
    max_pixels: int
    engine: str = "local"
    ray_address: str | None = None
    verbose: bool = False
    progress_interval: float = PROGRESS_INTERVAL
    debug: bool = False

    def common_fields(self) -> dict[str, Any]:
        """The :class:`Settings` fields the common options decide (all but the output's)."""
        return {
            "batch_size": self.batch_size,
            "workers": self.workers,
            "device": self.device,
            "png_level": self.png_level,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "resize_on_device": self.resize_on_device,
            "write_threads": self.write_threads,
            "force": self.force,
            "max_pixels": self.max_pixels,
            "name_suffix": self.name_suffix,
            "engine": self.engine,
            "ray_address": self.ray_address,
            "verbose": self.verbose,
            "debug": self.debug,
        }

    def settings(self, **fields: Any) -> Settings:
        """The run's :class:`Settings`: the common options, plus the command's ``fields``."""
        return Settings(output_dir=self.output_dir, **self.common_fields(), **fields)

    @property
    def chunk_size(self) -> int:
        """Default modified images per forward pass (Score-CAM, RISE, SmoothGrad...)."""
        return 256 if self.device.type == "cuda" else 32


def checked_layers(model: LoadedModel, names: Sequence[str]) -> tuple[str, ...]:
    """``--layer`` values without repeats (default: the model's layer), each checked to exist.

    Raises:
        click.BadParameter: naming ``--layer`` and the closest layer names (exit 2).

    """
    layers = tuple(dict.fromkeys(names)) or (model.default_layer,)
    try:
        for name in layers:
            resolve_layer(model.module, name)
    except UnknownLayer as exc:
        raise unknown_layer(exc, model.name) from None
    return layers


def unknown_layer(exc: UnknownLayer, model_name: str) -> click.BadParameter:
    """The usage error for a ``--layer`` the model lacks: close names, and where to look."""
    from camcli.cli.early import unknown_layer_error

    return unknown_layer_error(str(exc), model_name)


def check_model_name(model_name: str) -> None:
    """Refuse an unknown ``--model`` with the closest names (click.BadParameter, exit 2)."""
    message = unknown_model(model_name)
    if message is not None:
        raise click.BadParameter(message, param_hint="'--model'")


def resolve_device_option(device: str, check_here: bool = True) -> torch.device:
    """``--device`` as a torch device (click.BadParameter naming the option).

    Args:
        device: the option's text.
        check_here: check that a CUDA device exists on this machine (``False`` for the Ray
            engine, whose actors run elsewhere: ``auto`` is then CUDA when this machine has
            it, and ``cuda`` is taken as asked).

    """
    try:
        if not check_here and device.strip().lower().startswith("cuda"):
            return torch.device(device.strip().lower())
        return resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise click.BadParameter(str(exc), param_hint="'--device'") from None


def discover_inputs(
    input_path: Path | str, null: bool, root: Path | None, exclude: Path
) -> list[ImageItem]:
    """The images INPUT names: a folder, one file, ``-`` for a path list on stdin, or a URI.

    Raises:
        click.BadParameter: a URI whose bucket is missing or cannot be read (exit 2).
        click.ClickException: no images (exit 1).

    """
    try:
        if isinstance(input_path, str):
            try:
                return discover_remote_images(input_path)
            except StorageError as exc:
                raise click.BadParameter(str(exc), param_hint="'INPUT'") from None
        if str(input_path) == "-":
            data = sys.stdin.buffer.read()
            items = images_from_list(read_path_list(data, null), root)
            outputs = exclude.resolve() if isinstance(exclude, Path) else None
            kept = [
                i
                for i in items
                if outputs is None or not Path(i.path).resolve().is_relative_to(outputs)
            ]
            if len(kept) < len(items):
                click.echo(
                    f"camcli: ignored {len(items) - len(kept)} listed path(s) inside the "
                    f"output directory {exclude} (outputs of camcli, not inputs)",
                    err=True,
                )
                items = kept
            if not items:
                raise NoImagesFound("no paths left to explain on standard input")
            if any(item.mirrored for item in items):
                click.echo(
                    "camcli: absolute paths outside the input root are mirrored below the "
                    "output directory by their full path (leading '/' removed)",
                    err=True,
                )
            return items
        return discover_images(input_path, exclude=exclude if isinstance(exclude, Path) else None)
    except NoImagesFound as exc:
        raise click.ClickException(str(exc)) from None


def prepare_run(common: CommonOptions) -> PreparedRun:
    """Check and resolve the common options, find the images and load the model.

    Raises:
        click.BadParameter: a usage mistake (exit 2), naming the option.
        click.ClickException: the run cannot start (no images, weights unavailable; exit 1).

    """
    inputs, wanted, runtime, output = common.inputs, common.model, common.runtime, common.output
    if runtime.engine == "ray":
        check_ray_option(runtime)
        # The actors hold the model: on a GPU cluster the driver itself may have no GPU.
        torch_device = resolve_device_option(runtime.device, check_here=False)
    else:
        if runtime.ray_address is not None:
            raise click.BadParameter(
                "--ray-address needs --engine ray", param_hint="'--ray-address'"
            )
        torch_device = resolve_device_option(runtime.device)
    check_model_name(wanted.model_name)
    if isinstance(output.output_dir, str):
        try:
            output_dir = output_location(output.output_dir)
        except StorageError as exc:
            raise click.BadParameter(str(exc), param_hint="'--output-dir'") from None
    else:
        output_dir = output.output_dir.expanduser()
        if runtime.engine == "ray":
            # Ray's workers do not run in this directory: they get absolute paths.
            output_dir = output_dir.absolute()
    try:
        shard_k, shard_n = parse_shard(inputs.shard) if inputs.shard else (0, 1)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--shard'") from None
    rank = current_rank()
    if rank is not None and runtime.device in ("auto", "cuda") and torch.cuda.is_available():
        torch_device = torch.device("cuda", rank.local_rank % torch.cuda.device_count())
    items = discover_inputs(inputs.input_path, inputs.null, inputs.root, output_dir)
    items = [i for i in items if in_shard(i, shard_k, shard_n)]
    if rank is not None:
        items = [i for i in items if in_shard(i, rank.rank, rank.world_size, salt="rank")]
    if runtime.engine == "ray":
        items = [
            replace(i, path=i.path.absolute()) if isinstance(i.path, Path) else i for i in items
        ]
    loaded = load_checked_model(wanted)

    suffix = run_name_suffix(shard_k, shard_n, rank)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_processes = 1
    if rank is not None and os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        local_processes = max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    default_workers, write_threads = host_parallelism(
        torch_device.type, cores or 1, local_processes
    )
    resize_on = runtime.resize_on
    return PreparedRun(
        device=torch_device,
        items=items,
        model=loaded,
        output_dir=output_dir,
        rank=rank,
        shard=(shard_k, shard_n),
        name_suffix=suffix,
        batch_size=runtime.batch_size or (64 if torch_device.type == "cuda" else 8),
        workers=runtime.workers if runtime.workers is not None else default_workers,
        write_threads=write_threads,
        precision=runtime.precision,
        channels_last=torch_device.type == "cpu"
        if runtime.channels_last is None
        else runtime.channels_last,
        resize_on_device=resize_on == "device"
        or (resize_on == "auto" and torch_device.type == "cuda"),
        jsonl=output.jsonl,
        force=output.force,
        png_level=None if output.png_level == "fast" else int(output.png_level),
        max_pixels=inputs.max_pixels,
        engine=runtime.engine,
        ray_address=runtime.ray_address,
        verbose=runtime.verbose,
        progress_interval=runtime.progress_interval,
        debug=runtime.debug,
    )


def check_ray_option(runtime: RuntimeOptions) -> None:
    """``--engine ray`` needs Ray installed and no option that only the local engine has.

    Raises:
        click.BadParameter: naming the option (exit 2).

    """
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise click.BadParameter(
            "the Ray engine needs Ray Data, which is not installed: pip install 'camcli[ray]'",
            param_hint="'--engine'",
        )
    if current_rank() is not None:
        raise click.BadParameter(
            "--engine ray schedules its own workers: run it once, not under torchrun",
            param_hint="'--engine'",
        )


def load_checked_model(wanted: ModelOptions) -> LoadedModel:
    """Load the model and apply the class and preprocessing options (checked: exit 2).

    Raises:
        click.ClickException: the weights cannot be had (exit 1).
        click.BadParameter: an option does not fit the model (exit 2), naming it.

    """
    try:
        loaded = load_model(
            wanted.model_name,
            wanted.weights,
            wanted.offline,
            input_size=wanted.input_size,
            input_channels=wanted.input_channels,
        )
    except ModelUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except (ModelSpecError, OutputMismatch) as exc:
        raise click.BadParameter(str(exc), param_hint="'--model'") from None
    if wanted.weights is None and is_factory_spec(wanted.model_name):
        click.echo(
            f"camcli: no --weights for {wanted.model_name}: its maps and predictions come "
            "from the weights the factory sets, random unless it loads trained ones",
            err=True,
        )
    try:
        customised = customise_model(
            loaded,
            input_size=wanted.input_size,
            mean=wanted.mean,
            std=wanted.std,
            interpolation=wanted.interpolation,
            channels=wanted.input_channels,
            classes_file=wanted.classes_file,
        )
    except OptionProblem as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    if wanted.input_size is not None and customised.task in ("classify", "segment"):
        from camcli.models.probe import input_size_problem

        if (problem := input_size_problem(customised)) is not None:
            raise click.BadParameter(problem, param_hint="'--input-size'")
    return customised


# --- the frame of a run -----------------------------------------------------------------


class Reporter:
    """Prints records (``--jsonl``) to stdout, failures and progress to stderr.

    On a terminal, a progress bar over the images to do: images reused (up to date) leave
    its total instead of counting in its rate. Without a terminal (cron, nohup, a pipe), a
    plain line every ``interval`` seconds (``--progress-interval``; 0: none): images done of
    those to do, the rate and the time left, so that a slow run can be told from a hung one.
    """

    def __init__(
        self,
        jsonl: bool,
        total: int,
        stop: threading.Event | None = None,
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.jsonl = jsonl
        self.stop = stop
        self.broken = False  # stdout was closed by its reader (| head)
        self.total = total
        self.done = 0
        self.reused = 0
        self.failed = 0  # of done: their rate is no measure of the run's
        self._reused_waiting = 0  # reused records whose advance() has not come yet
        self._failed_waiting = 0  # error records whose advance() has not come yet
        self.started = time.monotonic()
        # disable=None: no bar when stderr is not a terminal (cron, CI, pipes); smoothing=0:
        # the average rate since the start, for a steady time left.
        self.bar = tqdm(
            total=total,
            unit="img",
            file=sys.stderr,
            disable=None,
            dynamic_ncols=True,
            smoothing=0,
        )
        # Within the current batch: passes done and planned, the method now, when it began.
        self.batch: tuple[int, int, str, float] | None = None
        self._shown = 0.0
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.bar.disable and interval > 0 and total > 0:
            self._ticker = threading.Thread(
                target=self._tick, args=(interval,), name="camcli-progress", daemon=True
            )
            self._ticker.start()

    def record(self, record: dict[str, Any]) -> None:
        """Report one image's record (failures also on stderr).

        When stdout's reader has gone (``| head``), the run is asked to stop as after a
        signal: what is in flight is finished and written, the index lists it, and
        ``run.json`` counts it; the exit status is 141.
        """
        if record.get("reused"):
            self._reused_waiting += 1
        if record.get("status") == "error":
            self._failed_waiting += 1
            self.bar.write(f"camcli: failed {record['image']}: {record['error']}", file=sys.stderr)
        if self.jsonl and not self.broken:
            try:
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                self.broken = True
                _silence_stdout()
                if self.stop is None:
                    raise
                self.stop.set()

    def advance(self, count: int) -> None:
        """Move the progress: reused images leave the total, the others count as done."""
        reused = min(count, self._reused_waiting)
        self._reused_waiting -= reused
        if reused:
            self.reused += reused
            self.bar.total = max(0, (self.bar.total or 0) - reused)
            self.bar.refresh()
        if count > reused:
            failed = min(count - reused, self._failed_waiting)
            self._failed_waiting -= failed
            self.failed += failed
            self.done += count - reused
            self.bar.update(count - reused)

    def passes(self, done: int, planned: int, method: str) -> None:
        """Show progress within a batch: passes done of planned, and the batch's time left.

        A batch of RISE masks, Score-CAM channels, IG points or score steps is thousands of
        passes: the bar's images stand still meanwhile, so its postfix moves instead, with a
        time left from the rate of the passes already done.
        """
        if not planned:
            if self.batch is not None:
                self.batch = None
                self.bar.set_postfix_str("", refresh=False)
            return
        began = self.batch[3] if self.batch is not None else time.monotonic()
        self.batch = (done, planned, method, began)
        now = time.monotonic()
        if now - self._shown >= 0.5 and not self.bar.disable:
            self._shown = now
            self.bar.set_postfix_str(self._batch_text())

    def _batch_text(self) -> str:
        if self.batch is None:
            return ""
        done, planned, method, began = self.batch
        text = f"batch: {done}/{planned} passes ({method})"
        elapsed = time.monotonic() - began
        if done and elapsed > 0:
            text += f", about {_duration((planned - done) * elapsed / done)} left in it"
        return text

    def line(self) -> str:
        """The plain progress line: done of to do, rate, time left."""
        todo = self.total - self.reused
        elapsed = time.monotonic() - self.started
        text = f"camcli: {self.done} of {todo} images"
        notes = [f"{self.reused} up to date"] if self.reused else []
        if self.failed:
            notes.append(f"{self.failed} failed")
        if notes:
            text += f" ({', '.join(notes)})"
        text += f" after {_duration(elapsed)}"
        # The rate and the time left come from the images explained: a file that fails to
        # decode takes no time, and would make the rest look fast.
        if explained := self.done - self.failed:
            rate = explained / elapsed
            text += f", {format_rate(rate)}, about {_duration((todo - self.done) / rate)} left"
        if self.batch is not None:
            text += f"; {self._batch_text()}"
        return text

    def _tick(self, interval: float) -> None:
        while not self._closed.wait(interval):
            print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the progress bar and stop the plain lines."""
        self._closed.set()
        self.bar.close()


def format_rate(images_per_second: float) -> str:
    """A rate in the one unit camcli prints: images per second (12, 1.3, 0.089 images/s)."""
    rate = images_per_second
    text = f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"
    return f"{text} images/s"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# The body of a run: given the reporter and the stop request, run the pipeline.
RunBody = Callable[[Reporter, StopRequest], RunSummary]
# Library errors a body may raise, mapped to the option they are about (exit 2).
UsageErrors = dict[type[Exception], str]


def run_in_frame(
    run: PreparedRun,
    body: RunBody,
    settings: dict[str, Any],
    described: str,
    usage_errors: UsageErrors | None = None,
    verb: str = "explained",
    kind: str = "explain",
) -> int:
    """Run ``body`` under the output directory's lock and signal handling; write the summary.

    Removes an interrupted run's leftovers first, writes ``run.json`` (merged over torchrun
    ranks), prints the one-line report on stderr and returns the exit code: 0 all done, 1
    some images failed, 130/143 stopped by a signal, 141 stdout closed.

    Args:
        run: the prepared run.
        body: runs the command's pipeline.
        settings: the settings written into ``run.json``.
        described: what the report says was used (``"resnet18 at layer4"``).
        usage_errors: exceptions of the body that are usage mistakes, with the option each
            is about.
        verb: what the report says was done to the images (``explained``, ``compared``).
        kind: the run kind, which names the index and the summary
            (:func:`camcli.io.write.index_name`).

    Raises:
        click.BadParameter: for the usage errors.
        click.ClickException: the output directory is locked or cannot be written.

    """
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    output_dir = run.output_dir
    if run.rank is not None:
        init_group(run.rank)
    try:
        lock = local_lock_path(output_dir, f".camcli{run.name_suffix}.lock")
        with run_lock(lock), stop_on_signals() as stop:
            sweep = not run.name_suffix  # not sharded: no other run writes here
            if removed := remove_leftovers(output_dir, index_name(kind, run.name_suffix), sweep):
                click.echo(
                    f"camcli: removed {removed} leftover file(s) of an interrupted run", err=True
                )
            if run.png_level is None and not fast_deflate_available():
                click.echo(
                    "camcli: the isal package is missing, so PNGs are compressed with zlib "
                    "(about 5 x slower); pip install isal",
                    err=True,
                )
            clock = time.perf_counter()
            summary, code = _run_body(run, body, stop, usage_errors or {})
            context = click.get_current_context(silent=True)
            since = context.meta.get(STARTED, clock) if context is not None else clock
            wall = time.perf_counter() - since
            if summary.seconds <= 0:  # stopped before the loop could time anything
                summary.seconds = wall
    except LockHeld as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # the output directory cannot be created or written
        raise click.ClickException(
            f"cannot write to the output directory {output_dir}: {exc.strerror or exc}"
        ) from None
    shard_k, shard_n = run.shard
    record = build_summary(
        status=summary.status,
        exit_code=code,
        counts={
            "total": summary.total,
            "explained": summary.explained,
            "skipped": summary.skipped,
            "failed": summary.failed,
        },
        seconds=summary.seconds,
        failures=summary.failures,
        settings=settings,
        device=run.device,
        started=started,
        shard=f"{shard_k}/{shard_n}" if shard_n > 1 else None,
    )
    record.update(summary.extra)  # a command's own fields (explain: faithfulness means)
    if summary.error is not None:
        record["error"] = summary.error
    if not summary.counted:
        record["counted"] = False  # the run failed before its loop could count its images
    _write_summaries(record, run, kind)
    if summary.status == "failed":
        raise click.ClickException(f"{summary.error or 'the run failed'}; {_counted(summary)}")
    if summary.status != "broken-pipe":
        _report(summary, output_dir, described, verb, wall, run.rank)
    return code


def _run_body(
    run: PreparedRun, body: RunBody, stop: StopRequest, usage_errors: UsageErrors
) -> tuple[RunSummary, int]:
    """Run the body; map its outcome to the summary status and the exit code."""
    reporter = Reporter(run.jsonl, len(run.items), stop.event, run.progress_interval)
    try:
        summary = body(reporter, stop)
    except RayUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except WriteFailed as exc:
        failed = exc.summary or RunSummary(total=len(run.items), counted=False)
        failed.status, failed.error = "failed", str(exc)
        return failed, 1
    except BrokenPipeError:
        # stdout closed by the reader (| head): stop quietly; the files written are valid.
        _silence_stdout()
        return RunSummary(total=len(run.items), status="broken-pipe"), 141
    except KeyboardInterrupt:
        # A second signal (or Ctrl-C without a handler): stop now. Files already renamed
        # into place are complete.
        return RunSummary(total=len(run.items), status="interrupted"), stop.exit_code or 130
    except Exception as exc:
        for kind, option in usage_errors.items():
            if isinstance(exc, kind):
                raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None
        if run.debug:
            traceback.print_exception(exc, file=sys.stderr)
        # A fault of the run, not of one image: run.json says so, with the reason.
        error = f"the run failed: {failure_reason(exc)}" + (
            "" if run.debug else " (--debug prints the traceback)"
        )
        return RunSummary(total=len(run.items), status="failed", error=error, counted=False), 1
    finally:
        reporter.close()
    if summary.status == "failed":
        return summary, 1
    if reporter.broken and stop.exit_code is None:
        summary.status = "broken-pipe"  # what was written is counted and indexed
        return summary, 141
    if stop.exit_code is not None:
        return summary, stop.exit_code
    return summary, 1 if summary.failed else 0


def _write_summaries(record: dict[str, Any], run: PreparedRun, kind: str) -> None:
    """Write run.json (per shard); under torchrun, rank 0 merges every rank's summary."""
    rank, output_dir = run.rank, run.output_dir
    try:
        if rank is None:
            write_summary(output_dir / summary_name(kind, run.name_suffix), record)
            return
        summaries = gather_summaries(record, rank)
        if rank.rank != 0:
            return
        base = run.name_suffix.split(".rank-")[0]
        parts = [
            index_name(kind, f"{base}.rank-{r}-of-{rank.world_size}")
            for r in range(rank.world_size)
        ]
        merge_indexes(output_dir, parts, index_name(kind, base))
        merged = dict(record)
        merged["counts"] = {
            key: sum(s["counts"][key] for s in summaries) for key in record["counts"]
        }
        merged["failures"] = [f for s in summaries for f in s["failures"]]
        merged["processes"] = len(summaries)
        merged["status"] = (
            "complete" if all(s["status"] == "complete" for s in summaries) else "incomplete"
        )
        merged["exit_code"] = max(s["exit_code"] for s in summaries)
        merged["wall_seconds"] = max(s["wall_seconds"] for s in summaries)
        explained = merged["counts"]["explained"]
        merged["images_per_second"] = (
            round(explained / merged["wall_seconds"], 3) if merged["wall_seconds"] else None
        )
        merged["devices"] = [s["device"] for s in summaries]
        write_summary(output_dir / summary_name(kind, base), merged)
    except OSError as exc:
        click.echo(f"camcli: cannot write the run summary: {exc}", err=True)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _report(
    summary: RunSummary,
    output_dir: Path,
    described: str,
    verb: str,
    wall: float,
    rank: Rank | None = None,
) -> None:
    """The closing line: what was done, in the run's wall time, at one rate unit."""
    if summary.total == 0 and rank is not None:
        click.echo(
            f"camcli: rank {rank.rank} of {rank.world_size} had no image to do (fewer images "
            "than ranks)",
            err=True,
        )
        return
    parts = [f"camcli: {verb} {summary.explained} of {summary.total} images with {described}"]
    if summary.failed:
        # The images failed, not the model: their reasons are in the index and run.json.
        parts.append(f"{summary.failed} failed (the reasons are in the index and run.json)")
    if summary.skipped:
        parts.append(f"{summary.skipped} up to date (reused)")
    if summary.status == "interrupted":
        parts.append("interrupted")
    # The command's whole time (start-up and model loading included) and, where images were
    # processed, the time the loop took for them and its rate: two numbers, each named.
    timing = f"{wall:.1f} s in all"
    if summary.explained and summary.seconds > 0:
        timing += (
            f", {summary.seconds:.1f} s of it on the {summary.explained} images "
            f"({format_rate(summary.explained / summary.seconds)})"
        )
    parts.append(timing)
    parts.append(f"outputs in {output_dir}")
    click.echo("; ".join(parts), err=True)


def _counted(summary: RunSummary) -> str:
    """What a failed run did before it stopped, for its closing sentence."""
    if not summary.counted:  # it failed outside the loop, which counts what it wrote
        return (
            "the files written before it stopped are complete (run.json says why; a rerun "
            "redoes the rest)"
        )
    return (
        f"{summary.explained} of {summary.total} images were written before it stopped "
        "(run.json says why; a rerun redoes the rest)"
    )
