"""``camcli evaluate``: which map to trust, measured on the user's own model and images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from camcli import __version__
from camcli.cli.options import (
    CONTEXT,
    CommonOptions,
    MethodSettingOptions,
    SectionedCommand,
    check_report_location,
    config_option,
    input_options,
    method_setting_options,
    model_options,
    output_options,
    runtime_options,
    top_k_option,
)
from camcli.cli.regions import RegionOptions, region_options, region_settings, run_as_task
from camcli.methods.names import LAYER_METHODS, parse_methods, parse_metrics

if TYPE_CHECKING:
    from camcli.cli.frame import PreparedRun
    from camcli.runs.settings import Settings

__all__ = ["EVALUATE_METHODS", "EvaluateCommandOptions", "evaluate", "evaluate_settings"]

# Methods evaluated when --method is not given: the ones that need no extra passes.
EVALUATE_METHODS = ("gradcam", "gradcam++", "layercam", "guided", "guided-gradcam")


@click.command(cls=SectionedCommand, context_settings=CONTEXT)
@input_options
@output_options
@model_options
@click.option(
    "--method",
    "methods",
    multiple=True,
    help="Methods to evaluate, repeatable or comma-separated (the names of 'camcli explain "
    f"--method') [default: {','.join(EVALUATE_METHODS)}].",
)
@click.option(
    "--layer",
    "layers",
    multiple=True,
    help="Target layer of the layer methods (see 'camcli layers MODEL'). Default: chosen "
    "per model.",
)
@click.option(
    "--target",
    default="annotated",
    show_default=True,
    help="Class to explain and score: annotated (per image with --boxes, its annotated class "
    "the model rates highest; the top-1 elsewhere), pred (top-1), label (the image's class "
    "folder), a class index or a class name. Boxes of other classes do not count.",
)
@top_k_option
@click.option(
    "--boxes",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Object boxes: a folder of Pascal VOC XML files mirroring the input tree "
    "(a/b.jpg -> BOXES/a/b.xml, as ImageNet's and VOC's box annotations), or one COCO-style "
    "JSON file. Class names are matched with the model's classes as class folders are.",
)
@click.option(
    "--masks",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Object masks: a folder of PNGs mirroring the input tree (a/b.jpg -> MASKS/a/b.png), "
    "non-zero on the object, of the image's size.",
)
@click.option(
    "--pointing-tolerance",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    help="The pointing game's tolerance in pixels (Zhang et al.'s 15).",
)
@click.option(
    "--metrics",
    default="deletion,insertion,drop",
    show_default=True,
    help="Faithfulness scores, comma-separated: deletion, insertion, drop, road (ROAD with "
    "noisy linear imputation, most and least relevant first, at 10 %...90 %), all, or none.",
)
@click.option(
    "--sanity",
    is_flag=True,
    help="Also run the sanity checks: randomise the model's parameters from the top down "
    "and measure how much each map changes (Spearman rank correlation, SSIM).",
)
@click.option(
    "--sanity-stages",
    type=click.IntRange(min=1, max=64),
    default=5,
    show_default=True,
    help="Randomisation stages: the classifier, then groups of blocks down to the input.",
)
@click.option(
    "--report",
    is_flag=True,
    help="At the end, write the HTML report of the output directory; its evaluation page "
    "(OUTPUT/report/evaluation.html) shows the leaderboard and the plots.",
)
@method_setting_options
@region_options
@runtime_options
@config_option
@click.version_option(__version__, "--version", prog_name="camcli")
@click.pass_context
def evaluate(ctx: click.Context, **options: Any) -> None:
    """Score every method's maps on the images under INPUT: which map to trust.

    Per image and method it measures localisation against --boxes or --masks (pointing
    game, energy-based pointing game, box accuracy, relevance mass and rank accuracy),
    faithfulness (--metrics: deletion, insertion, average drop, ROAD) and, with --sanity, how
    much each map changes when the model is randomised from the top down. It writes, under
    --output-dir: NAME.evaluate.json per image (every score; with --sanity also
    NAME.sanity.png, the maps at each stage), evaluate.index.jsonl, evaluate.run.json, and
    at the end evaluation.json (per method the mean of every score, the sanity curves),
    evaluation.md (the leaderboard) and the plots in evaluation/. Images without an
    annotation are counted and scored for faithfulness only. Resume, --jsonl and the exit
    status are as in 'camcli explain'.

    \b
    Exit status:
      0    every image evaluated or up to date
      1    some images failed, or the run could not start or stopped
      2    usage error (a box file that does not parse or names a class the model does
           not have, an unknown method or layer)
      130  stopped by SIGINT; 143 by SIGTERM; 141 stdout closed
    """
    raw_methods = options.pop("methods")
    regions = RegionOptions.take(options)
    try:
        methods = parse_methods(raw_methods or EVALUATE_METHODS)
    except ValueError as exc:
        if "drise" not in ",".join(raw_methods).lower():
            raise click.BadParameter(str(exc), param_hint="'--method'") from None
        methods = ()  # a detector's method: checked once the model's task is known
    metrics_text = options.pop("metrics")
    parts = [p.strip().lower() for p in metrics_text.split(",")]
    road = "road" in parts or "all" in parts
    try:
        metrics = parse_metrics(",".join(p for p in parts if p != "road"))
    except ValueError as exc:
        message = str(exc).replace("known: ", "known: road, ") + ", all, none"
        raise click.BadParameter(message, param_hint="'--metrics'") from None
    common = CommonOptions.take(options)
    method_settings = MethodSettingOptions.take(options)
    own = EvaluateCommandOptions(**options)
    check_report_location(own.report, common.output.output_dir)

    from camcli.cli.early import refuse_early

    refuse_early(
        common,
        layers=own.layers,
        target=None if own.target == "annotated" else own.target,
        several_targets=False,
    )
    from camcli.cli.frame import Reporter, prepare_run, run_in_frame
    from camcli.io.annotations import AnnotationError, load_annotations
    from camcli.methods.activation import CamNotApplicable
    from camcli.models.hooks import LayerUnusable
    from camcli.runs.evaluate import EvaluateOptions, evaluate_payload, run_evaluate
    from camcli.runs.runtime import StopRequest
    from camcli.runs.work import RunSummary

    run = run_as_task(prepare_run(common), regions.task)
    model = run.model
    task = model.task
    if task != "classify":
        given = ctx.get_parameter_source("metrics") == click.core.ParameterSource.COMMANDLINE
        refused = {"--metrics": given and (bool(metrics) or road), "--sanity": own.sanity,
                   "--target": own.target not in ("annotated", "pred")}  # fmt: skip
        settings = region_settings(
            run,
            own.layers,
            regions,
            raw_methods,
            task,
            refused,
            method_settings.seed,
            kind="evaluate",
        )
    else:
        settings = evaluate_settings(run, own, methods, method_settings)
    try:
        annotations = load_annotations(
            own.boxes, own.masks, [item.relative for item in run.items], model.classes.resolve
        )
    except AnnotationError as exc:
        hint = "'--masks'" if str(exc).startswith("--masks") else "'--boxes'"
        raise click.BadParameter(str(exc), param_hint=hint) from None
    # A shard or a torchrun rank sees part of the images: the others may hold the matches.
    part_of_run = run.shard[1] > 1 or run.rank is not None
    for matching in annotations.matching:
        if matching.images and not matching.matched and not part_of_run:
            raise click.BadParameter(matching.nothing_matched(), param_hint=f"'{matching.option}'")
        click.echo(f"camcli: {matching.summary()}", err=True)
    if task != "classify":
        _evaluate_regions(ctx, run, settings, own, annotations)
        return
    evaluate_options = EvaluateOptions(
        metrics=metrics,
        road=road,
        sanity=own.sanity,
        sanity_stages=own.sanity_stages,
        tolerance=own.pointing_tolerance,
        annotated=own.target == "annotated",
    )

    def body(reporter: Reporter, stop: StopRequest) -> RunSummary:
        from camcli.report.evaluation import write_evaluation

        totals = _Totals(reporter, settings)
        summary = run_evaluate(
            run.items, model, settings, evaluate_options, annotations, totals, stop.event
        )
        result = write_evaluation(
            settings.output_dir,
            totals.totals,
            {
                "model": model.name,
                "weights": model.weights,
                "target": "annotated"
                if evaluate_options.annotated
                else settings.target.mode
                if settings.target.mode != "class"
                else model.classes.name(int(settings.target.index or 0)),
                "layers": list(settings.layers),
                "status": "complete" if summary.status == "complete" else "interrupted",
                "unannotated": totals.totals.evaluated - totals.totals.annotated,
            },
            settings.method_options.metric_steps,
            settings.name_suffix,
        )
        for line in totals.box_notes():
            click.echo(f"camcli: --boxes: {line}", err=True)
        empty = result.get("empty_masks", 0)
        if empty:
            click.echo(
                f"camcli: --masks: {empty} mask(s) have no non-zero pixel (an empty mask "
                "marks no object): those images have no localisation scores",
                err=True,
            )
        other = result["without_target_box"] - empty
        if other:
            click.echo(
                f"camcli: --boxes: {other} annotated image(s) have boxes only of other classes "
                "than the one explained: they have no localisation scores (--target annotated, "
                "the default, explains each image's annotated class)",
                err=True,
            )
        summary.extra["evaluation"] = {
            "file": f"evaluation{settings.name_suffix}.json",
            "images": result["images"],
            "annotated": result["annotated"],
        }
        return summary

    layered = any(m in LAYER_METHODS for m in settings.methods)
    code = run_in_frame(
        run,
        body,
        evaluate_payload(model, settings, evaluate_options, annotations),
        f"{model.name} ({', '.join(settings.methods)})"
        + (f" at {', '.join(settings.layers)}" if layered else ""),
        {LayerUnusable: "--layer", CamNotApplicable: "--method"},
        verb="evaluated",
        kind="evaluate",
    )
    if own.report and (run.rank is None or run.rank.rank == 0):
        from camcli.cli.report import report_after_run

        code = report_after_run(run.output_dir, code)
    ctx.exit(code)


class _Totals:
    """A reporter that also sums the records' scores for ``evaluation.json``."""

    def __init__(self, reporter: Any, settings: Settings) -> None:
        from camcli.report.evaluation import EvaluationTotals

        self.reporter = reporter
        self.settings = settings
        self.totals = EvaluationTotals()
        # What fitting the boxes to their images took: count and first example, per kind.
        self.boxes: dict[str, list[Any]] = {}

    def record(self, record: dict[str, Any]) -> None:
        from pathlib import PurePosixPath

        from camcli.io.write import record_path

        annotation = record.get("annotation") or {}
        for key in ("boxes_scaled_from", "boxes_clipped", "boxes_skipped"):
            if annotation.get(key):
                count = 1 if key == "boxes_scaled_from" else int(annotation[key])
                self.boxes.setdefault(key, [0, record["image"], annotation[key]])[0] += count
        if record.get("status") == "ok":
            path = record_path(
                self.settings.output_dir, PurePosixPath(record["image"]), self.settings.kind
            )
            self.totals.add(record, path.relative_to(self.settings.output_dir).as_posix())
        self.reporter.record(record)

    def advance(self, count: int) -> None:
        self.reporter.advance(count)

    def passes(self, done: int, planned: int, method: str) -> None:
        from camcli.runs.work import report_passes

        report_passes(self.reporter, done, planned, method)

    def box_notes(self) -> list[str]:
        """One line per kind of box that had to be fitted to its image, with an example."""
        lines = []
        if "boxes_scaled_from" in self.boxes:
            count, image, (w, h) = self.boxes["boxes_scaled_from"]
            lines.append(
                f"the boxes of {count} image(s) were drawn on a copy of another size (e.g. "
                f"{image}: <size> {w} x {h}): they were scaled to the image"
            )
        if "boxes_clipped" in self.boxes:
            count, image, _ = self.boxes["boxes_clipped"]
            lines.append(
                f"{count} box(es) partly outside their image were clipped to it (e.g. in {image})"
            )
        if "boxes_skipped" in self.boxes:
            count, image, _ = self.boxes["boxes_skipped"]
            lines.append(
                f"{count} box(es) empty, inverted (xmin > xmax) or wholly outside their image "
                f"were left out (e.g. in {image})"
            )
        return lines


