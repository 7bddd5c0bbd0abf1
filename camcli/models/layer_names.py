"""Layer names without torch: the close-match sentence, and the names a model was seen with.

A ``--layer`` typo used to be refused only once torch, the model and its weights had loaded
(4 to 7 s). A model's layer names do not depend on its weights, only on the code that builds
it, so each run remembers the names of the model it loaded (a small JSON file beside torch's
weight cache, keyed by the model's name and the versions of the packages that build it), and
the next command refuses a name outside them before importing torch. The embedded default
model's names ship with camcli, so its typos are refused at once even on the first run. Own
models (``FILE.py:FUNC``) are never remembered: their file may change between runs.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from camcli.models import RECTIFIED

__all__ = [
    "layer_names_file",
    "missing_layer_message",
    "remember_layers",
    "remembered_layers",
]

_BUILDERS = ("torchvision", "timm", "camcli")  # the packages whose code builds the models


def missing_layer_message(name: str, known: Sequence[str]) -> str | None:
    """The sentence for a layer name the model lacks (with up to five close names), or None.

    Args:
        name: the name asked for (``NAME+relu`` is ``NAME`` rectified).
        known: the model's dotted module names (as ``named_modules()`` gives them).
    """
    name = name.removesuffix(RECTIFIED)
    candidates = [n for n in known if n]
    if name and name in candidates:
        return None
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    if not close:
        close = [n for n in candidates if "." not in n][:5]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return f"the model has no layer named {name!r}{hint}"


def _cache_folder() -> Path:
    """Beside torch's hub cache (``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``), as torch."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        torch_home = os.path.join(cache, "torch")
    return Path(torch_home).expanduser() / "camcli" / "layers"


def _versions() -> str:
    parts = []
    for package in _BUILDERS:
        try:
            parts.append(f"{package}-{importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{package}-none")
    return "_".join(parts)


def layer_names_file(model_name: str) -> Path | None:
    """Where a model's layer names are remembered; ``None`` for an own model (``FILE:FUNC``)."""
    from camcli.models.names import is_factory_spec

    if is_factory_spec(model_name):
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    return _cache_folder() / f"{safe}.{_versions()}.json"


def remembered_layers(model_name: str) -> list[str] | None:
    """The layer names the model was seen with (same packages' versions), else ``None``."""
    from camcli.models.names import EMBEDDED_MODEL

    if model_name == EMBEDDED_MODEL:
        shipped = Path(__file__).with_name("embedded_layers.json")
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(shipped.read_text(encoding="utf-8"))
            if data.get("timm") == _package_version("timm"):
                return list(data["layers"])
    path = layer_names_file(model_name)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("model") != model_name or not isinstance(data.get("layers"), list):
        return None
    return [str(n) for n in data["layers"]]


def remember_layers(model_name: str, names: Sequence[str]) -> None:
    """Remember a loaded model's layer names (quietly nothing when the cache is not writable)."""
    path = layer_names_file(model_name)
    if path is None or path.exists():
        return
    text = json.dumps({"model": model_name, "layers": [n for n in names if n]})
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def _package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
