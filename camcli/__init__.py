"""camcli: batch explanations for image classifiers, from the command line or Python.

The library face is :class:`camcli.Explainer` (see :mod:`camcli.api`); ``import camcli``
itself imports no torch: the names below load when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ExplainResult", "Explainer", "Prediction", "__version__"]

if TYPE_CHECKING:
    from camcli.api import Explainer, ExplainResult, Prediction


def __getattr__(name: str) -> Any:
    if name in ("Explainer", "ExplainResult", "Prediction"):
        from camcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'camcli' has no attribute {name!r}")
