"""What every batch command shares: option groups, preparing a run, and the run's frame.

A batch command (``explain`` and the commands built like it) is::

    @main.command(context_settings=CONTEXT)
    @input_options
    @model_options
    @runtime_options
    @output_options
    ... its own options ...
    @config_option
    def command(ctx, **options):
        run = prepare_run(ctx, options)        # device, images, model: checked, loaded
        ... build the command's settings ...
        code = run_in_frame(run, body, payload)  # lock, leftovers, signals, summary, report
        ctx.exit(code)

so the options, their checks and messages, the resume/lock/summary rules and the exit codes
are the same for every command. No tensor maths here.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch
from tqdm import tqdm

from camcli.config import Settings, host_parallelism, resolve_device
from camcli.decode import DEFAULT_MAX_PIXELS
from camcli.discover import (
    ImageItem,
    NoImagesFound,
    discover_images,
    images_from_list,
    in_shard,
    read_path_list,
)
from camcli.hooks import UnknownLayer, resolve_layer
from camcli.lock import LockHeld, run_lock
from camcli.models import (
    EMBEDDED_MODEL,
    LoadedModel,
    ModelUnavailable,
    available_models,
    load_model,
)
from camcli.own_models import (
    ModelSpecError,
    OptionProblem,
    OutputMismatch,
    customise_model,
    is_factory_spec,
    is_timm_spec,
)
from camcli.pipeline import RunSummary, WriteFailed
from camcli.runtime import (
    Rank,
    StopRequest,
    build_summary,
    current_rank,
    gather_summaries,
    init_group,
    merge_indexes,
    parse_shard,
    stop_on_signals,
    write_summary,
)
from camcli.write import fast_deflate_available, remove_leftovers

__all__ = [
    "CONTEXT",
    "PreparedRun",
    "Reporter",
    "alpha_option",
    "checked_layers",
    "config_option",
    "crop_option",
    "input_options",
    "model_options",
    "output_options",
    "prepare_run",
    "run_in_frame",
    "runtime_options",
    "top_k_option",
]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _group(*decorators: Decorator) -> Decorator:
    """Apply several click decorators as one (listed in the order they appear in --help)."""

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


# --- option groups ----------------------------------------------------------------------

input_options = _group(
    click.argument(
        "input_path",
        metavar="INPUT",
        type=click.Path(exists=True, allow_dash=True, path_type=Path),
    ),
    click.option(
        "--null",
        "-0",
        is_flag=True,
        help="With INPUT '-': paths on stdin are NUL-separated (find -print0), not one per line.",
    ),
    click.option(
        "--root",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="With INPUT '-': relative paths are read from here and outputs mirror the tree "
        "below it; absolute paths outside it are mirrored by their full path (leading '/' "
        "removed, as tar does) [default: the working directory].",
    ),
    click.option(
        "--shard",
        help="K/N: process only shard K (0-based) of N, a stable split by file path, for "
        "cron fan-out, SLURM arrays and indexed jobs.",
    ),
    click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help="Refuse images with more pixels (decompression bombs); such files are reported "
        "and skipped.",
    ),
)

model_options = _group(
    click.option(
        "-m",
        "--model",
        "model_name",
        default=EMBEDDED_MODEL,
        show_default=True,
        help="Model: the embedded default (works offline), a torchvision classifier "
        "(densenet201, vgg16, vit_b_16, ...; see 'camcli models'), timm/NAME (a timm model, "
        "e.g. timm/resnet50.a1_in1k), or your own architecture as FILE.py:FUNCTION or "
        "package.module:FUNCTION, a factory returning an nn.Module. A factory is Python code "
        "that camcli imports and runs: name only code you trust.",
    ),
    click.option(
        "--weights",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Local weights for the architecture: a .pt/.pth state dict (loaded with "
        "weights_only=True; a checkpoint holding it under 'state_dict' or 'model', or with "
        "DataParallel's 'module.' prefixes, is unwrapped) or a .safetensors file.",
    ),
    click.option(
        "--offline",
        is_flag=True,
        envvar="CAMCLI_OFFLINE",
        help="Never download weights (also set by CAMCLI_OFFLINE=1).",
    ),
    click.option(
        "--classes",
        "classes_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Class names: one per line, a JSON list, or a JSON object index -> name; one per "
        "model output (a single-logit model: 2 names, negative first). Used in predictions, "
        "--target and to match class folders.",
    ),
    click.option(
        "--input-size",
        type=click.IntRange(min=1),
        help="Side of the square model input [default: from the model, else 224].",
    ),
    click.option(
        "--mean",
        help="Normalisation mean on the [0, 1] scale, one value or one per channel "
        "(0.485,0.456,0.406) [default: from the model; own models: ImageNet's for RGB, 0 "
        "for one channel].",
    ),
    click.option(
        "--std",
        help="Normalisation standard deviation, like --mean [default: from the model; own "
        "models: ImageNet's for RGB, 1 for one channel].",
    ),
    click.option(
        "--interpolation",
        type=click.Choice(["bilinear", "bicubic", "nearest"]),
        help="Resampling of the model input [default: from the model, else bilinear].",
    ),
    click.option(
        "--input-channels",
        type=click.Choice(["1", "3"]),
        help="Input channels: 3 (RGB) or 1 (decoded as single-channel L; overlays are still "
        "drawn on the original photo) [default: from the model's first convolution].",
    ),
)

runtime_options = _group(
    click.option(
        "-b",
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Images per forward pass [default: 64 on CUDA, 8 on CPU].",
    ),
    click.option(
        "-j",
        "--workers",
        type=click.IntRange(min=0),
        default=None,
        help="Decoding processes; 0 decodes in the main process "
        "[default: CPU: up to 4, one per spare core; CUDA: a third of the cores, up to 8].",
    ),
    click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto (CUDA when available), cpu, cuda or cuda:N.",
    ),
    click.option(
        "--precision",
        type=click.Choice(["fp32", "tf32", "bf16"]),
        default="fp32",
        show_default=True,
        help="fp32; tf32 (TF32 matmuls and convolutions on CUDA); bf16 (autocast forward "
        "passes; maps are still computed in float32).",
    ),
    click.option(
        "--channels-last/--no-channels-last",
        default=None,
        help="Run the model in channels-last memory format [default: on the CPU, where it "
        "made ResNet-18 about 20 % faster here; off on CUDA].",
    ),
    click.option(
        "--resize-on",
        type=click.Choice(["auto", "loader", "device"]),
        default="auto",
        show_default=True,
        help="Where model inputs are resized: 'loader' (Pillow, in the decoding processes) "
        "or 'device' (PyTorch's antialiased resampling, within 1/255 of Pillow's almost "
        "everywhere; halves the decoding CPU per image). 'auto': device on CUDA, loader "
        "elsewhere.",
    ),
)

output_options = _group(
    click.option(
        "-o",
        "--output-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("camcli-out"),
        show_default=True,
        help="Where outputs go; the input tree is mirrored under it.",
    ),
    click.option(
        "--jsonl", is_flag=True, help="Print each image's record as one JSON line on stdout."
    ),
    click.option(
        "--force", is_flag=True, help="Redo every image, even those whose outputs are up to date."
    ),
    click.option(
        "--png-level",
        type=click.Choice(["fast", *map(str, range(10))]),
        default="fast",
        show_default=True,
        help="PNG encoding: 'fast' (Sub filter + ISA-L deflate, lossless) or an OpenCV zlib "
        "level 0-9 (higher: smaller, slower).",
    ),
)

# Options several commands take with the same meaning.
top_k_option = click.option(
    "-k",
    "--top-k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Number of predictions recorded per image.",
)
crop_option = click.option(
    "--crop/--resize",
    default=False,
    show_default=True,
    help="Centre-crop as in the weights' evaluation, or resize the whole image "
    "(default: the model sees the whole image).",
)
alpha_option = click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Heatmap weight in the overlays.",
)

# Config-file keys that differ from the parameter names.
_CONFIG_ALIASES = {
    "model": "model_name",
    "layer": "layers",
    "method": "methods",
    "classes": "classes_file",
}


def _load_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Read a TOML config file into the command's defaults (options on the line still win).

    The file may hold the options at the top level or in a table named after the command
    (``[explain]``, ``[features]``); keys are option names (``batch-size`` or ``batch_size``).
    The files that define the model (``weights``, ``classes``, a ``model = "FILE.py:FUNC"``
    factory file) are found relative to the config file, so a model's config, factory and
    class file can live together and work from any directory.
    """
    if value is None:
        return None
    try:
        data = tomllib.loads(value.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {value}: {exc}", ctx=ctx) from None
    command = ctx.command.name or ""
    data = data.get(command, data)
    params = {p.name: p for p in ctx.command.params if p.name}
    defaults = {}
    for key, setting in data.items():
        if isinstance(setting, dict):
            continue  # a table for another command
        name = key.replace("-", "_")
        name = _CONFIG_ALIASES.get(name, name)
        if name not in params or name == "input_path":
            raise click.BadParameter(f"{value} sets unknown option {key!r}", ctx=ctx)
        if getattr(params[name], "multiple", False) and not isinstance(setting, list):
            setting = [setting]
        elif isinstance(setting, list) and not getattr(params[name], "multiple", False):
            setting = ",".join(str(item) for item in setting)  # mean = [0.5, 0.5, 0.5]
        defaults[name] = _beside_config(name, setting, value.parent)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _beside_config(name: str, setting: Any, folder: Path) -> Any:
    """A model-defining relative path in a config file, read from the config's folder."""
    if not isinstance(setting, str):
        return setting
    if name in ("weights", "classes_file") and not Path(setting).expanduser().is_absolute():
        return str(folder / setting)
    if name == "model_name" and ".py:" in setting:
        file, _, function = setting.rpartition(":")
        if not Path(file).expanduser().is_absolute():
            return f"{folder / file}:{function}"
    return setting


config_option = click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="TOML file of option defaults (see configs/).",
)


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

    def settings(self, **fields: Any) -> Settings:
        """The run's :class:`Settings`: the common options, plus the command's ``fields``."""
        return Settings(
            output_dir=self.output_dir,
            batch_size=self.batch_size,
            workers=self.workers,
            device=self.device,
            png_level=self.png_level,
            precision=self.precision,
            channels_last=self.channels_last,
            resize_on_device=self.resize_on_device,
            write_threads=self.write_threads,
            force=self.force,
            max_pixels=self.max_pixels,
            name_suffix=self.name_suffix,
            **fields,
        )

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
        raise click.BadParameter(str(exc), param_hint="'--layer'") from None
    return layers


