"""Rendering: colour order, colour map, overlays, and maps placed back on the original exactly."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from camcli.io.decode import model_input, view_geometry
from camcli.io.write import encode_png, fast_png
from camcli.methods.forward import explain_batch, normalise_maps
from camcli.models.loaded import Preprocessing
from camcli.pictures.render import (
    colorize,
    guided_to_unit,
    jet_lut,
    original_grid,
    overlay,
    render_batch,
    sample_on_original,
)

from .conftest import BrightnessNet, square_image

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"

PREP = Preprocessing(64, 80, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_jet_is_rgb_hot_is_red_cold_is_blue():
    lut = jet_lut()
    assert colorize(torch.tensor([[1.0]]), lut)[0, 0].tolist() == [128, 0, 0]
    assert colorize(torch.tensor([[0.0]]), lut)[0, 0].tolist() == [0, 0, 128]
    # Same quantisation as cv2.applyColorMap on round(255 * map), converted to RGB.
    values = torch.linspace(0, 1, 101)
    ours = colorize(values[None], lut)[0].numpy()
    theirs = cv2.applyColorMap(
        np.round(values.numpy() * 255).astype(np.uint8)[None], cv2.COLORMAP_JET
    )[0][:, ::-1]
    np.testing.assert_array_equal(ours, theirs)


def test_png_keeps_rgb_order_on_disk():
    red = np.zeros((2, 3, 3), dtype=np.uint8)
    red[..., 0] = 200
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(red))).convert("RGB"))
    np.testing.assert_array_equal(decoded, red)


def test_overlay_is_alpha_blend():
    photo = torch.full((1, 1, 3), 100, dtype=torch.uint8)
    heat = torch.tensor([[[200, 0, 50]]], dtype=torch.uint8)
    assert overlay(photo, heat, 0.5)[0, 0].tolist() == [150, 50, 75]
    assert overlay(photo, heat, 0.0)[0, 0].tolist() == [100, 100, 100]
    assert overlay(photo, heat, 1.0)[0, 0].tolist() == [200, 0, 50]


def test_guided_zero_gradient_is_flat_grey_not_nan():
    unit = guided_to_unit(torch.zeros(2, 3, 4, 4))
    assert torch.equal(unit, torch.full_like(unit, 0.5))


def test_resize_geometry_is_identity_and_upsampling_matches_interpolate():
    geometry = view_geometry(300, 200, PREP, crop=False)
    assert geometry.theta() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    cam = torch.rand(1, 7, 7)
    grid, inside = original_grid(torch.tensor(geometry.theta()), 200, 300)
    ours = sample_on_original(cam, grid, inside)
    reference = torch.nn.functional.interpolate(
        cam[None], size=(200, 300), mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert inside.all()


def test_crop_geometry_follows_torchvision_resize_and_center_crop():
    torchvision_f = pytest.importorskip("torchvision.transforms.functional")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8))
    ours, geometry = model_input(image, PREP, crop=True)
    resized = torchvision_f.resize(
        image, 80, interpolation=torchvision_f.InterpolationMode.BILINEAR
    )
    reference = np.asarray(torchvision_f.center_crop(resized, 64))
    assert geometry.resized == (120, 80) and geometry.crop == (28, 8, 64, 64)
    np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("crop", [False, True])
def test_model_input_pixel_maps_back_to_its_original_position(crop: bool):
    """A map that is hot at one model-input pixel lands on the matching original pixel."""
    width, height = 300, 200
    geometry = view_geometry(width, height, PREP, crop)
    rw, rh = geometry.resized
    left, top, _, _ = geometry.crop
    cam = torch.zeros(1, 64, 64)
    u, v = 40, 20  # model-input pixel (column, row)
    cam[0, v, u] = 1.0
    grid, inside = original_grid(torch.tensor(geometry.theta()), height, width)
    mapped = sample_on_original(cam, grid, inside)[0]
    y, x = divmod(int(mapped.flatten().argmax()), width)
    # centre of model pixel (u, v) in original coordinates
    expected_x = (u + 0.5 + left) * width / rw - 0.5
    expected_y = (v + 0.5 + top) * height / rh - 0.5
    assert abs(x - expected_x) <= 1.0 and abs(y - expected_y) <= 1.0
    if crop:
        # crop box (28, 8, 64, 64) in the 120 x 80 resize = x 70..230, y 20..180 here
        assert inside[21:179, 71:229].all()
        assert not inside[:, :69].any() and not inside[:, 231:].any()
        assert not inside[:19].any() and not inside[181:].any()


@pytest.mark.parametrize("crop", [False, True])
def test_heatmap_lands_on_the_salient_square(crop: bool):
    """End to end through decode, explain and render with a model whose CAM is brightness."""
    width, height = 300, 200
    box = (170, 60, 230, 120)  # inside the centre crop too
    image = Image.fromarray(square_image(width, height, box))
    array, geometry = model_input(image, PREP, crop)
    x = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255
    result = explain_batch(BrightnessNet(), x, "layer", guided=True)
    rendered, peaks = render_batch(
        {"gradcam": normalise_maps(result.cams["layer"])},
        {"guided": guided_to_unit(result.guided)},
        [torch.from_numpy(np.asarray(image).copy())],
        torch.tensor([geometry.theta()]),
        jet_lut(),
    )
    heat = rendered[0].heatmaps["gradcam"]
    assert heat.shape == (height, width, 3)
    red = (heat[..., 0] > 120) & (heat[..., 2] < 60)  # hot pixels
    ys, xs = np.nonzero(red)
    assert box[0] - 2 <= xs.min() and xs.max() <= box[2] + 2
    assert box[1] - 2 <= ys.min() and ys.max() <= box[3] + 2
    px, py = peaks["gradcam"][0]
    assert box[0] <= px < box[2] and box[1] <= py < box[3]
    assert rendered[0].pictures["guided"].shape == (height, width, 3)
    if crop:
        # outside the crop: the overlay is the photo itself, the heatmap is cold
        assert (rendered[0].overlays["gradcam"][:, :20] == np.asarray(image)[:, :20]).all()
        assert (heat[:, :20] == [0, 0, 128]).all()


def test_exif_rotated_jpeg_is_explained_as_viewers_show_it(tmp_path: Path):
    from camcli.io.decode import load_rgb

    shown = square_image(120, 80, (80, 10, 110, 40))  # as a viewer shows it: 120 wide
    stored = np.ascontiguousarray(np.rot90(shown, k=1))  # stored rotated, 80 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    loaded = np.asarray(load_rgb(path))
    assert loaded.shape == (80, 120, 3)
    assert loaded[25, 95].mean() > 200 and loaded[60, 20].mean() < 50


@pytest.mark.parametrize(
    "shape", [(1, 1, 3), (1, 7, 3), (5, 1), (2, 3), (37, 53, 3), (375, 500, 3), (300, 451)]
)
def test_fast_png_decodes_to_the_same_pixels_in_pil_and_opencv(shape: tuple[int, ...]):
    rng = np.random.default_rng(sum(shape))
    smooth = np.linspace(0, 255, int(np.prod(shape))).reshape(shape)
    for image in (
        rng.integers(0, 256, shape, dtype=np.uint8),  # wraps around in the Sub filter
        smooth.astype(np.uint8),
        np.full(shape, 255, np.uint8),
    ):
        data = fast_png(image)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()  # checks every chunk's CRC and the zlib stream
            assert decoded.mode == ("RGB" if image.ndim == 3 else "L")
            np.testing.assert_array_equal(np.asarray(decoded), image)
        flag = cv2.IMREAD_UNCHANGED
        opened = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        expected = image[..., ::-1] if image.ndim == 3 else image
        np.testing.assert_array_equal(opened, expected)


def test_fast_png_files_are_no_larger_than_opencv_level_1_on_a_photo():
    """A size check on real content: the Sub filter keeps the fast encoder's files small."""
    photo = np.asarray(Image.open(SAMPLES / "espresso" / "coffee.png").convert("RGB"))
    ours = len(fast_png(photo))
    theirs = len(encode_png(photo, level=1))
    assert ours <= 1.1 * theirs, (ours, theirs)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4), np.float32)])
