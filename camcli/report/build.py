"""The HTML report of an output directory: a filterable grid of thumbnails, a page per image.

The report is static files under ``OUTPUT/report/`` that open from ``file://`` with no server
and no network: ``index.html`` (the grid), ``image.html?i=N`` (one image), ``report.js`` and
``report.css``, ``data.js`` (one compact entry per image, loaded as a script because browsers
refuse ``fetch`` of local files), ``details/K.js`` (the full entries, in chunks of
:data:`DETAIL_CHUNK`, loaded only by the page of an image) and ``thumbs/`` (small JPEGs of
each image's first overlay, written once and re-made only when their source is newer).

The per-image JSON records are the source of truth: the report reads every record under the
output directory, whatever command wrote it and whatever methods or files it lists, so a run
that is still going or was interrupted gives a report of what exists. The run indexes
(``index*.jsonl``, finished or ``.partial``, sharded or per rank) add the images that failed
(they have no record).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import os
import posixpath
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from camcli.io.discover import natural_key
from camcli.io.write import atomic_write_bytes, explain_record_files
from camcli.report import REPORT_DIR, THUMB_SIZE
from camcli.report.evaluation import EVALUATION_PAGE, write_evaluation_page
from camcli.report.summary import SUMMARY_PAGE, write_summary_page

__all__ = [
    "DETAIL_CHUNK",
    "REPORT_DIR",
    "THUMB_SIZE",
    "NothingToReport",
    "ReportEntry",
    "ReportSummary",
    "collect_entries",
    "thumbnail_file",
    "thumbnail_jpeg",
    "thumbnail_size",
    "thumbnail_source",
    "write_report",
]

DETAIL_CHUNK = 200  # full entries per details/K.js file: the page of an image loads one
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
_ASSETS = ("index.html", "image.html", "report.js", "report.css")
# run.json, run.shard-K-of-N.json, run.rank-R-of-W.json, run.shard-K-of-N.rank-R-of-W.json
_RUN_SUMMARY = re.compile(r"run(\.shard-\d+-of-\d+)?(\.rank-\d+-of-\d+)?\.json")


class NothingToReport(Exception):
    """The directory holds no camcli record and no index entry."""


@dataclass
class ReportSummary:
    """What :func:`write_report` wrote.

    Attributes:
        index: the report's ``index.html``.
        images: entries shown (records plus failed images).
        errors: entries of images that failed.
        misclassified: records whose top-1 is not the label.
        thumbnails_written: thumbnails made by this call.
        thumbnails_reused: thumbnails already up to date.
        seconds: wall time of the call.

    """

    index: Path
    images: int
    errors: int
    misclassified: int
    thumbnails_written: int
    thumbnails_reused: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data (the ``camcli report`` output line)."""
        return {
            "report": str(self.index),
            "images": self.images,
            "errors": self.errors,
            "misclassified": self.misclassified,
            "thumbnails": {"written": self.thumbnails_written, "reused": self.thumbnails_reused},
            "seconds": round(self.seconds, 3),
        }


