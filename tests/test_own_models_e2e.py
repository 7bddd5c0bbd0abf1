"""Your own model, end to end: tiny models trained here for seconds, explained through the CLI.

Each model is written as a factory file, trained on synthetic images whose salient place is
known by construction, saved as a state dict, and explained with ``camcli explain``; the
heatmap peaks must land where the evidence is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from camcli.cli import main

from .synthetic import (
    BLOB_CNN_SOURCE,
    TINY_VIT_SOURCE,
    blob_images,
    collage,
    colour_scenes,
    import_file,
    read_records,
    save_png,
    train,
    write_factory,
)

SCALE = 2  # held-out images are saved at twice the training size: the peak is mapped back


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    # Training on a shared 2-core machine: one thread is the fastest and deterministic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _peak_hits(
    records: dict[str, dict], names: list[str], centres: np.ndarray, method: str, radius: float
) -> int:
    """How many peaks lie within two blob radii of the blob centre (training pixels)."""
    hits = 0
    for name, (cx, cy) in zip(names, centres, strict=True):
        peak = records[name]["maps"][method]["peak"]
        distance = np.hypot(peak["x"] / SCALE - cx, peak["y"] / SCALE - cy)
        hits += int(distance <= 2 * radius)
    return hits


def test_binary_single_channel_cnn_cam_and_gradcam_peak_on_the_blob(tmp_path: Path) -> None:
    """The question: a CAM for a binary classifier with one input channel and GAP."""
    size, radius = 24, 2.5
    factory = write_factory(tmp_path, "blobnet", BLOB_CNN_SOURCE)
    rng = np.random.default_rng(0)
    positives, _ = blob_images(512, size, rng, radius=radius)
    negatives = rng.uniform(0.0, 0.45, size=(512, 1, size, size)).astype(np.float32)
    images = np.concatenate([positives, negatives])
    targets = np.array([1] * 512 + [0] * 512)
    torch.manual_seed(0)
    model = import_file(factory).build()
    assert train(model, images, targets, steps=80, binary=True) >= 0.95
    weights = tmp_path / "blobnet.pt"
    torch.save(model.state_dict(), weights)

    held = tmp_path / "held"
    test_blobs, centres = blob_images(20, size, np.random.default_rng(1), radius=radius)
    names = [f"blob/{i:02d}.png" for i in range(len(test_blobs))]
    for name, image in zip(names, test_blobs, strict=True):
        save_png(held / name, image, SCALE)
    for i in range(10):
        clean = np.random.default_rng(100 + i).uniform(0, 0.45, (1, size, size))
        save_png(held / f"clean/{i:02d}.png", clean, SCALE)
    classes = tmp_path / "classes.txt"
    classes.write_text("# negative first\nclean\nblob\n", encoding="utf-8")

    result = run(
        "explain", held, "--model", f"{factory}:build", "--weights", weights,
        "--classes", classes, "--input-size", size, "--mean", "0.5", "--std", "0.5",
        "--method", "cam,gradcam", "--target", "label", "--device", "cpu", "-j", "0",
        "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = read_records(result.stdout)
    assert len(records) == 30
    first = records[names[0]]
    assert first["view"]["channels"] == 1  # from the factory's first convolution
    assert first["head"].startswith("sigmoid")
    assert {p["name"] for p in first["predictions"]} == {"clean", "blob"}
    probabilities = [p["probability"] for p in first["predictions"]]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)  # p and 1 - p
    assert sum(bool(r["correct"]) for r in records.values()) >= 27
    for method in ("cam", "gradcam"):
        hits = _peak_hits(records, names, centres, method, radius)
        assert hits >= 18, f"{method}: {hits} of 20 peaks on the blob"


def test_three_class_model_with_a_class_file(tmp_path: Path) -> None:
    """A 3-class RGB model, class names from a JSON object, folders mapped by name."""
    size, radius = 24, 2.5
    factory = write_factory(tmp_path, "colournet", BLOB_CNN_SOURCE)
    palette = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 1024)
    blobs, _ = blob_images(1024, size, rng, palette[labels], radius=radius)
    # Blank images with equal class probabilities: no class may be learnt as "not the
    # others", each needs evidence of its own.
    blank = np.repeat(rng.uniform(0.0, 0.45, size=(256, 1, size, size)), 3, axis=1)
    images = np.concatenate([blobs, blank.astype(np.float32)])
    targets = np.concatenate([np.eye(3)[labels], np.full((256, 3), 1 / 3)]).astype(np.float32)
    torch.manual_seed(0)
    model = import_file(factory).build_rgb3()
    assert train(model, images, targets, steps=120, binary=False) >= 0.95
    weights = tmp_path / "colournet.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, weights)  # a checkpoint

    held = tmp_path / "held"
    test_targets = np.arange(21) % 3
    test_images, centres = blob_images(
        21, size, np.random.default_rng(1), palette[test_targets], radius=radius
    )
    colour_names = ["red", "green", "blue"]
    names = [f"{colour_names[t]}/{i:02d}.png" for i, t in enumerate(test_targets)]
    for name, image in zip(names, test_images, strict=True):
        save_png(held / name, image, SCALE)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"0": "red", "1": "green", "2": "blue"}), encoding="utf-8")

    result = run(
        "explain", held, "--model", f"{factory}:build_rgb3", "--weights", weights,
        "--classes", classes, "--input-size", size, "--mean", "0.5", "--std", "0.5",
        "--method", "cam,gradcam", "--target", "label", "--device", "cpu", "-j", "0",
        "-o", tmp_path / "out", "--jsonl",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "using the state dict under 'state_dict'" in result.stderr
    records = read_records(result.stdout)
    for name, target in zip(names, test_targets, strict=True):
        assert records[name]["label"]["index"] == target
        assert records[name]["target"]["name"] == colour_names[target]
    assert sum(bool(r["correct"]) for r in records.values()) >= 19
    for method in ("cam", "gradcam"):
        hits = _peak_hits(records, names, centres, method, radius)
        assert hits >= 19, f"{method}: {hits} of 21 peaks on the blob"


def test_vit_collage_shows_each_class_on_its_own_half(tmp_path: Path) -> None:
    """A ViT (timm, class token, 2 blocks) trained here; collages of its two patterns.

    Multi-label training (each logit: is a blob of my colour present?) makes each class
    positive evidence of its own colour, so on a collage with a red blob in one half and a
    blue blob in the other, each class's Grad-CAM (default layer: the last block's first
    norm, class token dropped) must peak in its own half.
    """
    size, radius = 32, 3.0
    factory = write_factory(tmp_path, "tinyvit", TINY_VIT_SOURCE)
    palette = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    images, present = colour_scenes(1024, size, palette, np.random.default_rng(0), radius)
    torch.manual_seed(0)
    model = import_file(factory).build()
    assert train(model, images, present, 500, binary=False, multilabel=True, lr=1e-3) >= 0.95
    weights = tmp_path / "tinyvit.pt"
    torch.save(model.state_dict(), weights)

    held = tmp_path / "collages"
    rng = np.random.default_rng(5)
    red_left = [i % 2 == 0 for i in range(20)]
    for i, left in enumerate(red_left):
        colours = (palette[0], palette[1]) if left else (palette[1], palette[0])
        save_png(held / f"{i:02d}.png", collage(size, colours, rng, radius), SCALE)
    classes = tmp_path / "classes.txt"
    classes.write_text("red\nblue\n", encoding="utf-8")

    for target in ("red", "blue"):
        result = run(
            "explain", held, "--model", f"{factory}:build", "--weights", weights,
            "--classes", classes, "--mean", "0.5", "--std", "0.5", "--method", "gradcam",
            "--target", target, "--device", "cpu", "-j", "0",
            "-o", tmp_path / f"out-{target}", "--jsonl",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        records = read_records(result.stdout)
        assert records["00.png"]["layers"] == ["blocks.1.norm1"]
        assert records["00.png"]["view"]["size"] == 32  # from the patch embedding
        own_half = 0
        for i, left in enumerate(red_left):
            peak_x = records[f"{i:02d}.png"]["maps"]["gradcam"]["peak"]["x"]
            want_left = left == (target == "red")
            own_half += int((peak_x < size * SCALE / 2) == want_left)
        assert own_half >= 18, f"{target}: {own_half} of 20 maps peak in the class's half"