def _evaluate_regions(
    ctx: click.Context,
    run: PreparedRun,
    settings: Settings,
    own: EvaluateCommandOptions,
    annotations: Any,
) -> None:
    """``evaluate`` on a detector or segmenter: match, score, and write evaluation.json."""
    from camcli.cli.frame import Reporter, run_in_frame
    from camcli.runs.explain import run_regions
    from camcli.runs.regions import region_evaluation, write_region_evaluation
    from camcli.runs.runtime import StopRequest
    from camcli.runs.work import RunSummary

    model = run.model
    records: list[dict[str, Any]] = []

    class _Keep:
        def __init__(self, reporter: Reporter) -> None:
            self.reporter = reporter

        def record(self, record: dict[str, Any]) -> None:
            if record.get("status") == "ok":
                records.append(record)
            self.reporter.record(record)

        def advance(self, count: int) -> None:
            self.reporter.advance(count)

        def passes(self, done: int, planned: int, method: str) -> None:
            self.reporter.passes(done, planned, method)

    payload = {"annotations": annotations.source, "tolerance": own.pointing_tolerance}

    def body(reporter: Reporter, stop: StopRequest) -> RunSummary:
        summary = run_regions(
            run.items, model, settings, _Keep(reporter), stop.event, annotations,
            own.pointing_tolerance, payload,
        )  # fmt: skip
        result = region_evaluation(records, settings.methods)
        result.update(model=model.name, weights=model.weights, layers=list(settings.layers),
                      status=summary.status)  # fmt: skip
        name = write_region_evaluation(settings.output_dir, result, settings.name_suffix)
        summary.extra["evaluation"] = {"file": name, "images": result["images"],
                                       "annotated": result["annotated"]}  # fmt: skip
        return summary

    code = run_in_frame(
        run,
        body,
        {**payload, "task": settings.task},
        f"{model.name} ({', '.join(settings.methods)})",
        {},
        verb="evaluated",
        kind="evaluate",
    )
    ctx.exit(code)


