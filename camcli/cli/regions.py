"""Options and settings of ``explain`` and ``evaluate`` on detectors and segmenters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from camcli.cli.frame import PreparedRun
    from camcli.runs.settings import Settings

__all__ = [
    "LabelCheck",
    "RegionOptions",
    "classifier_methods",
    "region_options",
    "region_settings",
    "run_as_task",
]

F = TypeVar("F", bound=Callable[..., Any])


def region_options(command: F) -> F:
    """The options of detectors and segmenters, on a command.

    ``--task``, ``--score-threshold``, ``--max-detections``, ``--min-pixels`` and
    ``--drise-masks``.
    """
    options = [
        click.option(
            "--task",
            type=click.Choice(["auto", "classify", "detect", "segment"]),
            default="auto",
            show_default=True,
            help=(
                "What the model does, found from what it returns; classify runs a segmenter "
                "as a classifier of its per-pixel logits averaged."
            ),
        ),
        click.option(
            "--score-threshold",
            type=click.FloatRange(0.0, 1.0),
            default=0.5,
            show_default=True,
            help="Detectors: the least score of a detection that is explained.",
        ),
        click.option(
            "--max-detections",
            type=click.IntRange(min=1),
            default=20,
            show_default=True,
            help="Detectors: the most detections explained per image (best first).",
        ),
        click.option(
            "--min-pixels",
            type=click.FloatRange(0.0, 1.0),
            default=0.01,
            show_default=True,
            help="Segmenters: the least share of the image a class covers to be explained.",
        ),
        click.option(
            "--drise-masks",
            type=click.IntRange(min=1),
            default=1000,
            show_default=True,
            help="Detectors: D-RISE's random masks per image.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True)
class RegionOptions:
    """``explain``'s options for detectors and segmenters."""

    task: str
    score_threshold: float
    max_detections: int
    min_pixels: float
    drise_masks: int

    @classmethod
    def take(cls, options: dict[str, Any]) -> RegionOptions:
        """Take these options out of Click's keyword arguments (changed in place)."""
        return cls(**{name: options.pop(name) for name in cls.__dataclass_fields__})


def run_as_task(run: PreparedRun, wanted: str) -> PreparedRun:
    """The run with its model run as ``--task`` (``auto``: the task found from its output).

    Raises:
        click.BadParameter: naming ``--task``, when the model cannot be run as that task.
    """
    from camcli.models.own import OptionProblem, with_task

    try:
        model = with_task(run.model, wanted)
    except OptionProblem as exc:
        raise click.BadParameter(str(exc), param_hint="'--task'") from None
    return run if model is run.model else replace(run, model=model)


NOUNS = {"classify": "classifier", "detect": "detector", "segment": "segmenter"}


def early_task(model_name: str, wanted: str) -> str | None:
    """The task a run of ``--model model_name --task wanted`` has, when known unloaded.

    The embedded model and timm's are classifiers and torchvision's zoo names say theirs
    (:func:`camcli.models.names.known_task`); an own model's task is known once it is loaded
    (``None``, unless ``--task`` names it).

    Raises:
        click.BadParameter: a ``--task`` the named model cannot be run as (exit 2), before
            anything loads.
    """
    from camcli.models.names import known_task

    known = known_task(model_name)
    if wanted == "auto":
        return known
    if known is None or known == wanted or (known == "segment" and wanted == "classify"):
        return wanted
    raise click.BadParameter(
        f"{model_name} is a {NOUNS[known]}, not a {NOUNS[wanted]}: the one override is --task "
        "classify on a segmenter, whose per-pixel logits are then averaged",
        param_hint="'--task'",
    )


# Why an option of the classifiers does not apply to a detector or a segmenter.
_NOT_FOR_REGIONS = {
    "--metrics": "faithfulness scores delete and insert a classifier's class evidence",
    "--target": "each {each} is explained",
    "--save-raw": "raw maps are a classifier's; a {noun}'s record holds each map's max and peak",
    "--sanity": "the sanity check randomises a classifier's layers",
}