def test_fast_png_refuses_what_it_cannot_encode(bad: np.ndarray):
    with pytest.raises(ValueError):
        fast_png(bad)


@pytest.mark.parametrize("budget", [None, 0, 10**9])
def test_batched_render_equals_rendering_each_image_alone(budget: int | None):
    """Images are grouped by size and view and rendered together; the result must not change.

    The reference composes the public pure functions one image at a time; the batch mixes
    sizes and resize/crop views, in an order that interleaves the groups.
    """
    rng = np.random.default_rng(3)
    specs = [((200, 300), False), ((120, 90), True), ((200, 300), False), ((200, 300), True)]
    specs += [((120, 90), True), ((200, 300), False)]
    photos, thetas = [], []
    for (height, width), crop in specs:
        photos.append(torch.from_numpy(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))
        thetas.append(torch.tensor(view_geometry(width, height, PREP, crop).theta()))
    n = len(specs)
    maps = {"a": torch.rand(n, 7, 7), "b": torch.rand(n, 14, 14)}
    pictures = {"rgb": torch.rand(n, 3, 64, 64), "grey": torch.rand(n, 1, 64, 64)}
    lut = jet_lut()
    rendered, peaks = render_batch(
        maps, pictures, photos, torch.stack(thetas), lut, alpha=0.4, pixel_budget=budget
    )
    for i, (photo, theta) in enumerate(zip(photos, thetas, strict=True)):
        grid, inside = original_grid(theta, photo.shape[0], photo.shape[1])
        for key, batch_maps in maps.items():
            cam = sample_on_original(batch_maps[i : i + 1], grid, inside)[0]
            heat = colorize(cam, lut)
            blended = torch.where(inside[..., None], overlay(photo, heat, 0.4), photo)
            np.testing.assert_array_equal(rendered[i].heatmaps[key], heat.numpy())
            np.testing.assert_array_equal(rendered[i].overlays[key], blended.numpy())
            flat = int(cam.flatten().argmax())
            assert peaks[key][i] == (flat % photo.shape[1], flat // photo.shape[1])
        for key, batch_pictures in pictures.items():
            picture = sample_on_original(batch_pictures[i], grid, inside, outside=0.5)
            expected = (picture * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            got = rendered[i].pictures[key]
            np.testing.assert_array_equal(got, expected[..., 0] if key == "grey" else expected)


def test_fast_png_falls_back_to_zlib_where_isal_is_missing(monkeypatch: pytest.MonkeyPatch):
    import zlib

    import camcli.io.write

    image = np.random.default_rng(5).integers(0, 256, (31, 17, 3), dtype=np.uint8)
    monkeypatch.setattr(camcli.io.write, "_deflate", zlib)
    with Image.open(io.BytesIO(fast_png(image))) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), image)


