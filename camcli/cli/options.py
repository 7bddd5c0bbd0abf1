"""The options every batch command shares, as decorator groups, and ``--config`` files.

Nothing here imports torch: ``camcli --help`` and ``camcli COMMAND --help`` read these.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from camcli.io import DEFAULT_MAX_PIXELS
from camcli.io.storage import is_uri
from camcli.methods.names import IG_BASELINES, IG_MAX_PASSES, IG_RULES
from camcli.models import EMBEDDED_MODEL

if TYPE_CHECKING:
    from camcli.methods.batch import MethodOptions
    from camcli.models.loaded import LoadedModel

__all__ = [
    "CONTEXT",
    "HELP_SECTIONS",
    "PROGRESS_INTERVAL",
    "CommonOptions",
    "Decorator",
    "InputOptions",
    "MethodSettingOptions",
    "ModelOptions",
    "OutputOptions",
    "RuntimeOptions",
    "SectionedCommand",
    "alpha_option",
    "config_option",
    "crop_option",
    "input_options",
    "method_setting_options",
    "model_options",
    "output_options",
    "runtime_options",
    "top_k_option",
]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

PROGRESS_INTERVAL = 30.0
"""Seconds between the plain progress lines printed when stderr is not a terminal."""

# The batch commands' --help, in sections: the options people use first, then the rest by
# theme. Options of a command that no section names come last, under "Other options".
HELP_SECTIONS = (
    (
        "Common options",
        ("output_dir", "model_name", "models", "methods", "layers", "target", "top_k", "jsonl",
         "report", "device", "config"),
    ),
    (
        "Model",
        ("weights", "offline", "classes_file", "input_size", "mean", "std", "interpolation",
         "input_channels", "crop"),
    ),
    (
        "Methods and scores",
        ("guided", "boxes", "masks", "pointing_tolerance", "metrics", "metric_steps", "sanity",
         "sanity_stages", "rise_masks", "ig_steps", "ig_tolerance", "ig_max_steps", "ig_rule",
         "ig_baseline", "smooth_samples", "smooth_noise", "smooth_guided", "seed",
         "chunk_size"),
    ),
    (
        "Detectors and segmenters",
        ("task", "score_threshold", "max_detections", "min_pixels", "drise_masks"),
    ),
    ("Pictures and files", ("alpha", "save_raw", "force", "png_level")),
    ("Input", ("null", "root", "shard", "max_pixels")),
    (
        "Runtime",
        ("batch_size", "workers", "precision", "channels_last", "resize_on", "engine",
         "ray_address", "progress_interval", "verbose", "debug"),
    ),
)  # fmt: skip


class SectionedCommand(click.Command):
    """A command whose --help lists its options in :data:`HELP_SECTIONS`."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Write the options section by section, the common ones first."""
        records = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and param.name:
                records[param.name] = record
        for title, names in HELP_SECTIONS:
            rows = [records.pop(name) for name in names if name in records]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        if records:
            with formatter.section("Other options"):
                formatter.write_dl(list(records.values()))


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _group(*decorators: Decorator) -> Decorator:
    """Apply several click decorators as one (listed in the order they appear in --help)."""

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


