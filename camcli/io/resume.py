"""Resuming: decide whether an image's outputs are complete and made the same way.

An image is up to date when its JSON record (written last, atomically) exists, says ``ok``,
carries the same settings key, was made from the same input content, and every file it lists
is present. Input content is compared by size and modification time first; when only the
time differs (a copied or touched file), by the SHA-256 of the bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from camcli.io.storage import Source, read_source, source_stat

__all__ = ["file_sha256", "input_stat", "settings_key", "up_to_date"]


def settings_key(payload: dict[str, Any]) -> str:
    """A stable digest of everything that shapes the outputs."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def input_stat(path: Source) -> dict[str, int] | None:
    """Size and modification time of an input, or ``None`` when it cannot be read."""
    return source_stat(path)


def file_sha256(path: Source) -> str | None:
    """SHA-256 of a file's (or an object's) bytes, or ``None`` when it cannot be read."""
    if not isinstance(path, Path):
        try:
            return hashlib.sha256(read_source(path)).hexdigest()
        except OSError:
            return None
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def up_to_date(record_file: Path, source: Source, key: str) -> dict[str, Any] | None:
    """The stored record when the image needs no work, else ``None``.

    Args:
        record_file: the image's JSON record.
        source: the input image.
        key: the current settings key.
    """
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "ok":
        return None
    if record.get("settings_key") != key:
        return None
    stored = record.get("input") or {}
    current = input_stat(source)
    if current is None or stored.get("size") != current["size"]:
        return None
    if stored.get("mtime_ns") != current["mtime_ns"] and file_sha256(source) != stored.get(
        "sha256"
    ):
        return None
    folder = record_file.parent
    files = record.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return None  # not a record this version writes: redo the image
    for listing in files.values():
        for name in listing.values():
            try:
                if (folder / name).stat().st_size == 0:
                    return None
            except OSError:
                return None
    return record
