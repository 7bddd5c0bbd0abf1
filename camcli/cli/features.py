"""``camcli features``: grids of a layer's feature maps per image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from camcli import __version__
from camcli.cli.options import (
    CONTEXT,
    CommonOptions,
    SectionedCommand,
    config_option,
    crop_option,
    input_options,
    model_options,
    output_options,
    runtime_options,
    top_k_option,
)
from camcli.models.names import known_task

if TYPE_CHECKING:
    from camcli.cli.frame import PreparedRun
    from camcli.runs.settings import Settings

__all__ = [
    "FeaturesCommandOptions",
    "features",
    "features_settings",
    "refuse_region_model",
]


@click.command(cls=SectionedCommand, context_settings=CONTEXT)
@input_options
@output_options
@model_options
@click.option(
    "--layer",
    "layers",
    multiple=True,
    help="Layer whose feature maps to show, a dotted name (see 'camcli layers MODEL'); "
    "repeat for several layers (one grid each). Default: the model's Grad-CAM layer.",
)
@click.option(
    "-n",
    "--channels",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Feature maps per grid.",
)
@click.option(
    "--strongest",
    is_flag=True,
    help="Show the channels of highest mean activation, strongest first (default: the "
    "first channels, in order).",
)
@click.option(
    "--cell-size",
    type=click.IntRange(min=8, max=1024),
    default=64,
    show_default=True,
    help="Side of one feature map in the grid, in pixels (nearest-neighbour scaling).",
)
@top_k_option
@crop_option
@click.option(
    "--save-raw",
    is_flag=True,
    help="Also write each layer's activations (C x h x w, float32) as NAME.features.LAYER.npy.",
)
@runtime_options
@config_option
@click.version_option(__version__, "--version", prog_name="camcli")
@click.pass_context
def features(ctx: click.Context, **options: Any) -> None:
    """Draw a grid of feature maps per image under INPUT and layer.

    The --model is a classifier: a detector or a segmenter is refused (one sentence naming
    'camcli explain', which explains each of its detections or classes).

    Per image it writes, mirroring the input tree under --output-dir: NAME.features.LAYER.png
    per layer (the chosen channels, each labelled with its index, one colour scale per grid
    from its lowest to its highest value, shown at the bottom), NAME.features.json (top-k
    predictions, per layer its shape, the channels shown, their mean activations and the
    scale; files) and features.index.jsonl. Resume, --jsonl, the summary (features.run.json)
    and the exit status are as in
    'camcli explain'.

    \b
    Exit status:
      0    every image done or up to date
      1    some images failed, or the run could not start or stopped
      2    usage error (unknown layer, a layer without a spatial map, a detector or a
           segmenter)
      130  stopped by SIGINT; 143 by SIGTERM; 141 stdout closed
    """
    common = CommonOptions.take(options)
    own = FeaturesCommandOptions(**options)
    name = common.model.model_name
    refuse_region_model("features", name, known_task(name))

    from camcli.cli.early import refuse_early

    refuse_early(common, layers=own.layers)
    from camcli.cli.frame import Reporter, prepare_run, run_in_frame
    from camcli.models.hooks import LayerUnusable
    from camcli.runs.features import FeatureOptions, features_payload, run_features
    from camcli.runs.runtime import StopRequest
    from camcli.runs.work import RunSummary

    run = prepare_run(common)
    refuse_region_model("features", name, run.model.task)  # an own model's, known once loaded
    settings = features_settings(run, own)
    feature_options = FeatureOptions(
        channels=own.channels, strongest=own.strongest, cell=own.cell_size
    )
    model = run.model

    def body(reporter: Reporter, stop: StopRequest) -> RunSummary:
        return run_features(run.items, model, settings, feature_options, reporter, stop.event)

    code = run_in_frame(
        run,
        body,
        features_payload(model, settings, feature_options),
        f"{model.name} features at {', '.join(settings.layers)}",
        {LayerUnusable: "--layer"},
        verb="processed",
        kind="features",
    )
    ctx.exit(code)


@dataclass(frozen=True)
class FeaturesCommandOptions:
    """``features``' own options (the shared groups are in :class:`CommonOptions`)."""

    layers: tuple[str, ...]
    channels: int
    strongest: bool
    cell_size: int
    top_k: int
    crop: bool
    save_raw: bool


def features_settings(run: PreparedRun, options: FeaturesCommandOptions) -> Settings:
    """The run settings of ``features`` (click.BadParameter for an unknown ``--layer``)."""
    from camcli.cli.frame import checked_layers

    return run.settings(
        layers=checked_layers(run.model, options.layers),
        methods=(),
        kind="features",
        top_k=options.top_k,
        save_raw=options.save_raw,
        crop=options.crop,
    )


# What the commands that need a classifier say it is needed for.
_NEEDS = {
    "features": "its records give a classifier's top-k predictions beside the grids",
    "compare": "each cell is the map of a classifier's top-1 class",
}


def refuse_region_model(command: str, name: str, task: str | None) -> None:
    """Refuse a detector or a segmenter for a command that needs a classifier.

    Args:
        command: ``features`` or ``compare``.
        name: the model as ``--model`` names it.
        task: the model's task (``None`` or ``classify``: nothing to refuse).

    Raises:
        click.BadParameter: naming ``--model``, what the model is, what the command needs
            and what to run instead (exit 2).

    """
    if task is None or task == "classify":
        return
    from camcli.cli.regions import NOUNS

    instead = (
        "each of its detections"
        if task == "detect"
        else "each class of its mask, or with --task classify its logits averaged over the image"
    )
    raise click.BadParameter(
        f"{name} is a {NOUNS.get(task, task)}; {command} needs a classifier ({_NEEDS[command]}): "
        f"'camcli explain --model {name}' explains {instead}",
        param_hint="'--model'",
    )
