"""Shared fixtures: tiny models, a registered tiny model for CLI runs, image-folder factories."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camcli.models.classes import imagenet_classes
from camcli.models.loaded import LoadedModel, Preprocessing, load_state_dict_file
from camcli.models.registry import register_model, unregister_model

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_images"
TINY = "tiny-test"
BRIGHT = "bright-test"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test touches the user's torch cache or the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setenv("CAMCLI_OFFLINE", "1")


class TinyNet(nn.Module):
    """A small CNN with 1000 outputs (ImageNet-shaped), BatchNorm and in-place ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class BrightnessNet(nn.Module):
    """CAM == brightness: the layer is the channel mean of the input, the head is positive.

    Grad-CAM weights are the (positive, equal) spatial-mean gradients, so the map is the
    input brightness itself: a white square on black gives a heatmap peak on the square.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.layer.weight, 1.0 / 3.0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 1000)
        nn.init.constant_(self.fc.weight, 1.0)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layer(x)), 1))


def _tiny_loader(weights: Path | None, offline: bool) -> LoadedModel:
    torch.manual_seed(0)
    module = TinyNet()
    if weights is not None:
        module.load_state_dict(load_state_dict_file(weights))
    return LoadedModel(
        name=TINY,
        module=module.eval(),
        preprocessing=Preprocessing(32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        classes=imagenet_classes(),
        default_layer="features.3",
        weights="random",
    )


def _bright_loader(weights: Path | None, offline: bool) -> LoadedModel:
    # Mean 0, std 1: the model sees [0, 1] brightness, black is exactly 0.
    return LoadedModel(
        name=BRIGHT,
        module=BrightnessNet().eval(),
        preprocessing=Preprocessing(64, 80, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear"),
        classes=imagenet_classes(),
        default_layer="layer",
        weights="constant",
    )


@pytest.fixture(scope="module")
def actor_threads() -> Iterator[int]:
    """Torch on as many threads as a CPU model actor of the Ray engine, for one module.

    The same maths on another number of threads can round differently in the last bit, so a
    local run that is compared byte for byte with the Ray engine's actors uses as many.
    """
    from camcli.runs.on_ray import CPU_ACTOR_THREADS

    threads = torch.get_num_threads()
    torch.set_num_threads(CPU_ACTOR_THREADS)
    yield CPU_ACTOR_THREADS
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def tiny_models() -> Iterator[None]:
    register_model(TINY)(_tiny_loader)
    register_model(BRIGHT)(_bright_loader)
    yield
    unregister_model(TINY)
    unregister_model(BRIGHT)


def save_image(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def random_photo(seed: int, width: int = 48, height: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[[dict[str, tuple[int, int]]], Path]:
    """Make an image tree: ``{"tabby/a.jpg": (width, height), ...}`` -> root path."""

    def make(files: dict[str, tuple[int, int]]) -> Path:
        root = tmp_path / "images"
        for i, (name, (width, height)) in enumerate(sorted(files.items())):
            save_image(root / name, random_photo(i, width, height))
        return root

    return make


def square_image(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Black image with a white rectangle ``(left, top, right, bottom)``."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = 255
    return array


def reference_copy(model: nn.Module) -> nn.Module:
    """A copy for reference libraries: out-of-place ReLUs (their hooks break on in-place ones)."""
    import copy

    ref = copy.deepcopy(model)
    for module in ref.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return ref


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, through Playwright (skipped where it is missing)."""
    from .browser import launch_browser

    yield from launch_browser()


@contextmanager
def held_lock(folder: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``folder``'s run lock (as a live run does) for the block."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from camcli.io.lock import run_lock\n"
         f"with run_lock(Path({str(folder)!r}) / '.camcli.lock'):\n"
         "    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
