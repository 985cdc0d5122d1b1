"""A small user CNN with what makes splitting and exporting hard: a concat, a residual, and a flatten by
the batch size taken at the very start (a side value live across every cut, recomputed by the tail)."""

from __future__ import annotations

import torch
from torch import nn

from dyno.zoo import ModelEntry


class SideNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 1)
        self.mix = nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16 * 2 * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)                                                        # a side value: the batch size
        x = torch.relu(self.stem(x))
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], 1)   # a concat
        x = x + torch.relu(self.bn(self.mix(x)))                             # a residual
        x = self.pool(x).view(n, -1)                                         # a size-based flatten
        return self.fc(x)


def build() -> nn.Module:
    """SideNet: concat, residual and a batch-size flatten (28x28 grayscale, 10 classes)."""
    return SideNet()


build.input_shape = (1, 28, 28)  # type: ignore[attr-defined]


def entry() -> ModelEntry:
    from dyno.zoo import get_model

    return ModelEntry(name="sidenet", input_shape=(1, 28, 28), num_classes=10, build=SideNet,
                      default_data="fashion-mnist", preprocess=get_model("fmnist-resnet").preprocess,
                      description="SideNet with Fashion-MNIST preprocessing")


def shapeless() -> nn.Module:
    return SideNet()


def not_a_model() -> int:
    return 3
