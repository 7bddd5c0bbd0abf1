"""``camcli compare``: models x methods, one comparison sheet per image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from camcli import __version__
from camcli.cli.options import (
    CONTEXT,
    CommonOptions,
    ModelOptions,
    SectionedCommand,
    alpha_option,
    config_option,
    input_options,
    output_options,
    runtime_options,
)
from camcli.methods.names import MAP_METHODS, parse_methods

__all__ = ["CompareCommandOptions", "compare"]


@click.command(cls=SectionedCommand, context_settings=CONTEXT)
@input_options
@output_options
@click.option(
    "-m",
    "--model",
    "model_name",
    multiple=True,
    required=True,
    help="A model to compare (one row each, in the order given); repeat for several. "
    "Each uses its default Grad-CAM layer (see 'camcli layers MODEL').",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    help="Map method(s), one column each, repeatable or comma-separated: "
    f"{', '.join(MAP_METHODS)} [default: gradcam,gradcam++].",
)
@click.option(
    "--offline",
    is_flag=True,
    envvar="CAMCLI_OFFLINE",
    help="Never download weights (also set by CAMCLI_OFFLINE=1).",
)
@click.option(
    "--cell-size",
    type=click.IntRange(min=64, max=2048),
    default=256,
    show_default=True,
    help="Width of one cell of the sheet in pixels (the photo's aspect ratio is kept).",
)
@alpha_option
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Modified images per forward pass in scorecam and rise: their memory bound "
    "[default: 256 on CUDA, 32 on CPU].",
)
@click.option(
    "--rise-masks",
    type=click.IntRange(min=1),
    default=4000,
    show_default=True,
    help="Random masks in rise (one forward pass each per image: use 500-1000 on a CPU).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of rise's masks.")
@runtime_options
@config_option
@click.version_option(__version__, "--version", prog_name="camcli")
@click.pass_context
def compare(ctx: click.Context, **options: Any) -> None:
    """Compare models and methods on every image under INPUT: one sheet per image.

    Each sheet (NAME.compare.png, mirroring the input tree under --output-dir) has a row per
    --model and a column per --method; each cell is the photo with that model's map for its
    own top-1 class laid over it, with the model's name, top-1 class and probability written
    on it. NAME.compare.json lists every cell's prediction and map statistics (layer, resolution,
    max, mean, peak pixel). The models run one after another over the whole input (one
    model in memory at a time); their maps wait in a scratch folder inside the output
    directory, removed at the end. Resume, --jsonl, compare.index.jsonl, the summary
    (compare.run.json) and the exit status are as in
    'camcli explain'.

    \b
    Exit status:
      0    every sheet made or up to date
      1    some images failed, or the run could not start or stopped
      2    usage error
      130  stopped by SIGINT; 143 by SIGTERM; 141 stdout closed
    """
    from camcli.cli.frame import Reporter, check_model_name, prepare_run, run_in_frame

    names = tuple(dict.fromkeys(options.pop("model_name")))
    for name in names:
        check_model_name(name)
    try:
        methods = parse_methods(options.pop("methods") or ("gradcam,gradcam++",))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--method'") from None
    if other := [m for m in methods if m not in MAP_METHODS]:
        raise click.BadParameter(
            f"{other[0]} gives no map to lay over the photo; compare takes map methods: "
            f"{', '.join(MAP_METHODS)}",
            param_hint="'--method'",
        )
    offline = options.pop("offline")
    common = CommonOptions.take(options, ModelOptions(model_name=names[0], offline=offline))
    own = CompareCommandOptions(**options)

    from camcli.cli.early import refuse_early

    refuse_early(common, check_model=False)
    from camcli.methods.activation import CamNotApplicable
    from camcli.methods.batch import MethodOptions
    from camcli.models.hooks import LayerUnusable
    from camcli.models.loaded import LoadedModel, ModelUnavailable
    from camcli.models.registry import load_model
    from camcli.runs.compare import CompareOptions, compare_payload, run_compare
    from camcli.runs.runtime import StopRequest
    from camcli.runs.work import RunSummary

    _check_weights(names, offline)
    run = prepare_run(common)
    settings = run.settings(layers=(), methods=methods, alpha=own.alpha, kind="compare")
    compare_options = CompareOptions(
        models=names,
        methods=methods,
        cell=own.cell_size,
        method_options=MethodOptions(
            chunk_size=own.chunk_size or run.chunk_size,
            rise_masks=own.rise_masks,
            seed=own.seed,
        ),
    )
    first: list[LoadedModel] = [run.model]

    def load(index: int) -> LoadedModel:
        if index == 0:
            return first.pop()
        try:
            return load_model(names[index], None, offline)
        except ModelUnavailable as exc:
            raise click.ClickException(str(exc)) from None

    run.model = None  # type: ignore[assignment]  # one model in memory at a time

    def body(reporter: Reporter, stop: StopRequest) -> RunSummary:
        return run_compare(run.items, load, settings, compare_options, reporter, stop.event)

    code = run_in_frame(
        run,
        body,
        compare_payload(settings, compare_options),
        f"{', '.join(names)} ({', '.join(methods)})",
        {LayerUnusable: "--model", CamNotApplicable: "--method"},
        verb="compared",
        kind="compare",
    )
    ctx.exit(code)


@dataclass(frozen=True)
class CompareCommandOptions:
    """``compare``'s own options (the shared groups are in :class:`CommonOptions`)."""

    cell_size: int
    alpha: float
    chunk_size: int | None
    rise_masks: int
    seed: int


def _check_weights(names: tuple[str, ...], offline: bool) -> None:
    """Have every model's weights before the run, or say at once which ones are missing."""
    from camcli.models.loaded import ModelUnavailable
    from camcli.models.registry import fetch_zoo_weights

    missing = []
    for name in names:
        try:
            fetch_zoo_weights(name, offline)
        except ModelUnavailable as exc:
            missing.append(str(exc))
    if len(missing) == 1:
        raise click.ClickException(missing[0])
    if missing:  # one line per model: five reasons on one line were unreadable
        raise click.ClickException(
            f"weights of {len(missing)} models are missing:\n"
            + "\n".join(f"  {m}" for m in missing)
        )
