"""A tiny detector and a tiny segmenter in torchvision's conventions, for examples and tests.

Both find red things (class 1) and green things (class 2) on a dark background, with weights
set by hand, so the right answer is known: a red square's detection and segment must be
explained by the red square. Own models for camcli::

    camcli explain PHOTOS --model configs/regions/models.py:detector \
        --classes configs/regions/classes.txt
    camcli explain PHOTOS --model configs/regions/models.py:segmenter \
        --classes configs/regions/classes.txt

``make_scenes.py`` beside this file makes such photos.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

CLASSES = ["background", "red", "green"]


def _colour_features() -> nn.Sequential:
    """Two channels: how red, how green (a 1 x 1 convolution and a ReLU)."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]])[:, :, None, None])
        conv.bias.fill_(-0.2)
    return nn.Sequential(conv, nn.ReLU())


class TinyDetector(nn.Module):
    """One detection per colour: the box around that colour's mass, scored by its amount.

    It resizes and pads the images as torchvision's detectors do (to 64 x 64 frames, padded
    to a multiple of 32), so a layer map must be cropped to each image's part of the batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(
            min_size=64, max_size=96, image_mean=[0.0] * 3, image_std=[1.0] * 3, size_divisible=32
        )
        self.features = _colour_features()
        self.pretrained_cfg = {"input_size": (3, 64, 64)}  # camcli's resize: unused here

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per image: boxes (original pixels), labels (1 red, 2 green) and scores."""
        original = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        image_list, _ = self.transform(list(images))
        maps = self.features(image_list.tensors)
        found = []
        for i, (h, w) in enumerate(image_list.image_sizes):
            boxes, scores = [], []
            for channel in range(2):
                mass = maps[i, channel, :h, :w]
                weight = mass / (mass.sum() + 1e-6)
                ys = torch.arange(h, dtype=mass.dtype)
                xs = torch.arange(w, dtype=mass.dtype)
                wy, wx = weight.sum(1), weight.sum(0)
                cy, cx = (wy * ys).sum(), (wx * xs).sum()
                sy = ((wy * (ys - cy) ** 2).sum() + 1e-6).sqrt()
                sx = ((wx * (xs - cx) ** 2).sum() + 1e-6).sqrt()
                boxes.append(
                    torch.stack(
                        [cx - 1.8 * sx, cy - 1.8 * sy, cx + 1.8 * sx + 1, cy + 1.8 * sy + 1]
                    )
                )
                scores.append(torch.sigmoid(60 * mass.mean() - 1))
            score = torch.stack(scores)
            order = torch.argsort(score.detach(), descending=True)
            found.append(
                {
                    "boxes": torch.stack(boxes)[order],
                    "labels": torch.tensor([1, 2])[order],
                    "scores": score[order],
                }
            )
        return self.transform.postprocess(found, image_list.image_sizes, original)


class TinySegmenter(nn.Module):
    """Logits per pixel: background, red, green (from the colour channels), as ``{"out": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _colour_features()
        self.head = nn.Conv2d(2, 3, 1)
        with torch.no_grad():
            self.head.weight.copy_(
                torch.tensor([[-4.0, -4.0], [8.0, 0.0], [0.0, 8.0]])[:, :, None, None]
            )
            self.head.bias.copy_(torch.tensor([0.5, 0.0, 0.0]))
        # what camcli reads as the model's input: 64 x 64, normalised with mean 0.5, std 0.5
        self.pretrained_cfg = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"out": N x 3 x H x W}`` logits of the normalised batch."""
        # the normalised batch, as a classifier takes it (mean 0.5, std 0.5 undone here)
        logits = self.head(self.features(x * 0.5 + 0.5))
        return {
            "out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        }


def detector() -> nn.Module:
    """``--model configs/regions/models.py:detector``."""
    return TinyDetector().eval()


def segmenter() -> nn.Module:
    """``--model configs/regions/models.py:segmenter``."""
    return TinySegmenter().eval()


def scene(
    width: int = 80,
    height: int = 60,
    red: tuple[int, int, int, int] = (8, 10, 28, 30),
    green: tuple[int, int, int, int] = (50, 25, 72, 50),
) -> Image.Image:
    """A dark photo with a red and a green rectangle (x1, y1, x2, y2, end exclusive)."""
    pixels = torch.full((height, width, 3), 20, dtype=torch.uint8)
    x1, y1, x2, y2 = red
    pixels[y1:y2, x1:x2] = torch.tensor([230, 30, 30], dtype=torch.uint8)
    x1, y1, x2, y2 = green
    pixels[y1:y2, x1:x2] = torch.tensor([30, 220, 40], dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())