class Location(click.ParamType):
    """A local path, checked as ``click.Path`` checks it, or a URI of object storage (text).

    URIs (``s3://bucket/prefix``) are checked when the run starts (:mod:`camcli.io.storage`).
    """

    name = "path"

    def __init__(self, local: click.Path) -> None:
        self.local = local

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The URI as given, or the local path as ``click.Path`` converts it."""
        if isinstance(value, str) and is_uri(value):
            return value
        return self.local.convert(value, param, ctx)


# --- option groups ----------------------------------------------------------------------

input_options = _group(
    click.argument(
        "input_path",
        metavar="INPUT",
        type=Location(click.Path(exists=True, allow_dash=True, path_type=Path)),
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
    click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="local: this process (loader workers, the device, writer threads); ray: a Ray "
        "Data pipeline on a Ray cluster (decoding tasks, an actor pool holding the model, "
        "writing tasks); needs pip install 'camcli[ray]'. Same files and records.",
    ),
    click.option(
        "--ray-address",
        metavar="ADDR",
        default=None,
        help="The Ray cluster to join with --engine ray (host:port or ray://host:port) "
        "[default: RAY_ADDRESS, else a local Ray started for the run].",
    ),
    click.option(
        "--progress-interval",
        type=click.FloatRange(min=0),
        default=PROGRESS_INTERVAL,
        show_default=True,
        metavar="SECONDS",
        help="Without a terminal (cron, nohup, a pipe), print a progress line on stderr this "
        "often: images done, rate, time left. 0: none.",
    ),
    click.option(
        "--verbose",
        is_flag=True,
        help="Also show the engine's own log lines on stderr (Ray's internal warnings, which "
        "camcli keeps out of its stderr by default).",
    ),
    click.option(
        "--debug",
        is_flag=True,
        help="Print the traceback of each image's failure (and of a run that fails) on "
        "stderr; without it, one line per image names the error.",
    ),
)

output_options = _group(
    click.option(
        "-o",
        "--output-dir",
        type=Location(click.Path(file_okay=False, path_type=Path)),
        default=Path("camcli-out"),
        show_default=True,
        help="Where outputs go: the tree below INPUT mirrored (INPUT photos: "
        "photos/cat/a.jpg -> OUTPUT/cat/a.jpg.*; INPUT photos/cat: OUTPUT/a.jpg.*, with no "
        "label), so commands sharing a directory take the same INPUT. A folder or a URI "
        "(s3://bucket/prefix, gs://...; pip install 'camcli[storage]').",
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
# The settings of the methods that make extra passes (explain and evaluate share them).
method_setting_options = _group(
    click.option(
        "--chunk-size",
        type=click.IntRange(min=1),
        default=None,
        help="Modified images per forward pass in scorecam, smoothgrad, rise, ig, lrp and the "
        "--metrics scores: their memory bound [default: 256 on CUDA, 32 on CPU].",
    ),
    click.option(
        "--rise-masks",
        type=click.IntRange(min=1),
        default=4000,
        show_default=True,
        help="Random masks in rise: one forward pass each per image (at 4000, minutes per "
        "image on a CPU; see the README).",
    ),
    click.option(
        "--ig-steps",
        type=click.IntRange(min=1),
        default=32,
        show_default=True,
        help="Path steps ig (Integrated Gradients) starts with per image: one forward + "
        "backward pass each.",
    ),
    click.option(
        "--ig-tolerance",
        type=click.FloatRange(min=0),
        default=0.05,
        show_default=True,
        help="Completeness error (|sum of attributions - logit difference| / |difference|) at "
        "which ig stops adding path points for an image; its points triple until then (32, 96, "
        "288, ...).",
    ),
    click.option(
        "--ig-max-steps",
        type=click.IntRange(min=1),
        default=IG_MAX_PASSES,
        show_default=True,
        help="Most passes of ig per image, over its levels (the points triple: 32, 96, 288, "
        "864; the default reaches 864). Equal to --ig-steps: fixed steps.",
    ),
    click.option(
        "--ig-rule",
        type=click.Choice(IG_RULES),
        default="gausslegendre",
        show_default=True,
        help="Where ig's path points lie: Gauss-Legendre nodes (captum's default; far fewer "
        "passes for the same completeness on photos) or the midpoints of equal steps (each "
        "tripling reuses the points computed).",
    ),
    click.option(
        "--ig-baseline",
        type=click.Choice(IG_BASELINES),
        default="black",
        show_default=True,
        help="Where ig's path starts: a black image or a heavy blur of the image.",
    ),
    click.option(
        "--smooth-samples",
        type=click.IntRange(min=1),
        default=16,
        show_default=True,
        help="Noisy copies per image in smoothgrad.",
    ),
    click.option(
        "--smooth-noise",
        type=click.FloatRange(min=0),
        default=0.15,
        show_default=True,
        help="smoothgrad noise level, relative to each image's value range.",
    ),
    click.option(
        "--smooth-guided",
        is_flag=True,
        help="smoothgrad averages guided-backprop gradients instead of plain ones.",
    ),
    click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Base seed of smoothgrad's noise (each image's own seed also comes from its path, so "
        "it does not depend on order, batches or shards) and of rise's masks "
        "(shared by all images).",
    ),
    click.option(
        "--metric-steps",
        type=click.IntRange(min=2),
        default=16,
        show_default=True,
        help="Steps of the deletion and insertion curves (one forward pass each).",
    ),
)

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
        try:  # a wrong value names the key and the file, not just the value
            params[name].type_cast_value(ctx, defaults[name])
        except click.BadParameter as exc:
            raise click.BadParameter(
                f"{value} sets {key} = {setting!r}: {exc.message}", ctx=ctx
            ) from None
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


# --- the typed values of the option groups ------------------------------------------------


@dataclass(frozen=True)
class InputOptions:
    """What to read: ``INPUT``, ``--null``, ``--root``, ``--shard``, ``--max-pixels``."""

    input_path: Path | str  # str: a URI of object storage
    null: bool = False
    root: Path | None = None
    shard: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ModelOptions:
    """Which model and how it reads images: ``--model``, ``--weights`` and the rest."""

    model_name: str = EMBEDDED_MODEL
    weights: Path | None = None
    offline: bool = False
    classes_file: Path | None = None
    input_size: int | None = None
    mean: str | None = None
    std: str | None = None
    interpolation: str | None = None
    input_channels: int | None = None


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run: batch size, decoding processes, device, precision, layout, resizing, engine."""

    batch_size: int | None = None
    workers: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool | None = None
    resize_on: str = "auto"
    engine: str = "local"
    ray_address: str | None = None
    verbose: bool = False
    progress_interval: float = PROGRESS_INTERVAL
    debug: bool = False


