"""Ground truth for ``camcli evaluate``: object boxes (Pascal VOC XML, COCO JSON) and masks.

* ``--boxes DIR``: one Pascal VOC XML file per image, mirroring the input tree
  (``a/b.jpg`` -> ``DIR/a/b.xml``), the format of ImageNet's and VOC's box annotations:
  ``<object><name>`` and ``<bndbox>`` with 1-based inclusive ``xmin ymin xmax ymax``. A file
  not at the mirrored place is matched by its bare name (``DIR/b.xml``, a flat folder) when
  that name is unique among the images and among the files.
* ``--boxes FILE.json``: one COCO-style file: ``images`` (``id``, ``file_name``),
  ``annotations`` (``image_id``, ``category_id``, ``bbox`` = ``[x, y, width, height]``) and
  ``categories`` (``id``, ``name``); ``file_name`` is matched with the image's path under the
  input root, or with its file name when that is unique.
* ``--masks DIR``: one PNG per image, mirroring the input tree (``a/b.jpg`` ->
  ``DIR/a/b.png``; then by bare name, as the boxes), non-zero on the object, of the image's
  size.

What matched is counted (:class:`Matching`): the command says how many images have
annotations and how many annotation entries match no image, and refuses a run where none
matched.

Class names are matched with the model's classes as class folders are (an index, a WordNet
id or a name, :meth:`camcli.models.classes.ClassIndex.resolve`). Everything is read and
checked before the model runs: a file that does not parse, or names a class the model does
not have, is an :class:`AnnotationError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from camcli.methods.localisation import Box

__all__ = [
    "AnnotationError",
    "Annotations",
    "FittedBoxes",
    "Matching",
    "ObjectBox",
    "class_mask_values",
    "fit_boxes",
    "load_annotations",
    "read_class_mask",
    "read_mask",
    "voc_palette",
]


class AnnotationError(ValueError):
    """A box or mask file that cannot be used (the message is one sentence)."""


@dataclass(frozen=True)
class ObjectBox:
    """One annotated object: its class index in the model and its box.

    ``drawn_on`` is the ``(width, height)`` of the image the box was drawn on, when the file
    says (a VOC ``<size>``); :func:`fit_boxes` scales the box when the image differs.
    """

    index: int
    name: str
    box: Box
    drawn_on: tuple[int, int] | None = None


@dataclass
class FittedBoxes:
    """An image's boxes made to fit it, and what that took.

    Attributes:
        objects: the usable objects, their boxes in the image's pixels.
        scaled_from: the ``(width, height)`` the boxes were drawn on, when it is not the
            image's (the boxes were scaled to the image), else ``None``.
        clipped: boxes partly outside the image, clipped to it.
        skipped: boxes empty, inverted or wholly outside the image, left out.

    """

    objects: list[ObjectBox]
    scaled_from: tuple[int, int] | None = None
    clipped: int = 0
    skipped: int = 0

    def notes(self) -> dict[str, Any]:
        """What the record says about it (only what happened)."""
        notes: dict[str, Any] = {}
        if self.scaled_from is not None:
            notes["boxes_scaled_from"] = list(self.scaled_from)
        if self.clipped:
            notes["boxes_clipped"] = self.clipped
        if self.skipped:
            notes["boxes_skipped"] = self.skipped
        return notes


def fit_boxes(objects: Sequence[ObjectBox], width: int, height: int) -> FittedBoxes:
    """Check an image's boxes against the image: scale, clip or leave out, and count.

    A box drawn on a copy of another size (VOC ``<size>``) is scaled to the image; a box
    partly outside the image is clipped to it; an empty or inverted box, or one wholly
    outside, is left out.
    """
    fitted = FittedBoxes([])
    for obj in objects:
        box = obj.box
        if obj.drawn_on is not None and obj.drawn_on != (width, height):
            fitted.scaled_from = obj.drawn_on
            sx, sy = width / obj.drawn_on[0], height / obj.drawn_on[1]
            box = Box(box.x0 * sx, box.y0 * sy, box.x1 * sx, box.y1 * sy)
        if not (box.x1 > box.x0 and box.y1 > box.y0):
            fitted.skipped += 1
            continue
        clipped = Box(
            min(max(box.x0, 0.0), width),
            min(max(box.y0, 0.0), height),
            min(max(box.x1, 0.0), width),
            min(max(box.y1, 0.0), height),
        )
        if not (clipped.x1 > clipped.x0 and clipped.y1 > clipped.y0):
            fitted.skipped += 1
            continue
        if clipped != box:
            fitted.clipped += 1
        fitted.objects.append(ObjectBox(obj.index, obj.name, clipped))
    return fitted


@dataclass
class Matching:
    """How one kind of annotation (``--boxes`` or ``--masks``) matched the images.

    Attributes:
        option: ``--boxes`` or ``--masks``.
        images: the images of the run.
        matched: the images that got an annotation.
        entries: the annotation entries (files, or a COCO file's images).
        unmatched: the entries that match no image (names as written).
        without: an image that got no annotation, or ``None``.

    """

    option: str
    images: int
    matched: int
    entries: int
    unmatched: list[str]
    without: str | None

    def summary(self) -> str:
        """One line for people: the counts, with one example of each kind of miss."""
        text = f"{self.option}: {self.matched} of {self.images} image(s) have annotations"
        if self.without is not None and self.matched < self.images:
            text += f" (not {self.without})"
        if self.unmatched:
            text += (
                f"; {len(self.unmatched)} of {self.entries} annotation entr"
                f"{'y' if self.entries == 1 else 'ies'} match no image "
                f"(e.g. {self.unmatched[0]})"
            )
        return text

    def nothing_matched(self) -> str:
        """The sentence for a run where no image got an annotation."""
        example = f" (e.g. {self.unmatched[0]})" if self.unmatched else ""
        image = f", e.g. {self.without}" if self.without else ""
        return (
            f"none of its {self.entries} annotation entr{'y' if self.entries == 1 else 'ies'}"
            f"{example} matches an image under INPUT{image}: files are matched by the "
            "image's path under INPUT (a/b.jpg -> a/b.xml, a/b.png; a COCO file_name "
            "a/b.jpg), then by the bare file name when it is unique"
        )


@dataclass
class Annotations:
    """The ground truth of a run.

    Attributes:
        boxes: per image (path under the input root), its objects; an image with a box
            file but no object has an empty list; an image without a file is absent.
        masks: the folder of mask PNGs, or ``None``.
        source: what the run's settings record about the annotations.

    """

    boxes: dict[str, list[ObjectBox]] | None = None
    masks: Path | None = None
    source: dict[str, Any] = field(default_factory=dict)
    box_digests: dict[str, str] = field(default_factory=dict)
    mask_files: dict[str, Path] = field(default_factory=dict)
    matching: list[Matching] = field(default_factory=list)

    def digest(self, relative: PurePosixPath) -> str | None:
        """What the image's annotation is made of, as a short digest (``None``: none).

        The boxes' content (the XML file's bytes, or the image's COCO objects) and the mask
        file's size and modification time: a record whose digest differs is redone.
        """
        parts = []
        key = relative.as_posix()
        if key in self.box_digests:
            parts.append("boxes:" + self.box_digests[key])
        mask = self.mask_path(relative)
        if mask is not None:
            stat = mask.stat()
            parts.append(f"mask:{stat.st_size}:{stat.st_mtime_ns}")
        if not parts:
            return None
        return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]

    def objects(self, relative: PurePosixPath) -> list[ObjectBox] | None:
        """The image's objects, or ``None`` when no box file covers it."""
        if self.boxes is None:
            return None
        return self.boxes.get(relative.as_posix())

    def mask_path(self, relative: PurePosixPath) -> Path | None:
        """The image's mask file when masks are given and one matches it."""
        if self.masks is None:
            return None
        return self.mask_files.get(relative.as_posix())


def load_annotations(
    boxes: Path | None,
    masks: Path | None,
    images: Sequence[PurePosixPath],
    resolve: Any,
) -> Annotations:
    """Read the boxes of every image (and check the mask folder).

    Args:
        boxes: a folder of VOC XML files or a COCO JSON file.
        masks: a folder of mask PNGs.
        images: every image's path under the input root.
        resolve: the model's class lookup (``ClassIndex.resolve``): name -> index or None.

    Raises:
        AnnotationError: a file that does not parse, names an unknown class, or a folder
            that is missing.

    """
    result = Annotations(masks=masks)
    if masks is not None:
        if not masks.is_dir():
            raise AnnotationError(f"--masks {masks} is not a folder")
        result.source["masks"] = str(masks.resolve())
        result.mask_files, unmatched = _match_files(masks, ".png", images)
        result.matching.append(
            _matching("--masks", images, set(result.mask_files), len(result.mask_files)
                      + len(unmatched), unmatched)
        )  # fmt: skip
    if boxes is None:
        return result
    if boxes.is_dir():
        result.boxes, unmatched = _voc_folder(boxes, images, resolve, result.box_digests)
        result.source["boxes"] = {"voc": str(boxes.resolve())}
        result.matching.append(
            _matching("--boxes", images, set(result.boxes), len(result.boxes)
                      + len(unmatched), unmatched)
        )  # fmt: skip
    elif boxes.is_file():
        result.boxes, entries, unmatched = _coco_file(boxes, images, resolve)
        result.matching.append(_matching("--boxes", images, set(result.boxes), entries, unmatched))
        for key, objects in result.boxes.items():
            listed = repr([(o.name, o.box) for o in objects]).encode()
            result.box_digests[key] = hashlib.sha1(listed).hexdigest()
        stat = boxes.stat()
        result.source["boxes"] = {
            "coco": str(boxes.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    else:
        raise AnnotationError(f"--boxes {boxes} is neither a folder of XML files nor a file")
    return result


def _class(name: str, resolve: Any, where: str) -> int:
    index = resolve(name)
    if index is None:
        raise AnnotationError(
            f"{where} names the class {name!r}, which the model does not have (name classes "
            "by the model's class index, WordNet id or class name, e.g. 281, n02123045 or "
            "'tabby'; a record of camcli explain lists the names)"
        )
    return int(index)


def _matching(
    option: str,
    images: Sequence[PurePosixPath],
    matched: set[str],
    entries: int,
    unmatched: list[str],
) -> Matching:
    without = next((p.as_posix() for p in images if p.as_posix() not in matched), None)
    return Matching(option, len(images), len(matched), entries, unmatched, without)


def _match_files(
    folder: Path, suffix: str, images: Sequence[PurePosixPath]
) -> tuple[dict[str, Path], list[str]]:
    """Each image's annotation file under ``folder``, and the files that match no image.

    The mirrored path first (``a/b.jpg`` -> ``folder/a/b<suffix>``), then the bare name
    (``b<suffix>`` anywhere under ``folder``) when it is unique among the images and among
    the files.
    """
    files = sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file())
    by_name: dict[str, list[Path]] = {}
    for path in files:
        by_name.setdefault(path.stem, []).append(path)
    stems: dict[str, int] = {}
    for relative in images:
        stems[relative.stem] = stems.get(relative.stem, 0) + 1
    found: dict[str, Path] = {}
    for relative in images:
        path = folder.joinpath(*relative.parts).with_suffix(suffix)
        if path.is_file():
            found[relative.as_posix()] = path
        elif stems[relative.stem] == 1 and len(by_name.get(relative.stem, [])) == 1:
            found[relative.as_posix()] = by_name[relative.stem][0]
    used = set(found.values())
    unmatched = [p.relative_to(folder).as_posix() for p in files if p not in used]
    return found, unmatched


def _voc_folder(
    folder: Path, images: Sequence[PurePosixPath], resolve: Any, digests: dict[str, str]
) -> tuple[dict[str, list[ObjectBox]], list[str]]:
    files, unmatched = _match_files(folder, ".xml", images)
    found: dict[str, list[ObjectBox]] = {}
    for key, path in files.items():
        found[key] = read_voc(path, resolve)
        try:
            digests[key] = hashlib.sha1(path.read_bytes()).hexdigest()
        except OSError:
            digests[key] = "unreadable"
    return found, unmatched


def read_voc(path: Path, resolve: Any) -> list[ObjectBox]:
    """The objects of one Pascal VOC XML file.

    Raises:
        AnnotationError: it does not parse, or an object lacks a name or a box, or names
            an unknown class.

    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise AnnotationError(f"the box file {path} does not parse as XML: {exc}") from None
    drawn_on = None
    size = root.find("size")
    if size is not None:
        try:
            drawn_on = (
                int(float(size.findtext("width") or "")),
                int(float(size.findtext("height") or "")),
            )
        except ValueError:
            drawn_on = None
        if drawn_on is not None and min(drawn_on) <= 0:
            drawn_on = None  # VOC files with <width>0</width>: the size is unknown
    objects = []
    for number, node in enumerate(root.iter("object"), start=1):
        name = (node.findtext("name") or "").strip()
        box = node.find("bndbox")
        if not name or box is None:
            raise AnnotationError(f"object {number} of {path} has no <name> or no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (
                float(box.findtext(tag) or "") for tag in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise AnnotationError(
                f"object {number} of {path} has a <bndbox> without numeric xmin, ymin, "
                "xmax and ymax"
            ) from None
        index = _class(name, resolve, f"object {number} of {path}")
        objects.append(ObjectBox(index, name, Box(xmin - 1, ymin - 1, xmax, ymax), drawn_on))
    return objects


def _coco_file(
    path: Path, images: Sequence[PurePosixPath], resolve: Any
) -> tuple[dict[str, list[ObjectBox]], int, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = {int(e["id"]): str(e["file_name"]) for e in data["images"]}
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        annotations = [
            (int(a["image_id"]), int(a["category_id"]), [float(v) for v in a["bbox"]])
            for a in data["annotations"]
        ]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"the box file {path} does not parse as JSON: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(
            f"the box file {path} is not COCO-style (images with id and file_name, "
            f"annotations with image_id, category_id and bbox): {exc!r} is missing or wrong"
        ) from None
    by_path = {p.as_posix(): p.as_posix() for p in images}
    names: dict[str, list[str]] = {}
    for p in images:
        names.setdefault(p.name, []).append(p.as_posix())
    image_of: dict[int, str] = {}
    for image_id, file_name in entries.items():
        key = PurePosixPath(file_name.replace("\\", "/")).as_posix().lstrip("./")
        if key in by_path:
            image_of[image_id] = key
        elif len(names.get(PurePosixPath(key).name, [])) == 1:
            image_of[image_id] = names[PurePosixPath(key).name][0]
    found: dict[str, list[ObjectBox]] = {key: [] for key in image_of.values()}
    for image_id, category, (x, y, w, h) in annotations:
        if image_id not in image_of:
            continue
        name = categories.get(category, str(category))
        index = _class(name, resolve, f"category {category} of {path}")
        found[image_of[image_id]].append(ObjectBox(index, name, Box(x, y, x + w, y + h)))
    unmatched = [name for image_id, name in entries.items() if image_id not in image_of]
    return found, len(entries), unmatched


def read_mask(path: Path, height: int, width: int) -> np.ndarray:
    """A mask PNG as ``(H, W)`` bool (non-zero on the object).

    Raises:
        AnnotationError: it cannot be read, or its size is not the image's.

    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise AnnotationError(f"the mask {path} cannot be read: {exc}") from None
    if array.shape != (height, width):
        raise AnnotationError(
            f"the mask {path} is {array.shape[1]} x {array.shape[0]} pixels, the image "
            f"{width} x {height}"
        )
    return array != 0


VOID = 255  # Pascal VOC's boundary and "difficult" pixels in a class mask


def voc_palette() -> dict[tuple[int, int, int], int]:
    """Pascal VOC's class colours: ``(r, g, b)`` -> class index (0 to 255; 255 is VOID).

    The bit-interleaved palette of VOC's ``SegmentationClass`` PNGs (red ``(128, 0, 0)`` is
    class 1, green ``(0, 128, 0)`` class 2, ..., the boundaries' ``(224, 224, 192)`` is 255),
    the palette camcli draws its own masks in.
    """
    from camcli.pictures.regions import palette

    return {(int(r), int(g), int(b)): index for index, (r, g, b) in enumerate(palette(256))}


def _rgb_classes(path: Path, rgb: np.ndarray) -> np.ndarray:
    """An RGB class mask's class indices: VOC's colours, or grey values written as RGB.

    Raises:
        AnnotationError: a colour that is neither (with an example and where it is).
    """
    flat = rgb.reshape(-1, 3).astype(np.int64)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    colours, inverse = np.unique(codes, return_inverse=True)
    known = voc_palette()
    triples = [(int(c >> 16), int((c >> 8) & 255), int(c & 255)) for c in colours]
    if all(t in known for t in triples):
        lookup = np.array([known[t] for t in triples], dtype=np.int64)
        return lookup[inverse].reshape(rgb.shape[:2])
    if all(r == g == b for r, g, b in triples):  # a grey mask saved as RGB
        return rgb[..., 0].astype(np.int64)
    strange = [t for t in triples if t not in known]
    odd = next((t for t in strange if len(set(t)) > 1), strange[0])
    where = int(np.flatnonzero(codes == ((odd[0] << 16) | (odd[1] << 8) | odd[2]))[0])
    y, x = divmod(where, rgb.shape[1])
    raise AnnotationError(
        f"the mask {path} is in colour, and its colour {odd} (at x={x}, y={y}; "
        f"{len(triples)} colour(s) in all) is not one of Pascal VOC's class colours: a class "
        "mask holds one class index per pixel, as a palette or grey PNG, or as an RGB PNG in "
        "VOC's colours (class 1 (128, 0, 0), class 2 (0, 128, 0), ...)"
    )


def class_mask_values(path: Path) -> np.ndarray:
    """A class mask PNG's ``(H, W)`` class indices, at its own size.

    A palette PNG (Pascal VOC's ``SegmentationClass``) gives its palette indices, a grey one
    its values, an RGB one the index of each colour in Pascal VOC's palette
    (:func:`voc_palette`; an RGB PNG whose pixels are all grey gives the grey values); an
    alpha channel is ignored.

    Raises:
        AnnotationError: it cannot be read, or it is in colours that are not VOC's, or in a
            mode that holds no class indices.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in ("P", "L", "I", "I;16", "1"):
                return np.asarray(image).astype(np.int64)
            if mode in ("LA", "PA"):
                return np.asarray(image)[..., 0].astype(np.int64)
            if mode in ("RGB", "RGBA"):
                rgb = np.asarray(image.convert("RGB"))
            else:
                raise AnnotationError(
                    f"the mask {path} is {mode}: a class mask holds one class index per pixel "
                    "(a palette, grey or RGB PNG)"
                )
    except (OSError, UnidentifiedImageError) as exc:
        raise AnnotationError(f"the mask {path} cannot be read: {exc}") from None
    return _rgb_classes(path, rgb)


def read_class_mask(path: Path, height: int, width: int) -> np.ndarray:
    """A class mask PNG as ``(H, W)`` class indices (a segmenter's ground truth).

    Read as :func:`class_mask_values` says; 255 (VOC's boundaries) belongs to no class, 0 is
    the background.

    Raises:
        AnnotationError: it cannot be read, is in colours that are not VOC's, or its size is
            not the image's.
    """
    array = class_mask_values(path)
    if array.shape != (height, width):
        raise AnnotationError(
            f"the mask {path} is {array.shape[1]} x {array.shape[0]} pixels, the image "
            f"{width} x {height}"
        )
    return array
