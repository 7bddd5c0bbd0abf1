"""``camcli features``: grids of a layer's feature maps per image."""

from __future__ import annotations

from typing import Any

import click

from camcli import __version__
from camcli.commands.common import (
    CONTEXT,
    PreparedRun,
    Reporter,
    config_option,
    input_options,
    model_options,
    output_options,
    prepare_run,
    run_in_frame,
    runtime_options,
)
from camcli.config import Settings
from camcli.feature_run import FeatureOptions, features_payload, run_features
from camcli.hooks import LayerUnusable, UnknownLayer, resolve_layer
from camcli.runloop import RunSummary
from camcli.runtime import StopRequest

__all__ = ["features"]


@click.command(context_settings=CONTEXT)
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
    help="Centre-crop as in the weights' evaluation, or resize the whole image.",
)
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

    Per image it writes, mirroring the input tree under --output-dir: NAME.features.LAYER.png
    per layer (the chosen channels, each labelled with its index, one colour scale per grid
    from its lowest to its highest value, shown at the bottom), NAME.json (top-k
    predictions, per layer its shape, the channels shown, their mean activations and the
    scale; files) and index.jsonl. Resume, --jsonl, run.json and the exit status are as in
    'camcli explain'.

    \b
    Exit status:
      0    every image done or up to date
      1    some images failed, or the run could not start or stopped
      2    usage error (unknown layer, a layer without a spatial map)
      130  stopped by SIGINT; 143 by SIGTERM; 141 stdout closed
    """
    run = prepare_run(options)
    settings = features_settings(run, options)
    feature_options = FeatureOptions(
        channels=options["channels"], strongest=options["strongest"], cell=options["cell_size"]
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
    )
    ctx.exit(code)


def features_settings(run: PreparedRun, options: dict[str, Any]) -> Settings:
    """The run settings of ``features`` (click.BadParameter for an unknown ``--layer``)."""
    loaded = run.model
    layer_names = tuple(dict.fromkeys(options["layers"])) or (loaded.default_layer,)
    try:
        for layer_name in layer_names:
            resolve_layer(loaded.module, layer_name)
    except UnknownLayer as exc:
        raise click.BadParameter(f"{exc}", param_hint="'--layer'") from None
    return Settings(
        output_dir=run.output_dir,
        layers=layer_names,
        methods=(),
        top_k=options["top_k"],
        save_raw=options["save_raw"],
        batch_size=run.batch_size,
        workers=run.workers,
        device=run.device,
        crop=options["crop"],
        png_level=run.png_level,
        precision=run.precision,
        channels_last=run.channels_last,
        resize_on_device=run.resize_on_device,
        write_threads=run.write_threads,
        force=run.force,
        max_pixels=run.max_pixels,
        name_suffix=run.name_suffix,
    )
