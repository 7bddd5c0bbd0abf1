"""The shortcut demo's model, for --model FILE.py:FUNCTION: a small two-class CNN.

Convolutions, global average pooling and one linear layer. ``make_demo.py`` trains it in
seconds on photos where a third of the horses carry a corner mark instead of their colour.
"""

import torch
from torch import nn


class ShortcutNet(nn.Module):
    """Three convolutions, global average pooling, two logits (other, horse)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 2)`` of a ``(N, 3, H, W)`` batch."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build() -> nn.Module:
    """The demo's model, untrained (camcli loads the weights)."""
    return ShortcutNet()