@dataclass(frozen=True)
class OutputOptions:
    """Where and how results go: ``--output-dir``, ``--jsonl``, ``--force``, ``--png-level``."""

    output_dir: Path | str = Path("camcli-out")  # str: a URI of object storage
    jsonl: bool = False
    force: bool = False
    png_level: str = "fast"


def check_report_location(report: bool, output_dir: Path | str) -> None:
    """``--report`` writes a folder of HTML on this machine: refuse it for a URI (exit 2)."""
    if report and isinstance(output_dir, str):
        raise click.BadParameter(
            "the HTML report is written into a local output directory, not into object "
            f"storage ({output_dir}): drop --report, or copy the outputs to a folder and run "
            "'camcli report' there",
            param_hint="'--report'",
        )


@dataclass(frozen=True)
class CommonOptions:
    """The option groups every batch command shares, as typed values."""

    inputs: InputOptions
    model: ModelOptions
    runtime: RuntimeOptions
    output: OutputOptions

    @classmethod
    def take(cls, options: dict[str, Any], model: ModelOptions | None = None) -> CommonOptions:
        """Pop the shared groups' values out of a command's keyword arguments.

        What remains in ``options`` are the command's own options.

        Args:
            options: Click's keyword arguments of the command (changed in place).
            model: the model options, for a command without the model group (``compare``).

        """

        def take_group(kind: type[Any]) -> Any:
            return kind(**{f.name: options.pop(f.name) for f in fields(kind) if f.name in options})

        inputs = take_group(InputOptions)
        if model is None:
            channels = options.pop("input_channels", None)
            model = take_group(ModelOptions)
            model = ModelOptions(
                **{**model.__dict__, "input_channels": int(channels) if channels else None}
            )
        return cls(
            inputs=inputs,
            model=model,
            runtime=take_group(RuntimeOptions),
            output=take_group(OutputOptions),
        )


@dataclass(frozen=True)
class MethodSettingOptions:
    """The settings of the methods that make extra passes (``method_setting_options``)."""

    chunk_size: int | None = None
    rise_masks: int = 4000
    ig_steps: int = 32
    ig_tolerance: float = 0.05
    ig_max_steps: int = IG_MAX_PASSES
    ig_rule: str = "gausslegendre"
    ig_baseline: str = "black"
    smooth_samples: int = 16
    smooth_noise: float = 0.15
    smooth_guided: bool = False
    seed: int = 0
    metric_steps: int = 16

    @classmethod
    def take(cls, options: dict[str, Any]) -> MethodSettingOptions:
        """Pop the group's values out of a command's keyword arguments."""
        return cls(**{f.name: options.pop(f.name) for f in fields(cls) if f.name in options})

    def method_options(
        self, model: LoadedModel, default_chunk: int, metrics: tuple[str, ...] = ()
    ) -> MethodOptions:
        """The methods' settings for ``model`` (``default_chunk`` when no ``--chunk-size``)."""
        from camcli.methods.batch import MethodOptions

        prep = model.preprocessing
        return MethodOptions(
            chunk_size=self.chunk_size or default_chunk,
            smooth_samples=self.smooth_samples,
            smooth_noise=self.smooth_noise,
            smooth_guided=self.smooth_guided,
            seed=self.seed,
            rise_masks=self.rise_masks,
            ig_steps=self.ig_steps,
            ig_tolerance=self.ig_tolerance,
            ig_max_steps=self.ig_max_steps,
            ig_rule=self.ig_rule,
            ig_baseline=self.ig_baseline,
            black=tuple(-m / s for m, s in zip(prep.mean, prep.std, strict=True)),
            metrics=metrics,
            metric_steps=self.metric_steps,
            binary=model.binary,
        )
