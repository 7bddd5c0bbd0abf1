"""``explain`` on a detector or a segmenter: per detection and per class, maps and pictures.

The run loop, resume, the index and the writes are the classifiers' (:mod:`camcli.runs.loop`);
this module supplies the batch work:

* a detector gets the original photos (``3 x H x W`` in [0, 1]) and resizes them itself;
  each kept detection (``--score-threshold``, ``--max-detections``) gets its maps
  (:mod:`camcli.methods.detection`), drawn on the photo at its size;
* a segmenter gets the normalised batch; each class of the predicted mask that covers at
  least ``--min-pixels`` of the image gets its maps (:mod:`camcli.methods.segmentation`),
  resampled onto the photo as a classifier's are.

The record's ``files`` lists every file in two levels, as a classifier's record does (what
resume checks): ``detections`` / ``mask``, ``eigencam``, ``det-K.METHOD`` / ``CLASS.METHOD``,
each with its roles. Files per image: ``NAME.detections.png`` (boxes, names and scores)
and per detection ``NAME.det-K.METHOD.png`` and ``NAME.det-K.METHOD.overlay.png`` (with its box); or
``NAME.mask.png`` (the predicted mask in a fixed palette, with a legend) and per class
``NAME.CLASS.METHOD.png`` and its overlay.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from camcli.io.annotations import (
    VOID,
    AnnotationError,
    Annotations,
    fit_boxes,
    read_class_mask,
)
from camcli.io.decode import Batch
from camcli.io.discover import ImageItem, resolved_source
from camcli.io.write import artifact_path, atomic_write_bytes, encode_png
from camcli.methods.detection import DetectionResult, box_iou, explain_detections
from camcli.methods.forward import picture_maps
from camcli.methods.localisation import (
    POINTING_TOLERANCE,
    energy_pointing_game,
    pointing_game,
    region_of,
)
from camcli.methods.segmentation import SegmentationResult, explain_segments
from camcli.models.classes import ClassIndex
from camcli.models.loaded import LoadedModel
from camcli.pictures.regions import draw_boxes, mask_picture, palette
from camcli.pictures.render import (
    colorize,
    guided_to_unit,
    jet_lut,
    original_grid,
    overlay,
    sample_on_original,
)
from camcli.report.evaluation import not_scored, not_scored_text
from camcli.runs.settings import Settings
from camcli.runs.work import BatchWork, FileJob, ImageOutput

__all__ = [
    "nothing_matched",
    "region_evaluation",
    "region_index_entry",
    "region_work",
    "write_region_evaluation",
]


def class_name(classes: ClassIndex, index: int) -> str:
    """A class's name; ``class_N`` for an index the names do not reach."""
    return classes.name(index) if 0 <= index < len(classes) else f"class_{index}"


@dataclass
class _Work:
    launch: Callable[[Batch, list[int], list[torch.Tensor], torch.Tensor], Any]
    finish: Callable[[Any], list[ImageOutput]]


def region_work(
    items: Sequence[ImageItem],
    model: LoadedModel,
    module: torch.nn.Module,
    settings: Settings,
    static: dict[str, Any],
    annotations: Annotations | None = None,
    tolerance: float = POINTING_TOLERANCE,
) -> BatchWork:
    """The batch work of a detector's or a segmenter's run.

    With ``annotations`` (``camcli evaluate``), each detection is matched to an annotated
    box (IoU >= 0.5, same class, best score first, each box once) and each segment to its
    class's pixels of the annotated mask; each matched one's maps are scored (pointing game,
    energy in the box or mask). An evaluate run writes records only: the pictures are
    ``explain``'s.
    """
    layer = settings.layers[0] if settings.layers else None
    lut = jet_lut("cpu")

    def launch(
        part: Batch, positions: list[int], pixels: list[torch.Tensor], inputs: torch.Tensor
    ) -> Any:
        if settings.task == "detect":
            photos = [p.permute(2, 0, 1).float() / 255.0 for p in pixels]
            found: Sequence[DetectionResult | SegmentationResult] = explain_detections(
                module,
                photos,
                layer,
                settings.methods,
                settings.score_threshold,
                settings.max_detections,
                settings.drise_masks,
                settings.method_options.chunk_size or 16,
                settings.method_options.seed,
            )
        else:
            assert layer is not None
            found = explain_segments(module, inputs, layer, settings.methods, settings.min_pixels)
        host = [p.cpu().numpy() for p in pixels]
        return part, positions, host, found, part.thetas

    def finish(launched: Any) -> list[ImageOutput]:
        _, positions, host, found, thetas = launched
        outputs = []
        for j, position in enumerate(positions):
            item = items[position]
            photo = host[j]
            if settings.task == "detect":
                record, jobs = _detection_outputs(item, photo, found[j], model, settings, lut)
            else:
                record, jobs = _segment_outputs(
                    item, photo, found[j], thetas[j], model, settings, lut
                )
            if annotations is not None:
                # evaluate writes its records only: the pictures (and their names) are explain's
                jobs = []
                record["files"] = {}
                for entry in record["detections" if settings.task == "detect" else "segments"]:
                    entry.pop("files", None)
                _score_regions(record, item, found[j], thetas[j], annotations, tolerance)
            outputs.append(ImageOutput({**static, **record}, jobs, photo.nbytes * (1 + len(jobs))))
        return outputs

    return _Work(launch, finish)