def check_region_options(
    task: str, raw_methods: tuple[str, ...], refused: dict[str, bool]
) -> tuple[str, ...]:
    """A detector's or segmenter's methods from ``--method`` (checked), in canonical order.

    Needs no model: run before it loads when the task is known from the model's name.

    Args:
        task: ``detect`` or ``segment``.
        raw_methods: ``--method`` values as given.
        refused: options of the classifiers, by name: whether each was given.

    Raises:
        click.BadParameter: a method or option that does not apply to the task (exit 2).
    """
    from camcli.methods.names import (
        ALL_METHODS,
        DETECTION_METHODS,
        REGION_ONLY_METHODS,
        SEGMENTATION_METHODS,
        method_hint,
    )

    allowed = DETECTION_METHODS if task == "detect" else SEGMENTATION_METHODS
    chosen = [m.strip().lower() for v in raw_methods for m in v.split(",") if m.strip()]
    chosen = [{"grad-cam": "gradcam", "grad-cam++": "gradcam++"}.get(m, m) for m in chosen]
    chosen = chosen or ["gradcam"]
    for method in chosen:
        if method not in allowed:
            why = (
                "needs a classifier's global pooling and linear head"
                if method == "cam"
                else f"does not apply to a {NOUNS[task]}"
            )
            if method not in (*ALL_METHODS, *REGION_ONLY_METHODS):
                why = f"is not a method{method_hint(method)}"
            raise click.BadParameter(
                f"{method} {why}; a {NOUNS[task]}'s maps come from {', '.join(allowed)}",
                param_hint="'--method'",
            )
    for name, given in refused.items():
        if given:
            each = "detection" if task == "detect" else "class in the predicted mask"
            reason = _NOT_FOR_REGIONS.get(name, "each {each} is explained")
            raise click.BadParameter(
                f"does not apply to a {NOUNS[task]}: " + reason.format(each=each, noun=NOUNS[task]),
                param_hint=f"'{name}'",
            )
    return tuple(m for m in allowed if m in chosen)


def classifier_methods(
    raw: tuple[str, ...], task: str | None, parse: Callable[[], tuple[str, ...]]
) -> tuple[str, ...]:
    """A classifier's methods from ``--method`` (``parse`` reads them), checked for ``task``.

    ``()`` for a detector's or segmenter's (their methods are read by
    :func:`check_region_options`), and when ``task`` is not known yet (an own model) and the
    names include a detector's method: checked again once the model is loaded.

    Raises:
        click.BadParameter: an unknown method (with the closest names), or a detector's method
            for a classifier (exit 2).
    """
    from camcli.methods.names import REGION_ONLY_METHODS, parse_methods

    if task in ("detect", "segment"):
        return ()
    try:
        return parse()
    except ValueError as exc:
        names = [m.strip().lower() for v in raw for m in v.split(",") if m.strip()]
        others = [n for n in names if n not in REGION_ONLY_METHODS]
        if task is None and len(others) < len(names):
            try:
                parse_methods(others or ["gradcam"])
                return ()  # perhaps a detector's: checked once the model is loaded
            except ValueError:
                pass
        raise click.BadParameter(str(exc), param_hint="'--method'") from None


def region_settings(
    run: PreparedRun,
    layers: tuple[str, ...],
    regions: RegionOptions,
    raw_methods: tuple[str, ...],
    task: str,
    refused: dict[str, bool],
    seed: int,
    **fields: Any,
) -> Settings:
    """The settings of a detector's or a segmenter's run (usage errors: exit 2).

    Args:
        run: the prepared run (its model's task is ``task``).
        layers: ``--layer`` values.
        regions: the detection and segmentation options.
        raw_methods: ``--method`` values as given.
        task: ``detect`` or ``segment``.
        refused: options of the classifiers, by name: whether each was given.
        seed: the masks' seed.
        fields: more settings (``alpha``, ``kind``).

    Raises:
        click.BadParameter: a method, option or layer that does not apply to the task.
    """
    from camcli.cli.frame import checked_layers
    from camcli.methods.batch import MethodOptions

    methods = check_region_options(task, raw_methods, refused)
    layered = any(m != "drise" for m in methods)
    layers = checked_layers(run.model, layers) if layered else ()
    return run.settings(
        layers=layers,
        methods=methods,
        method_options=MethodOptions(chunk_size=run.chunk_size, seed=seed),
        task=task,
        score_threshold=regions.score_threshold,
        max_detections=regions.max_detections,
        min_pixels=regions.min_pixels,
        drise_masks=regions.drise_masks,
        **fields,
    )