def check_model_name(model_name: str) -> None:
    """Refuse an unknown ``--model`` with the closest names (click.BadParameter, exit 2)."""
    if is_factory_spec(model_name) or is_timm_spec(model_name):
        return  # checked when loaded
    names = available_models()
    if model_name not in names:
        close = difflib.get_close_matches(model_name, names, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see 'camcli models'"
        if model_name.endswith(".py"):
            hint = f"; name the factory function too: {model_name}:FUNCTION"
        raise click.BadParameter(f"unknown model {model_name!r}{hint}", param_hint="'--model'")


def resolve_device_option(device: str) -> torch.device:
    """``--device`` as a torch device (click.BadParameter naming the option)."""
    try:
        return resolve_device(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--device'") from None


def discover_inputs(
    input_path: Path, null: bool, root: Path | None, exclude: Path
) -> list[ImageItem]:
    """The images INPUT names: a folder, one file, or ``-`` for a path list on stdin."""
    try:
        if str(input_path) == "-":
            data = sys.stdin.buffer.read()
            items = images_from_list(read_path_list(data, null), root)
            outputs = exclude.resolve()
            kept = [i for i in items if not i.path.resolve().is_relative_to(outputs)]
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
        return discover_images(input_path, exclude=exclude)
    except NoImagesFound as exc:
        raise click.ClickException(str(exc)) from None


def prepare_run(options: dict[str, Any]) -> PreparedRun:
    """Check and resolve the common options, find the images and load the model.

    Consumes the keys of the common option groups from ``options``; what remains are the
    command's own options.

    Raises:
        click.BadParameter: a usage mistake (exit 2), naming the option.
        click.ClickException: the run cannot start (no images, weights unavailable; exit 1).

    """
    device_text: str = options.pop("device")
    torch_device = resolve_device_option(device_text)
    model_name: str = options.pop("model_name")
    check_model_name(model_name)
    output_dir: Path = options.pop("output_dir").expanduser()
    shard: str | None = options.pop("shard")
    try:
        shard_k, shard_n = parse_shard(shard) if shard else (0, 1)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--shard'") from None
    rank = current_rank()
    if rank is not None and device_text in ("auto", "cuda") and torch.cuda.is_available():
        torch_device = torch.device("cuda", rank.local_rank % torch.cuda.device_count())
    items = discover_inputs(
        options.pop("input_path"), options.pop("null"), options.pop("root"), output_dir
    )
    items = [i for i in items if in_shard(i, shard_k, shard_n)]
    if rank is not None:
        items = [i for i in items if in_shard(i, rank.rank, rank.world_size, salt="rank")]
    try:
        channels = options.get("input_channels")
        loaded = load_model(
            model_name,
            options.pop("weights"),
            options.pop("offline"),
            input_size=options.get("input_size"),
            input_channels=int(channels) if channels else None,
        )
    except ModelUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except (ModelSpecError, OutputMismatch) as exc:
        raise click.BadParameter(str(exc), param_hint="'--model'") from None
    loaded = _customise(loaded, options)

    suffix = f".shard-{shard_k}-of-{shard_n}" if shard_n > 1 else ""
    if rank is not None:
        suffix += f".rank-{rank.rank}-of-{rank.world_size}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_processes = 1
    if rank is not None and os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        local_processes = max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    default_workers, write_threads = host_parallelism(
        torch_device.type, cores or 1, local_processes
    )
    workers: int | None = options.pop("workers")
    batch_size: int | None = options.pop("batch_size")
    channels_last: bool | None = options.pop("channels_last")
    resize_on: str = options.pop("resize_on")
    png_level: str = options.pop("png_level")
    return PreparedRun(
        device=torch_device,
        items=items,
        model=loaded,
        output_dir=output_dir,
        rank=rank,
        shard=(shard_k, shard_n),
        name_suffix=suffix,
        batch_size=batch_size or (64 if torch_device.type == "cuda" else 8),
        workers=workers if workers is not None else default_workers,
        write_threads=write_threads,
        precision=options.pop("precision"),
        channels_last=torch_device.type == "cpu" if channels_last is None else channels_last,
        resize_on_device=resize_on == "device"
        or (resize_on == "auto" and torch_device.type == "cuda"),
        jsonl=options.pop("jsonl"),
        force=options.pop("force"),
        png_level=None if png_level == "fast" else int(png_level),
        max_pixels=options.pop("max_pixels"),
    )


def _customise(loaded: LoadedModel, options: dict[str, Any]) -> LoadedModel:
    """Apply the class and preprocessing options (checked against the model: exit 2).

    Commands without these options (``compare`` takes its own ``--model``) get the model as
    it loads.
    """
    channels: str | None = options.pop("input_channels", None)
    try:
        return customise_model(
            loaded,
            input_size=options.pop("input_size", None),
            mean=options.pop("mean", None),
            std=options.pop("std", None),
            interpolation=options.pop("interpolation", None),
            channels=int(channels) if channels else None,
            classes_file=options.pop("classes_file", None),
        )
    except OptionProblem as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None


# --- the frame of a run -----------------------------------------------------------------


class Reporter:
    """Prints records (``--jsonl``) to stdout, failures to stderr, progress bar on stderr."""

    def __init__(self, jsonl: bool, total: int) -> None:
        self.jsonl = jsonl
        # disable=None: no bar when stderr is not a terminal (cron, CI, pipes).
        self.bar = tqdm(total=total, unit="img", file=sys.stderr, disable=None, dynamic_ncols=True)

    def record(self, record: dict[str, Any]) -> None:
        """Report one image's record (failures also on stderr)."""
        if record.get("status") == "error":
            self.bar.write(f"camcli: skipped {record['image']}: {record['error']}", file=sys.stderr)
        if self.jsonl:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()

    def advance(self, count: int) -> None:
        """Move the progress bar."""
        self.bar.update(count)

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()


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

    Raises:
        click.BadParameter: for the usage errors.
        click.ClickException: the output directory is locked or cannot be written.

    """
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    output_dir = run.output_dir
    if run.rank is not None:
        init_group(run.rank)
    try:
        with run_lock(output_dir / f".camcli{run.name_suffix}.lock"), stop_on_signals() as stop:
            sweep = not run.name_suffix  # not sharded: no other run writes here
            if removed := remove_leftovers(output_dir, f"index{run.name_suffix}.jsonl", sweep):
                click.echo(
                    f"camcli: removed {removed} leftover file(s) of an interrupted run", err=True
                )
            if run.png_level is None and not fast_deflate_available():
                click.echo(
                    "camcli: the isal package is missing, so PNGs are compressed with zlib "
                    "(about 5 x slower); pip install isal",
                    err=True,
                )
            summary, code = _run_body(run, body, stop, usage_errors or {})
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
    _write_summaries(record, run)
    if summary.status != "broken-pipe":
        _report(summary, output_dir, described, verb)
    return code


def _run_body(
    run: PreparedRun, body: RunBody, stop: StopRequest, usage_errors: UsageErrors
) -> tuple[RunSummary, int]:
    """Run the body; map its outcome to the summary status and the exit code."""
    reporter = Reporter(run.jsonl, len(run.items))
    try:
        summary = body(reporter, stop)
    except WriteFailed as exc:
        raise click.ClickException(str(exc)) from None
    except BrokenPipeError:
        # stdout closed by the reader (| head): stop quietly; the files written are valid.
        _silence_stdout()
        return RunSummary(total=len(run.items), status="broken-pipe"), 141
    except KeyboardInterrupt:
        # A second Ctrl-C: stop now. Files already renamed into place are complete.
        return RunSummary(total=len(run.items), status="interrupted"), 130
    except Exception as exc:
        for kind, option in usage_errors.items():
            if isinstance(exc, kind):
                raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None
        raise
    finally:
        reporter.close()
    if stop.exit_code is not None:
        return summary, stop.exit_code
    return summary, 1 if summary.failed else 0


def _write_summaries(record: dict[str, Any], run: PreparedRun) -> None:
    """Write run.json (per shard); under torchrun, rank 0 merges every rank's summary."""
    rank, output_dir = run.rank, run.output_dir
    try:
        if rank is None:
            write_summary(output_dir / f"run{run.name_suffix}.json", record)
            return
        summaries = gather_summaries(record, rank)
        if rank.rank != 0:
            return
        base = run.name_suffix.split(".rank-")[0]
        parts = [f"index{base}.rank-{r}-of-{rank.world_size}.jsonl" for r in range(rank.world_size)]
        merge_indexes(output_dir, parts, f"index{base}.jsonl")
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
        write_summary(output_dir / f"run{base}.json", merged)
    except OSError as exc:
        click.echo(f"camcli: cannot write the run summary: {exc}", err=True)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _report(summary: RunSummary, output_dir: Path, described: str, verb: str) -> None:
    rate = summary.explained / summary.seconds if summary.seconds > 0 else 0.0
    failed = f", {summary.failed} failed" if summary.failed else ""
    if summary.skipped:
        failed += f", {summary.skipped} up to date (reused)"
    if summary.status == "interrupted":
        failed += ", interrupted"
    click.echo(
        f"camcli: {verb} {summary.explained} of {summary.total} images{failed} with "
        f"{described} in {summary.seconds:.1f} s ({rate:.1f} images/s); "
        f"outputs in {output_dir}",
        err=True,
    )