def _peak(values: np.ndarray) -> dict[str, int]:
    y, x = np.unravel_index(int(np.argmax(values)), values.shape)
    return {"x": int(x), "y": int(y)}


def _pictures(
    method: str, maps: torch.Tensor, photo: np.ndarray, lut: torch.Tensor, alpha: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Heatmaps and overlays of ``(K, H, W)`` maps on the photo (the method's scaling)."""
    units = picture_maps(method, maps.float())
    heat = colorize(units, lut).numpy()
    base = torch.from_numpy(photo)
    return list(heat), [overlay(base, torch.from_numpy(h), alpha).numpy() for h in heat]


def _to_uint8(unit: torch.Tensor) -> list[np.ndarray]:
    """``(K, 3, H, W)`` pictures in [0, 1] as ``(H, W, 3)`` uint8 arrays."""
    pixels = unit.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return list(pixels.numpy())


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return int(colour[0]), int(colour[1]), int(colour[2])


def _png(array: np.ndarray, level: int | None) -> Callable[[], bytes]:
    return lambda: encode_png(array, level)


def _detection_outputs(
    item: ImageItem,
    photo: np.ndarray,
    result: DetectionResult,
    model: LoadedModel,
    settings: Settings,
    lut: torch.Tensor,
) -> tuple[dict[str, Any], list[FileJob]]:
    out, rel, level = settings.output_dir, item.relative, settings.png_level
    height, width = photo.shape[:2]
    colours = palette(max([d.label for d in result.detections] + [len(model.classes), 1]) + 1)
    jobs: list[FileJob] = []
    listing: dict[str, Any] = {}
    sheet_path = artifact_path(out, rel, "detections.png")
    captions = [f"{class_name(model.classes, d.label)} {d.score:.2f}" for d in result.detections]
    box_colours = [_rgb(colours[d.label]) for d in result.detections]
    sheet = draw_boxes(photo, [d.box for d in result.detections], captions, box_colours)
    jobs.append((sheet_path, _png(sheet, level)))
    listing["detections"] = {"sheet": sheet_path.name}
    shared: dict[str, Any] = {}
    image_maps: dict[str, Any] = {}
    if "eigencam" in result.maps:
        values = result.maps["eigencam"].cpu()
        heat, over = _pictures("eigencam", values, photo, lut, settings.alpha)
        for role, array in (("heatmap", heat[0]), ("overlay", over[0])):
            suffix = "eigencam.png" if role == "heatmap" else "eigencam.overlay.png"
            path = artifact_path(out, rel, suffix)
            jobs.append((path, _png(array, level)))
            shared.setdefault("eigencam", {})[role] = path.name
        listing.update(shared)
        image_maps["eigencam"] = _map_numbers(values[0].numpy(), settings)
    detections = []
    per_method = {m: v.cpu() for m, v in result.maps.items() if m != "eigencam"}
    pictures = {
        m: _pictures(m, v, photo, lut, settings.alpha) for m, v in per_method.items() if len(v)
    }
    guided_pictures = (
        _to_uint8(guided_to_unit(result.gradients.cpu().float()))
        if result.gradients is not None and len(result.gradients)
        else []
    )
    for k, det in enumerate(result.detections):
        files: dict[str, Any] = {}
        maps: dict[str, Any] = {}
        for method, values in per_method.items():
            heat, over = pictures[method]
            boxed = draw_boxes(over[k], [det.box], [""], [(255, 255, 255)])
            for role, array in (("heatmap", heat[k]), ("overlay", boxed)):
                stem = f"det-{k + 1}.{method}"
                path = artifact_path(
                    out, rel, f"{stem}.png" if role == "heatmap" else f"{stem}.overlay.png"
                )
                jobs.append((path, _png(array, level)))
                files.setdefault(method, {})[role] = path.name
            numbers = values[k].numpy()
            maps[method] = {"max": round(float(numbers.max()), 6), "peak": _peak(numbers)}
        detections.append(
            {
                "rank": k + 1,
                "box": [round(v, 1) for v in det.box],
                "index": det.label,
                "name": class_name(model.classes, det.label),
                "score": round(det.score, 4),
                "maps": maps,
                "files": files,
            }
        )
        if result.gradients is not None:
            path = artifact_path(out, rel, f"det-{k + 1}.guided.png")
            jobs.append((path, _png(guided_pictures[k], level)))
            files["guided"] = {"picture": path.name}
        listing.update({f"det-{k + 1}.{m}": roles for m, roles in files.items()})
    record = {
        "image": str(item.relative),
        "source": resolved_source(item.path),
        "status": "ok",
        "task": "detect",
        "width": width,
        "height": height,
        "score_threshold": settings.score_threshold,
        "detections": detections,
        "files": listing,
    }
    if image_maps:
        record["maps"] = image_maps  # the maps of the whole image, as a classifier's record
        record["eigencam"] = "one map per image (class-agnostic)"
    return record, jobs


def _map_numbers(values: np.ndarray, settings: Settings) -> dict[str, Any]:
    """A per-image map's layer, raw maximum and peak (on the photo), as a classifier's."""
    numbers: dict[str, Any] = {"layer": settings.layers[0]} if settings.layers else {}
    numbers.update(max=round(float(values.max()), 6), peak=_peak(values))
    return numbers


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def _segment_outputs(
    item: ImageItem,
    photo: np.ndarray,
    result: SegmentationResult,
    theta: torch.Tensor,
    model: LoadedModel,
    settings: Settings,
    lut: torch.Tensor,
) -> tuple[dict[str, Any], list[FileJob]]:
    out, rel, level = settings.output_dir, item.relative, settings.png_level
    height, width = photo.shape[:2]
    grid, inside = original_grid(theta.cpu(), height, width)
    mask = result.mask.cpu()[None, None].float()
    sampled = F.grid_sample(mask, grid, mode="nearest", align_corners=False)[0, 0]
    mask_on_photo = sampled.round().to(torch.int64).numpy()
    names = list(model.classes.names)
    jobs: list[FileJob] = []
    mask_path = artifact_path(out, rel, "mask.png")
    shown = [s.index for s in result.segments]
    jobs.append((mask_path, _png(mask_picture(mask_on_photo, names, shown), level)))
    listing: dict[str, Any] = {"mask": {"mask": mask_path.name}}
    on_photo = {
        m: sample_on_original(v.cpu().float(), grid, inside) for m, v in result.maps.items()
    }
    pictures = {
        m: _pictures(m, v, photo, lut, settings.alpha) for m, v in on_photo.items() if len(v)
    }
    image_maps: dict[str, Any] = {}
    if "eigencam" in pictures:  # one map per image
        image_maps["eigencam"] = _map_numbers(on_photo["eigencam"][0].numpy(), settings)
        heat, over = pictures.pop("eigencam")
        for role, array in (("heatmap", heat[0]), ("overlay", over[0])):
            path = artifact_path(
                out, rel, "eigencam.png" if role == "heatmap" else "eigencam.overlay.png"
            )
            jobs.append((path, _png(array, level)))
            listing.setdefault("eigencam", {})[role] = path.name
    segments = []
    for k, segment in enumerate(result.segments):
        name = class_name(model.classes, segment.index)
        stem = _file_stem(name)
        files: dict[str, Any] = {}
        maps: dict[str, Any] = {}
        for method, (heat, over) in pictures.items():
            for role, array in (("heatmap", heat[k]), ("overlay", over[k])):
                suffix = (
                    f"{stem}.{method}.png" if role == "heatmap" else f"{stem}.{method}.overlay.png"
                )
                path = artifact_path(out, rel, suffix)
                jobs.append((path, _png(array, level)))
                files.setdefault(method, {})[role] = path.name
            numbers = on_photo[method][k].numpy()
            maps[method] = {"max": round(float(numbers.max()), 6), "peak": _peak(numbers)}
        segments.append(
            {
                "index": segment.index,
                "name": name,
                "pixels": int((mask_on_photo == segment.index).sum()),
                "fraction": round(segment.fraction, 6),
                "maps": maps,
                "files": files,
            }
        )
        listing.update({f"{stem}.{m}": roles for m, roles in files.items()})
    record = {
        "image": str(item.relative),
        "source": resolved_source(item.path),
        "status": "ok",
        "task": "segment",
        "width": width,
        "height": height,
        "min_pixels": settings.min_pixels,
        "segments": segments,
        "files": listing,
    }
    if image_maps:
        record["maps"] = image_maps  # the maps of the whole image, as a classifier's record
        record["eigencam"] = "one map per image (class-agnostic)"
    return record, jobs


def _score_regions(
    record: dict[str, Any],
    item: ImageItem,
    result: DetectionResult | SegmentationResult,
    theta: torch.Tensor,
    annotations: Annotations,
    tolerance: float,
) -> None:
    """Match the record's detections or segments to the annotations and score their maps."""
    height, width = int(record["height"]), int(record["width"])
    if isinstance(result, DetectionResult):
        objects = annotations.objects(item.relative)
        if objects is None:
            return
        fitted = fit_boxes(objects, width, height)
        record.update(fitted.notes())
        boxes = fitted.objects
        taken: set[int] = set()
        matched = 0
        for k, (entry, det) in enumerate(zip(record["detections"], result.detections, strict=True)):
            best, best_iou = None, 0.5
            for b, obj in enumerate(boxes):
                if b in taken or obj.index != det.label:
                    continue
                iou = float(box_iou(torch.tensor([det.box]), torch.tensor(
                    [[obj.box.x0, obj.box.y0, obj.box.x1, obj.box.y1]]))[0, 0])  # fmt: skip
                if iou >= best_iou:
                    best, best_iou = b, iou
            entry["match"] = None
            if best is None:
                continue
            taken.add(best)
            matched += 1
            obj = boxes[best]
            entry["match"] = {"box": [obj.box.x0, obj.box.y0, obj.box.x1, obj.box.y1],
                              "name": obj.name, "iou": round(best_iou, 4)}  # fmt: skip
            region = region_of(height, width, boxes=[obj.box], tolerance=tolerance)
            entry["localisation"] = _localisation(
                {m: v[k] for m, v in result.maps.items() if m != "eigencam"}, region
            )
        record["annotated"] = {"objects": len(boxes), "matched": matched}
        return
    mask_file = annotations.mask_path(item.relative)
    if mask_file is None:
        return
    try:
        truth = read_class_mask(mask_file, height, width)
    except AnnotationError as exc:  # this image is not scored; the run goes on
        record["annotation_error"] = str(exc)
        return
    grid, inside = original_grid(theta.cpu(), height, width)
    matched = 0
    for k, (entry, segment) in enumerate(zip(record["segments"], result.segments, strict=True)):
        own = truth == segment.index
        if not own.any():
            entry["match"] = None
            continue
        matched += 1
        entry["match"] = {"pixels": int(own.sum())}
        region = region_of(height, width, mask=own, tolerance=tolerance)
        on_photo = {
            m: sample_on_original(v[k : k + 1].cpu().float(), grid, inside)[0]
            for m, v in result.maps.items()
            if m != "eigencam"
        }
        entry["localisation"] = _localisation(on_photo, region)
    present = {int(c) for c in np.unique(truth) if c not in (0, VOID)}
    record["annotated"] = {"objects": len(present), "matched": matched}


def _localisation(maps: dict[str, torch.Tensor], region: Any) -> dict[str, Any]:
    """Pointing game and energy of each method's map (the picture's scaling) in a region."""
    near = torch.from_numpy(region.near)
    inside = torch.from_numpy(region.inside)
    scores = {}
    for method, values in maps.items():
        unit = picture_maps(method, values[None].float().cpu())[0]
        energy = energy_pointing_game(unit, inside)
        scores[method] = {
            "pointing_game": pointing_game(unit, near),
            "energy_pointing_game": None if energy is None else round(energy, 6),
        }
    return scores


def region_evaluation(
    records: Sequence[dict[str, Any]], methods: Sequence[str], task: str | None = None
) -> dict[str, Any]:
    """``evaluation.json`` of a detector's or segmenter's evaluate run.

    Per method the means over the matched detections or segments (``images`` counts them),
    and the counts of the run: images, annotated images, objects annotated and matched,
    masks that could not be read (``annotation_errors``, with an example), and the methods
    left out (``not_scored``, with the reason).
    """
    task = task or (str(records[0].get("task", "detect")) if records else "detect")
    kind = "detections" if task == "detect" else "segments"
    left_out = not_scored(methods, task)
    scored: dict[str, dict[str, list[float]]] = {
        m: {"pointing_game": [], "energy_pointing_game": []} for m in methods if m not in left_out
    }
    found = matched = objects = annotated = 0
    errors: list[str] = []
    for record in records:
        entries = record.get(kind) or []
        found += len(entries)
        if record.get("annotation_error"):
            errors.append(str(record["annotation_error"]))
        if "annotated" in record:
            annotated += 1
            objects += record["annotated"]["objects"]
            matched += record["annotated"]["matched"]
        for entry in entries:
            for method, scores in (entry.get("localisation") or {}).items():
                for name, value in scores.items():
                    if value is not None and method in scored:
                        scored[method][name].append(float(value))
    table = {}
    for method, columns in scored.items():
        if not columns["pointing_game"]:
            continue
        table[method] = {
            name: round(float(np.mean(v)), 6) if v else None for name, v in columns.items()
        }
        table[method]["images"] = len(columns["pointing_game"])  # matched detections or segments
    result: dict[str, Any] = {
        "task": task,
        "images": len(records),
        "annotated": annotated,
        kind: found,
        "objects": objects,
        "matched": matched,
        "target": f"each matched {kind[:-1]}",
        "methods": table,
        "not_scored": left_out,
        "sanity": {},
        "pictures": {},
    }
    if errors:
        result["annotation_errors"] = {"count": len(errors), "first": errors[0]}
    return result


def nothing_matched(result: dict[str, Any], settings: Settings) -> str | None:
    """The sentence for a region evaluation that scored nothing, or ``None`` when it did."""
    if result["methods"]:
        return None
    detect = result["task"] == "detect"
    kind = "detections" if detect else "segments"
    errors = result.get("annotation_errors")
    if not result["annotated"] and not errors:
        return None  # the annotated images failed (said and counted) or are other shards'
    if errors and not result["annotated"]:
        return (
            f"nothing was scored: none of the {errors['count']} annotated image(s)' masks could "
            f"be read as class masks (e.g. {errors['first']})"
        )
    if not result["objects"]:
        unread = (
            f", and {errors['count']} mask(s) could not be read as class masks (e.g. "
            f"{errors['first']})"
            if errors
            else ""
        )
        read = "whose masks could be read " if errors else ""
        return (
            f"nothing was scored: the {result['annotated']} annotated image(s) {read}hold no "
            "object "
            + ("(their box files list none)" if detect else "(their masks are background only)")
            + unread
        )
    found = (
        f"{result[kind]} detection(s) scored at least --score-threshold {settings.score_threshold}"
        if detect
        else f"{result[kind]} segment(s) covered at least --min-pixels {settings.min_pixels} of "
        "their image"
    )
    rule = "a detection of the same class with IoU >= 0.5" if detect else "a segment of its class"
    return (
        f"nothing was scored: none of the {result['objects']} annotated object(s) has {rule} "
        f"({found}; the class names of the annotations are matched with the model's classes)"
    )


def write_region_evaluation(output_dir: Path, result: dict[str, Any], name_suffix: str) -> str:
    """Write ``evaluation.json`` and ``evaluation.md`` (the leaderboard); the JSON's name."""
    from camcli.report.evaluation import HIGHER_IS_BETTER

    name = f"evaluation{name_suffix}.json"
    atomic_write_bytes(output_dir / name, (json.dumps(result, indent=2) + "\n").encode())
    kind = "detections" if result["task"] == "detect" else "segments"
    lines = [
        f"# Which map to trust: {result.get('model', '')}",
        "",
        f"{result['images']} image(s), {result['annotated']} annotated, {result[kind]} "
        f"{kind}; {result['matched']} of {result['objects']} annotated object(s) matched "
        f"(scores are means over the matched {kind}).",
        "",
    ]
    if result["methods"]:
        lines += [
            "| method | pointing game | energy pointing | matched |",
            "| --- | --- | --- | --- |",
        ]
    else:
        lines.append("No score was measured: no annotated object was matched.")
    for method, scores in result["methods"].items():
        cells = [scores.get(n) for n in HIGHER_IS_BETTER if n in scores]
        shown = " | ".join("-" if v is None else f"{v:.3f}" for v in cells)
        lines.append(f"| {method} | {shown} | {scores['images']} |")
    if result.get("not_scored"):
        lines += ["", f"Not scored: {not_scored_text(result['not_scored'])}."]
    markdown = f"evaluation{name_suffix}.md"
    atomic_write_bytes(output_dir / markdown, ("\n".join(lines) + "\n").encode())
    return name


def region_index_entry(item: ImageItem, record: dict[str, Any], record_file: str) -> dict[str, Any]:
    """An index line of a detector's or segmenter's record: the counts."""
    entry: dict[str, Any] = {
        "image": str(item.relative),
        "status": "ok",
        "record": record_file,
        "task": record["task"],
    }
    if record["task"] == "detect":
        entry["detections"] = len(record["detections"])
    else:
        entry["segments"] = len(record["segments"])
    return entry