class LabelCheck:
    """A reporter that notes a detector's labels past the end of its class names.

    A ``--classes`` file shorter than the labels the detector returns is found only when it
    returns them: the detections keep their index and are named ``class_N``, and the run
    says so at its end (one line; nothing is lost).
    """

    def __init__(self, reporter: Any, names: int, source: str | None) -> None:
        self.reporter = reporter
        self.names = names
        self.source = source
        self.unnamed: dict[int, int] = {}

    def record(self, record: dict[str, Any]) -> None:
        """Pass the record on, noting its unnamed labels."""
        for detection in record.get("detections") or []:
            index = detection.get("index")
            if isinstance(index, int) and index >= self.names:
                self.unnamed[index] = self.unnamed.get(index, 0) + 1
        self.reporter.record(record)

    def advance(self, count: int) -> None:
        """Pass the progress on."""
        self.reporter.advance(count)

    def passes(self, done: int, planned: int, method: str) -> None:
        """Pass the progress within a batch on."""
        passes = getattr(self.reporter, "passes", None)
        if passes is not None:
            passes(done, planned, method)

    def note(self) -> str | None:
        """The closing line about unnamed labels, or ``None``."""
        if not self.unnamed:
            return None
        labels = ", ".join(f"{i} ({n} detection{'s' if n != 1 else ''})"
                           for i, n in sorted(self.unnamed.items()))  # fmt: skip
        where = f"--classes {self.source.split(' (')[0]}" if self.source else "the model's classes"
        return (
            f"{where} names {self.names} classes (index 0 the background), but the detector "
            f"returned labels {labels}: they are named class_N in the records"
        )


# Options that only some tasks, or some methods, read: (tasks, methods that use it).
_OPTION_USE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "score_threshold": (("detect",), ()),
    "max_detections": (("detect",), ()),
    "drise_masks": (("detect",), ("drise",)),
    "min_pixels": (("segment",), ()),
    # a detector resizes and normalises the photos itself (torchvision's convention)
    "input_size": (("classify", "segment"), ()),
    "mean": (("classify", "segment"), ()),
    "std": (("classify", "segment"), ()),
    "interpolation": (("classify", "segment"), ()),
    "crop": (("classify", "segment"), ()),
    "rise_masks": (("classify",), ("rise",)),
    "smooth_samples": (("classify",), ("smoothgrad",)),
    "smooth_noise": (("classify",), ("smoothgrad",)),
    "smooth_guided": (("classify",), ("smoothgrad",)),
    "ig_steps": (("classify",), ("ig",)),
    "ig_tolerance": (("classify",), ("ig",)),
    "ig_max_steps": (("classify",), ("ig",)),
    "ig_rule": (("classify",), ("ig",)),
    "ig_baseline": (("classify",), ("ig",)),
}


def unused_options(ctx: click.Context, task: str | None, methods: tuple[str, ...]) -> list[str]:
    """The options given (on the command line or in a config) that this run does not read.

    Args:
        ctx: the command's context (where each option's value came from).
        task: the model's task (``None``: not known yet, nothing is said).
        methods: a classifier's methods, or ``()`` for a detector's or segmenter's (whose
            methods are read by :func:`check_region_options`).
    """
    if task is None:
        return []
    given = {click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT,
             click.core.ParameterSource.DEFAULT_MAP}  # fmt: skip
    raw = ctx.params.get("methods") or ()
    chosen = set(methods) | {m.strip().lower() for v in raw for m in v.split(",")}
    unused = []
    for name, (tasks, readers) in _OPTION_USE.items():
        if ctx.get_parameter_source(name) not in given:
            continue
        if task not in tasks or (readers and not chosen & set(readers)):
            unused.append("--" + name.replace("_", "-"))
    return unused


def note_unused_options(ctx: click.Context, task: str | None, methods: tuple[str, ...]) -> None:
    """Say on stderr, in one line, which given options this run ignores (and why)."""
    unused = unused_options(ctx, task, methods)
    if not unused or task is None:
        return
    raw = ctx.params.get("methods") or ()
    named = methods or tuple(m.strip().lower() for v in raw for m in v.split(",") if m.strip())
    click.echo(
        f"camcli: {', '.join(unused)} not used: "
        + ("it does" if len(unused) == 1 else "they do")
        + f" not apply to a {NOUNS[task]} with {', '.join(named) or 'its default methods'}",
        err=True,
    )
