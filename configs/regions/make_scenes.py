"""Photos for the detection and segmentation examples: a red and a green rectangle each.

Usage: ``python configs/regions/make_scenes.py FOLDER [--count N]`` writes ``FOLDER/scene-K.png``
(rectangles of random sizes and places, never overlapping) and ``FOLDER/dark.png`` (nothing to
find: its record says so with an empty list).
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
    models.scene(100, 80, (0, 0, 0, 0), (0, 0, 0, 0)).save(args.folder / "dark.png")
    print(f"{args.count + 1} photos in {args.folder}")


if __name__ == "__main__":
    main()
