"""Photos for the detection and segmentation examples: a red and a green rectangle each.

Usage: ``python configs/regions/make_scenes.py FOLDER [--count N]`` writes ``FOLDER/scene-K.png``
(rectangles of random sizes and places, never overlapping), their boxes as Pascal VOC files
``FOLDER/boxes/scene-K.xml`` (for ``camcli evaluate --boxes``) and ``FOLDER/dark.png``
(nothing to find: its record says so with an empty list).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

_spec = importlib.util.spec_from_file_location("models", Path(__file__).with_name("models.py"))
assert _spec is not None and _spec.loader is not None
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)


def _rectangle(rng: random.Random, width: int, height: int) -> tuple[int, int, int, int]:
    w, h = rng.randint(width // 6, width // 3), rng.randint(height // 6, height // 3)
    x, y = rng.randint(0, width - w), rng.randint(0, height - h)
    return x, y, x + w, y + h


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + 4 <= b[0] or b[2] + 4 <= a[0] or a[3] + 4 <= b[1] or b[3] + 4 <= a[1]


def _voc(
    path: Path,
    width: int,
    height: int,
    red: tuple[int, int, int, int],
    green: tuple[int, int, int, int],
) -> None:
    """The boxes as Pascal VOC writes them (1-based, inclusive)."""
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, (x1, y1, x2, y2) in (("red", red), ("green", green))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><size><width>{width}</width><height>{height}</height></size>"
        f"{objects}</annotation>\n"
    )


def main() -> None:
    """Write the photos."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for k in range(args.count):
        width, height = rng.choice([(160, 120), (200, 150), (120, 160)])
        red = _rectangle(rng, width, height)
        green = _rectangle(rng, width, height)
        while not _apart(red, green):
            green = _rectangle(rng, width, height)
        models.scene(width, height, red, green).save(args.folder / f"scene-{k + 1}.png")
        _voc(args.folder / "boxes" / f"scene-{k + 1}.xml", width, height, red, green)
    models.scene(100, 80, (0, 0, 0, 0), (0, 0, 0, 0)).save(args.folder / "dark.png")
    print(f"{args.count + 1} photos in {args.folder}")


if __name__ == "__main__":
    main()
