"""Small real models for tests that need a CNN but no trained weights."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyNet", "tiny_model"]


class TinyNet(nn.Module):
    """conv-relu-pool, conv-relu-pool, flatten, linear: 28x28x1 -> 10 classes, with a residual add."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = torch.relu(self.conv2(x)) + x
        x = self.pool(torch.relu(self.conv3(x)))
        return self.fc(x.view(x.size(0), -1))


def tiny_model(seed: int = 0, classes: int = 10) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(classes).eval()
