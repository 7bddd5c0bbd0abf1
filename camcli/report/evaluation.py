"""An evaluation's results: means per method, the leaderboard, the pictures.

Read from the per-image records of ``camcli evaluate`` (new and reused alike), written at
the end of the run into the output directory:

* ``evaluation.json``: per method the mean of every score and its number of images
  (``methods.METHOD.SCORE``; a score that was not measured is ``null``), the sanity curves
  (``sanity.METHOD``: a list of ``{"stage", "spearman", "ssim"}``), the mean curves;
* ``evaluation.md``: the leaderboard, a row per method, a column per score, the best in
  bold;
* ``evaluation/sanity.png``, ``evaluation/curves.png``, ``evaluation/road.png``: the plots;
  ``evaluation/stages.png``: the first image's maps at each randomisation stage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camcli import __version__
from camcli.io.discover import natural_key
from camcli.io.storage import is_remote
from camcli.io.write import atomic_write_bytes

__all__ = [
    "EVALUATION_DIR",
    "EVALUATION_PAGE",
    "HIGHER_IS_BETTER",
    "NOT_SCORED",
    "SCORE_TITLES",
    "EvaluationOwner",
    "EvaluationTotals",
    "evaluation_owner",
    "evaluation_page",
    "leaderboard",
    "not_scored",
    "not_scored_text",
    "write_evaluation",
    "write_evaluation_page",
]

EVALUATION_DIR = "evaluation"
# Every score of evaluation.json, in its column order, and whether higher is better.
HIGHER_IS_BETTER = {
    "pointing_game": True,
    "energy_pointing_game": True,
    "box_accuracy": True,
    "mass_accuracy": True,
    "rank_accuracy": True,
    "deletion": False,
    "insertion": True,
    "drop": False,
    "road_morf": False,
    "road_lerf": True,
}
SCORE_TITLES = {
    "pointing_game": "pointing game",
    "energy_pointing_game": "energy pointing",
    "box_accuracy": "box accuracy",
    "mass_accuracy": "mass accuracy",
    "rank_accuracy": "rank accuracy",
    "deletion": "deletion",
    "insertion": "insertion",
    "drop": "average drop",
    "road_morf": "ROAD MoRF",
    "road_lerf": "ROAD LeRF",
    "sanity": "sanity: Spearman, all randomised",
}
# Methods a detector's or segmenter's evaluate draws but does not score, and why ({each}:
# detection or class).
NOT_SCORED = {
    "eigencam": "one class-agnostic map per image, not one per {each}",
    "guided": "a picture of each detection's input gradients, not a map of its class",
}


def not_scored(methods: Sequence[str], task: str) -> dict[str, str]:
    """The methods of ``methods`` that ``task``'s evaluate leaves out, with the reason.

    A classifier's evaluate scores every method (pictures by their magnitude); a detector's
    and a segmenter's score the maps of each detection or class, so Eigen-CAM (one map per
    image) and guided backprop's pictures are left out.
    """
    if task == "classify":
        return {}
    each = "detection" if task == "detect" else "class"
    return {
        m: NOT_SCORED[m].format(each=each)
        for m in methods
        if m in NOT_SCORED and (m != "guided" or task == "detect")  # a segmenter has no guided
    }


def not_scored_text(left_out: dict[str, str]) -> str:
    """``eigencam (why), guided (why)``: the methods left out, in one line."""
    return ", ".join(f"{method} ({why})" for method, why in left_out.items())


@dataclass(frozen=True)
class EvaluationOwner:
    """The model and task whose evaluation an output directory holds.

    Attributes:
        model: the model's name as its records give it.
        task: ``classify``, ``detect`` or ``segment``.
        file: the file that says so (under the output directory).

    """

    model: str
    task: str
    file: str


def _json_at(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _first_line(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            return json.loads(handle.readline() or b"null")
    except (OSError, ValueError):
        return None


def evaluation_owner(output_dir: Path) -> EvaluationOwner | None:
    """Whose evaluation ``output_dir`` holds (``camcli evaluate``'s files), or ``None``.

    Read from ``evaluation.json`` (or a shard's), else from the first record that
    ``evaluate.index.jsonl`` (or a shard's) lists: a run stopped before its end has no
    ``evaluation.json`` yet, but its records are there. Local directories are searched for
    shards' files too; in object storage only the whole run's names are read.
    """
    local = isinstance(output_dir, Path) and not is_remote(output_dir)
    summaries = [output_dir / "evaluation.json"]
    indexes = [output_dir / "evaluate.index.jsonl"]
    if local and output_dir.is_dir():
        summaries += sorted(output_dir.glob("evaluation.*.json"))
        indexes += sorted(output_dir.glob("evaluate.index.*.jsonl"))
    for path in summaries:
        data = _json_at(path)
        if isinstance(data, dict) and isinstance(data.get("methods"), dict) and data.get("model"):
            return EvaluationOwner(str(data["model"]), str(data.get("task", "classify")), path.name)
    for path in indexes:
        entry = _first_line(path)
        if not isinstance(entry, dict) or not isinstance(entry.get("record"), str):
            continue
        record = _json_at(output_dir / entry["record"])
        if isinstance(record, dict) and record.get("model"):
            return EvaluationOwner(
                str(record["model"]), str(record.get("task", "classify")), entry["record"]
            )
    return None


class EvaluationTotals:
    """Sums of the records' scores, sanity similarities and curves, per method."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.sums: dict[str, dict[str, float]] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.images: dict[str, int] = {}
        self.stages: list[str] = []
        self.sanity: dict[str, list[list[float]]] = {}  # per stage: [spearman, ssim, n]
        self.curves: dict[str, dict[str, tuple[list[float], int]]] = {}
        self.first_sheet: tuple[str, str] | None = None  # (image, sheet path under output)
        self.evaluated = 0
        self.annotated = 0
        self.without_target_box = 0
        self.empty_masks = 0

    def add(self, record: dict[str, Any], record_file: str | None = None) -> None:
        """Count one image's record (failures and other records are ignored).

        Args:
            record: the record.
            record_file: its path under the output directory, with '/' (for the sheet).

        """
        scores = record.get("scores")
        if record.get("status") != "ok" or not isinstance(scores, dict):
            return
        self.evaluated += 1
        annotation = record.get("annotation")
        if annotation is not None:
            self.annotated += 1
            if not annotation.get("target_boxes") and not annotation.get("mask"):
                self.without_target_box += 1
                if annotation.get("mask") == 0 and not annotation.get("objects"):
                    self.empty_masks += 1  # a mask file with no non-zero pixel
        for method, values in scores.items():
            if method not in self.methods:
                self.methods.append(method)
            self.images[method] = self.images.get(method, 0) + 1
            sums = self.sums.setdefault(method, {})
            counts = self.counts.setdefault(method, {})
            for name in HIGHER_IS_BETTER:
                value = values.get(name)
                if value is not None:
                    sums[name] = sums.get(name, 0.0) + float(value)
                    counts[name] = counts.get(name, 0) + 1
        for method, stages in (record.get("sanity") or {}).items():
            names = [s["stage"] for s in stages]
            if not self.stages:
                self.stages = names
            if names != self.stages:
                continue
            totals = self.sanity.setdefault(method, [[0.0, 0.0, 0] for _ in names])
            for total, stage in zip(totals, stages, strict=True):
                total[0] += float(stage["spearman"])
                total[1] += float(stage["ssim"])
                total[2] += 1
        for method, curves in (record.get("curves") or {}).items():
            mine = self.curves.setdefault(method, {})
            for name, values in curves.items():
                summed, count = mine.get(name, ([0.0] * len(values), 0))
                if len(summed) == len(values):
                    mine[name] = (
                        [a + float(b) for a, b in zip(summed, values, strict=True)],
                        count + 1,
                    )
        sheet = ((record.get("files") or {}).get("sanity") or {}).get("sheet")
        if sheet and record_file is not None:
            folder = record_file.rsplit("/", 1)[0] + "/" if "/" in record_file else ""
            candidate = (str(record["image"]), folder + sheet)
            first = self.first_sheet
            if first is None or natural_key(candidate[0]) < natural_key(first[0]):
                self.first_sheet = candidate

    def result(self) -> dict[str, Any]:
        """``evaluation.json``'s content (without the run's identity)."""
        methods: dict[str, Any] = {}
        for method in self.methods:
            sums, counts = self.sums.get(method, {}), self.counts.get(method, {})
            methods[method] = {
                **{
                    name: round(sums[name] / counts[name], 6) if counts.get(name) else None
                    for name in HIGHER_IS_BETTER
                },
                "images": self.images.get(method, 0),
                "scored": {name: counts.get(name, 0) for name in HIGHER_IS_BETTER},
            }
        sanity = {
            method: [
                {
                    "stage": stage,
                    "spearman": round(total[0] / total[2], 6),
                    "ssim": round(total[1] / total[2], 6),
                }
                for stage, total in zip(self.stages, totals, strict=True)
                if total[2]
            ]
            for method, totals in self.sanity.items()
        }
        curves = {
            method: {
                name: [round(v / count, 6) for v in summed]
                for name, (summed, count) in mine.items()
            }
            for method, mine in self.curves.items()
        }
        return {
            "images": self.evaluated,
            "annotated": self.annotated,
            "without_target_box": self.without_target_box,
            "empty_masks": self.empty_masks,
            "methods": methods,
            "sanity": sanity,
            "stages": self.stages,
            "curves": curves,
            "higher_is_better": dict(HIGHER_IS_BETTER),
        }


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def leaderboard(result: dict[str, Any]) -> str:
    """The Markdown table: a row per method, a column per measured score, the best in bold."""
    methods: dict[str, dict[str, Any]] = result["methods"]
    columns = [n for n in HIGHER_IS_BETTER if any(m.get(n) is not None for m in methods.values())]
    final = {
        method: stages[-1]["spearman"] for method, stages in result["sanity"].items() if stages
    }
    rows: dict[str, dict[str, float | None]] = {
        method: {n: values.get(n) for n in columns} for method, values in methods.items()
    }
    if final:
        columns.append("sanity")
        for method in rows:
            rows[method]["sanity"] = final.get(method)
    if not columns:
        return (
            "No score was measured: no image had a box or mask of the class explained, and "
            "no faithfulness score was asked for (--metrics).\n"
        )
    better = {**HIGHER_IS_BETTER, "sanity": False}
    best: dict[str, float] = {}
    for name in columns:
        values = [v for row in rows.values() if (v := row[name]) is not None]
        if values:
            best[name] = max(values) if better[name] else min(values)
    head = (
        "| method | "
        + " | ".join(f"{SCORE_TITLES[n]} {'↑' if better[n] else '↓'}" for n in columns)
        + " | images |"
    )
    lines = [head, "| --- " * (len(columns) + 2) + "|"]
    for method, row in rows.items():
        cells = []
        for name in columns:
            value = row[name]
            text = _number(value)
            if value is not None and name in best and round(value, 3) == round(best[name], 3):
                text = f"**{text}**"
            scored = methods[method].get("scored", {}).get(name)
            if value is not None and scored is not None and scored != methods[method]["images"]:
                text += f" (n={scored})"  # a mean over fewer images than the row's
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {methods[method]['images']} |")
    return "\n".join(lines) + "\n"


def write_evaluation(
    output_dir: Path,
    totals: EvaluationTotals,
    identity: dict[str, Any],
    steps: int,
    name_suffix: str = "",
) -> dict[str, Any]:
    """Write ``evaluation.json``, ``evaluation.md`` and the pictures (each atomically).

    A shard (``--shard``, torchrun) sees only its own images: its files carry its suffix
    (``evaluation.shard-0-of-4.json``, ``evaluation.shard-0-of-4/``); a run without
    ``--shard`` afterwards reuses every shard's records and writes the whole evaluation.

    Args:
        output_dir: the run's output directory.
        totals: the sums over the records.
        identity: the run's model, target and settings, recorded as they are.
        steps: the deletion and insertion curves' steps (their x values).
        name_suffix: the shard's (and rank's) suffix, ``""`` when not sharded.

    Returns:
        ``evaluation.json``'s content.

    """
    from camcli.pictures.plots import curve_plot, sanity_plot

    result = {"camcli": __version__, "task": "classify", "not_scored": {}, **identity,
              **totals.result()}  # fmt: skip
    stem = f"{EVALUATION_DIR}{name_suffix}"
    folder = output_dir / stem
    pictures: dict[str, str] = {}
    if result["sanity"]:
        curves = {
            method: {
                "spearman": [s["spearman"] for s in stages],
                "ssim": [s["ssim"] for s in stages],
            }
            for method, stages in result["sanity"].items()
        }
        atomic_write_bytes(folder / "sanity.png", sanity_plot(result["stages"], curves))
        pictures["sanity"] = f"{stem}/sanity.png"
    if totals.first_sheet is not None:
        sheet = output_dir / totals.first_sheet[1]
        if sheet.is_file():
            atomic_write_bytes(folder / "stages.png", sheet.read_bytes())
            pictures["stages"] = f"{stem}/stages.png"
            result["stages_image"] = totals.first_sheet[0]
    mean_curves = result["curves"]
    panels = []
    xs = [k / steps for k in range(steps + 1)]
    for name, title, xlabel in (
        ("deletion", "Deletion (most relevant first)", "share of pixels removed"),
        ("insertion", "Insertion (most relevant first)", "share of pixels inserted"),
    ):
        chosen = {m: c[name] for m, c in mean_curves.items() if name in c}
        if chosen:
            panels.append((title, xlabel, xs, chosen))
    if panels:
        atomic_write_bytes(folder / "curves.png", curve_plot(panels))
        pictures["curves"] = f"{stem}/curves.png"
    from camcli.methods.road import ROAD_FRACTIONS

    road_panels = []
    for name, title in (
        ("road_morf", "ROAD, most relevant removed"),
        ("road_lerf", "ROAD, least relevant removed"),
    ):
        chosen = {m: c[name] for m, c in mean_curves.items() if name in c}
        if chosen:
            road_panels.append(
                (title, "share of pixels removed and imputed", list(ROAD_FRACTIONS), chosen)
            )
    if road_panels:
        atomic_write_bytes(folder / "road.png", curve_plot(road_panels))
        pictures["road"] = f"{stem}/road.png"
    result["pictures"] = pictures
    atomic_write_bytes(
        output_dir / f"{stem}.json", (json.dumps(result, indent=2) + "\n").encode("utf-8")
    )
    atomic_write_bytes(output_dir / f"{stem}.md", _markdown(result).encode("utf-8"))
    return result


def _target_text(result: dict[str, Any]) -> str:
    target = str(result.get("target", "pred"))
    if target == "annotated":
        if not result.get("annotated"):
            return "the top-1 prediction (no image has boxes)"
        return "per image, its annotated class the model rates highest (the top-1 without boxes)"
    return {"pred": "the top-1 prediction", "label": "the class folder"}.get(target, target)


def _markdown(result: dict[str, Any]) -> str:
    interrupted = (
        " The run was interrupted: these are the images done so far."
        if result.get("status") == "interrupted"
        else ""
    )
    parts = [
        f"# Which map to trust: {result.get('model', 'the model')}\n",
        f"{result['images']} image(s) evaluated, {result['annotated']} with annotations; "
        f"class explained: {_target_text(result)}. Arrows: ↑ higher is better, ↓ lower is "
        f"better; the best of each column is in bold; (n=K): a mean over K images.{interrupted}\n",
        leaderboard(result),
    ]
    if result.get("not_scored"):
        parts.append(f"Not scored: {not_scored_text(result['not_scored'])}.\n")
    if result["sanity"]:
        parts.append("\n## Sanity checks (cascading randomisation)\n")
        stages = result["stages"]
        parts.append("| method | " + " | ".join(stages) + " |")
        parts.append("| --- " * (len(stages) + 1) + "|")
        for method, values in result["sanity"].items():
            cells = [f"{s['spearman']:.3f} / {s['ssim']:.3f}" for s in values]
            parts.append(f"| {method} | " + " | ".join(cells) + " |")
        parts.append("\nEach cell: Spearman rank correlation / SSIM with the original map.\n")
    for key, title in (
        ("sanity", "Sanity curves"),
        ("stages", "One image at each stage"),
        ("curves", "Mean deletion and insertion curves"),
        ("road", "Mean ROAD curves"),
    ):
        if key in result["pictures"]:
            parts.append(f"\n![{title}]({result['pictures'][key]})\n")
    return "\n".join(parts)


EVALUATION_PAGE = "evaluation.html"


def evaluation_page(result: dict[str, Any], index_link: bool) -> str:
    """The HTML report's evaluation page: the leaderboard, the sanity table, the pictures.

    Args:
        result: ``evaluation.json``'s content.
        index_link: link back to the report's grid of images (when there is one).

    Returns:
        A self-contained page for ``OUTPUT/report/``; pictures load from ``../evaluation/``.

    """
    from html import escape

    methods: dict[str, dict[str, Any]] = result["methods"]
    columns = [n for n in HIGHER_IS_BETTER if any(m.get(n) is not None for m in methods.values())]
    best: dict[str, float] = {}
    for name in columns:
        values = [v for m in methods.values() if (v := m.get(name)) is not None]
        if values:
            best[name] = max(values) if HIGHER_IS_BETTER[name] else min(values)
    head = "".join(
        f"<th>{escape(SCORE_TITLES[n])} {'↑' if HIGHER_IS_BETTER[n] else '↓'}</th>" for n in columns
    )
    rows = []
    for method, scores in methods.items():
        cells = []
        for name in columns:
            value = scores.get(name)
            top = value is not None and round(value, 3) == round(best[name], 3)
            cells.append(f"<td{' class=best' if top else ''}>{_number(value)}</td>")
        rows.append(
            f"<tr data-method='{escape(method)}'><th>{escape(method)}</th>{''.join(cells)}"
            f"<td>{scores['images']}</td></tr>"
        )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>camcli evaluation: {escape(str(result.get('model', '')))}</title>",
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="report.css">',
        "</head><body data-page='evaluation'><header>",
        f"<h1>Which map to trust: {escape(str(result.get('model', '')))}</h1>",
        f"<p id='summary'>{result['images']} image(s) evaluated, {result['annotated']} with "
        f"annotations; class explained: {escape(_target_text(result))}. ↑ higher is better, "
        "↓ lower is better; the best of each column is marked.</p>",
        "<p><a href='index.html'>All images</a></p>" if index_link else "",
        "</header><main>",
        "<h2>Leaderboard</h2>",
        f"<table id='leaderboard'><thead><tr><th>method</th>{head}<th>images</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>",
    ]
    if not methods:
        parts.append("<p id='nothing-scored'>No score was measured.</p>")
    if result.get("not_scored"):
        parts.append(
            f"<p id='not-scored'>Not scored: {escape(not_scored_text(result['not_scored']))}.</p>"
        )
    if result["sanity"]:
        stages = result["stages"]
        parts.append("<h2>Sanity checks: Spearman / SSIM with the original map</h2>")
        parts.append(
            "<table id='sanity'><thead><tr><th>method</th>"
            + "".join(f"<th>{escape(s)}</th>" for s in stages)
            + "</tr></thead><tbody>"
        )
        for method, measured in result["sanity"].items():
            row = "".join(f"<td>{s['spearman']:.3f} / {s['ssim']:.3f}</td>" for s in measured)
            parts.append(f"<tr><th>{escape(method)}</th>{row}</tr>")
        parts.append("</tbody></table>")
    for key, title in (
        ("sanity", "Sanity curves"),
        ("stages", f"One image at each stage: {result.get('stages_image', '')}"),
        ("curves", "Mean deletion and insertion curves"),
        ("road", "Mean ROAD curves"),
    ):
        if key in result.get("pictures", {}):
            source = escape("../" + result["pictures"][key])
            parts.append(
                f"<figure id='figure-{key}'><img src='{source}' alt='{escape(title)}'>"
                f"<figcaption>{escape(title)}</figcaption></figure>"
            )
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def write_evaluation_page(output_dir: Path, report_dir: Path, index_link: bool) -> Path | None:
    """Write ``report/evaluation.html`` when the directory holds ``evaluation.json``."""
    try:
        result = json.loads((output_dir / "evaluation.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(result, dict) or not isinstance(result.get("methods"), dict):
        return None
    page = report_dir / EVALUATION_PAGE
    atomic_write_bytes(page, evaluation_page(result, index_link).encode("utf-8"))
    return page
