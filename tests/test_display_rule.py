"""How maps become pictures: a perturbation method's map has a floor, so it spans min to max."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from camcli.cli import main
from camcli.methods.forward import FLOOR_METHODS, picture_maps
from camcli.pictures.render import jet_lut

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ROOT / "configs" / "regions"


def _jet_levels(path: Path) -> np.ndarray:
    """A heatmap PNG read back as JET levels 0..255, per pixel (nearest colour of the table)."""
    table = jet_lut().numpy().astype(np.int32)
    rgb = np.asarray(Image.open(path).convert("RGB"))[::2, ::2].reshape(-1, 3).astype(np.int32)
    return ((rgb[:, None, :] - table[None]) ** 2).sum(axis=2).argmin(axis=1)


def test_perturbation_methods_have_the_floor_rule() -> None:
    """RISE and D-RISE maps are means of masked scores; their pictures span min to max."""
    assert "rise" in FLOOR_METHODS and "drise" in FLOOR_METHODS
    floored = torch.tensor([[[0.60, 0.65], [0.70, 0.74]]])
    for method in ("rise", "drise"):
        unit = picture_maps(method, floored)
        assert float(unit.min()) == 0.0 and float(unit.max()) == 1.0, method
    # A rectified map (Grad-CAM, Score-CAM) keeps its zero: divided by its maximum.
    assert float(picture_maps("scorecam", floored).min()) > 0.8


def test_drise_heatmap_of_a_scene_uses_most_of_the_colour_map(tmp_path: Path) -> None:
    """Through the command line on the tiny detector: each detection's D-RISE heatmap spans
    most of the JET table (it was red edge to edge: levels 213 to 243 of 255)."""
    scenes, out = tmp_path / "scenes", tmp_path / "out"
    subprocess.run(
        [sys.executable, str(REGIONS / "make_scenes.py"), str(scenes), "--count", "1"],
        check=True,
        capture_output=True,
    )
    result = CliRunner().invoke(
        main,
        ["explain", str(scenes), "--model", f"{REGIONS / 'models.py'}:detector",
         "--classes", str(REGIONS / "classes.txt"), "--method", "drise",
         "--drise-masks", "100", "--device", "cpu", "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    pictures = sorted(out.glob("scene-1.png.det-*.drise.png"))
    assert len(pictures) == 2, sorted(p.name for p in out.iterdir())
    for picture in pictures:
        levels = _jet_levels(picture)
        span = (levels.max() - levels.min()) / 255
        assert span >= 0.8, (picture.name, levels.min(), levels.max())
        # both ends of the table are on the picture: blue-ish and red-ish pixels
        assert (levels < 64).any() and (levels > 192).any(), picture.name
