"""Write results: atomic files, PNG encoding, per-image JSON records and the run index.

Every file is written under a temporary name in its own directory and renamed into place, so
a reader (or a resumed run) never sees a half-written file under a final name. The JSON record
is written last: its presence means the image's files are complete.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

__all__ = [
    "INDEX_NAME",
    "RUN_KINDS",
    "IndexWriter",
    "artifact_path",
    "atomic_write_bytes",
    "encode_npy",
    "encode_png",
    "explain_record_files",
    "fast_deflate_available",
    "fast_png",
    "index_name",
    "record_path",
    "record_suffix",
    "summary_name",
    "write_image_files",
    "write_json",
]

INDEX_NAME = "index.jsonl"


TEMP_MARK = ".camcli-partial-"  # in every temporary name: only these are ever swept


def _file_mode() -> int:
    # Outputs get the mode a plain open() would give (the umask applies to os.open too).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()
_TEMP_COUNTER = itertools.count()  # with the process and thread: a name no one else uses


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename.

    In object storage (a ``UPath``, see :mod:`camcli.io.storage`), which has no rename, the
    object is written with one upload: it appears whole or not at all.

    Writer threads call this for every picture, so it makes few system calls (open with the
    final mode, write, close, rename; the folder only when it is missing): each is a point
    where a thread gives up the GIL and must wait to get it back from the busy main thread.
    """
    if not isinstance(path, Path):
        path.write_bytes(data)
        return
    tmp = path.with_name(
        f".{path.name}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}-{next(_TEMP_COUNTER)}.tmp"
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, _FILE_MODE)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, _FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


try:  # ISA-L's deflate: several times faster than zlib at level 1, and it releases the GIL
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - depends on the platform
    import zlib as _deflate  # type: ignore[no-redef]


def fast_deflate_available() -> bool:
    """Whether the fast PNG writer has ISA-L (without it, zlib: about 5 x slower)."""
    return _deflate.__name__ != "zlib"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes | memoryview) -> list[bytes | memoryview]:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return [struct.pack(">I4s", len(data), kind), data, struct.pack(">I", crc)]


