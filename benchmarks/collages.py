"""Collages with known boxes, for ``camcli evaluate``: a 2 x 2 grid of photos per picture.

Each photo of a class folder (``FOLDER/CLASS/NAME``) is resized to a tile; every collage
holds four different classes, each class in turn in each corner, and one Pascal VOC XML
file per collage names each tile's class and box, mirroring the images' tree:

    python benchmarks/collages.py sample_images collages --count 8
    camcli evaluate collages/images --boxes collages/boxes --sanity -o evaluation-out

The embedded model's top-1 on a collage is one of its four classes; the pointing game then
asks whether the map's peak falls in that class's tile.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from xml.sax.saxutils import escape

from PIL import Image

SUFFIXES = (".jpg", ".jpeg", ".png")


def photos(folder: Path) -> list[tuple[str, Path]]:
    """``(class, path)`` of the first photo in each class folder, in name order."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in SUFFIXES)
        if files:
            found.append((sub.name, files[0]))
    return found


def voc_xml(name: str, width: int, height: int, objects: list[tuple[str, tuple]]) -> str:
    """A Pascal VOC annotation (1-based inclusive pixel boxes)."""
    parts = [
        "<annotation>",
        f"  <filename>{escape(name)}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for label, (x0, y0, x1, y1) in objects:
        parts += [
            "  <object>",
            f"    <name>{escape(label)}</name>",
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def make_collages(source: Path, out: Path, count: int, tile: int = 224) -> list[Path]:
    """Write ``count`` collages under ``out/images`` and their boxes under ``out/boxes``."""
    chosen = photos(source)
    if len(chosen) < 4:
        raise SystemExit(f"{source} needs at least four class folders with a photo")
    tiles = {label: Image.open(path).convert("RGB").resize((tile, tile)) for label, path in chosen}
    sets = list(itertools.combinations(range(len(chosen)), 4))
    written = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "boxes").mkdir(parents=True, exist_ok=True)
    for number in range(count):
        members = list(sets[number % len(sets)])
        shift = number // len(sets) + number
        members = members[shift % 4 :] + members[: shift % 4]
        picture = Image.new("RGB", (2 * tile, 2 * tile))
        objects = []
        for slot, member in enumerate(members):
            label = chosen[member][0]
            x, y = (slot % 2) * tile, (slot // 2) * tile
            picture.paste(tiles[label], (x, y))
            objects.append((label, (x, y, x + tile, y + tile)))
        name = f"collage_{number:03d}.png"
        path = out / "images" / name
        picture.save(path)
        xml = voc_xml(name, 2 * tile, 2 * tile, objects)
        (out / "boxes" / f"collage_{number:03d}.xml").write_text(xml, encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source", type=Path, help="a folder of class folders of photos")
    parser.add_argument("out", type=Path, help="where images/ and boxes/ go")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--tile", type=int, default=224)
    args = parser.parse_args()
    written = make_collages(args.source, args.out, args.count, args.tile)
    print(f"{len(written)} collages in {args.out / 'images'}, boxes in {args.out / 'boxes'}")


if __name__ == "__main__":
    main()
