"""An example factory for --model FILE.py:FUNCTION: a single-channel binary classifier.

Convolutions, global average pooling and one linear logit (a sigmoid head): CAM and Grad-CAM
both apply, and camcli shows the logit z as two classes, negative (-z) and positive (z).
"""

import torch
from torch import nn


class DefectNet(nn.Module):
    """Three convolutions, global average pooling, one logit."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1)`` of a ``(N, 1, H, W)`` batch."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build() -> nn.Module:
    """The factory camcli calls: ``--model configs/own-model/model.py:build``."""
    return DefectNet()
