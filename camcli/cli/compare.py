"""``camcli compare``: models x methods, one comparison sheet per image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from camcli import __version__
from camcli.cli.features import refuse_region_model
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
from camcli.models import EMBEDDED_MODEL
from camcli.models.names import known_task

if TYPE_CHECKING:
    from camcli.models.loaded import LoadedModel

__all__ = ["CompareCommandOptions", "compare"]


@click.command(cls=SectionedCommand, context_settings=CONTEXT)
@input_options
@output_options
@click.option(
    "-m",
    "--model",
    "model_name",
    multiple=True,
    default=(EMBEDDED_MODEL,),
    show_default=True,
    help="A classifier to compare (one row each, in the order given); repeat for several. "
    "Each uses its default Grad-CAM layer (see 'camcli layers MODEL'). Names as in "
    "'camcli explain --model'; detectors and segmenters are refused.",
)
@click.option(
    "--classes",
    "classes_file",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class names, as 'camcli explain --classes' reads them. Given once, for every "
    "--model (each must have as many outputs as it names); given once per --model, one "
    "each, in the same order. Without it, each model's own classes.",
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
    from camcli.models.names import unknown_model

    names, classes = _models_and_classes(options.pop("model_name"), options.pop("classes_file"))
    for name in names:
        if (message := unknown_model(name)) is not None:
            raise click.BadParameter(message, param_hint="'--model'")
        refuse_region_model("compare", name, known_task(name))
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
    wanted = [
        ModelOptions(model_name=n, offline=offline, classes_file=c)
        for n, c in zip(names, classes, strict=True)
    ]
    common = CommonOptions.take(options, wanted[0])
    own = CompareCommandOptions(**options)

    from camcli.cli.early import refuse_early

    refuse_early(common, check_model=False)
    from camcli.cli.frame import Reporter, load_checked_model, prepare_run, run_in_frame
    from camcli.methods.activation import CamNotApplicable
    from camcli.methods.batch import MethodOptions
    from camcli.models.hooks import LayerUnusable
    from camcli.runs.compare import CompareOptions, compare_payload, run_compare
    from camcli.runs.runtime import StopRequest
    from camcli.runs.work import RunSummary

    _check_weights(names, offline)
    # Own models' tasks (and another --classes file's fit) are known once loaded: each is
    # loaded and released here, before the first model, so a wrong one is refused before
    # the run starts and one model is in memory at a time.
    sources: list[str | None] = [None] * len(names)  # each model's --classes, with a digest
    for index, later in enumerate(wanted[1:], start=1):
        if _known_classifier(later):
            continue
        loaded = load_checked_model(later)
        refuse_region_model("compare", later.model_name, loaded.task)
        sources[index] = loaded.classes_source
        del loaded
    run = prepare_run(common)
    refuse_region_model("compare", names[0], run.model.task)
    sources[0] = run.model.classes_source
    settings = run.settings(layers=(), methods=methods, alpha=own.alpha, kind="compare")
    compare_options = CompareOptions(
        models=names,
        methods=methods,
        classes=tuple(sources) if any(sources) else (),
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
        loaded = _load_row(wanted[index])
        refuse_region_model("compare", names[index], loaded.task)  # a registered detector
        return loaded

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


def _models_and_classes(
    models: tuple[str, ...], files: tuple[Path, ...]
) -> tuple[tuple[str, ...], tuple[Path | None, ...]]:
    """The ``--model`` names without repeats, each with its ``--classes`` file or ``None``.

    Raises:
        click.BadParameter: naming ``--classes``, for a count that is neither one nor one
            per ``--model`` (exit 2).

    """
    if len(files) not in (0, 1, len(models)):
        raise click.BadParameter(
            f"given {len(files)} times for {len(models)} models: give it once (for every "
            "--model) or once per --model, in the same order",
            param_hint="'--classes'",
        )
    paired: dict[str, Path | None] = {}
    for index, name in enumerate(models):
        file = files[0] if len(files) == 1 else files[index] if files else None
        paired.setdefault(name, file)
    return tuple(paired), tuple(paired.values())


def _known_classifier(wanted: ModelOptions) -> bool:
    """Whether a model needs no check before the run: named, and given no class file.

    Torchvision's detectors and segmenters are refused by name; an own model
    (``FILE.py:FUNC``) is known only once loaded, as is whether a ``--classes`` file fits.
    """
    from camcli.models.names import is_factory_spec

    return wanted.classes_file is None and not is_factory_spec(wanted.model_name)


def _load_row(wanted: ModelOptions) -> LoadedModel:
    """Load a later row's model with its class file (checked before the run where needed)."""
    from camcli.models.loaded import ModelUnavailable
    from camcli.models.own import ModelSpecError, OptionProblem, OutputMismatch, customise_model
    from camcli.models.registry import load_model

    try:
        loaded = load_model(wanted.model_name, None, wanted.offline)
    except ModelUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except (ModelSpecError, OutputMismatch) as exc:
        raise click.BadParameter(str(exc), param_hint="'--model'") from None
    try:
        return customise_model(loaded, classes_file=wanted.classes_file)
    except OptionProblem as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
