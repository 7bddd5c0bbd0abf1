"""What ``--model`` accepts, known without importing torch (refusals come at once).

The torchvision zoo's classifiers are read off torchvision's own source files (the functions
it registers with ``@register_model``), not by importing it: 3 ms instead of seconds. The
names registered in this process (the embedded model, a test's models) come from the
registry when it is loaded.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from functools import lru_cache
from pathlib import Path

from camcli.models import EMBEDDED_MODEL

__all__ = [
    "TIMM_PREFIX",
    "is_factory_spec",
    "is_timm_spec",
    "known_model_names",
    "known_task",
    "unknown_model",
    "zoo_names",
    "zoo_tasks",
]

TIMM_PREFIX = "timm/"

_REGISTERED = re.compile(r"@register_model\([^)]*\)[\s\S]*?^def (\w+)\(", re.MULTILINE)


def is_factory_spec(name: str) -> bool:
    """``True`` for ``FILE.py:FUNCTION`` and ``package.module:FUNCTION`` (or ``Class.method``)."""
    module, sep, function = name.rpartition(":")
    return bool(sep and module and all(part.isidentifier() for part in function.split(".")))


def is_timm_spec(name: str) -> bool:
    """``True`` for ``timm/NAME`` (a timm model name, optionally with a ``.tag``)."""
    return name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX)


@lru_cache(maxsize=1)
def zoo_tasks() -> dict[str, str] | None:
    """Torchvision's classifiers, detectors and segmenters by name, with their task.

    Read off its sources (the folder a model is registered in says its task). ``None`` if
    not found. Video, optical flow and quantized models are not camcli's.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    tasks: dict[str, str] = {}
    try:
        for task, sub in (
            ("classify", folder),
            ("detect", folder / "detection"),
            ("segment", folder / "segmentation"),
        ):
            for path in sorted(sub.glob("*.py")):
                for name in _REGISTERED.findall(path.read_text(encoding="utf-8")):
                    tasks[name] = task
    except OSError:
        return None
    return tasks or None


def zoo_names() -> tuple[str, ...] | None:
    """Torchvision's classifiers, detectors and segmenters, from its sources (or ``None``)."""
    tasks = zoo_tasks()
    return tuple(sorted(tasks)) if tasks else None


def known_task(name: str) -> str | None:
    """The task of a ``--model`` known by its name, before anything is loaded.

    ``classify`` for the embedded model and ``timm/NAME``; a torchvision zoo model's from its
    sources; ``None`` for an own model (``FILE.py:FUNCTION``) or another registered name: its
    task is known once it is loaded.

    >>> known_task("efficientnet_lite0"), known_task("model.py:build")
    ('classify', None)
    """
    if name == EMBEDDED_MODEL or is_timm_spec(name):
        return "classify"
    if is_factory_spec(name):
        return None
    return (zoo_tasks() or {}).get(name)


def known_model_names() -> list[str] | None:
    """Every plain model name: registered ones, then the zoo's; ``None`` if unknowable."""
    registered = {EMBEDDED_MODEL}
    registry = sys.modules.get("camcli.models.registry")
    if registry is not None:
        registered |= set(registry._REGISTRY)
    zoo = zoo_names()
    if zoo is None:
        return None
    return sorted(registered) + [n for n in zoo if n not in registered]


def unknown_model(name: str) -> str | None:
    """The sentence for a model name nothing answers to (with the closest names), or ``None``.

    Factory files (``FILE.py:FUNCTION``) and ``timm/NAME`` are checked when loaded, and so
    is everything when torchvision's sources cannot be read.
    """
    if is_factory_spec(name) or is_timm_spec(name):
        return None
    names = known_model_names()
    if names is None or name in names:
        return None
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see 'camcli models'"
    if name.endswith(".py"):
        hint = f"; name the factory function too: {name}:FUNCTION"
    return f"unknown model {name!r}{hint}"
