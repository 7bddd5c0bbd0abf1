"""Find the images to explain: a single file or a directory tree, in natural order."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from camcli.io.storage import Source, is_uri, list_remote_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageItem",
    "NoImagesFound",
    "discover_images",
    "discover_remote_images",
    "images_from_list",
    "in_shard",
    "natural_key",
    "read_path_list",
    "resolved_source",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class NoImagesFound(ValueError):
    """The input holds no file with an image extension."""


@dataclass(frozen=True)
class ImageItem:
    """One image to explain.

    Attributes:
        path: the file to read (a URI for an object in storage, see :mod:`camcli.io.storage`).
        relative: its path relative to the input root; outputs mirror it.
        label: the ImageFolder class, i.e. the name of the top-level sub-folder the file is
            under (``None`` for files directly in the root or a single-file input).
        mirrored: an absolute path outside the input root, mirrored by its full path with
            the leading ``/`` removed (as ``tar`` does); it has no class folder.

    """

    path: Source
    relative: PurePosixPath
    label: str | None
    mirrored: bool = False


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers by value: ``img2`` before ``img10``."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts if p)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(root: Path, exclude: Path | None) -> Iterable[Path]:
    """Walk ``root`` following directory symlinks, visiting each real directory once."""
    seen: set[tuple[int, int]] = set()
    excluded = exclude.resolve() if exclude is not None else None
    for current, dirs, files in os.walk(root, followlinks=True):
        here = Path(current)
        try:
            stat = here.stat()
        except OSError:
            dirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen or (
            excluded is not None and here.resolve() == excluded
        ):
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        for name in files:
            if _is_image(name):
                yield here / name


def discover_images(input_path: Path, exclude: Path | None = None) -> list[ImageItem]:
    """List the images under ``input_path`` (or the file itself), sorted in natural order.

    Args:
        input_path: a directory (walked recursively, symlinked directories followed once)
            or a single image file.
        exclude: a directory to skip, e.g. the output directory when it lies inside the input.

    Returns:
        The images, sorted by their relative path in natural order.

    Raises:
        NoImagesFound: when nothing with an image extension is found.
        FileNotFoundError: when the input does not exist.

    """
    if not input_path.exists():
        raise FileNotFoundError(str(input_path))
    if input_path.is_file():
        if not _is_image(input_path.name):
            raise NoImagesFound(
                f"{input_path} is not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})"
            )
        return [ImageItem(input_path, PurePosixPath(input_path.name), None)]
    found = (
        (path, PurePosixPath(path.relative_to(input_path).as_posix()))
        for path in _walk(input_path, exclude)
    )
    return _tree(found, f"{input_path}", "in all sub-folders")


def _tree(found: Iterable[tuple[Source, PurePosixPath]], where: str, scope: str) -> list[ImageItem]:
    """Items of the images of a tree, labelled by their top folder, in natural order.

    Raises:
        NoImagesFound: when there is none.

    """
    items = []
    for source, relative in found:
        label = relative.parts[0] if len(relative.parts) > 1 else None
        items.append(ImageItem(source, relative, label))
    if not items:
        raise NoImagesFound(
            f"no images found in {where} (looked for {', '.join(IMAGE_EXTENSIONS)}, "
            f"in any letter case, {scope})"
        )
    items.sort(key=lambda item: tuple(natural_key(part) for part in item.relative.parts))
    return items


def discover_remote_images(uri: str) -> list[ImageItem]:
    """List the images in object storage under ``uri``, sorted in natural order.

    The prefix plays the input folder's part: relative paths, class folders and outputs are
    those a local copy of the prefix would give.

    Raises:
        NoImagesFound: when no object with an image extension is there.
        StorageError: the bucket is missing or cannot be read.

    """
    return _tree(list_remote_images(uri, IMAGE_EXTENSIONS), uri, "under the whole prefix")


def read_path_list(data: bytes, null_separated: bool) -> list[str]:
    """Split a list of paths read from stdin: one per line, or NUL-separated (``--null``)."""
    text = data.decode("utf-8", errors="surrogateescape")
    parts = text.split("\0") if null_separated else text.splitlines()
    return [p for p in parts if p.strip()]


def images_from_list(paths: Sequence[str], root: Path | None) -> list[ImageItem]:
    """Images named in a list, in the order given, duplicates dropped.

    Relative paths are read from ``root`` (default: the working directory) and outputs mirror
    each path relative to it, so an image keeps its output path whatever else is listed.
    An absolute path outside the root is mirrored by its whole path with the leading ``/``
    removed, as ``tar`` and ``rsync -R`` do (``/data/a.jpg`` -> ``data/a.jpg``), so outputs
    stay inside the output directory. A relative path that climbs out of the root with
    ``..`` keeps a relative path starting with ``..``; the pipeline refuses it.

    Raises:
        NoImagesFound: when the list is empty.

    """
    if not paths:
        raise NoImagesFound("no paths on standard input")
    base = (root or Path.cwd()).absolute()
    items: list[ImageItem] = []
    seen: set[Path] = set()
    for text in paths:
        path = Path(os.path.normpath(base / text))
        if path in seen:
            continue
        seen.add(path)
        mirrored = False
        try:
            relative = PurePosixPath(path.relative_to(base).as_posix())
        except ValueError:
            if Path(text).is_absolute():
                relative = PurePosixPath(*path.parts[1:])
                mirrored = True
            else:
                relative = PurePosixPath(os.path.normpath(text))  # "../..": refused later
        inside = not mirrored and relative.parts[:1] != ("..",)
        label = relative.parts[0] if inside and len(relative.parts) > 1 else None
        items.append(ImageItem(path, relative, label, mirrored))
    return items


def in_shard(item: ImageItem, index: int, count: int, salt: str = "") -> bool:
    """Whether ``item`` belongs to shard ``index`` of ``count`` (0-based).

    Decided by a hash of the image's relative path: stable across runs and machines, and an
    image keeps its shard when others are added or removed. A different ``salt`` gives an
    independent split (torchrun ranks inside a ``--shard``).
    """
    key = (salt + str(item.relative)).encode("utf-8", "surrogateescape")
    digest = hashlib.sha1(key).digest()
    return int.from_bytes(digest[:8], "big") % count == index


@functools.lru_cache(maxsize=4096)
def _real_directory(directory: str) -> str:
    return os.path.realpath(directory)


def resolved_source(path: Path | str) -> str:
    """The absolute path of an input with symbolic links resolved, as ``Path.resolve``.

    Directories are resolved once and remembered (a run reads many files per folder): one
    ``lstat`` per file instead of one per path component. A URI is its own name.
    """
    if isinstance(path, str) and is_uri(path):
        return path
    if ".." in Path(path).parts:  # a ".." after a linked directory must follow the link
        return os.path.realpath(path)
    text = os.path.abspath(path)
    if os.path.islink(text):
        return os.path.realpath(text)
    directory, name = os.path.split(text)
    return os.path.join(_real_directory(directory), name)
