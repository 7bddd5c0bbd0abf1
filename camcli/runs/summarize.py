"""``summarize``'s pipeline: an explain run's maps -> per class clusters (SpRAy) -> files.

It reads what ``explain`` wrote (no model pass): every record under the output directory
(by walking it, or through its indexes in object storage) and each record's small copy of
the method's map (``maps.METHOD.grid``, :mod:`camcli.io.mapgrid`; records written before
that copy existed are read from their heatmap PNG instead, slower). Per group of images
(the explained class by default) it clusters the maps (:mod:`camcli.methods.spray`), scores
each cluster, and writes ``summary.json``, ``summary.md`` and the pictures under
``summary/``. The pictures go to a temporary folder that replaces ``summary/`` at the end,
then ``summary.md``, then ``summary.json`` last: an interrupted summary leaves the previous
one whole, and never touches explain's files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from camcli.io.mapgrid import SUMMARY_GRID, decode_grid
from camcli.io.storage import is_remote
from camcli.io.write import TEMP_MARK, atomic_write_bytes, encode_png, explain_record_files
from camcli.methods.spray import (
    MAX_CLUSTERS,
    ClusterScore,
    cluster_maps,
    embed_2d,
    normalise,
    peak_of,
    spray_features,
    suspicion,
)

__all__ = [
    "EXAMPLES",
    "GROUPS",
    "SUMMARY_DIR",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "MapRecord",
    "SummarizeOptions",
    "SummaryInputError",
    "SummaryStopped",
    "read_maps",
    "summarize_run",
]

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
SUMMARY_DIR = "summary"
GROUPS = ("target", "pred", "label")
EXAMPLES = 6  # example thumbnails per cluster
MIN_CLUSTERED = 3  # classes with fewer images are listed, not clustered


class SummaryInputError(ValueError):
    """The output directory cannot be summarised as asked (the message is one sentence)."""


class SummaryStopped(Exception):
    """A stop was requested (SIGINT / SIGTERM): nothing of this summary was kept."""


@dataclass(frozen=True)
class SummarizeOptions:
    """What ``summarize`` does.

    Attributes:
        method: the map method; ``None``: the run's first map method.
        group_by: ``target`` (the explained class), ``pred`` (top-1) or ``label``.
        clusters: force this many clusters per class; ``None``: the eigengap's choice.
        max_clusters: the eigengap's cap.
        model: keep only the records of this model (a directory holding several).
        boxes: object boxes (``evaluate``'s formats), for the share of maps outside them.
        masks: object masks, likewise.

    """

    method: str | None = None
    group_by: str = "target"
    clusters: int | None = None
    max_clusters: int = MAX_CLUSTERS
    model: str | None = None
    boxes: Path | None = None
    masks: Path | None = None


@dataclass
class MapRecord:
    """One image of the run as the summary needs it.

    Attributes:
        image: the record's ``image`` (its path under the input root).
        record: the record's path in the output directory, with ``/``.
        group: the name of the class it is grouped under.
        label: its label's class name, or ``None``.
        predicted: the top-1 class name.
        correct: whether the top-1 is the label (``None``: no label).
        grid: the map, ``(SUMMARY_GRID, SUMMARY_GRID)`` in [0, 1] over the image frame.
        width: the image's width in pixels.
        height: the image's height in pixels.
        overlay: the map's overlay picture in the output directory, or ``None``.

    """

    image: str
    record: str
    group: str
    label: str | None
    predicted: str
    correct: bool | None
    grid: np.ndarray
    width: int
    height: int
    overlay: str | None


# --- reading the run ----------------------------------------------------------------------


def _indexed_records(output_dir: Path) -> list[str]:
    """The records an output directory's indexes list (object storage has no cheap walk)."""
    records: dict[str, str] = {}
    for entry in sorted(output_dir.iterdir(), key=lambda p: p.name):
        name = entry.name
        if not (name.startswith("index") and name.endswith(".jsonl")):
            continue
        for line in entry.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict) and isinstance(item.get("record"), str):
                    records[str(item.get("image"))] = item["record"]
    return sorted(set(records.values()))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _first_map_method(records: Sequence[dict[str, Any]]) -> str | None:
    for record in records:
        maps = record.get("maps")
        if isinstance(maps, dict):
            for method in record.get("methods") or []:
                if method in maps:
                    return str(method)
    return None