@pytest.mark.parametrize("crop", [False, True])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_model_inputs_made_on_the_device_match_pillows(crop: bool, interpolation: str):
    """Same geometry as the loader's Pillow path, values within a few levels, sizes grouped."""
    from camcli.io.decode import model_inputs_on_device

    prep = Preprocessing(64, 72, (0.5,) * 3, (0.5,) * 3, interpolation)
    photo = np.asarray(Image.open(SAMPLES / "espresso" / "coffee.png").convert("RGB"))
    photos = [photo[:300, :400], photo[:97, :211], photo[:300, :400], photo[50:250, 60:160]]
    for budget in (1, 2**24):  # one photo per call, and the two same-sized ones together
        made = model_inputs_on_device(
            [torch.from_numpy(np.ascontiguousarray(p)) for p in photos], prep, crop, budget
        )
        assert made.shape == (4, 3, 64, 64)
        for i, p in enumerate(photos):
            reference, _ = model_input(Image.fromarray(np.ascontiguousarray(p)), prep, crop)
            ours = made[i].permute(1, 2, 0).numpy()
            assert np.array_equal(ours, ours.round())  # whole levels, like Pillow's uint8
            difference = np.abs(ours - reference.astype(np.float32))
            assert difference.max() <= 3, (i, difference.max())
            assert (difference > 1).mean() < 0.002
            assert difference.mean() < 0.3
