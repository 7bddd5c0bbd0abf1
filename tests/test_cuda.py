"""GPU paths: same results on CUDA as on the CPU. Skipped without a CUDA device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from camcli.cli import main
from camcli.methods.forward import explain_batch

from .conftest import TINY, TinyNet

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_explain_batch_on_cuda_matches_cpu():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = TinyNet().eval()
    x = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([1, 2, 3, 4])
    cpu = explain_batch(model, x, "features.3", targets)
    gpu = explain_batch(model.cuda(), x.cuda(), "features.3", targets.cuda())
    torch.testing.assert_close(
        gpu.cams["features.3"].cpu(), cpu.cams["features.3"], rtol=1e-3, atol=1e-5
    )
    torch.testing.assert_close(gpu.guided.cpu(), cpu.guided, rtol=1e-3, atol=1e-6)


def test_cli_on_cuda(image_folder, tmp_path: Path):
    root = image_folder({"tabby/a.jpg": (50, 40), "espresso/b.jpg": (64, 64)})
    result = CliRunner().invoke(
        main,
        [
            "explain",
            str(root),
            "-o",
            str(tmp_path / "out"),
            "--model",
            TINY,
            "--device",
            "cuda",
            "--jsonl",
            "-j",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len([json.loads(line) for line in result.stdout.splitlines()]) == 2


def test_loader_pins_batches_for_asynchronous_copies(image_folder):
    from camcli.io.decode import make_loader
    from camcli.io.discover import discover_images
    from camcli.models.loaded import Preprocessing

    root = image_folder({"a/x.jpg": (40, 30), "a/y.jpg": (20, 50)})
    paths = [i.path for i in discover_images(root)]
    loader = make_loader(
        paths, Preprocessing(32, 36, (0.5,) * 3, (0.25,) * 3), False, 2, 0, pin_memory=True
    )
    batch = next(iter(loader))
    assert batch.inputs.is_pinned() and batch.pixel_data.is_pinned()
    assert all(p.is_pinned() for p in batch.pixels)


def test_host_copy_of_mixed_dtypes_lands_intact():
    from camcli.io.transfer import HostCopy

    tensors = [
        torch.arange(12, dtype=torch.uint8).view(3, 4),
        torch.randn(5),
        torch.arange(7),
        torch.randint(0, 255, (2, 3, 3), dtype=torch.uint8),
        torch.randn(2, 2),
    ]
    copy = HostCopy([t.cuda() for t in tensors])
    for got, want in zip(copy.wait(), tensors, strict=True):
        np.testing.assert_array_equal(got, want.numpy())


def test_several_batches_on_cuda_write_what_the_cpu_writes(image_folder, tmp_path: Path):
    """Batches overlap on CUDA (one launched while the previous one's files are made)."""
    sizes = {f"c{i % 2}/img{i}.jpg": (40 + 7 * i, 30 + 5 * i) for i in range(7)}
    root = image_folder(sizes)
    base = ["explain", str(root), "--model", TINY, "--jsonl", "-b", "2", "--workers", "0"]
    base += ["--resize-on", "loader"]  # the same model inputs: compare the device's maths
    records = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = CliRunner().invoke(main, [*base, "-o", str(out), "--device", device])
        assert result.exit_code == 0, result.output
        records[device] = {r["image"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert sorted(records["cpu"]) == sorted(records["cuda"]) == sorted(sizes)
    for name, cpu in records["cpu"].items():
        cuda = records["cuda"][name]
        assert cpu["predictions"][0]["index"] == cuda["predictions"][0]["index"]
        np.testing.assert_allclose(
            [p["probability"] for p in cpu["predictions"]],
            [p["probability"] for p in cuda["predictions"]],
            atol=1e-4,
        )
        assert (cpu["width"], cpu["height"]) == (cuda["width"], cuda["height"])
        for kind in ("gradcam.png", "gradcam.overlay.png", "guided.png"):
            a = np.asarray(Image.open(tmp_path / "cpu" / f"{name}.{kind}"), dtype=np.int16)
            b = np.asarray(Image.open(tmp_path / "cuda" / f"{name}.{kind}"), dtype=np.int16)
            assert a.shape == b.shape
            assert np.mean(np.abs(a - b) > 2) < 0.01, (name, kind)  # float rounding only


@pytest.mark.parametrize(
    "methods",
    [("gradcam", "guided"), ("gradcam++", "xgradcam", "layercam", "hirescam"), ("guided-gradcam",)],
)
@pytest.mark.parametrize("explicit_targets", [False, True])
def test_launching_a_batch_does_not_wait_for_the_device(
    methods: tuple[str, ...], explicit_targets: bool, tmp_path: Path
):
    """Explain, render and the queued copies back make no synchronising call.

    Any such call would block the host until the model's work is done and undo the overlap
    of one batch's device work with the previous batch's records and files. (CAM, Eigen-CAM,
    Score-CAM and SmoothGrad do synchronise: a head check, an SVD, chunk loops.)
    """
    from camcli.io.decode import model_inputs_on_device
    from camcli.methods.batch import MethodOptions, compute_methods
    from camcli.models.loaded import Preprocessing
    from camcli.pictures.render import jet_lut, launch_render
    from camcli.runs.explain import _launch_numbers, _map_keys, _pictures
    from camcli.runs.settings import Settings

    model = TinyNet().cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    pixels = [
        torch.randint(0, 256, (30 + 10 * (i % 2), 40, 3), dtype=torch.uint8, device="cuda")
        for i in range(4)
    ]
    thetas = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]] * 4)
    lut = jet_lut("cuda")
    targets = torch.tensor([3, 1, 4, 1]) if explicit_targets else None
    prep = Preprocessing(32, 36, (0.5,) * 3, (0.25,) * 3)
    settings = Settings(output_dir=tmp_path, layers=("features.3",), methods=methods)

    def launch() -> tuple[Any, Any]:
        inputs = model_inputs_on_device(pixels, prep, crop=False) / 255.0
        assert inputs.shape == x.shape
        result = compute_methods(model, inputs, ["features.3"], methods, targets, MethodOptions())
        pending = launch_render(
            _map_keys(result, settings.layers), _pictures(result), pixels, thetas, lut
        )
        return pending, _launch_numbers(result, settings)

    launch()  # warm-up: first allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending, (keys, numbers) = launch()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    rendered, peaks = pending.collect()
    assert len(rendered) == 4 and all(len(p) == 4 for p in peaks.values())
    landed = dict(zip(keys, numbers.wait(), strict=True))
    if explicit_targets:
        assert landed["target"].tolist() == [3, 1, 4, 1]
    else:
        np.testing.assert_array_equal(landed["target"], landed["top_i"][:, 0])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_host_copy_from_a_second_gpu_waits_on_that_gpu():
    from camcli.io.transfer import HostCopy

    source = torch.arange(1 << 20, dtype=torch.float32, device="cuda:1")
    with torch.cuda.device(0):
        copy = HostCopy([source * 2])
    np.testing.assert_array_equal(copy.wait(), [np.arange(1 << 20, dtype=np.float32) * 2])


def test_to_device_takes_tensors_from_the_host_or_already_there():
    from camcli.io.transfer import to_device

    host = torch.arange(5)
    moved = to_device(host, torch.device("cuda"))
    assert moved.is_cuda and moved.tolist() == [0, 1, 2, 3, 4]
    assert to_device(moved, moved.device) is moved  # explain_batch accepts targets on the GPU
    assert to_device(moved, torch.device("cpu")).tolist() == [0, 1, 2, 3, 4]
