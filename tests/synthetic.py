"""Synthetic data and tiny models trained in seconds, for end-to-end tests of own models.

The models are written as factory files (Python source, the way a user hands camcli their
architecture) and trained here on images whose salient place is known by construction.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image
from torch import nn

BLOB_CNN_SOURCE = '''
import torch
from torch import nn


class BlobNet(nn.Module):
    """Convolutions, global average pooling, one linear layer (one logit: a sigmoid head)."""

    def __init__(self, in_channels=1, outputs=1, width=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, outputs)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build():
    return BlobNet(1, 1)


def build_rgb3():
    return BlobNet(3, 3, width=16)
'''

TINY_VIT_SOURCE = """
from timm.models.vision_transformer import VisionTransformer


def build(depth=2):
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=2
    )"""

TINY_SWIN_SOURCE = """
from timm.models.swin_transformer import SwinTransformer


def build():
    return SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
        num_heads=(1, 2), num_classes=3,
    )
"""


def write_factory(directory: Path, name: str, source: str) -> Path:
    """Write a factory file and return its path."""
    path = directory / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    return path


def import_file(path: Path) -> ModuleType:
    """Import a factory file as the test's own module (to train what it builds)."""
    spec = importlib.util.spec_from_file_location(f"test_factory_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def blob_images(
    count: int,
    size: int,
    rng: np.random.Generator,
    colours: np.ndarray | None = None,
    radius: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Grey noise images with a bright Gaussian blob at a random place.

    Args:
        count: number of images.
        size: side in pixels.
        rng: the random generator.
        colours: ``(count, C)`` blob colour per image in [0, 1]; ``None``: grey (C = 1).
        radius: the blob's standard deviation in pixels.

    Returns:
        Images ``(count, C, size, size)`` float32 in [0, 1] and blob centres ``(count, 2)``
        as ``(x, y)``.

    """
    channels = 1 if colours is None else colours.shape[1]
    # Grey noise: colour is found only in the blob.
    noise = rng.uniform(0.0, 0.45, size=(count, 1, size, size)).astype(np.float32)
    images = np.repeat(noise, channels, axis=1)
    margin = radius + 1
    centres = rng.uniform(margin, size - 1 - margin, size=(count, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i, (cx, cy) in enumerate(centres):
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
        colour = np.ones(channels) if colours is None else colours[i]
        for c in range(channels):
            images[i, c] = np.clip(images[i, c] + 0.8 * colour[c] * blob, 0, 1)
    return images, centres


def colour_scenes(
    count: int, size: int, colours: np.ndarray, rng: np.random.Generator, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Noise images holding a blob of each colour with probability 1/2, anywhere.

    Returns:
        Images ``(count, 3, size, size)`` and multi-label targets ``(count, colours)``.

    """
    present = rng.integers(0, 2, size=(count, len(colours)))
    images = rng.uniform(0.0, 0.45, size=(count, 3, size, size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    margin = radius + 1
    for i in range(count):
        for k, colour in enumerate(colours):
            if present[i, k]:
                cx, cy = rng.uniform(margin, size - 1 - margin, size=2)
                blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
                images[i] += 0.8 * colour[:, None, None].astype(np.float32) * blob
    return np.clip(images, 0, 1), present


def collage(
    size: int, colours: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, radius: float
) -> np.ndarray:
    """A noise image with a blob of ``colours[0]`` in its left half and ``colours[1]`` in its
    right half, each at a random place inside its half.
    """
    channels = len(colours[0])
    image = rng.uniform(0.0, 0.45, size=(channels, size, size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    margin = radius + 1
    for half, colour in enumerate(colours):
        cx = rng.uniform(half * size / 2 + margin, (half + 1) * size / 2 - 1 - margin)
        cy = rng.uniform(margin, size - 1 - margin)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
        image += 0.8 * np.asarray(colour, dtype=np.float32)[:, None, None] * blob
    return np.clip(image, 0, 1)


def train(
    model: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    steps: int,
    binary: bool,
    multilabel: bool = False,
    mean: float = 0.5,
    std: float = 0.5,
    lr: float = 1e-2,
    seed: int = 0,
    batch_size: int = 32,
) -> float:
    """Train with Adam on normalised images; return the training accuracy at the end.

    ``targets``: class indices, 0/1 per image (``binary``), 0/1 per image and class
    (``multilabel``) or class probabilities per image (soft targets, cross-entropy).
    """
    torch.manual_seed(seed)
    x = (torch.from_numpy(images) - mean) / std
    y = torch.from_numpy(targets)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (batch_size,), generator=generator)
        logits = model(x[batch])
        if multilabel:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y[batch].float())
        elif binary:
            loss = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y[batch].float())
        elif y.dim() == 2:  # class probabilities (soft targets)
            loss = nn.functional.cross_entropy(logits, y[batch].float())
        else:
            loss = nn.functional.cross_entropy(logits, y[batch].long())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        logits = model(x)
    if multilabel:
        return float(((logits > 0).long() == y.long()).all(dim=1).float().mean())
    if y.dim() == 2:  # accuracy on the rows with a clear class
        clear = y.amax(dim=1) > 0.5
        return float((logits.argmax(1) == y.argmax(1))[clear].float().mean())
    predicted = (logits[:, 0] > 0).long() if binary else logits.argmax(1)
    return float((predicted == y.long()).float().mean())


def save_png(path: Path, image: np.ndarray, scale: int = 1) -> Path:
    """Save a ``(C, H, W)`` [0, 1] image as an 8-bit PNG (grey for C = 1), upscaled."""
    array = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    picture = Image.fromarray(array)
    if scale != 1:
        picture = picture.resize(
            (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def read_records(stdout: str) -> dict[str, dict[str, object]]:
    """The ``--jsonl`` records by image path."""
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return {str(r["image"]): r for r in records}
