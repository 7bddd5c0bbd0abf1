"""The embedded pretrained model on real photos: predictions and where the heatmap lands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from camcli.cli import main
from camcli.io.decode import load_rgb, model_input
from camcli.methods.batch import MethodOptions, compute_methods
from camcli.methods.forward import explain_batch, normalise_maps
from camcli.models.loaded import LoadedModel
from camcli.models.registry import EMBEDDED_MODEL, load_model
from camcli.pictures.render import jet_lut, render_batch

from .conftest import SAMPLES

pytestmark = pytest.mark.real_model

PHOTOS = {
    "tiger_cat/chelsea.png": {"tiger cat", "Egyptian cat", "tabby"},
    "espresso/coffee.png": {"espresso"},
    "tripod/camera.png": {"tripod"},
    "missile/rocket.jpg": {"missile", "projectile"},
    "military_uniform/grace_hopper.jpg": {"military uniform"},
}
# Tiles of the collage: a photo and the class whose map must peak in its tile.
TILES = [
    ("tiger_cat/chelsea.png", "tiger cat"),
    ("espresso/coffee.png", "espresso"),
    ("tripod/camera.png", "tripod"),
    ("military_uniform/grace_hopper.jpg", "military uniform"),
]


@pytest.fixture(scope="module")
def embedded() -> LoadedModel:
    return load_model(EMBEDDED_MODEL, offline=True)


def _inputs(
    model: LoadedModel, images: list[Image.Image], crop: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    prep = model.preprocessing
    arrays, thetas = [], []
    for image in images:
        array, geometry = model_input(image, prep, crop)
        arrays.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
        thetas.append(geometry.theta())
    x = torch.stack(arrays).float() / 255
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(thetas)


def test_sample_photos_get_sensible_predictions(embedded: LoadedModel):
    images = [load_rgb(SAMPLES / name) for name in PHOTOS]
    x, _ = _inputs(embedded, images, crop=True)
    result = explain_batch(embedded.module, x, "bn2", guided=False)
    top5 = result.logits.topk(5, dim=1).indices.tolist()
    for (name, expected), indices in zip(PHOTOS.items(), top5, strict=True):
        names = {embedded.classes.name(i) for i in indices}
        assert names & expected, f"{name}: top-5 {names} has none of {expected}"


def _collage(size: int = 224) -> Image.Image:
    collage = Image.new("RGB", (2 * size, 2 * size))
    for k, (name, _) in enumerate(TILES):
        tile = load_rgb(SAMPLES / name).resize((size, size), Image.Resampling.BICUBIC)
        collage.paste(tile, ((k % 2) * size, (k // 2) * size))
    return collage


def test_heatmap_of_each_class_peaks_in_its_photo_of_a_collage(embedded: LoadedModel):
    """A 2 x 2 collage of four photos, explained once per tile's class in one batch."""
    collage = _collage()
    x, thetas = _inputs(embedded, [collage] * 4, crop=False)
    targets = torch.tensor([embedded.classes.resolve(label) for _, label in TILES])
    result = explain_batch(embedded.module, x, embedded.default_layer, targets, guided=True)
    pixels = torch.from_numpy(np.asarray(collage).copy())
    _, peaks = render_batch(
        {"gradcam": normalise_maps(result.cams[embedded.default_layer])},
        {},
        [pixels] * 4,
        thetas,
        jet_lut(),
    )
    half = collage.width // 2
    for k, ((name, label), (px, py)) in enumerate(zip(TILES, peaks["gradcam"], strict=True)):
        tile = (py >= half) * 2 + (px >= half)
        assert tile == k, f"{label}: heatmap peak at {(px, py)} is in tile {tile}, not {k} ({name})"


