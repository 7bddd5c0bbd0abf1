"""``camcli explain``: predictions, heatmaps, overlays and gradient pictures per image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from camcli import __version__
from camcli.cli.options import (
    CONTEXT,
    CommonOptions,
    MethodSettingOptions,
    SectionedCommand,
    alpha_option,
    check_report_location,
    config_option,
    crop_option,
    input_options,
    method_setting_options,
    model_options,
    output_options,
    runtime_options,
    top_k_option,
)
from camcli.cli.regions import (
    LabelCheck,
    RegionOptions,
    check_region_options,
    classifier_methods,
    early_task,
    note_unused_options,
    region_options,
    region_settings,
    run_as_task,
)
from camcli.methods.names import (
    ALL_METHODS,
    DEFAULT_METHODS,
    LAYER_METHODS,
    parse_methods,
    parse_metrics,
)
from camcli.report import REPORT_DIR

if TYPE_CHECKING:
    from camcli.api import Explainer
    from camcli.cli.frame import PreparedRun
    from camcli.io.discover import ImageItem
    from camcli.runs.settings import Settings

__all__ = ["ExplainOptions", "explain", "explain_settings"]


@click.command(cls=SectionedCommand, context_settings=CONTEXT)
@input_options
@output_options
@model_options
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
    "xgradcam, layercam, hirescam, cam, eigencam, scorecam, rise, guided, guided-gradcam, "
    "smoothgrad, lrp, ig [default: gradcam,guided]. Detectors: gradcam, gradcam++, "
    "xgradcam, layercam, hirescam, eigencam, drise (D-RISE), guided; segmenters: the same "
    "but drise and guided [default for both: gradcam].",
)
@click.option(
    "--target",
    default="pred",
    show_default=True,
    help="Class to explain: pred (top-1), label (the image's class folder), "
    "a class index or a class name; several, comma-separated (pred,label), are explained "
    "from one forward pass, the further ones in files named NAME.METHOD.TARGET.png.",
)
@top_k_option
@crop_option
@click.option(
    "--guided/--no-guided",
    default=None,
    help="Add or remove guided backprop from the methods (one backward pass to the input "
    "per batch).",
)
@method_setting_options
@click.option(
    "--metrics",
    "metrics",
    default="",
    help="Faithfulness scores per image and method, comma-separated: deletion, insertion, "
    "drop (average drop and increase in confidence), or all. In each record, index.jsonl "
    "and, averaged per method, run.json.",
)
@click.option(
    "--save-raw",
    is_flag=True,
    help="Also write the raw CAM (model input resolution) and guided gradient as .npy.",
)
@alpha_option
@region_options
@click.option(
    "--report",
    is_flag=True,
    help="At the end of the run (also an interrupted one), write the HTML report of the "
    "output directory to OUTPUT/report/index.html (see 'camcli report').",
)
@runtime_options
@config_option
@click.version_option(__version__, "--version", prog_name="camcli")
@click.pass_context
def explain(ctx: click.Context, **options: Any) -> None:
    """Explain every image under INPUT: a folder (walked recursively), an image, or - (stdin).

    INPUT - reads a list of paths from stdin (see --null, --root). Per image it writes,
    mirroring the input tree under --output-dir: NAME.json (top-k
    predictions, label, target, files) and per method NAME.METHOD.png (heatmap),
    NAME.METHOD.overlay.png or, for the gradient pictures (guided, guided-gradcam,
    smoothgrad, lrp, ig), NAME.METHOD.png, all at the image's original size; and
    index.jsonl, one line per image.

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
    raw_methods, guided = options.pop("methods"), options.pop("guided")
    regions = RegionOptions.take(options)
    try:
        metrics = parse_metrics(options.pop("metrics"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--metrics'") from None
    common = CommonOptions.take(options)
    own = ExplainOptions(method_settings=MethodSettingOptions.take(options), **options)
    check_report_location(own.report, common.output.output_dir)
    refused = {"--metrics": bool(metrics), "--target": own.target != "pred",
               "--save-raw": own.save_raw}  # fmt: skip
    # Everything the model's name decides is checked before anything is loaded or written.
    known = early_task(common.model.model_name, regions.task)
    chosen_methods = _checked_methods(raw_methods, guided, known, refused)

    from camcli.cli.early import refuse_early

    refuse_early(common, layers=own.layers, target=own.target if known == "classify" else None)
    note_unused_options(ctx, known, chosen_methods)
    from camcli.cli.frame import Reporter, prepare_run, run_in_frame
    from camcli.cli.report import report_after_run
    from camcli.methods.activation import CamNotApplicable
    from camcli.models.hooks import LayerUnusable
    from camcli.runs.explain import settings_payload
    from camcli.runs.runtime import StopRequest
    from camcli.runs.work import RunSummary

    run = run_as_task(prepare_run(common), regions.task)
    model = run.model
    task = model.task
    if known is None:  # an own model: its task is known now
        chosen_methods = _checked_methods(raw_methods, guided, task, refused)
        note_unused_options(ctx, task, chosen_methods)
    if task == "classify":
        explainer, settings = explain_settings(run, own, chosen_methods, metrics)

        def body(reporter: Reporter, stop: StopRequest) -> RunSummary:
            return explainer.run(run.items, settings, reporter, stop.event)

    else:
        from camcli.runs.explain import run_explain

        settings = region_settings(
            run,
            own.layers,
            regions,
            raw_methods,
            task,
            refused,
            own.method_settings.seed,
            alpha=own.alpha,
        )

        def body(reporter: Reporter, stop: StopRequest) -> RunSummary:
            check = LabelCheck(reporter, len(model.classes), model.classes_source)
            summary = run_explain(run.items, model, settings, check, stop.event)
            if (note := check.note()) is not None:
                click.echo(f"camcli: {note}", err=True)
            return summary

    code = run_in_frame(
        run,
        body,
        settings_payload(model, settings),
        f"{model.name} at {', '.join(settings.layers)}"
        if any(m in LAYER_METHODS for m in settings.methods)
        else f"{model.name} ({', '.join(settings.methods)})",
        {LayerUnusable: "--layer", CamNotApplicable: "--method"},
    )
    if own.report and (run.rank is None or run.rank.rank == 0):
        code = report_after_run(run.output_dir, code)
    ctx.exit(code)


@dataclass(frozen=True)
class ExplainOptions:
    """``explain``'s own options (the shared groups are in :class:`CommonOptions`)."""

    layers: tuple[str, ...]
    target: str
    top_k: int
    crop: bool
    method_settings: MethodSettingOptions
    save_raw: bool
    alpha: float
    report: bool


def explain_settings(
    run: PreparedRun,
    options: ExplainOptions,
    methods: tuple[str, ...],
    metrics: tuple[str, ...] = (),
) -> tuple[Explainer, Settings]:
    """The library's :class:`camcli.Explainer` of an explain run, and the run's settings.

    The command's options become an ``Explainer`` over the loaded model (methods, layers,
    target, top-k, crop, batch size, method options) and its
    :meth:`~camcli.Explainer.settings` adds the common options: ``camcli explain`` and
    ``Explainer.explain_folder`` write the same files.

    Raises:
        click.BadParameter: for an unknown ``--layer`` or ``--target``, or ``--target label``
            on images outside class folders (exit 2).

    """
    from camcli.api import ArgumentError, Explainer
    from camcli.cli.frame import unknown_layer
    from camcli.models.hooks import UnknownLayer

    loaded = run.model
    method_options = options.method_settings.method_options(loaded, run.chunk_size, metrics)
    try:
        explainer = Explainer(
            loaded,
            methods,
            layers=options.layers,
            device=run.device,
            target=options.target,
            top_k=options.top_k,
            crop=options.crop,
            batch_size=run.batch_size,
            method_options=method_options,
        )
    except UnknownLayer as exc:
        raise unknown_layer(exc, loaded.name) from None
    except ArgumentError as exc:
        option = {"methods": "--method", "layers": "--layer", "task": "--task"}.get(
            exc.argument, "--target"
        )
        raise click.BadParameter(exc.reason, param_hint=f"'{option}'") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--target'") from None
    if "label" in (t.mode for t in (explainer.target, *explainer.extra_targets)):
        _check_labels(run.items, loaded.classes)
    fields = run.common_fields()
    fields.pop("batch_size")
    # The report's thumbnails come with the run when a report is wanted: --report, or an
    # output directory that has had one (it recorded its thumbnails' size).
    thumbnails = options.report or (run.output_dir / REPORT_DIR / "thumbs" / "size.txt").exists()
    settings = explainer.settings(
        run.output_dir,
        **fields,
        save_raw=options.save_raw,
        alpha=options.alpha,
        thumbnails=thumbnails,
    )
    return explainer, settings


def _checked_methods(
    raw: tuple[str, ...], guided: bool | None, task: str | None, refused: dict[str, bool]
) -> tuple[str, ...]:
    """``--method`` checked for ``task`` (``None``: not known before the model loads).

    Returns a classifier's methods (``()`` for a detector's or segmenter's, which
    :func:`~camcli.cli.regions.region_settings` reads from ``raw``).

    Raises:
        click.BadParameter: an unknown method (with the closest names), or one that does not
            apply to the task (exit 2).
    """
    if task in ("detect", "segment"):
        check_region_options(task, raw, refused)
        return ()
    return classifier_methods(raw, task, lambda: _methods(raw, guided))


def _methods(values: tuple[str, ...], guided: bool | None) -> tuple[str, ...]:
    chosen = list(parse_methods(values) if values else DEFAULT_METHODS)
    if guided is True and "guided" not in chosen:
        chosen.append("guided")
    if guided is False and "guided" in chosen:
        chosen.remove("guided")
    if not chosen:
        raise ValueError("no method left after --no-guided")
    return tuple(m for m in ALL_METHODS if m in chosen)


def _check_labels(items: list[ImageItem], classes: Any) -> None:
    unlabeled = [str(i.relative) for i in items if i.label is None]
    if unlabeled:
        raise click.BadParameter(
            f"label needs every image in a class folder, but {unlabeled[0]} is not "
            f"({len(unlabeled)} such image(s))",
            param_hint="'--target'",
        )
    unknown = sorted(
        {i.label for i in items if i.label is not None and classes.resolve(i.label) is None}
    )
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise click.BadParameter(
            f"label needs folders named by class index, WordNet id or class name; "
            f"{len(unknown)} folder(s) name no class of this model: {shown}",
            param_hint="'--target'",
        )
