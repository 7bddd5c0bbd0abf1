"""Object storage: INPUT and ``--output-dir`` as URIs (``s3://bucket/prefix``, ``gs://...``).

Any file system fsspec opens works (``s3://`` needs ``s3fs``, ``gs://`` ``gcsfs``: the
``storage`` extra installs fsspec, s3fs and universal-pathlib). Credentials come from where
the storage's own client looks (for S3: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance role; ``AWS_ENDPOINT_URL`` for an S3-compatible server).

Inputs are named by their URI (a ``str``; local inputs stay :class:`~pathlib.Path`). An
output directory in object storage is a ``UPath`` (universal-pathlib), which offers the
``pathlib`` methods camcli's writers use (``/``, ``name``, ``parent``, ``read_text``,
``write_bytes``, ``stat``, ``exists``, ``unlink``). Object storage has no rename: each object
is written once, whole, with one upload (an object appears complete or not at all), and the
record last, so resuming reads what exists as the local engine does.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, cast

__all__ = [
    "STORAGE_ENV",
    "Source",
    "StorageError",
    "is_remote",
    "is_uri",
    "list_remote_images",
    "local_lock_path",
    "location",
    "output_location",
    "read_source",
    "source_stat",
]

# An input: a local path, or the URI of an object.
Source = Path | str

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")

# The variables that tell storage clients where and who: Ray's workers get the driver's.
STORAGE_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_EC2_METADATA_DISABLED",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


class StorageError(RuntimeError):
    """A location in object storage cannot be used; the message is one sentence."""


def is_uri(value: object) -> bool:
    """Whether ``value`` is a URI with a scheme other than ``file://``."""
    match = _SCHEME.match(str(value))
    return match is not None and match.group(1).lower() != "file"


def is_remote(path: object) -> bool:
    """Whether ``path`` lies in object storage: a URI, or a ``UPath`` that is not local."""
    return (isinstance(path, str) and is_uri(path)) or not isinstance(path, (Path, str))


def _filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec file system of ``uri`` and the path inside it (a one-sentence error)."""
    try:
        import fsspec
    except ImportError:
        raise StorageError(
            f"{uri} is a URI, and reading object storage needs fsspec: "
            "pip install 'camcli[storage]'"
        ) from None
    try:
        return cast("tuple[Any, str]", fsspec.core.url_to_fs(uri))
    except (ImportError, ValueError) as exc:
        scheme = uri.split("://", 1)[0]
        raise StorageError(
            f"cannot open {uri}: {exc} (for {scheme}:// install fsspec's "
            f"{'s3fs' if scheme == 's3' else 'backend'}, e.g. pip install 'camcli[storage]')"
        ) from None


def _explain(uri: str, exc: BaseException) -> StorageError:
    """One sentence for what went wrong with ``uri``: no bucket, no credentials, denied."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return StorageError(
            f"no credentials to read or write {uri}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run where an instance role applies"
        )
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "InvalidAccessKey" in text:
        return StorageError(f"access to {uri} was denied ({text}): check the credentials")
    if isinstance(exc, FileNotFoundError) and "bucket" in text.lower():
        return StorageError(f"the bucket {bucket!r} of {uri} does not exist")
    return StorageError(f"cannot use {uri}: {text}")


def _check_bucket(fs: Any, root: str, uri: str) -> None:
    """Fail with one sentence unless the bucket of ``root`` exists and can be listed."""
    bucket = root.split("/", 1)[0]
    try:
        fs.ls(bucket, detail=False)
    except FileNotFoundError:
        raise StorageError(
            f"the bucket {bucket!r} of {uri} does not exist (create it first; camcli does not "
            "create buckets)"
        ) from None
    except Exception as exc:  # the client's own errors (credentials, network, denied)
        raise _explain(uri, exc) from None


def list_remote_images(uri: str, extensions: tuple[str, ...]) -> list[tuple[str, PurePosixPath]]:
    """Every object under ``uri`` with an image extension: ``(its URI, its relative path)``.

    A URI naming one object gives that object, with its file name as the relative path.

    Raises:
        StorageError: the bucket is missing or cannot be read (credentials, access).

    """
    fs, root = _filesystem(uri)
    root = root.rstrip("/")
    _check_bucket(fs, root, uri)
    scheme = uri.split("://", 1)[0]
    try:
        if fs.isfile(root):
            return [(uri, PurePosixPath(PurePosixPath(root).name))]
        found = fs.find(root)
    except Exception as exc:
        raise _explain(uri, exc) from None
    images = []
    for key in found:
        relative = PurePosixPath(key).relative_to(root)
        if relative.name.lower().endswith(extensions):
            images.append((f"{scheme}://{key}", relative))
    return images


def read_source(source: Source) -> bytes:
    """The bytes of an input: a local file or an object (``OSError`` when it cannot be read)."""
    if isinstance(source, Path):
        return source.read_bytes()
    if not is_uri(source):
        return Path(source).read_bytes()
    fs, path = _filesystem(source)
    try:
        return cast(bytes, fs.cat_file(path))
    except OSError:
        raise
    except Exception as exc:
        raise OSError(str(_explain(source, exc))) from None


def source_stat(source: Source) -> dict[str, int] | None:
    """Size and modification time (ns) of an input, or ``None`` when it cannot be read."""
    if isinstance(source, Path) or not is_uri(source):
        try:
            stat = os.stat(source)
        except OSError:
            return None
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        fs, path = _filesystem(source)
        info = fs.info(path)
    except Exception:
        return None
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
    if isinstance(modified, str):
        modified = datetime.datetime.fromisoformat(modified.replace("Z", "+00:00"))
    if isinstance(modified, datetime.datetime):
        mtime_ns = int(modified.timestamp() * 1_000_000_000)
    else:
        mtime_ns = int(float(modified or 0) * 1_000_000_000)
    return {"size": int(info.get("size") or 0), "mtime_ns": mtime_ns}


def output_location(text: str) -> Path:
    """The output directory at ``text``, a URI: checked, as a ``UPath``.

    The result is typed as :class:`~pathlib.Path` because it offers the methods camcli's
    writers call on one (see the module's docstring); it is not a local path.

    Raises:
        StorageError: no such bucket, no credentials, access denied, no backend installed.

    """
    fs, root = _filesystem(text)
    _check_bucket(fs, root.rstrip("/"), text)
    try:
        from upath import UPath
    except ImportError:
        raise StorageError(
            f"{text} is a URI, and writing to object storage needs universal-pathlib: "
            "pip install 'camcli[storage]'"
        ) from None
    return cast(Path, UPath(text.rstrip("/")))


def location(text: str) -> Path:
    """A path written as text: a ``UPath`` for a URI (unchecked), else a local path."""
    if not is_uri(text):
        return Path(text)
    from upath import UPath

    return cast(Path, UPath(text))


def local_lock_path(output_dir: object, name: str) -> Path:
    """Where the lock of a run writing to ``output_dir`` lives.

    A local directory holds its own lock; object storage has no locks, so a run into a URI
    locks a file of this machine named after the URI (two runs on one machine cannot write
    the same prefix at once; runs on several machines must be split with ``--shard``).
    """
    if not is_remote(output_dir):
        return cast(Path, output_dir) / name
    digest = hashlib.sha1(str(output_dir).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "camcli-locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{digest}{name}"