def fast_png(image: np.ndarray) -> bytes:
    """Encode an RGB (``H, W, 3``) or grey (``H, W``) uint8 image as PNG, quickly.

    Every row uses PNG's "Sub" filter (each byte minus the byte one pixel to its left,
    computed in NumPy), compressed by a fast deflate (ISA-L level 1 when installed, else zlib
    level 1). The heavy steps run without holding the GIL, so writer threads scale with the
    cores. Lossless; files are about the size of zlib level 1 with adaptive filters.

    Args:
        image: uint8 pixels, RGB channel order.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: for other shapes or types.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or 0 in image.shape:
        raise ValueError(f"PNG needs a non-empty uint8 (H, W) or (H, W, 3) image: {image.shape}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3):
        raise ValueError(f"PNG needs 1 or 3 channels, got {channels}")
    height, width = image.shape[:2]
    rows = image.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = 1  # filter type Sub
    filtered[:, 1 : channels + 1] = rows[:, :channels]
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, channels + 1 :])
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if channels == 3 else 0, 0, 0, 0)
    idat = _deflate.compress(filtered.data, 1)
    parts = [
        _PNG_SIGNATURE,
        *_png_chunk(b"IHDR", header),
        *_png_chunk(b"IDAT", idat),
        *_png_chunk(b"IEND", b""),
    ]
    return b"".join(parts)


def encode_png(rgb: np.ndarray, level: int | None = None) -> bytes:
    """Encode an RGB (``H, W, 3``) or grey (``H, W``) uint8 image as PNG bytes.

    Args:
        rgb: the image, RGB channel order.
        level: zlib level 0-9 through OpenCV (adaptive filters; level 1 takes about 17 ms
            for a 500 x 375 photo); ``None`` (the default) uses :func:`fast_png` (about 3 ms,
            files of similar size).

    Raises:
        ValueError: when the encoder refuses the image.
    """
    if level is None:
        return fast_png(rgb)
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, int(level)])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def encode_npy(array: np.ndarray) -> bytes:
    """Serialise an array in NumPy's ``.npy`` format."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON document atomically (UTF-8, indented, trailing newline)."""
    atomic_write_bytes(path, (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode())


def write_image_files(
    jobs: list[tuple[Path, Callable[[], bytes]]],
    record_file: Path,
    record: dict[str, Any],
    write: Callable[[Path, bytes], None] | None = None,
) -> None:
    """Encode and write one image's files; the JSON record last, so it marks completion.

    An older record is removed first: while its files are being replaced it must not
    vouch for them. Files it listed that the new record does not list (a run with other
    methods) are removed after the new record is written.

    Args:
        jobs: the files, each a path and a function making its bytes.
        record_file: where the JSON record goes.
        record: the record.
        write: writes one file's bytes (default: :func:`atomic_write_bytes`, looked up
            when called).

    """
    put = write or atomic_write_bytes
    before = _listed_files(record_file)
    record_file.unlink(missing_ok=True)
    for path, produce in jobs:
        put(path, produce())
    write_json(record_file, record)
    # The files the previous record listed and this one does not (another --method): stale.
    # Only names a record of this kind listed are removed, never another command's files.
    now = _listed_names(record.get("files"))
    for name in before - now:
        stale = record_file.parent / name
        if not ("/" in name or name.startswith(".")):
            with contextlib.suppress(OSError):
                stale.unlink()


def _listed_names(files: Any) -> set[str]:
    """Every file name a record's ``files`` lists (nested dicts and lists of names)."""
    names: set[str] = set()
    if isinstance(files, dict):
        for value in files.values():
            names |= _listed_names(value)
    elif isinstance(files, list):
        for value in files:
            names |= _listed_names(value)
    elif isinstance(files, str) and files:
        names.add(files)
    return names


def _listed_files(record_file: Path) -> set[str]:
    """The file names the record at ``record_file`` lists (none when there is none)."""
    try:
        old = json.loads(record_file.read_bytes())
    except (OSError, ValueError):
        return set()
    return _listed_names(old.get("files")) if isinstance(old, dict) else set()


# The kinds of run that write into an output directory. Each has its own record suffix,
# index and summary names, so that one command never replaces another's results; explain's
# are the plain names (NAME.json, index.jsonl, run.json) that the report reads.
RUN_KINDS = ("explain", "features", "compare", "evaluate")


def record_suffix(kind: str = "explain") -> str:
    """Suffix of an image's record for a run kind: ``json``, ``features.json``, ..."""
    return "json" if kind == "explain" else f"{kind}.json"


def index_name(kind: str = "explain", name_suffix: str = "") -> str:
    """File name of a run kind's index (``name_suffix``: per shard and rank)."""
    prefix = "" if kind == "explain" else f"{kind}."
    return f"{prefix}index{name_suffix}.jsonl"


def summary_name(kind: str = "explain", name_suffix: str = "") -> str:
    """File name of a run kind's summary (``name_suffix``: per shard and rank)."""
    prefix = "" if kind == "explain" else f"{kind}."
    return f"{prefix}run{name_suffix}.json"


def explain_record_files(output_dir: Path) -> Iterator[tuple[str, str]]:
    """Every file below a local output directory that may be an ``explain`` record.

    All ``*.json`` files except hidden ones and the other run kinds' records
    (``NAME.features.json``, ...). Run summaries (``run.json``, ``summary.json``) are among
    them: they are no records (no ``image`` key), so readers check the content.

    Yields:
        ``(path, path relative to the output directory with '/')``.
    """
    others = tuple(f".{record_suffix(kind)}" for kind in RUN_KINDS if kind != "explain")
    top = str(output_dir)
    for folder, dirs, files in os.walk(top, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = os.path.relpath(folder, top).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        for name in sorted(files):
            if name.endswith(".json") and not name.startswith(".") and not name.endswith(others):
                yield os.path.join(folder, name), prefix + name


def record_path(output_dir: Path, relative: PurePosixPath, kind: str = "explain") -> Path:
    """Path of the JSON record of the image at ``relative`` (its path under the input root)."""
    return artifact_path(output_dir, relative, record_suffix(kind))


def artifact_path(output_dir: Path, relative: PurePosixPath, suffix: str) -> Path:
    """Path of one output of an image: ``<output>/<folders>/<file name>.<suffix>``.

    The whole input file name is kept, so ``a.jpg`` and ``a.png`` in one folder get
    ``a.jpg.gradcam.png`` and ``a.png.gradcam.png``.
    """
    folder = output_dir.joinpath(*relative.parts[:-1])
    return folder / f"{relative.name}.{suffix}"


def remove_leftovers(output_dir: Path, index_name: str, sweep_temporaries: bool) -> int:
    """Delete what a killed run left: its partial index and, optionally, temporary files.

    A run that ends normally renames its partial index, so one that is still there means
    the previous run with this index name was killed. Call this only while holding that
    run's lock. Temporary files cannot be told apart by shard: sweep them only when no other
    run (another shard) can be writing in the directory.

    Returns:
        The number of files removed.
    """
    partial = output_dir / f"{index_name}.partial"
    if not partial.exists():
        return 0
    partial.unlink(missing_ok=True)
    removed = 1
    if sweep_temporaries:
        for folder, _dirs, files in os.walk(output_dir):
            for name in files:
                if name.startswith(".") and TEMP_MARK in name and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(folder, name))
                        removed += 1
    return removed


class IndexWriter:
    """The run index: one JSON line per image (errors included) at the top of the output.

    Lines go to ``index.jsonl.partial`` as the run proceeds, flushed per line; :meth:`close`
    renames it to ``index.jsonl``, so a complete index is only ever under the final name.
    For an output directory in object storage the partial index is a local temporary file,
    uploaded once under the final name when the run finishes.
    """

    def __init__(self, output_dir: Path, name: str = INDEX_NAME) -> None:
        self.path = output_dir / name
        self.remote = not isinstance(output_dir, Path)
        if self.remote:
            fd, partial = tempfile.mkstemp(prefix="camcli-index-", suffix=".jsonl.partial")
            os.close(fd)
            self.partial = Path(partial)
        else:
            output_dir.mkdir(parents=True, exist_ok=True)
            self.partial = output_dir / f"{name}.partial"
        self._handle = self.partial.open("w", encoding="utf-8")

    def add(self, entry: dict[str, Any]) -> None:
        """Append one entry."""
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self, complete: bool = True) -> None:
        """Close the index; move it to its final name only when the run finished."""
        if not self._handle.closed:
            self._handle.close()
            if self.remote:
                try:
                    if complete:
                        atomic_write_bytes(self.path, self.partial.read_bytes())
                finally:
                    self.partial.unlink(missing_ok=True)
            elif complete:
                os.replace(self.partial, self.path)
