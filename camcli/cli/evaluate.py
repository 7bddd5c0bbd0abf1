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
from camcli.cli.regions import (
    RegionOptions,
    check_region_options,
    classifier_methods,
    early_task,
    note_unused_options,
    region_options,
    region_settings,
    run_as_task,
)
from camcli.methods.names import LAYER_METHODS, parse_methods, parse_metrics

if TYPE_CHECKING:
    from camcli.cli.frame import PreparedRun
    from camcli.runs.settings import Settings

__all__ = [
    "EVALUATE_METHODS",
    "EvaluateCommandOptions",
    "evaluate",
    "evaluate_settings",
    "refuse_nothing_to_score",
]

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
    help="Object boxes (classifiers and detectors): a folder of Pascal VOC XML files "
    "mirroring the input tree (a/b.jpg -> BOXES/a/b.xml, as ImageNet's and VOC's box "
    "annotations), or one COCO-style JSON file. Class names are matched with the model's "
    "classes as class folders are.",
)
@click.option(
    "--masks",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Object masks (classifiers and segmenters): a folder of PNGs mirroring the input "
    "tree (a/b.jpg -> MASKS/a/b.png), of the image's size. A classifier's: non-zero on the "
    "object; a segmenter's: class indices (palette or grey, as VOC's SegmentationClass, or "
    "RGB in VOC's colours; 255 is no class).",
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
    annotation are counted and scored for faithfulness only. Detectors are scored against
    boxes (--boxes), segmenters against class masks (--masks). Resume and --jsonl are as in
    'camcli explain'; one directory holds one evaluation per model and task.

    \b
    Exit status:
      0    every image evaluated or up to date, and something scored
      1    some images failed, the run could not start or stopped, or the annotations
           matched nothing (no object matched, no box of the class explained): nothing
           was scored (the files say so)
      2    usage error, nothing written: nothing to score (a detector without --boxes, a
           segmenter without --masks, annotations of the other kind, --metrics none
           without annotations, only methods that are not scored), a box file that does
           not parse or names a class the model does not have, masks in colours that are
           not VOC's, annotations that match no image, the directory holds another model's
           or task's evaluation, an unknown method or layer
      130  stopped by SIGINT; 143 by SIGTERM; 141 stdout closed
    """
    raw_methods = options.pop("methods")
    regions = RegionOptions.take(options)
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
    scores_faithfulness = bool(metrics) or road
    # What can be refused before the model loads: the task of a zoo name (or --task) is known.
    known = early_task(common.model.model_name, regions.task)

    def classifiers() -> tuple[str, ...]:
        return parse_methods(raw_methods or EVALUATE_METHODS)

    methods = classifier_methods(raw_methods, known, classifiers)
    refuse_nothing_to_score(known, own, scores_faithfulness, raw_methods)
    given = ctx.get_parameter_source("metrics") == click.core.ParameterSource.COMMANDLINE
    refused = {"--metrics": given and (bool(metrics) or road), "--sanity": own.sanity,
               "--target": own.target not in ("annotated", "pred")}  # fmt: skip
    if known in ("detect", "segment"):  # a zoo name's task: its methods and options now
        check_region_options(known, raw_methods, refused)
    note_unused_options(ctx, known, methods)
    if isinstance(common.output.output_dir, Path) and early_task(common.model.model_name, "auto"):
        # a zoo name (or the embedded model, or timm's) is the name the loaded model has
        _refuse_other_evaluation(
            common.output.output_dir.expanduser(), common.model.model_name, known
        )
    from camcli.cli.frame import Reporter, prepare_run, run_in_frame
    from camcli.io.annotations import AnnotationError, load_annotations
    from camcli.methods.activation import CamNotApplicable
    from camcli.models.hooks import LayerUnusable
    from camcli.report.evaluation import not_scored, not_scored_text
    from camcli.runs.evaluate import EvaluateOptions, evaluate_payload, run_evaluate
    from camcli.runs.runtime import StopRequest
    from camcli.runs.work import RunSummary

    run = run_as_task(prepare_run(common), regions.task)
    model = run.model
    task = model.task
    # The model's task is known now: refuse what it cannot score before any file is written.
    refuse_nothing_to_score(task, own, scores_faithfulness, raw_methods)
    if task == "classify" and not methods:  # drise on an own classifier
        methods = classifier_methods(raw_methods, task, classifiers)
    if known is None:  # an own model: its task is known now
        note_unused_options(ctx, task, methods)
    _refuse_other_evaluation(run.output_dir, model.name, task)
    if task != "classify":
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
    if task == "segment":
        _refuse_unreadable_masks(annotations)
    if task != "classify":
        left_out = not_scored(settings.methods, task)
        if left_out:
            click.echo(f"camcli: not scored: {not_scored_text(left_out)}", err=True)
        _evaluate_regions(ctx, run, settings, own, annotations, part_of_run)
        return
    if settings.target.mode == "class" and not (scores_faithfulness or own.sanity):
        _refuse_target_without_boxes(annotations, settings.target.index, model.classes.name)
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
        if summary.status == "complete" and result["images"] and not _scored_any(result):
            asked = bool(evaluate_options.metrics) or evaluate_options.road
            unscored.append(
                "nothing was scored: no image had a box or mask of the class explained"
                + ("" if asked else ", and --metrics is none")
            )
        return summary

    unscored: list[str] = []

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
    code = _said_empty(unscored, code, part_of_run)
    if own.report and (run.rank is None or run.rank.rank == 0):
        from camcli.cli.report import report_after_run

        code = report_after_run(run.output_dir, code)
    ctx.exit(code)


def _scored_any(result: dict[str, Any]) -> bool:
    """Whether a classifier's evaluation holds any score (a mean or a sanity curve)."""
    from camcli.report.evaluation import HIGHER_IS_BETTER

    measured = any(
        value is not None
        for scores in result["methods"].values()
        for name, value in scores.items()
        if name in HIGHER_IS_BETTER
    )
    return measured or bool(result["sanity"])


def _said_empty(empty: list[str], code: int, part_of_run: bool) -> int:
    """Say that nothing was scored (one line); exit 1 then, unless a shard (a warning)."""
    if not empty:
        return code
    if part_of_run:
        click.echo(f"camcli: warning: this part of the run: {empty[0]}", err=True)
        return code
    click.echo(f"camcli: {empty[0]}", err=True)
    return 1 if code == 0 else code


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
    part_of_run: bool,
) -> None:
    """``evaluate`` on a detector or segmenter: match, score, and write evaluation.json."""
    from camcli.cli.frame import Reporter, run_in_frame
    from camcli.runs.explain import run_regions
    from camcli.runs.regions import nothing_matched, region_evaluation, write_region_evaluation
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
    static = {"model": model.name, "task": settings.task}  # run.json: whose evaluation

    def body(reporter: Reporter, stop: StopRequest) -> RunSummary:
        summary = run_regions(
            run.items, model, settings, _Keep(reporter), stop.event, annotations,
            own.pointing_tolerance, payload,
        )  # fmt: skip
        result = region_evaluation(records, settings.methods, settings.task)
        result.update(model=model.name, weights=model.weights, layers=list(settings.layers),
                      status=summary.status)  # fmt: skip
        name = write_region_evaluation(settings.output_dir, result, settings.name_suffix)
        summary.extra["evaluation"] = {"file": name, "images": result["images"],
                                       "annotated": result["annotated"]}  # fmt: skip
        errors = result.get("annotation_errors")
        if errors and result["annotated"]:
            click.echo(
                f"camcli: --masks: {errors['count']} mask(s) could not be read, those images "
                f"are not scored (e.g. {errors['first']})",
                err=True,
            )
        sentence = nothing_matched(result, settings)
        if sentence is not None and summary.status == "complete":
            unscored.append(sentence)
        return summary

    unscored: list[str] = []

    code = run_in_frame(
        run,
        body,
        {**payload, **static},
        f"{model.name} ({', '.join(settings.methods)})",
        {},
        verb="evaluated",
        kind="evaluate",
    )
    code = _said_empty(unscored, code, part_of_run)
    if own.report and (run.rank is None or run.rank.rank == 0):
        from camcli.cli.report import report_after_run

        code = report_after_run(run.output_dir, code)
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