def _grid_from_heatmap(path: Path) -> np.ndarray | None:
    """A map read back from its heatmap PNG (JET colours to values), on the summary's grid."""
    import cv2

    from camcli.pictures.style import jet_rgb

    try:
        data = np.frombuffer(path.read_bytes(), np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        return None
    rgb = image[:, :, ::-1]
    height, width = rgb.shape[:2]
    step = max(1, min(height, width) // (4 * SUMMARY_GRID))
    sampled = rgb[::step, ::step].reshape(-1, 3).astype(np.int32)
    table = jet_rgb().astype(np.int32)
    distance = ((sampled[:, None, :] - table[None, :, :]) ** 2).sum(axis=2)
    values = distance.argmin(axis=1).astype(np.float32) / 255.0
    small = values.reshape(rgb[::step, ::step].shape[:2])
    resized = cv2.resize(small, (SUMMARY_GRID, SUMMARY_GRID), interpolation=cv2.INTER_AREA)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def _name(value: Any) -> str | None:
    if isinstance(value, dict):
        name = value.get("name") or value.get("folder")
        return None if name is None else str(name)
    return None


def read_maps(
    output_dir: Path, options: SummarizeOptions
) -> tuple[str, list[MapRecord], dict[str, Any]]:
    """Read the run's records and each one's map of the method.

    Args:
        output_dir: an explain output directory (local or object storage).
        options: the method, the grouping and the model to keep.

    Returns:
        ``(method, maps, facts)``: the method summarised, one entry per image with that map,
        and what was read (``model``, ``layer``, ``skipped`` counts, ``from_pictures``).

    Raises:
        SummaryInputError: no explain record, no record with the method's maps, or records
            of several models or layers.

    """
    if is_remote(output_dir):
        names = _indexed_records(output_dir)
    else:
        names = [relative for _path, relative in explain_record_files(output_dir)]
    raw: list[tuple[str, dict[str, Any]]] = []
    tasks: set[str] = set()
    for relative in names:
        record = _read_json(output_dir / relative)
        if isinstance(record, dict) and record.get("task") in ("detect", "segment"):
            tasks.add(str(record["task"]))
        if (
            isinstance(record, dict)
            and isinstance(record.get("image"), str)
            and record.get("status") == "ok"
            and isinstance(record.get("predictions"), list)
            and isinstance(record.get("maps"), dict)
        ):
            raw.append((relative, record))
    if not raw and tasks:
        nouns = " and ".join(sorted({"detect": "a detector's", "segment": "a segmenter's"}[t]
                                     for t in tasks))  # fmt: skip
        raise SummaryInputError(
            f"{output_dir} holds {nouns} records; summarize clusters a classifier's maps per "
            "predicted class"
        )
    if not raw:
        raise SummaryInputError(
            f"{output_dir} holds no record of camcli explain: run 'camcli explain INPUT "
            f"-o {output_dir}' first"
        )
    models = sorted({str(r.get("model")) for _, r in raw})
    if options.model is not None:
        if options.model not in models:
            raise SummaryInputError(
                f"no record of {output_dir} was made by --model {options.model}; its records "
                f"are of {', '.join(models)}"
            )
        raw = [(p, r) for p, r in raw if r.get("model") == options.model]
    elif len(models) > 1:
        raise SummaryInputError(
            f"{output_dir} holds records of {len(models)} models ({', '.join(models[:4])}): "
            "pick one with --model"
        )
    method = options.method or _first_map_method([r for _, r in raw])
    if method is None:
        raise SummaryInputError(
            f"the records of {output_dir} have no map (only pictures such as guided "
            "backprop): run 'camcli explain' with a map method, e.g. --method gradcam"
        )
    with_map = [(p, r) for p, r in raw if isinstance(r["maps"].get(method), dict)]
    if not with_map:
        known = sorted({m for _, r in raw for m in r["maps"]})
        raise SummaryInputError(
            f"no record of {output_dir} has a {method} map (they have "
            f"{', '.join(known) or 'none'}): run 'camcli explain INPUT --method {method} "
            f"-o {output_dir}' first"
        )
    layers = sorted({str(r["maps"][method].get("layer")) for _, r in with_map})
    if len(layers) > 1:
        raise SummaryInputError(
            f"the {method} maps of {output_dir} come from {len(layers)} layers "
            f"({', '.join(layers[:4])}): explain the run again with one --layer"
        )
    maps: list[MapRecord] = []
    skipped = {"no_map": len(raw) - len(with_map), "no_group": 0, "unreadable": 0}
    from_pictures = 0
    for relative, record in with_map:
        entry = record["maps"][method]
        files = (record.get("files") or {}).get(method) or {}
        folder = PurePosixPath(relative).parent
        grid = decode_grid(entry.get("grid"))
        if grid is None and isinstance(files.get("heatmap"), str):
            grid = _grid_from_heatmap(output_dir / str(folder / files["heatmap"]))
            from_pictures += grid is not None
        if grid is None:
            skipped["unreadable"] += 1
            continue
        if grid.shape != (SUMMARY_GRID, SUMMARY_GRID):
            import cv2

            grid = cv2.resize(grid, (SUMMARY_GRID, SUMMARY_GRID), interpolation=cv2.INTER_AREA)
        predicted = _name(record["predictions"][0]) or str(record["predictions"][0].get("index"))
        label = _name(record.get("label"))
        target = _name(record.get("target")) or predicted
        group = {"target": target, "pred": predicted, "label": label}[options.group_by]
        if group is None:
            skipped["no_group"] += 1
            continue
        correct = record.get("correct")
        overlay = files.get("overlay")
        maps.append(
            MapRecord(
                image=record["image"],
                record=relative,
                group=group,
                label=label,
                predicted=predicted,
                correct=correct if isinstance(correct, bool) else None,
                grid=grid,
                width=int(record.get("width") or 0),
                height=int(record.get("height") or 0),
                overlay=str(folder / overlay) if isinstance(overlay, str) else None,
            )
        )
    facts = {
        "model": with_map[0][1].get("model"),
        "layer": layers[0],
        "skipped": skipped,
        "from_pictures": from_pictures,
    }
    if not maps:
        raise SummaryInputError(
            f"no record of {output_dir} can be grouped by {options.group_by} (none has a "
            "label folder): use --group target or pred"
        )
    return method, maps, facts


# --- annotations --------------------------------------------------------------------------


def _outside_shares(
    maps: Sequence[MapRecord],
    options: SummarizeOptions,
    names: dict[str, int],
    say: Callable[[str], None],
) -> dict[str, float]:
    """Per annotated image, the share of its normalised map outside the annotated objects.

    The objects (every box, fitted to its image as ``evaluate`` fits them, and the mask) are
    drawn at the image's size and averaged onto the summary's grid.
    """
    if options.boxes is None and options.masks is None:
        return {}
    import cv2

    from camcli.io.annotations import AnnotationError, fit_boxes, load_annotations, read_mask

    relatives = [PurePosixPath(m.image) for m in maps]
    try:
        annotations = load_annotations(
            options.boxes, options.masks, relatives, lambda name: names.get(name, -1)
        )
    except AnnotationError as exc:
        raise SummaryInputError(str(exc)) from None
    for matching in annotations.matching:
        if matching.images and not matching.matched:
            raise SummaryInputError(f"{matching.option}: {matching.nothing_matched()}")
        say(matching.summary())
    shares: dict[str, float] = {}
    for item, relative in zip(maps, relatives, strict=True):
        objects = fit_boxes(annotations.objects(relative) or [], item.width, item.height).objects
        mask_file = annotations.mask_path(relative)
        if (not objects and mask_file is None) or not (item.width and item.height):
            continue
        region = np.zeros((item.height, item.width), dtype=np.float32)
        for obj in objects:
            (x0, x1), (y0, y1) = obj.box.columns(item.width), obj.box.rows(item.height)
            region[y0:y1, x0:x1] = 1.0
        if mask_file is not None:
            try:
                region = np.maximum(region, read_mask(mask_file, item.height, item.width))
            except AnnotationError as exc:
                raise SummaryInputError(str(exc)) from None
        coverage = cv2.resize(region, (SUMMARY_GRID, SUMMARY_GRID), interpolation=cv2.INTER_AREA)
        distribution = normalise(item.grid[None])[0]
        shares[item.image] = float(1.0 - (distribution * np.clip(coverage, 0, 1)).sum())
    return shares


# --- the summary --------------------------------------------------------------------------


@dataclass
class _Cluster:
    members: list[int]
    score: ClusterScore
    peak: tuple[float, float]
    mean: np.ndarray
    examples: list[int]
    rank: int = 0


@dataclass
class _Group:
    name: str
    folder: str
    members: list[int]
    mean: np.ndarray
    clusters: list[_Cluster] = field(default_factory=list)
    eigenvalues: list[float] = field(default_factory=list)
    chosen: int | None = None
    note: str | None = None
    embedding: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _folder_names(names: Sequence[str]) -> dict[str, str]:
    """A file-system-safe, unique folder name per class name."""
    taken: set[str] = set()
    folders: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"
        candidate, n = base, 2
        while candidate.lower() in taken:
            candidate, n = f"{base}-{n}", n + 1
        taken.add(candidate.lower())
        folders[name] = candidate
    return folders


def _analyse_group(
    group: _Group,
    distributions: np.ndarray,
    features: np.ndarray,
    options: SummarizeOptions,
    outside: dict[str, float],
    maps: Sequence[MapRecord],
) -> None:
    members = np.asarray(group.members)
    if len(members) < MIN_CLUSTERED:
        group.note = (
            f"{len(members)} image(s): too few to cluster (at least {MIN_CLUSTERED} are needed)"
        )
        return
    clustering = cluster_maps(features[members], options.clusters, options.max_clusters)
    group.eigenvalues = [round(float(v), 6) for v in clustering.eigenvalues]
    group.chosen = clustering.count
    for k in range(clustering.count):
        inside = members[clustering.labels == k]
        own = distributions[inside]
        shares = np.array([outside[maps[i].image] for i in inside if maps[i].image in outside])
        score = suspicion(own, group.mean, shares if len(shares) else None)
        mean = own.mean(axis=0)
        # The examples: the members closest to the cluster's mean map (the most typical).
        distance = ((own - mean) ** 2).reshape(len(own), -1).sum(axis=1)
        examples = [int(inside[i]) for i in np.argsort(distance, kind="stable")[:EXAMPLES]]
        group.clusters.append(
            _Cluster([int(i) for i in inside], score, peak_of(mean), mean, examples)
        )
    group.clusters.sort(key=lambda c: (-c.score.score, -len(c.members), c.members[0]))
    for rank, cluster in enumerate(group.clusters, start=1):
        cluster.rank = rank
    positions, rows = embed_2d(features[members])
    colour = np.empty(len(members), dtype=np.int64)
    for cluster in group.clusters:
        colour[np.searchsorted(members, cluster.members)] = cluster.rank
    group.embedding = (positions, members[rows], colour[rows])


def summarize_run(
    output_dir: Path,
    options: SummarizeOptions,
    stop: threading.Event | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Summarise an explain run: read its maps, cluster them per class, write the summary.

    Args:
        output_dir: the explain run's output directory (local or object storage).
        options: what to summarise and how.
        stop: set it to stop; nothing of this summary is then kept.
        progress: receives a line per stage, for people (stderr).

    Returns:
        ``summary.json``'s content.

    Raises:
        SummaryInputError: the run cannot be summarised as asked.
        SummaryStopped: ``stop`` was set.

    """
    from camcli.pictures.summary import map_picture
    from camcli.report.summary import summary_markdown

    started = time.perf_counter()
    say = progress or (lambda _line: None)

    def check() -> None:
        if stop is not None and stop.is_set():
            raise SummaryStopped

    method, maps, facts = read_maps(output_dir, options)
    say(f"read {len(maps)} {method} maps in {time.perf_counter() - started:.1f} s")
    left_out = facts["skipped"]
    if left_out["no_map"]:
        say(f"{left_out['no_map']} record(s) have no {method} map: left out")
    if left_out["no_group"]:
        say(f"{left_out['no_group']} record(s) have no {options.group_by}: left out")
    if left_out["unreadable"]:
        say(f"{left_out['unreadable']} record(s) have no readable {method} map: left out")
    check()
    known = sorted({m.group for m in maps} | {m.predicted for m in maps})
    names = {name: position for position, name in enumerate(known)}
    outside = _outside_shares(maps, options, names, say)
    grids = np.stack([m.grid for m in maps])
    distributions = normalise(grids)
    features = spray_features(grids)
    by_group: dict[str, list[int]] = {}
    for position, entry in enumerate(maps):
        by_group.setdefault(entry.group, []).append(position)
    order = sorted(by_group, key=lambda name: (-len(by_group[name]), name))
    folders = _folder_names(order)
    groups = []
    for name in order:
        members = by_group[name]
        group = _Group(name, folders[name], members, distributions[members].mean(axis=0))
        _analyse_group(group, distributions, features, options, outside, maps)
        groups.append(group)
        check()
    # The classes with the most suspicious clusters first (then the largest).
    groups.sort(
        key=lambda g: (-(g.clusters[0].score.score if g.clusters else -1.0), -len(g.members))
    )
    say(f"clustered {len(groups)} classes in {time.perf_counter() - started:.1f} s")

    confusions: dict[tuple[str, str], list[int]] = {}
    for position, entry in enumerate(maps):
        if entry.label is not None and entry.correct is False:
            confusions.setdefault((entry.label, entry.predicted), []).append(position)
    confusion_order = sorted(confusions, key=lambda pair: (-len(confusions[pair]), pair))

    remote = is_remote(output_dir)
    final = output_dir / SUMMARY_DIR
    staging = (
        final
        if remote
        else Path(tempfile.mkdtemp(prefix=f".{SUMMARY_DIR}{TEMP_MARK}", dir=output_dir))
    )
    try:
        result = _result(method, options, maps, facts, groups, confusions, confusion_order)
        confusion_maps = [distributions[confusions[pair]].mean(axis=0) for pair in confusion_order]

        def draw_group(group: _Group) -> int:
            if stop is not None and stop.is_set():
                return 0
            return _draw_group(group, staging, output_dir, maps)

        def draw_confusion(number: int) -> int:
            picture = map_picture(confusion_maps[number - 1])
            atomic_write_bytes(staging / f"confusions/{number}.png", encode_png(picture))
            return 1

        # A class at a time per thread: its examples' thumbnails are decoded (OpenCV frees
        # the GIL), drawn and dropped, so memory does not grow with the number of classes.
        workers = max(1, min(4, os.cpu_count() or 1))
        drawn = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for count in pool.map(draw_group, groups):
                drawn += count
            check()
            drawn += sum(pool.map(draw_confusion, range(1, len(confusion_order) + 1)))
        check()
        say(f"drew {drawn} pictures in {time.perf_counter() - started:.1f} s")
        result["seconds"] = round(time.perf_counter() - started, 3)
        if not remote:
            _swap(staging, final)
        atomic_write_bytes(output_dir / SUMMARY_MD, summary_markdown(result).encode("utf-8"))
        atomic_write_bytes(
            output_dir / SUMMARY_JSON,
            (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
        )
    finally:
        if not remote and staging.exists() and staging != final:
            shutil.rmtree(staging, ignore_errors=True)
    return result


def _draw_group(group: _Group, folder: Path, output_dir: Path, maps: Sequence[MapRecord]) -> int:
    """Write a class's pictures under ``folder``: its mean map, cluster sheets, embedding.

    Returns:
        The number of pictures written.

    """
    from camcli.pictures.summary import cluster_sheet, embedding_picture, map_picture

    wanted = sorted({i for cluster in group.clusters for i in cluster.examples})
    thumbs = {i: _thumbnail(output_dir, maps[i].overlay) for i in wanted}
    base = folder / group.folder
    atomic_write_bytes(base / "mean.png", encode_png(map_picture(group.mean)))
    for cluster in group.clusters:
        sheet = cluster_sheet(
            cluster.mean,
            [thumbs[i] for i in cluster.examples],
            [maps[i].image for i in cluster.examples],
        )
        atomic_write_bytes(base / f"cluster-{cluster.rank}.png", encode_png(sheet))
    if group.embedding is None:
        return 1 + len(group.clusters)
    positions, rows, colours = group.embedding
    shown = [i for cluster in group.clusters for i in cluster.examples[:3]]
    picture = embedding_picture(
        positions,
        colours,
        {i: thumbs[i] for i in shown},
        [int(i) for i in rows],
        f"{group.name}: {len(group.members)} images, {len(group.clusters)} clusters "
        "(t-SNE of the maps)",
    )
    atomic_write_bytes(base / "embedding.png", picture)
    return 2 + len(group.clusters)


THUMBNAIL = 120
"""The longest side of the examples' thumbnails, in pixels."""


def _thumbnail(output_dir: Path, overlay: str | None) -> np.ndarray | None:
    """A small RGB copy of an example's overlay, or ``None`` when it cannot be read."""
    import cv2

    if overlay is None:
        return None
    try:
        data = np.frombuffer((output_dir / overlay).read_bytes(), np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        return None
    height, width = image.shape[:2]
    scale = THUMBNAIL / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[:, :, ::-1])


def _swap(staging: Path, final: Path) -> None:
    """Put the new pictures folder in place of the old one (two renames)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}{TEMP_MARK}old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _result(
    method: str,
    options: SummarizeOptions,
    maps: Sequence[MapRecord],
    facts: dict[str, Any],
    groups: Sequence[_Group],
    confusions: dict[tuple[str, str], list[int]],
    confusion_order: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """``summary.json``'s content."""
    classes: dict[str, Any] = {}
    for group in groups:
        labelled = [maps[i].correct for i in group.members if maps[i].correct is not None]
        classes[group.name] = {
            "images": len(group.members),
            "correct": sum(bool(c) for c in labelled) if labelled else None,
            "labelled": len(labelled),
            "mean_map": f"{SUMMARY_DIR}/{group.folder}/mean.png",
            "peak": _peak(peak_of(group.mean)),
            "clustered": group.note is None,
            "note": group.note,
            "clusters_chosen_by": None
            if group.note is not None
            else ("--clusters" if options.clusters is not None else "eigengap"),
            "eigenvalues": group.eigenvalues,
            "embedding": None
            if group.embedding is None
            else f"{SUMMARY_DIR}/{group.folder}/embedding.png",
            "clusters": [
                {
                    "rank": cluster.rank,
                    "size": len(cluster.members),
                    "score": round(cluster.score.score, 4),
                    "parts": cluster.score.parts(),
                    "peak": _peak(cluster.peak),
                    "images": [maps[i].image for i in cluster.members],
                    "examples": [maps[i].image for i in cluster.examples],
                    "mean_map": f"{SUMMARY_DIR}/{group.folder}/cluster-{cluster.rank}.png",
                }
                for cluster in group.clusters
            ],
        }
        if group.note is not None:  # not clustered: its images are listed here
            classes[group.name]["members"] = [maps[i].image for i in group.members]
    return {
        "method": method,
        "group_by": options.group_by,
        "images": len(maps),
        "model": facts["model"],
        "layer": facts["layer"],
        "skipped": facts["skipped"],
        "read_from_heatmaps": facts["from_pictures"],
        "annotations": {
            "boxes": None if options.boxes is None else str(options.boxes),
            "masks": None if options.masks is None else str(options.masks),
        },
        "classes": classes,
        "confusions": [
            {
                "label": pair[0],
                "predicted": pair[1],
                "count": len(confusions[pair]),
                "images": [maps[i].image for i in confusions[pair]],
                "mean_map": f"{SUMMARY_DIR}/confusions/{number}.png",
            }
            for number, pair in enumerate(confusion_order, start=1)
        ],
    }


def _peak(xy: tuple[float, float]) -> dict[str, float]:
    return {"x": round(xy[0], 4), "y": round(xy[1], 4)}
