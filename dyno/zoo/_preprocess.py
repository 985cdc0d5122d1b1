"""Image preprocessing without torchvision: PIL image -> normalised float tensor (C, H, W)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from dyno.errors import ConfigError

__all__ = ["ImagePreprocess", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD"]

#: Pixel mean and standard deviation of Fashion-MNIST's training split (pixels scaled to [0, 1]).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """Convert to ``mode``, resize the shorter side to ``resize``, centre-crop ``crop`` x ``crop``,
    scale to [0, 1], then ``(x - mean) / std`` per channel.

    The same arithmetic as torchvision's ``Resize(resize)``, ``CenterCrop(crop)``, ``ToTensor()``,
    ``Normalize(mean, std)`` on PIL images.

        >>> pre = ImagePreprocess(mode="RGB", resize=256, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> pre(Image.new("RGB", (500, 375))).shape
        torch.Size([3, 224, 224])
    """

    mode: str
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        channels = len(Image.new(self.mode, (1, 1)).getbands())
        if len(self.mean) != channels or len(self.std) != channels:
            raise ConfigError(f"mean and std need {channels} values for mode {self.mode!r}")
        if self.crop > self.resize:
            raise ConfigError(f"crop {self.crop} is larger than resize {self.resize}")
        if self.interpolation not in _INTERPOLATION:
            raise ConfigError(f"interpolation must be one of {sorted(_INTERPOLATION)}")

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every output."""
        return (len(self.mean), self.crop, self.crop)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert(self.mode)
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        if short != self.resize:
            new_long = int(self.resize * long / short)
            size = (self.resize, new_long) if width <= height else (new_long, self.resize)
            image = image.resize(size, _INTERPOLATION[self.interpolation])
        width, height = image.size
        top = int(round((height - self.crop) / 2.0))
        left = int(round((width - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        # float32 throughout; numpy's stubs widen the arithmetic's dtype (even to complex128)
        array: np.ndarray = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
