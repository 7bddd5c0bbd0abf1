"""Finding inputs: natural order, extensions, labels, exclusions, loops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from camcli.io.discover import NoImagesFound, discover_images, natural_key

from .conftest import random_photo, save_image


def _touch_images(root: Path, names: list[str]) -> None:
    for name in names:
        save_image(root / name, random_photo(0, 4, 4), format="PNG")


def test_natural_order_case_insensitive_extensions_and_labels(tmp_path: Path):
    _touch_images(
        tmp_path, ["b/img10.PNG", "b/img2.jpeg", "a/x.Tif", "flat.webp", "b/deep/er/z.bmp"]
    )
    (tmp_path / "notes.txt").write_text("not an image")
    items = discover_images(tmp_path)
    assert [str(i.relative) for i in items] == [
        "a/x.Tif",
        "b/deep/er/z.bmp",
        "b/img2.jpeg",
        "b/img10.PNG",
        "flat.webp",
    ]
    assert [i.label for i in items] == ["a", "b", "b", "b", None]


def test_natural_key_orders_numbers_by_value():
    assert sorted(["img10", "img2", "Img1"], key=natural_key) == ["Img1", "img2", "img10"]


def test_single_file_input(tmp_path: Path):
    _touch_images(tmp_path, ["cat/one.png"])
    items = discover_images(tmp_path / "cat" / "one.png")
    assert len(items) == 1 and str(items[0].relative) == "one.png" and items[0].label is None


def test_no_images_is_one_clear_error(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(NoImagesFound, match="no images found in"):
        discover_images(tmp_path)
    with pytest.raises(NoImagesFound, match="not an image file"):
        discover_images(tmp_path / "readme.txt")


def test_output_directory_inside_input_is_skipped(tmp_path: Path):
    _touch_images(tmp_path, ["cat/a.png", "out/cat/a.png.gradcam.png"])
    items = discover_images(tmp_path, exclude=tmp_path / "out")
    assert [str(i.relative) for i in items] == ["cat/a.png"]


def test_symlink_loop_is_walked_once(tmp_path: Path):
    _touch_images(tmp_path, ["cat/a.png"])
    os.symlink(tmp_path, tmp_path / "cat" / "loop")
    items = discover_images(tmp_path)
    assert [str(i.relative) for i in items] == ["cat/a.png"]