@dataclass
class ReportEntry:
    """One image of the report: its record, or the error of an image that failed.

    Attributes:
        image: the image's path relative to the input root.
        record: the record, or ``None`` for an image that failed (known from an index).
        record_path: the record's path relative to the output directory, with ``/``.
        error: why the image failed, for entries without a record.

    """

    image: str
    record: dict[str, Any] | None
    record_path: str | None
    error: str | None = None
    _files: tuple[list[tuple[str, str]], list[tuple[str, str]]] | None = field(
        default=None, repr=False, compare=False
    )

    def files(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The record's pictures and other files, as ``(caption, path)`` (made once)."""
        if self._files is None:
            self._files = _pictures(self)
        return self._files


def _read_json(path: Path | str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # removed meanwhile (a re-explained image) or not a record


def _index_errors(output_dir: Path) -> dict[str, str]:
    """Images that failed, by relative path, from every index file at the top (latest wins)."""
    errors: dict[str, str] = {}
    names = sorted(
        p.name
        for p in output_dir.iterdir()
        if p.name.startswith("index") and p.name.endswith((".jsonl", ".jsonl.partial"))
    )
    for name in names:
        try:
            lines = (output_dir / name).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line being written
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                continue
            if entry.get("status") == "error":
                errors[entry["image"]] = str(entry.get("error", "failed"))
            else:
                errors.pop(entry["image"], None)
    return errors


def collect_entries(output_dir: Path) -> list[ReportEntry]:
    """The report's entries: every record under ``output_dir`` and every failed image.

    A record is a JSON object with an ``image`` key; failures come from the index files
    (an image with a record is shown by its record, even if an index still lists it as failed).
    Entries are in natural order of the image path, then of the record path.

    Args:
        output_dir: an output directory of ``camcli explain``; records of the other commands
            (``NAME.features.json``, ``NAME.compare.json``) are not entries.

    Returns:
        The entries.
    """
    entries: list[ReportEntry] = []
    seen: set[str] = set()
    for path, relative in explain_record_files(output_dir):
        record = _read_json(path)
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            continue
        entries.append(ReportEntry(record["image"], record, relative))
        seen.add(record["image"])
    for image, message in _index_errors(output_dir).items():
        if image not in seen:
            entries.append(ReportEntry(image, None, None, message))
    entries.sort(key=lambda e: (natural_key(e.image), natural_key(e.record_path or "")))
    return entries


# --- reading records ----------------------------------------------------------------------


def _walk_files(files: Any, trail: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every file name in a record's ``files`` (nested dicts of any depth), with its key path."""
    if isinstance(files, dict):
        for key, value in files.items():
            yield from _walk_files(value, (*trail, str(key)))
    elif isinstance(files, list):
        for position, value in enumerate(files):
            yield from _walk_files(value, (*trail, str(position)))
    elif isinstance(files, str) and files:
        yield trail, files


def _safe_join(folder: str, name: str) -> str | None:
    """``folder/name`` when it stays inside the output directory, else ``None``."""
    joined = posixpath.normpath(posixpath.join(folder, name))
    if joined.startswith(("../", "/")) or joined == "..":
        return None
    return joined


def _url(relative: str, prefix: str = "../") -> str:
    """A URL from the report folder to a file of the output directory, percent-encoded."""
    return prefix + quote(relative, safe="/")


def _first_row(record: dict[str, Any]) -> dict[str, Any] | None:
    """The first model's row of a record with one row per model (``camcli compare``)."""
    rows = record.get("rows")
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        return rows[0]
    return None


def _top1(record: dict[str, Any]) -> dict[str, Any] | None:
    """The top-1 prediction: the record's first, or its first model's."""
    predictions = record.get("predictions")
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        return predictions[0]
    row = _first_row(record)
    if row is not None and isinstance(row.get("prediction"), dict):
        return row["prediction"]
    return None


def _label_name(record: dict[str, Any]) -> str | None:
    label = record.get("label")
    if isinstance(label, dict):
        name = label.get("name") or label.get("folder")
        return str(name) if name is not None else None
    return None


def _label_matches(record: dict[str, Any], top: dict[str, Any] | None) -> bool | None:
    """Whether the top-1 is the label, for records that do not say (``None``: no label)."""
    label = record.get("label")
    if top is None or not isinstance(label, dict):
        return None
    label_index, top_index = label.get("index"), top.get("index")
    if isinstance(label_index, int) and isinstance(top_index, int):
        return label_index == top_index
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _pictures(entry: ReportEntry) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The record's pictures and other files, as ``(caption, path in the output directory)``."""
    pictures: list[tuple[str, str]] = []
    others: list[tuple[str, str]] = []
    if entry.record is None or entry.record_path is None:
        return pictures, others
    folder = posixpath.dirname(entry.record_path)
    for trail, name in _walk_files(entry.record.get("files")):
        path = _safe_join(folder, name)
        if path is None:
            continue
        caption = " · ".join(trail) or name
        (pictures if name.lower().endswith(PICTURE_SUFFIXES) else others).append((caption, path))
    return pictures, others


def _thumb_source(pictures: list[tuple[str, str]]) -> str | None:
    """The picture a thumbnail shows.

    A detector's sheet or a segmenter's mask, else the first overlay, else the first picture.
    """
    for caption, path in pictures:
        if caption.startswith(("detections", "mask")):
            return path
    for caption, path in pictures:
        if "overlay" in caption:
            return path
    return pictures[0][1] if pictures else None


# --- thumbnails ---------------------------------------------------------------------------


def _thumb_path(record_path: str) -> str:
    """The thumbnail of a record, in the report folder (``a/b.png.json``: ``a/b.png.jpg``)."""
    return "thumbs/" + record_path.removesuffix(".json") + ".jpg"


def thumbnail_source(files: Any) -> str | None:
    """The file (relative to the record) a record's thumbnail shows: its first overlay."""
    pictures = [
        (" · ".join(trail) or name, name)
        for trail, name in _walk_files(files)
        if name.lower().endswith(PICTURE_SUFFIXES)
    ]
    return _thumb_source(pictures)


def thumbnail_file(output_dir: Path, record_relative: str) -> Path:
    """Where the thumbnail of the record at ``record_relative`` (with ``/``) goes."""
    return output_dir / REPORT_DIR / _thumb_path(record_relative)


def thumbnail_size(output_dir: Path) -> int:
    """The thumbnails' size of an output directory's report, recorded on first use."""
    size_file = output_dir / REPORT_DIR / "thumbs" / "size.txt"
    try:
        return int(size_file.read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError, ValueError):
        atomic_write_bytes(size_file, f"{THUMB_SIZE}\n".encode())
        return THUMB_SIZE


def thumbnail_jpeg(picture: Image.Image, size: int) -> tuple[bytes, tuple[int, int]]:
    """A thumbnail of ``picture`` (longest side ``size``) as JPEG bytes, and its size."""
    picture = picture.convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=80, optimize=True)
    return buffer.getvalue(), picture.size


def _make_thumb(source: Path, thumb: Path, newer_than: float, size: int) -> tuple[bool, Any]:
    """Write ``thumb`` from ``source`` unless it is already newer than both.

    Returns:
        ``(written, (width, height))``, or ``(False, None)`` when the source is unreadable.
    """
    try:
        source_time = max(source.stat().st_mtime, newer_than)
        if thumb.exists() and thumb.stat().st_mtime >= source_time:
            with Image.open(thumb) as done:
                return False, done.size
        with Image.open(source) as image:
            image.draft("RGB", (size, size))
            data, made = thumbnail_jpeg(image.convert("RGB"), size)
        atomic_write_bytes(thumb, data)
        return True, made
    except (OSError, ValueError, Image.DecompressionBombError):
        return False, None


def _remove_stale_thumbs(report_dir: Path, current: set[str]) -> None:
    """Delete the thumbnails of records that are gone (their images were removed or renamed)."""
    for folder, _dirs, files in os.walk(report_dir / "thumbs"):
        relative = os.path.relpath(folder, report_dir).replace(os.sep, "/")
        for name in files:
            if name.endswith(".jpg") and f"{relative}/{name}" not in current:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


# --- writing ------------------------------------------------------------------------------


def _grid_item(entry: ReportEntry, thumb: str | None, size: Any) -> dict[str, Any]:
    """The compact entry of ``data.js`` (what the grid shows and filters on)."""
    item: dict[str, Any] = {"i": entry.image}
    if entry.record is None:
        item["s"] = "error"
        item["e"] = entry.error
        return item
    record = entry.record
    item["s"] = str(record.get("status", "ok"))
    top = _top1(record)
    found = _regions_found(record)
    if found is not None:
        item["p"] = found
    if top is not None:
        item["p"] = str(top.get("name", top.get("index", "")))
        probability = _number(top.get("probability"))
        if probability is not None:
            item["q"] = round(probability, 4)
    label = _label_name(record)
    if label is not None:
        item["l"] = label
    row = _first_row(record) or {}
    correct = record.get("correct", row.get("correct"))
    if not isinstance(correct, bool):
        correct = _label_matches(record, top)
    if isinstance(correct, bool):
        item["c"] = correct
    model = record.get("model", row.get("model"))
    if isinstance(model, str):
        item["m"] = model
    if thumb is not None and size is not None:
        item["t"] = thumb
        item["w"], item["h"] = size
    return item


def _regions_found(record: dict[str, Any]) -> str | None:
    """What a detector's or segmenter's record found, in a few words (the grid's caption)."""
    if record.get("task") == "detect" and isinstance(record.get("detections"), list):
        count = len(record["detections"])
        return f"{count} detection{'s' if count != 1 else ''}" if count else "no detection"
    if record.get("task") == "segment" and isinstance(record.get("segments"), list):
        count = len(record["segments"])
        return f"{count} class{'es' if count != 1 else ''}" if count else "no class"
    return None


def _detail(entry: ReportEntry) -> dict[str, Any]:
    """The full entry of ``details/K.js`` (what the page of one image shows)."""
    detail: dict[str, Any] = {"image": entry.image}
    if entry.record is None or entry.record_path is None:
        detail["error"] = entry.error
        return detail
    record = entry.record
    pictures, others = entry.files()
    detail["record"] = _url(entry.record_path)
    detail["pictures"] = [{"caption": c, "src": _url(p)} for c, p in pictures]
    detail["files"] = [{"caption": c, "href": _url(p)} for c, p in others]
    for key in ("status", "source", "width", "height", "model", "layers", "label", "correct"):
        if key in record:
            detail[key] = record[key]
    if record.get("status") == "error":
        detail["error"] = record.get("error")
    if isinstance(record.get("predictions"), list):
        detail["predictions"] = [p for p in record["predictions"] if isinstance(p, dict)]
    for key in ("target", "targets", "maps", "rows", "task", "detections", "segments",
                "score_threshold", "min_pixels"):  # fmt: skip
        if key in record:
            detail[key] = record[key]
    return detail


def _script(variable: str, value: Any) -> bytes:
    # ASCII-only JSON is a valid JS expression whatever charset the browser assumes.
    return f"{variable} = {json.dumps(value, ensure_ascii=True, separators=(',', ':'))};\n".encode()


def _run_state(output_dir: Path) -> dict[str, Any]:
    """What the report says about the run(s): finished, still going or interrupted."""
    summaries = []
    for path in sorted(output_dir.glob("run*.json")):
        if not _RUN_SUMMARY.fullmatch(path.name):
            continue  # e.g. the record of an image named runner.jpg
        summary = _read_json(path)
        if isinstance(summary, dict) and "status" in summary:
            summaries.append(
                {
                    "file": path.name,
                    "status": summary.get("status"),
                    "counts": summary.get("counts"),
                    "finished": summary.get("finished"),
                }
            )
    partial = sorted(p.name for p in output_dir.glob("index*.jsonl.partial"))
    return {"summaries": summaries, "partial_indexes": partial}


def _evaluates_these(output_dir: Path, entries: Sequence[ReportEntry]) -> bool:
    """Whether the directory's evaluation is of a model (and task) whose maps the grid shows.

    The grid links "which map to trust" only to an evaluation of its own maps: the
    evaluation of another model, written into the same directory, is not linked. Records
    that do not name their model (older ones) are taken to be the evaluation's.
    """
    from camcli.report.evaluation import evaluation_owner

    owner = evaluation_owner(output_dir)
    if owner is None:
        return True
    for entry in entries:
        record = entry.record
        if not isinstance(record, dict):
            continue
        model = record.get("model")
        if model is None or (model == owner.model
                             and record.get("task", "classify") == owner.task):  # fmt: skip
            return True
    return False


def write_report(
    output_dir: Path, thumb_size: int = THUMB_SIZE, threads: int | None = None
) -> ReportSummary:
    """Write (or bring up to date) the HTML report of ``output_dir`` under ``output_dir/report``.

    Thumbnails are made once: an existing thumbnail newer than its source and its record is
    kept. Everything else (data, details, pages) is rewritten, each file atomically, so a
    browser showing the report never reads a half-written file.

    Args:
        output_dir: an output directory of ``camcli explain`` (finished, running or
            interrupted).
        thumb_size: the longest side of the thumbnails in pixels.
        threads: threads making thumbnails (default: one per core, up to 8).

    Returns:
        What was written.

    Raises:
        NothingToReport: when the directory holds no record and no index entry.
        OSError: when the report cannot be written.
    """
    start = time.perf_counter()
    entries = collect_entries(output_dir)
    report_dir = output_dir / REPORT_DIR
    if not entries and (output_dir / "evaluation.json").is_file():
        # Only an evaluation (camcli evaluate): its page is the report.
        report_dir.mkdir(parents=True, exist_ok=True)
        assets = resources.files("camcli.report") / "assets"
        atomic_write_bytes(report_dir / "report.css", (assets / "report.css").read_bytes())
        page = write_evaluation_page(output_dir, report_dir, index_link=False)
        if page is not None:
            return ReportSummary(
                index=page,
                images=0,
                errors=0,
                misclassified=0,
                thumbnails_written=0,
                thumbnails_reused=0,
                seconds=time.perf_counter() - start,
            )
    if not entries:
        raise NothingToReport(
            f"{output_dir} holds no record of camcli explain (NAME.json) and no index entry "
            "yet (the report shows explain runs; features and compare write their own)"
        )
    report_dir.mkdir(parents=True, exist_ok=True)
    # Thumbnails of another size are remade: they count as older than everything.
    size_file = report_dir / "thumbs" / "size.txt"
    try:
        same_size = size_file.read_text(encoding="ascii").strip() == str(thumb_size)
    except (OSError, UnicodeDecodeError):
        same_size = False
    remake_all = not same_size

    jobs: list[tuple[int, Path, Path, float, str]] = []
    for position, entry in enumerate(entries):
        if entry.record is None or entry.record_path is None:
            continue
        source = _thumb_source(entry.files()[0])
        if source is None:
            continue
        thumb = _thumb_path(entry.record_path)
        try:
            record_time = os.stat(os.path.join(output_dir, entry.record_path)).st_mtime
        except OSError:
            record_time = 0.0
        if remake_all:
            record_time = math.inf
        jobs.append((position, output_dir / source, report_dir / thumb, record_time, thumb))
    workers = threads or min(8, os.cpu_count() or 1)
    sizes: dict[int, tuple[str, Any]] = {}
    written = reused = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda job: _make_thumb(job[1], job[2], job[3], thumb_size), jobs)
        for (position, _source, _thumb, _time, thumb), (made, size) in zip(
            jobs, results, strict=True
        ):
            if size is None:
                continue
            written += made
            reused += not made
            sizes[position] = (_url(thumb, prefix=""), size)

    if remake_all:
        atomic_write_bytes(size_file, f"{thumb_size}\n".encode())
    _remove_stale_thumbs(report_dir, {job[4] for job in jobs})
    items = [
        _grid_item(entry, *sizes.get(position, (None, None)))
        for position, entry in enumerate(entries)
    ]
    errors = sum(item["s"] == "error" for item in items)
    misclassified = sum(item.get("c") is False for item in items)
    data = {
        "title": output_dir.resolve().name,
        "generated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "chunk": DETAIL_CHUNK,
        "run": _run_state(output_dir),
        "items": items,
    }
    if write_evaluation_page(
        output_dir, report_dir, index_link=True
    ) is not None and _evaluates_these(output_dir, entries):
        data["evaluation"] = EVALUATION_PAGE  # camcli evaluate's results: a link to its page
    if write_summary_page(output_dir, report_dir, index_link=True) is not None:
        data["summary"] = SUMMARY_PAGE  # camcli summarize's results: a link to its page
    details_dir = report_dir / "details"
    details_dir.mkdir(exist_ok=True)
    chunks = (len(entries) + DETAIL_CHUNK - 1) // DETAIL_CHUNK
    for chunk in range(chunks):
        part = entries[chunk * DETAIL_CHUNK : (chunk + 1) * DETAIL_CHUNK]
        atomic_write_bytes(
            details_dir / f"{chunk}.js",
            _script(f"window.CAMCLI_DETAILS[{chunk}]", [_detail(e) for e in part]),
        )
    for stale in details_dir.glob("*.js"):
        if not stale.stem.isdigit() or int(stale.stem) >= chunks:
            stale.unlink(missing_ok=True)
    atomic_write_bytes(report_dir / "data.js", _script("window.CAMCLI_REPORT", data))
    assets = resources.files("camcli.report") / "assets"
    for name in _ASSETS:
        atomic_write_bytes(report_dir / name, (assets / name).read_bytes())
    return ReportSummary(
        index=report_dir / "index.html",
        images=len(entries),
        errors=errors,
        misclassified=misclassified,
        thumbnails_written=written,
        thumbnails_reused=reused,
        seconds=time.perf_counter() - start,
    )
