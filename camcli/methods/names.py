"""The names ``--method`` and ``--metrics`` accept, and their parsing (no torch here).

The command line reads these to check options and write its help without importing the
methods themselves; :mod:`camcli.methods.batch` computes them.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

LRP_COMPOSITE = "EpsilonPlusFlat"  # the zennit composite of --method lrp

__all__ = [
    "ALL_METHODS",
    "DEFAULT_METHODS",
    "DETECTION_METHODS",
    "GRADIENT_METHODS",
    "IG_BASELINES",
    "IG_MAX_PASSES",
    "IG_RULES",
    "IMAGE_METHODS",
    "LAYER_METHODS",
    "MAP_METHODS",
    "METRICS",
    "REGION_ONLY_METHODS",
    "RISE_LAYER",
    "SEGMENTATION_METHODS",
    "method_hint",
    "parse_methods",
    "parse_metrics",
]

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
MAP_METHODS = (*GRADIENT_METHODS, "cam", "eigencam", "scorecam", "rise")
IMAGE_METHODS = ("guided", "guided-gradcam", "smoothgrad", "lrp", "ig")
# The methods that read --layer (the others work at the input: no layer of theirs).
LAYER_METHODS = (*GRADIENT_METHODS, "cam", "eigencam", "scorecam", "guided-gradcam")
RISE_LAYER = "input"  # RISE's map is keyed by this instead of a layer
ALL_METHODS = MAP_METHODS + IMAGE_METHODS
# Methods of detectors only (camcli.methods.detection): D-RISE's masks score a detection.
REGION_ONLY_METHODS = ("drise",)
# What each task's maps come from (camcli.methods.detection and .segmentation compute them).
DETECTION_METHODS = (*GRADIENT_METHODS, "eigencam", "drise", "guided")
SEGMENTATION_METHODS = (*GRADIENT_METHODS, "eigencam")
DEFAULT_METHODS = ("gradcam", "guided")
_ALIASES = {
    "grad-cam": "gradcam",
    "grad-cam++": "gradcam++",
    "gradcampp": "gradcam++",
    "gradcamplusplus": "gradcam++",
    "guided-backprop": "guided",
    "guidedbackprop": "guided",
    "score-cam": "scorecam",
    "eigen-cam": "eigencam",
    "layer-cam": "layercam",
    "xgrad-cam": "xgradcam",
    "hires-cam": "hirescam",
    "guided-grad-cam": "guided-gradcam",
    "integrated-gradients": "ig",
    "integratedgradients": "ig",
}


def parse_methods(values: Sequence[str]) -> tuple[str, ...]:
    """Read ``--method`` values (repeatable, comma-separated), in canonical order, no repeats.

    Raises:
        ValueError: naming an unknown method and listing the known ones.

    """
    chosen: set[str] = set()
    for value in values:
        for part in value.split(","):
            name = part.strip().lower().replace("_", "-")
            if not name:
                continue
            name = _ALIASES.get(name, name)
            if name in REGION_ONLY_METHODS:
                raise ValueError(
                    f"{name} explains a detector's detections, not a classifier's classes; a "
                    f"classifier's methods are {', '.join(ALL_METHODS)}"
                )
            if name not in ALL_METHODS:
                raise ValueError(
                    f"unknown method {part.strip()!r}{method_hint(name)}; known: "
                    f"{', '.join(ALL_METHODS)}"
                )
            chosen.add(name)
    if not chosen:
        raise ValueError(f"no method given; known: {', '.join(ALL_METHODS)}")
    return tuple(m for m in ALL_METHODS if m in chosen)


def method_hint(name: str) -> str:
    """``"; did you mean gradcam?"`` for a near miss of a method's name, else ``""``.

    >>> method_hint("gradcamm")
    '; did you mean gradcam?'
    >>> method_hint("zzz")
    ''
    """
    known = [*ALL_METHODS, *REGION_ONLY_METHODS, *_ALIASES]
    close = difflib.get_close_matches(name.strip().lower(), known, n=3, cutoff=0.75)
    names = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    return f"; did you mean {' or '.join(names)}?" if names else ""


# Faithfulness scores (camcli.methods.metrics computes them).
METRICS = ("deletion", "insertion", "drop")
# Where Integrated Gradients' path starts (camcli.methods.integrated).
IG_BASELINES = ("black", "blur")
# How Integrated Gradients place their path points (camcli.methods.integrated).
IG_RULES = ("gausslegendre", "midpoint")
IG_MAX_PASSES = 1280
"""The default bound on an image's IG passes: the levels 32, 96, 288 and 864 of
Gauss-Legendre nodes (1,280 passes), or midpoints up to 864 (they nest)."""


def parse_metrics(text: str) -> tuple[str, ...]:
    """Read ``--metrics`` (comma-separated; ``all`` for every one), in canonical order.

    Raises:
        ValueError: naming an unknown metric and listing the known ones.

    """
    chosen: set[str] = set()
    for part in text.split(","):
        name = part.strip().lower()
        if not name or name == "none":
            continue
        if name == "all":
            chosen.update(METRICS)
        elif name in METRICS:
            chosen.add(name)
        else:
            raise ValueError(f"unknown metric {part.strip()!r}; known: {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in chosen)
