"""A dataset summary for people: ``summary.md`` and the HTML report's summary page.

Both are made from ``summary.json`` (see :mod:`camcli.runs.summarize`): per class its images,
how many are right, its mean map and its clusters ranked most suspicious first, and the
confusions. The page is static, like the rest of the report, and its pictures load from
``../summary/``.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from camcli.io.write import atomic_write_bytes

__all__ = ["SUMMARY_PAGE", "summary_markdown", "summary_page", "write_summary_page"]

SUMMARY_PAGE = "summary.html"
_PARTS = ("distinct", "tight", "concentrated", "edge", "outside")


def _correct(entry: dict[str, Any]) -> str:
    if entry.get("correct") is None:
        return "-"
    return f"{entry['correct']} of {entry.get('labelled', entry['images'])}"


def _parts_text(parts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {parts[k]:.2f}" for k in _PARTS if parts.get(k) is not None)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def summary_markdown(result: dict[str, Any]) -> str:
    """``summary.md``: a table of classes, each class's clusters, the confusions."""
    classes: dict[str, Any] = result["classes"]
    lines = [
        f"# What {result.get('model')} relies on: {result['method']} maps of "
        f"{result['images']} images",
        "",
        f"Grouped by {result['group_by']}; clusters of maps per class (spectral relevance "
        "analysis), ranked most suspicious first. A suspicious cluster's members all look at "
        "one spot, unlike the rest of their class: score = distinct x mean(tight, "
        "concentrated, edge[, outside]), each part from 0 to 1 (see the README).",
        "",
        "| class | images | correct | clusters | most suspicious: score (size) | peak (x, y) |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for name, entry in classes.items():
        clusters = entry["clusters"]
        if clusters:
            top = clusters[0]
            first = f"{top['score']:.3f} ({top['size']})"
            peak = f"{top['peak']['x']:.2f}, {top['peak']['y']:.2f}"
        else:
            first, peak = "not clustered", "-"
        lines.append(
            f"| {_md_cell(name)} | {entry['images']} | {_correct(entry)} | {len(clusters)} | "
            f"{first} | {peak} |"
        )
    for name, entry in classes.items():
        lines += ["", f"## {name}", ""]
        lines.append(f"{entry['images']} images, correct: {_correct(entry)}.")
        lines.append("")
        lines.append(f"![mean map of {name}]({quote(entry['mean_map'])})")
        if entry.get("note"):
            lines += ["", f"Not clustered: {entry['note']}."]
            continue
        lines += [
            "",
            "| rank | size | score | parts | peak (x, y) | picture |",
            "| ---: | ---: | ---: | --- | --- | --- |",
        ]
        for cluster in entry["clusters"]:
            lines.append(
                f"| {cluster['rank']} | {cluster['size']} | {cluster['score']:.3f} | "
                f"{_parts_text(cluster['parts'])} | {cluster['peak']['x']:.2f}, "
                f"{cluster['peak']['y']:.2f} | [sheet]({quote(cluster['mean_map'])}) |"
            )
        if entry.get("embedding"):
            lines += ["", f"![embedding of {name}]({quote(entry['embedding'])})"]
    lines += ["", "## Confusions", ""]
    if not result["confusions"]:
        lines.append("No labelled image is misclassified (or no image has a label).")
    else:
        lines += ["| label | predicted | count | mean map |", "| --- | --- | ---: | --- |"]
        for pair in result["confusions"]:
            lines.append(
                f"| {_md_cell(pair['label'])} | {_md_cell(pair['predicted'])} | "
                f"{pair['count']} | [map]({quote(pair['mean_map'])}) |"
            )
    return "\n".join(lines) + "\n"


def _src(relative: str) -> str:
    return escape("../" + quote(relative, safe="/"))


def summary_page(result: dict[str, Any], index_link: bool) -> str:
    """The HTML report's summary page (for ``OUTPUT/report/``).

    Args:
        result: ``summary.json``'s content.
        index_link: link back to the report's grid of images.

    Returns:
        The page.

    """
    classes: dict[str, Any] = result["classes"]
    rows = []
    for number, (name, entry) in enumerate(classes.items()):
        clusters = entry["clusters"]
        top = f"{clusters[0]['score']:.3f} ({clusters[0]['size']})" if clusters else "-"
        rows.append(
            f"<tr data-class='{escape(name)}'><th><a href='#class-{number}'>{escape(name)}</a>"
            f"</th><td>{entry['images']}</td><td>{escape(_correct(entry))}</td>"
            f"<td>{len(clusters)}</td><td>{escape(top)}</td></tr>"
        )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>camcli summary: {escape(str(result.get('model', '')))}</title>",
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="report.css">',
        "</head><body data-page='summary'><header>",
        f"<h1>What {escape(str(result.get('model', '')))} relies on, per class</h1>",
        f"<p id='summary'>{result['images']} images, {len(classes)} classes, "
        f"{escape(result['method'])} maps grouped by {escape(result['group_by'])}. Clusters "
        "are ranked most suspicious first: their members all look at one spot, unlike the "
        "rest of their class.</p>",
        "<p><a href='index.html'>All images</a></p>" if index_link else "",
        "</header><main>",
        "<table id='classes'><thead><tr><th>class</th><th>images</th><th>correct</th>"
        "<th>clusters</th><th>most suspicious: score (size)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>",
    ]
    for number, (name, entry) in enumerate(classes.items()):
        parts.append(f"<section class='summary-class' id='class-{number}'>")
        parts.append(f"<h2>{escape(name)}</h2>")
        parts.append(
            f"<p>{entry['images']} images, correct: {escape(_correct(entry))}.</p>"
            f"<figure><img class='mean-map' src='{_src(entry['mean_map'])}' "
            f"alt='mean map of {escape(name)}'><figcaption>mean map</figcaption></figure>"
        )
        if entry.get("note"):
            parts.append(f"<p class='note'>Not clustered: {escape(entry['note'])}.</p>")
        for cluster in entry["clusters"]:
            parts.append(
                f"<figure class='cluster' data-rank='{cluster['rank']}' "
                f"data-score='{cluster['score']}'><img src='{_src(cluster['mean_map'])}' "
                f"alt='cluster {cluster['rank']}'><figcaption>cluster {cluster['rank']}: "
                f"{cluster['size']} images, score {cluster['score']:.3f} "
                f"({escape(_parts_text(cluster['parts']))}), peak at "
                f"({cluster['peak']['x']:.2f}, {cluster['peak']['y']:.2f})</figcaption></figure>"
            )
        if entry.get("embedding"):
            parts.append(
                f"<figure><img class='embedding' src='{_src(entry['embedding'])}' "
                f"alt='embedding of {escape(name)}'></figure>"
            )
        parts.append("</section>")
    parts.append("<h2>Confusions</h2>")
    if result["confusions"]:
        parts.append(
            "<table id='confusions'><thead><tr><th>label</th><th>predicted</th><th>count</th>"
            "<th>mean map</th></tr></thead><tbody>"
        )
        for pair in result["confusions"]:
            parts.append(
                f"<tr><td>{escape(pair['label'])}</td><td>{escape(pair['predicted'])}</td>"
                f"<td>{pair['count']}</td><td><img class='confusion-map' "
                f"src='{_src(pair['mean_map'])}' alt='mean map' width='64'></td></tr>"
            )
        parts.append("</tbody></table>")
    else:
        parts.append("<p id='confusions'>No labelled image is misclassified.</p>")
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def write_summary_page(output_dir: Path, report_dir: Path, index_link: bool) -> Path | None:
    """Write ``report/summary.html`` when the directory holds ``summary.json``."""
    try:
        result = json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(result, dict) or not isinstance(result.get("classes"), dict):
        return None
    page = report_dir / SUMMARY_PAGE
    atomic_write_bytes(page, summary_page(result, index_link).encode("utf-8"))
    return page
