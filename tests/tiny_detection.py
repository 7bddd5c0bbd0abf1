"""The tiny detector and segmenter of ``configs/regions/models.py``, imported for the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "configs" / "regions" / "models.py"
_spec = importlib.util.spec_from_file_location("camcli_regions_models", MODELS)
assert _spec is not None and _spec.loader is not None
_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_models)

CLASSES = _models.CLASSES
detector = _models.detector
segmenter = _models.segmenter
scene = _models.scene