@pytest.mark.parametrize("resize_on", ["loader", "device"])
def test_quick_start_command_on_sample_images(tmp_path: Path, resize_on: str):
    """The README's first command, with the default model, on the shipped photos.

    Also with the model inputs resized where a GPU run resizes them (PyTorch, not Pillow).
    """
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["explain", str(SAMPLES), "-o", str(out), "--jsonl", "-j", "0", "--resize-on", resize_on],
    )
    assert result.exit_code == 0, result.output
    records = {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(records) == set(PHOTOS)
    cat = records["tiger_cat/chelsea.png"]
    assert cat["label"]["index"] == 282 and cat["model"] == EMBEDDED_MODEL
    assert cat["predictions"][0]["name"] in PHOTOS["tiger_cat/chelsea.png"]
    assert cat["guided_backprop"]["guided_calls"] == {"hardtanh": 33}
    assert records["espresso/coffee.png"]["correct"] is True
    # The espresso heatmap peaks on the cup (the cup fills roughly x 150-450, y 30-250).
    peak = records["espresso/coffee.png"]["maps"]["gradcam"]["peak"]
    assert 150 <= peak["x"] <= 450 and 30 <= peak["y"] <= 250
    overlay = Image.open(
        out / "espresso" / records["espresso/coffee.png"]["files"]["gradcam"]["overlay"]
    )
    assert overlay.size == (600, 400)


def _collage_of(order: list[int], size: int = 224) -> Image.Image:
    collage = Image.new("RGB", (2 * size, 2 * size))
    for k, tile in enumerate(order):
        photo = load_rgb(SAMPLES / TILES[tile][0]).resize((size, size), Image.Resampling.BICUBIC)
        collage.paste(photo, ((k % 2) * size, (k // 2) * size))
    return collage


def test_each_method_localizes_the_requested_photo_in_collages(embedded: LoadedModel):
    """12 trials: 3 arrangements x 4 requested classes, all methods from one forward each.

    Measured with this model: Grad-CAM, XGrad-CAM, HiResCAM and CAM 12/12 (on a layer
    followed by global average pooling and one linear layer their gradients are spatially
    constant, so the four maps are equal up to scale); Grad-CAM++ and LayerCAM 9/12: they
    keep only positive-gradient evidence and drop the channels that speak *against* the
    class, so the other photos' shared features (faces, edges) stay in the map, which is
    what they are designed for (several instances of a class) and costs them on a collage
    of different classes; Eigen-CAM is class-agnostic (same map whatever the target).
    """
    methods = [
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "cam",
        "eigencam",
        "guided-gradcam",
    ]
    hits = dict.fromkeys(methods[:-1], 0)
    tile_share = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        collage = _collage_of(order)
        x, thetas = _inputs(embedded, [collage] * 4, crop=False)
        targets = torch.tensor([embedded.classes.resolve(TILES[t][1]) for t in order])
        result = compute_methods(embedded.module, x, ["bn2"], methods, targets, MethodOptions())
        maps = {m: result.unit_map(m) for m in result.maps}
        pixels = torch.from_numpy(np.asarray(collage).copy())
        _, peaks = render_batch(maps, {}, [pixels] * 4, thetas, jet_lut())
        for method, found in peaks.items():
            half = collage.width // 2
            hits[method] += sum(
                ((py >= half) * 2 + (px >= half)) == k for k, (px, py) in enumerate(found)
            )
        eigen = result.maps["eigencam"]["bn2"]
        torch.testing.assert_close(eigen, eigen[:1].expand_as(eigen))  # class-agnostic
        magnitude = result.images["guided-gradcam"].abs().amax(dim=1)
        h = magnitude.shape[-1] // 2
        for k in range(4):
            tile = magnitude[k, (k // 2) * h : (k // 2 + 1) * h, (k % 2) * h : (k % 2 + 1) * h]
            tile_share.append(float(tile.sum() / magnitude[k].sum()))
    print(
        f"collage hits out of 12: {hits}; guided-gradcam mean tile share {np.mean(tile_share):.3f}"
    )
    assert hits["gradcam"] == 12
    for method in ("xgradcam", "hirescam", "cam"):
        assert hits[method] >= hits["gradcam"], hits
    for method in ("gradcam++", "layercam"):
        assert hits[method] >= 9, hits
    assert np.mean(tile_share) > 0.6  # chance is 0.25


def _jet_levels(path: Path) -> np.ndarray:
    """A heatmap PNG read back as JET levels 0..255, per pixel (nearest colour of the table)."""
    table = jet_lut().numpy().astype(np.int32)
    rgb = np.asarray(Image.open(path).convert("RGB"))[::4, ::4].reshape(-1, 3).astype(np.int32)
    return ((rgb[:, None, :] - table[None]) ** 2).sum(axis=2).argmin(axis=1)


def test_every_map_methods_heatmap_of_a_photo_uses_most_of_the_colour_map(tmp_path: Path):
    """RISE's map has a floor (a mean of probabilities): its picture spans min to max."""
    out = tmp_path / "out"
    # Every map method (Score-CAM's 1,280 channels cost about 19 s of this test's time).
    methods = "gradcam,gradcam++,xgradcam,layercam,hirescam,cam,eigencam,scorecam,rise"
    result = CliRunner().invoke(
        main,
        ["explain", str(SAMPLES / "tiger_cat"), "-o", str(out), "--method", methods,
         "--rise-masks", "200", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "chelsea.png.json").read_text())
    from camcli.methods.names import MAP_METHODS

    assert sorted(methods.split(",")) == sorted(MAP_METHODS)
    for method in methods.split(","):
        levels = _jet_levels(out / f"chelsea.png.{method}.png")
        span = (levels.max() - levels.min()) / 255
        assert span >= 0.8, (method, levels.min(), levels.max())
    # The record keeps RISE's raw maximum: a probability, not 1.
    assert 0.0 < record["maps"]["rise"]["max"] < 1.0