# What a model of each task is called in messages (as camcli.models.tasks.TASK_NOUNS, which
# imports torch).
_NOUNS = {"classify": "classifier", "detect": "detector", "segment": "segmenter"}
_BOXES = "a folder of Pascal VOC XML files mirroring INPUT, or one COCO JSON file"
_MASKS = (
    "a folder of class-index PNGs mirroring INPUT: palette or grey, as Pascal VOC's "
    "SegmentationClass, or RGB in VOC's colours"
)


def _chosen_methods(raw_methods: tuple[str, ...]) -> list[str]:
    chosen = [m.strip().lower() for v in raw_methods for m in v.split(",") if m.strip()]
    return [{"grad-cam": "gradcam", "grad-cam++": "gradcam++"}.get(m, m) for m in chosen]


def refuse_nothing_to_score(
    task: str | None,
    options: EvaluateCommandOptions,
    faithfulness: bool,
    raw_methods: tuple[str, ...],
) -> None:
    """Refuse a run of ``task`` that could score nothing (``None``: the task is not known yet).

    A detector needs ``--boxes``, a segmenter ``--masks`` (and neither takes the other's);
    a classifier needs an annotation, a faithfulness score or ``--sanity``; a detector's or
    segmenter's ``--method`` needs one method whose maps are scored.

    Raises:
        click.BadParameter: one sentence naming what is missing and the option that fits.
    """
    if task is None:
        return
    if task == "detect":
        if options.masks is not None:
            raise click.BadParameter(
                "a detector's detections are matched to annotated boxes, not to masks: give "
                f"--boxes ({_BOXES}) instead",
                param_hint="'--masks'",
            )
        if options.boxes is None:
            raise click.BadParameter(
                "none given, and a detector's maps are scored against annotated boxes "
                f"({_BOXES}): without them there is nothing to score",
                param_hint="'--boxes'",
            )
    elif task == "segment":
        if options.boxes is not None:
            raise click.BadParameter(
                "a segmenter's classes are scored against class masks, not boxes: give "
                f"--masks ({_MASKS}) instead",
                param_hint="'--boxes'",
            )
        if options.masks is None:
            raise click.BadParameter(
                "none given, and a segmenter's maps are scored against class masks "
                f"({_MASKS}): without them there is nothing to score",
                param_hint="'--masks'",
            )
    elif options.boxes is None and options.masks is None and not (faithfulness or options.sanity):
        raise click.BadParameter(
            "is none and no --boxes or --masks were given, so there is nothing to score: give "
            "--boxes or --masks (localisation), faithfulness scores (e.g. --metrics "
            "deletion,insertion) or --sanity",
            param_hint="'--metrics'",
        )
    if task != "classify":
        from camcli.report.evaluation import not_scored, not_scored_text

        chosen = _chosen_methods(raw_methods) or ["gradcam"]
        left_out = not_scored(chosen, task)
        if all(m in left_out for m in chosen):
            raise click.BadParameter(
                f"evaluate scores none of these maps of a {_NOUNS[task]}: "
                f"{not_scored_text(left_out)}; add a method whose maps are scored (e.g. gradcam)",
                param_hint="'--method'",
            )


