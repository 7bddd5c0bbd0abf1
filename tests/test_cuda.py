"""GPU paths: same results on CUDA as on the CPU. Skipped without a CUDA device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from camcli.cli import main
from camcli.explain import explain_batch

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
    from camcli.decode import make_loader
    from camcli.discover import discover_images
    from camcli.models import Preprocessing

    root = image_folder({"a/x.jpg": (40, 30), "a/y.jpg": (20, 50)})
    paths = [i.path for i in discover_images(root)]
    loader = make_loader(
        paths, Preprocessing(32, 36, (0.5,) * 3, (0.25,) * 3), False, 2, 0, pin_memory=True
    )
    batch = next(iter(loader))
    assert batch.inputs.is_pinned() and all(p.is_pinned() for p in batch.pixels)
