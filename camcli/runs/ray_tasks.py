"""The Ray engine's CPU tasks: decoding and writing (no torch, so their workers start fast).

A Ray worker imports the module of the function it runs: these import NumPy, Pillow and
camcli's own readers and writers, not torch (tested), so a decoding or writing task starts in
about a second where one importing torch would take several, on every worker of every run.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from camcli.io.images import decode_source
from camcli.io.storage import Source, is_uri, location
from camcli.io.write import atomic_write_bytes
from camcli.models.preprocessing import Preprocessing
from camcli.runs.failures import failure_reason

__all__ = ["decode_rows", "write_rows"]


def decode_rows(
    rows: dict[str, np.ndarray], prep: Preprocessing, crop: bool, max_pixels: int, resize: bool
) -> dict[str, np.ndarray]:
    """Decode a batch of listed files into fixed-shape columns (failures keep their reason).

    Args:
        rows: ``position`` and ``path`` (a local path or a URI) per image.
        prep: the model's preprocessing.
        crop: centre-crop instead of resizing the whole image.
        max_pixels: refuse larger images.
        resize: make the model inputs here (``False``: the actors resize on the device).

    Returns:
        Columns of one shape per batch: ``inputs`` ``(N, C, S, S)`` uint8 (``(N, 1)`` when
        resized on the device), ``theta`` ``(N, 2, 3)``, ``height``, ``width``, ``pixels`` (the
        flat RGB bytes of each original), ``sha256`` and ``error`` ("" when decoded).

    """
    sources: list[Source] = [str(p) if is_uri(str(p)) else Path(str(p)) for p in rows["path"]]
    count = len(sources)
    size, channels = prep.size, prep.channels
    inputs = np.zeros((count, channels, size, size) if resize else (count, 1), np.uint8)
    thetas = np.zeros((count, 2, 3), np.float32)
    heights = np.zeros(count, np.int64)
    widths = np.zeros(count, np.int64)
    pixels: list[bytes] = []
    digests: list[str] = []
    errors: list[str] = []
    for i, source in enumerate(sources):
        decoded = decode_source(source, prep, crop, max_pixels, resize)
        if isinstance(decoded, str):
            pixels.append(b"")
            digests.append("")
            errors.append(decoded)
            continue
        if decoded.model_input is not None:
            inputs[i] = decoded.model_input
        thetas[i] = decoded.theta
        heights[i], widths[i] = decoded.pixels.shape[:2]
        pixels.append(decoded.pixels.tobytes())
        digests.append(decoded.sha256)
        errors.append("")
    return {
        "position": rows["position"],
        "inputs": inputs,
        "theta": thetas,
        "height": heights,
        "width": widths,
        "pixels": np.array(pixels, dtype=object),
        "sha256": np.array(digests, dtype=object),
        "error": np.array(errors, dtype=object),
    }


def write_rows(rows: dict[str, np.ndarray], writer: bytes) -> dict[str, np.ndarray]:
    """Encode and write each explained image's files with the command's writer, record last.

    Args:
        rows: the actors' output: ``status``, ``error``, ``record`` (JSON) and ``jobs`` (the
            record's path, the file jobs and the files written after the record, pickled).
        writer: the command's ``write_files``, pickled.

    Returns:
        ``position``, ``status`` (``ok``, ``error`` or ``write_error``), ``error`` and
        ``record`` per image.

    """
    from ray import cloudpickle

    write_files = cloudpickle.loads(writer)
    status = [str(s) for s in rows["status"]]
    errors = [str(e) for e in rows["error"]]
    for i, payload in enumerate(rows["jobs"]):
        if status[i] != "ok":
            continue
        record_file, jobs, after = cloudpickle.loads(payload)
        try:
            write_files(jobs, location(record_file), json.loads(str(rows["record"][i])))
        except OSError as exc:
            status[i], errors[i] = "write_error", str(exc)
            continue
        except Exception as exc:  # a picture that cannot be made: this image's
            status[i], errors[i] = "error", failure_reason(exc)  # record is not written
            continue
        for path, produce in after:
            with contextlib.suppress(OSError):
                atomic_write_bytes(path, produce())
    return {
        "position": rows["position"],
        "status": np.array(status, dtype=object),
        "error": np.array(errors, dtype=object),
        "record": rows["record"],
    }