def _refuse_other_evaluation(output_dir: Path, model: str, task: str | None) -> None:
    """Refuse a run into a directory that holds the evaluation of another model or task.

    ``model`` is the loaded model's name, or before loading a zoo name (the loaded model's;
    ``task`` ``None``: nothing is checked, as the name a factory or a registered loader gives
    its model is known once it is loaded).

    Raises:
        click.BadParameter: naming ``--output-dir``, before anything is written.
    """
    from camcli.report.evaluation import evaluation_owner

    if task is None:
        return  # a factory's or a registered loader's name is the loaded model's to say
    owner = evaluation_owner(output_dir)
    if owner is None:
        return
    if owner.model == model and (task is None or owner.task == task):
        return
    theirs = _NOUNS.get(owner.task, owner.task)
    mine = f" (a {_NOUNS[task]})" if task is not None else ""
    raise click.BadParameter(
        f"{output_dir} holds the evaluation of {owner.model} (a {theirs}, {owner.file}), and "
        f"this run evaluates {model}{mine}, whose files would replace it: one directory holds "
        "one evaluation per model and task, so evaluate into another --output-dir",
        param_hint="'--output-dir'",
    )


def _refuse_unreadable_masks(annotations: Any) -> None:
    """Refuse class masks that cannot be read as classes, from the first one (exit 2).

    A data set's masks share one form: an RGB mask in colours that are not VOC's, or a mode
    that holds no classes, is refused before the run (the others are read per image).
    """
    from camcli.io.annotations import AnnotationError, class_mask_values

    files = getattr(annotations, "mask_files", {}) or {}
    if not files:
        return
    first = files[min(files)]
    try:
        class_mask_values(first)
    except AnnotationError as exc:
        raise click.BadParameter(str(exc), param_hint="'--masks'") from None


def _refuse_target_without_boxes(annotations: Any, index: int | None, name: Any) -> None:
    """Refuse a --target class that no box annotates when nothing else is scored (exit 2)."""
    if index is None or annotations.masks is not None or annotations.boxes is None:
        return
    if any(o.index == index for objects in annotations.boxes.values() for o in objects):
        return
    raise click.BadParameter(
        f"explains {name(int(index))}, and no box of --boxes is of that class, with --metrics "
        "none: there is nothing to score; explain the annotated classes (--target annotated, "
        "the default) or ask for faithfulness scores (--metrics)",
        param_hint="'--target'",
    )
