"""The command line: parse and check options, run the pipeline, report. No tensor maths here.

stdout carries data only (``--jsonl`` records, ``models`` listing); people read stderr.
Exit status: 0 every image explained, 1 some images failed or the run could not start or
stopped, 2 usage errors, 130/143 stopped by SIGINT/SIGTERM, 141 stdout closed.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import torch
from tqdm import tqdm

from camcli import __version__
from camcli.config import Settings, host_parallelism, parse_target, resolve_device
from camcli.decode import DEFAULT_MAX_PIXELS
from camcli.discover import (
    NoImagesFound,
    discover_images,
    images_from_list,
    in_shard,
    read_path_list,
)
from camcli.hooks import LayerUnusable, UnknownLayer, resolve_layer
from camcli.lock import LockHeld, run_lock
from camcli.methods import (
    ALL_METHODS,
    DEFAULT_METHODS,
    CamNotApplicable,
    MethodOptions,
    parse_methods,
)
from camcli.models import (
    EMBEDDED_MODEL,
    ModelUnavailable,
    available_models,
    load_model,
    weights_status,
)
from camcli.pipeline import RunSummary, WriteFailed, run_explain, settings_payload
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

__all__ = ["main"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _load_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Read a TOML config file into the command's defaults (options on the line still win)."""
    if value is None:
        return None
    try:
        data = tomllib.loads(value.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {value}: {exc}", ctx=ctx) from None
    data = data.get("explain", data)
    params = {p.name: p for p in ctx.command.params if p.name}
    aliases = {"model": "model_name", "layer": "layers", "method": "methods"}
    defaults = {}
    for key, setting in data.items():
        name = key.replace("-", "_")
        name = aliases.get(name, name)
        if name not in params or name == "input_path":
            raise click.BadParameter(f"{value} sets unknown option {key!r}", ctx=ctx)
        if getattr(params[name], "multiple", False) and not isinstance(setting, list):
            setting = [setting]
        defaults[name] = setting
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


class _Reporter:
    """Prints records (``--jsonl``) to stdout, failures to stderr, progress bar on stderr."""

    def __init__(self, jsonl: bool, total: int) -> None:
        self.jsonl = jsonl
        # disable=None: no bar when stderr is not a terminal (cron, CI, pipes).
        self.bar = tqdm(total=total, unit="img", file=sys.stderr, disable=None, dynamic_ncols=True)

    def record(self, record: dict[str, Any]) -> None:
        if record.get("status") == "error":
            self.bar.write(f"camcli: skipped {record['image']}: {record['error']}", file=sys.stderr)
        if self.jsonl:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()

    def advance(self, count: int) -> None:
        self.bar.update(count)

    def close(self) -> None:
        self.bar.close()


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="camcli")
def main() -> None:
    """Explain image classifiers in batches: predictions, Grad-CAM and guided backprop."""