@dataclass(frozen=True)
class EvaluateCommandOptions:
    """``evaluate``'s own options (the shared groups are in :class:`CommonOptions`)."""

    layers: tuple[str, ...]
    target: str
    top_k: int
    boxes: Path | None
    masks: Path | None
    pointing_tolerance: float
    sanity: bool
    sanity_stages: int
    report: bool


def evaluate_settings(
    run: PreparedRun,
    options: EvaluateCommandOptions,
    methods: tuple[str, ...],
    method_settings: MethodSettingOptions,
) -> Settings:
    """The run settings of ``evaluate`` (click.BadParameter for an unknown layer or target)."""
    from camcli.cli.frame import checked_layers
    from camcli.runs.settings import parse_target

    model = run.model
    layers = checked_layers(model, options.layers)
    try:
        target = parse_target(
            "pred" if options.target == "annotated" else options.target, model.classes
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--target'") from None
    if target.mode == "label":
        missing = [str(i.relative) for i in run.items if i.label is None]
        if missing:
            raise click.BadParameter(
                f"label needs every image in a class folder, but {missing[0]} is not",
                param_hint="'--target'",
            )
    return run.settings(
        layers=layers,
        methods=methods,
        kind="evaluate",
        target=target,
        top_k=options.top_k,
        method_options=method_settings.method_options(model, run.chunk_size),
    )