@main.command(context_settings=CONTEXT)
@click.argument(
    "input_path", metavar="INPUT", type=click.Path(exists=True, allow_dash=True, path_type=Path)
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("camcli-out"),
    show_default=True,
    help="Where outputs go; the input tree is mirrored under it.",
)
@click.option(
    "-m",
    "--model",
    "model_name",
    default=EMBEDDED_MODEL,
    show_default=True,
    help="Model name: the embedded default (works offline) or any torchvision "
    "classifier (densenet201, vgg16, resnet50, ...). See 'camcli models'.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Local state-dict file for the architecture (loaded with weights_only=True).",
)
@click.option(
    "--layer",
    "layers",
    multiple=True,
    help="Target layer, a dotted name from named_modules() (e.g. features.denseblock4, "
    "layer4); repeat for several layers (one map each plus a fused map). "
    "Default: chosen per model.",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    help="Explanation method(s), repeatable or comma-separated: gradcam, gradcam++, "
    "xgradcam, layercam, hirescam, cam, eigencam, scorecam, guided, guided-gradcam, "
    "smoothgrad [default: gradcam,guided].",
)
@click.option(
    "--target",
    default="pred",
    show_default=True,
    help="Class to explain: pred (top-1), label (the image's class folder), "
    "a class index or a class name.",
)
@click.option(
    "-k",
    "--top-k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Number of predictions recorded per image.",
)
@click.option(
    "--crop/--resize",
    default=False,
    show_default=True,
    help="Centre-crop as in the weights' evaluation, or resize the whole image "
    "(default: the model sees the whole image).",
)
@click.option(
    "--guided/--no-guided",
    default=None,
    help="Add or remove guided backprop from the methods (one backward pass to the input "
    "per batch).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Modified images per forward pass in scorecam and smoothgrad: their memory bound "
    "[default: 256 on CUDA, 32 on CPU].",
)
@click.option(
    "--smooth-samples",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Noisy copies per image in smoothgrad.",
)
@click.option(
    "--smooth-noise",
    type=click.FloatRange(min=0),
    default=0.15,
    show_default=True,
    help="smoothgrad noise level, relative to each image's value range.",
)
@click.option(
    "--smooth-guided",
    is_flag=True,
    help="smoothgrad averages guided-backprop gradients instead of plain ones.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Base seed of smoothgrad's noise (image i uses seed + i).",
)
@click.option(
    "--save-raw",
    is_flag=True,
    help="Also write the raw CAM (model input resolution) and guided gradient as .npy.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Heatmap weight in the overlay.",
)
@click.option("--jsonl", is_flag=True, help="Print each image's record as one JSON line on stdout.")
@click.option(
    "-b",
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per forward pass [default: 64 on CUDA, 8 on CPU].",
)
@click.option(
    "-j",
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Decoding processes; 0 decodes in the main process "
    "[default: CPU: up to 4, one per spare core; CUDA: a third of the cores, up to 8].",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (CUDA when available), cpu, cuda or cuda:N.",
)
@click.option(
    "--png-level",
    type=click.Choice(["fast", *map(str, range(10))]),
    default="fast",
    show_default=True,
    help="PNG encoding: 'fast' (Sub filter + ISA-L deflate, lossless) or an OpenCV zlib "
    "level 0-9 (higher: smaller, slower).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "tf32", "bf16"]),
    default="fp32",
    show_default=True,
    help="fp32; tf32 (TF32 matmuls and convolutions on CUDA); bf16 (autocast forward "
    "passes; maps are still computed in float32).",
)
@click.option(
    "--channels-last/--no-channels-last",
    default=None,
    help="Run the model in channels-last memory format [default: on the CPU, where it made "
    "ResNet-18 about 20 % faster here; off on CUDA].",
)
@click.option(
    "--resize-on",
    type=click.Choice(["auto", "loader", "device"]),
    default="auto",
    show_default=True,
    help="Where model inputs are resized: 'loader' (Pillow, in the decoding processes) or "
    "'device' (PyTorch's antialiased resampling, within 1/255 of Pillow's almost everywhere; "
    "halves the decoding CPU per image). 'auto': device on CUDA, loader elsewhere.",
)
@click.option(
    "--offline",
    is_flag=True,
    envvar="CAMCLI_OFFLINE",
    help="Never download weights (also set by CAMCLI_OFFLINE=1).",
)
@click.option(
    "--force", is_flag=True, help="Redo every image, even those whose outputs are up to date."
)
@click.option(
    "--null",
    "-0",
    is_flag=True,
    help="With INPUT '-': paths on stdin are NUL-separated (find -print0), not one per line.",
)
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="With INPUT '-': relative paths are read from here and outputs mirror the tree "
    "below it; listed files outside it are refused [default: the working directory].",
)
@click.option(
    "--shard",
    help="K/N: explain only shard K (0-based) of N, a stable split by file path, for "
    "cron fan-out, SLURM arrays and indexed jobs.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse images with more pixels (decompression bombs); such files are reported "
    "and skipped.",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="TOML file of option defaults (see configs/).",
)
@click.version_option(__version__, "--version", prog_name="camcli")
@click.pass_context
def explain(
    ctx: click.Context,
    input_path: Path,
    output_dir: Path,
    model_name: str,
    weights: Path | None,
    layers: tuple[str, ...],
    methods: tuple[str, ...],
    target: str,
    top_k: int,
    crop: bool,
    guided: bool | None,
    chunk_size: int | None,
    smooth_samples: int,
    smooth_noise: float,
    smooth_guided: bool,
    seed: int,
    save_raw: bool,
    alpha: float,
    jsonl: bool,
    batch_size: int | None,
    workers: int | None,
    device: str,
    png_level: str,
    precision: str,
    channels_last: bool | None,
    resize_on: str,
    offline: bool,
    force: bool,
    null: bool,
    root: Path | None,
    shard: str | None,
    max_pixels: int,
) -> None:
    """Explain every image under INPUT (a folder, walked recursively, or one image file).

    Per image it writes, mirroring the input tree under --output-dir: NAME.json (top-k
    predictions, label, target, files) and per method NAME.METHOD.png (heatmap),
    NAME.METHOD.overlay.png or, for guided/guided-gradcam/smoothgrad, NAME.METHOD.png, all at
    the image's original size; and index.jsonl, one line per image.

    A re-run explains only new or changed images (--force: all); run.json summarises the run.

    \b
    Exit status:
      0    every image explained or up to date
      1    some images failed (reported on stderr, in the index and run.json), or the run
           could not start or stopped (no images, weights missing, output locked or
           not writable)
      2    usage error
      130  stopped by SIGINT (in-flight work finished and written)
      143  stopped by SIGTERM (likewise)
      141  stdout closed by the reader
    """
    try:
        torch_device = resolve_device(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--device'") from None
    try:
        chosen_methods = _methods(methods, guided)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--method'") from None
    names = available_models()
    if model_name not in names:
        close = difflib.get_close_matches(model_name, names, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see 'camcli models'"
        raise click.BadParameter(f"unknown model {model_name!r}{hint}", param_hint="'--model'")

    output_dir = output_dir.expanduser()
    rank = current_rank()
    try:
        shard_k, shard_n = parse_shard(shard) if shard else (0, 1)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--shard'") from None
    if rank is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        torch_device = torch.device("cuda", rank.local_rank % torch.cuda.device_count())
    try:
        if str(input_path) == "-":
            data = sys.stdin.buffer.read()
            items = images_from_list(read_path_list(data, null), root)
        else:
            items = discover_images(input_path, exclude=output_dir)
    except NoImagesFound as exc:
        raise click.ClickException(str(exc)) from None
    items = [i for i in items if in_shard(i, shard_k, shard_n)]
    if rank is not None:
        items = [i for i in items if in_shard(i, rank.rank, rank.world_size, salt="rank")]
    try:
        loaded = load_model(model_name, weights, offline)
    except ModelUnavailable as exc:
        raise click.ClickException(str(exc)) from None

    layer_names = tuple(dict.fromkeys(layers)) or (loaded.default_layer,)
    try:
        for layer_name in layer_names:
            resolve_layer(loaded.module, layer_name)
    except UnknownLayer as exc:
        raise click.BadParameter(f"{exc}", param_hint="'--layer'") from None
    try:
        target_spec = parse_target(target, loaded.classes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--target'") from None
    if target_spec.mode == "label":
        _check_labels(items, loaded.classes)

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
    settings = Settings(
        output_dir=output_dir,
        layers=layer_names,
        methods=chosen_methods,
        method_options=MethodOptions(
            chunk_size=chunk_size or (256 if torch_device.type == "cuda" else 32),
            smooth_samples=smooth_samples,
            smooth_noise=smooth_noise,
            smooth_guided=smooth_guided,
            seed=seed,
        ),
        target=target_spec,
        top_k=top_k,
        save_raw=save_raw,
        batch_size=batch_size or (64 if torch_device.type == "cuda" else 8),
        workers=workers if workers is not None else default_workers,
        device=torch_device,
        crop=crop,
        alpha=alpha,
        png_level=None if png_level == "fast" else int(png_level),
        precision=precision,
        channels_last=torch_device.type == "cpu" if channels_last is None else channels_last,
        resize_on_device=resize_on == "device"
        or (resize_on == "auto" and torch_device.type == "cuda"),
        write_threads=write_threads,
        force=force,
        max_pixels=max_pixels,
        name_suffix=suffix,
    )
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    if rank is not None:
        init_group(rank)
    try:
        with run_lock(output_dir / settings.lock_name), stop_on_signals() as stop:
            sweep = not settings.name_suffix  # not sharded: no other run writes here
            if removed := remove_leftovers(output_dir, settings.index_name, sweep):
                click.echo(
                    f"camcli: removed {removed} leftover file(s) of an interrupted run", err=True
                )
            if settings.png_level is None and not fast_deflate_available():
                click.echo(
                    "camcli: the isal package is missing, so PNGs are compressed with zlib "
                    "(about 5 x slower); pip install isal",
                    err=True,
                )
            summary, code = _run(items, loaded, settings, jsonl, stop)
    except LockHeld as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # the output directory cannot be created or written
        raise click.ClickException(
            f"cannot write to the output directory {output_dir}: {exc.strerror or exc}"
        ) from None
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
        settings=settings_payload(loaded, settings),
        device=torch_device,
        started=started,
        shard=f"{shard_k}/{shard_n}" if shard_n > 1 else None,
    )
    _write_summaries(record, settings, rank, output_dir)
    if summary.status != "broken-pipe":
        _report(summary, output_dir, loaded.name, ", ".join(layer_names))
    ctx.exit(code)


def _run(
    items: list[Any], loaded: Any, settings: Settings, jsonl: bool, stop: StopRequest
) -> tuple[RunSummary, int]:
    """Run the pipeline; map its outcome to the summary status and the exit code."""
    reporter = _Reporter(jsonl, len(items))
    try:
        summary = run_explain(items, loaded, settings, reporter, stop.event)
    except LayerUnusable as exc:
        raise click.BadParameter(str(exc), param_hint="'--layer'") from None
    except CamNotApplicable as exc:
        raise click.BadParameter(str(exc), param_hint="'--method'") from None
    except WriteFailed as exc:
        raise click.ClickException(str(exc)) from None
    except BrokenPipeError:
        # stdout closed by the reader (| head): stop quietly; the files written are valid.
        _silence_stdout()
        summary = RunSummary(total=len(items), status="broken-pipe")
        return summary, 141
    except KeyboardInterrupt:
        # A second Ctrl-C: stop now. Files already renamed into place are complete.
        summary = RunSummary(total=len(items), status="interrupted")
        return summary, 130
    finally:
        reporter.close()
    if stop.exit_code is not None:
        return summary, stop.exit_code
    return summary, 1 if summary.failed else 0


def _write_summaries(
    record: dict[str, Any], settings: Settings, rank: Rank | None, output_dir: Path
) -> None:
    """Write run.json (per shard); under torchrun, rank 0 merges every rank's summary."""
    try:
        if rank is None:
            write_summary(output_dir / settings.summary_name, record)
            return
        summaries = gather_summaries(record, rank)
        if rank.rank != 0:
            return
        base = settings.name_suffix.split(".rank-")[0]
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


def _methods(values: tuple[str, ...], guided: bool | None) -> tuple[str, ...]:
    chosen = list(parse_methods(values) if values else DEFAULT_METHODS)
    if guided is True and "guided" not in chosen:
        chosen.append("guided")
    if guided is False and "guided" in chosen:
        chosen.remove("guided")
    if not chosen:
        raise ValueError("no method left after --no-guided")
    return tuple(m for m in ALL_METHODS if m in chosen)


def _check_labels(items: list[Any], classes: Any) -> None:
    unlabeled = [str(i.relative) for i in items if i.label is None]
    if unlabeled:
        raise click.BadParameter(
            f"label needs every image in a class folder, but {unlabeled[0]} is not "
            f"({len(unlabeled)} such image(s))",
            param_hint="'--target'",
        )
    unknown = sorted({i.label for i in items if classes.resolve(i.label) is None})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise click.BadParameter(
            f"label needs folders named by class index, WordNet id or class name; "
            f"{len(unknown)} folder(s) name no class of this model: {shown}",
            param_hint="'--target'",
        )


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _report(summary: RunSummary, output_dir: Path, model: str, layer: str) -> None:
    rate = summary.explained / summary.seconds if summary.seconds > 0 else 0.0
    failed = f", {summary.failed} failed" if summary.failed else ""
    if summary.skipped:
        failed += f", {summary.skipped} up to date (reused)"
    if summary.status == "interrupted":
        failed += ", interrupted"
    click.echo(
        f"camcli: explained {summary.explained} of {summary.total} images{failed} with "
        f"{model} at {layer} in {summary.seconds:.1f} s ({rate:.1f} images/s); "
        f"outputs in {output_dir}",
        err=True,
    )


@main.command(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="camcli")
def models() -> None:
    """List the model names --model accepts, and whether their weights are available offline.

    One model per line on stdout: NAME<TAB>STATUS, where STATUS is 'embedded' (ships with
    camcli), 'cached' (in the torch hub cache) or 'download' (fetched on first use).
    """
    for name in available_models():
        click.echo(f"{name}\t{weights_status(name)}")


if __name__ == "__main__":  # pragma: no cover
    main()
