"""The labelled sample the offline stage measures on, and the 8-bit images behind its inputs.

    x, y, indices = load_sample(dataset, 2000)      # spread evenly over the dataset
    spec = input_spec(entry, dataset)               # how an input tensor relates to an 8-bit image
    images, normalize, note = input_images(x, spec) # uint8 images for the jpeg/webp options, or a note
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from dyno.errors import ConfigError, DataError
from dyno.plan import InputSpec
from dyno.progress import NO_PROGRESS, Progress

__all__ = ["DEFAULT_LIMITS", "FALLBACK_LIMIT", "default_limit", "load_sample", "spread", "resolve",
           "input_spec", "input_images"]

#: Samples per dataset when ``limit`` is not given: enough for a stable knee, small enough to take
#: minutes on a laptop CPU (all 500 imagenet-samples; 2,000 of Fashion-MNIST's 10,000 test images).
DEFAULT_LIMITS = {"fashion-mnist": 2000, "imagenet-samples": 500}
FALLBACK_LIMIT = 1000

Normalize = Callable[[np.ndarray], torch.Tensor]
#: Samples per chunk of ``input_images``'s check that the inputs invert to 8-bit images.
_CHUNK = 50


def default_limit(data: Any) -> int:
    """Analysis samples for the dataset named ``data`` (see ``DEFAULT_LIMITS``)."""
    return DEFAULT_LIMITS.get(str(data), FALLBACK_LIMIT)


def load_sample(dataset: Any, limit: int | None, *, progress: Progress = NO_PROGRESS, label: str = "samples"
                ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``limit`` labelled samples spread evenly over ``dataset`` (all if ``limit`` is None):
    ``(x (N, ...) float32, y (N,) int64, indices)``. ``dataset`` is a torch Dataset of
    ``(tensor, label)`` or a pair of tensors ``(x, y)``; a task ``loading LABEL`` shows the reading."""
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and isinstance(dataset[0], torch.Tensor):
        x_all, y_all = dataset
        n = len(x_all)
        if len(y_all) != n:
            raise DataError(f"{n} inputs but {len(y_all)} labels")
        index = spread(n, limit)
        progress.task(f"loading {label}", len(index))(len(index))
        return x_all[index].float().contiguous(), torch.as_tensor(y_all)[index].long(), index
    try:
        n = len(dataset)
    except TypeError:
        raise ConfigError(f"data must be a dataset name, a directory, a torch Dataset or (x, y) tensors, "
                          f"not {type(dataset).__name__}") from None
    if n == 0:
        raise DataError("the dataset is empty")
    index = spread(n, limit)
    tick = progress.task(f"loading {label}", len(index))
    x: torch.Tensor | None = None  # filled in place: the sample is never held twice (a list and its stack)
    ys = []
    for j, i in enumerate(index):
        item = dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"dataset items must be (tensor, label) pairs, item {i} is {type(item).__name__}")
        value = torch.as_tensor(item[0], dtype=torch.float32)
        if x is None:
            x = torch.empty((len(index), *value.shape), dtype=torch.float32)
        if value.shape != x.shape[1:]:
            raise DataError(f"dataset item {i} has shape {tuple(value.shape)}, the first {tuple(x.shape[1:])}")
        x[j] = value
        ys.append(int(item[1]))
        tick()
    assert x is not None
    return x, torch.tensor(ys, dtype=torch.long), index


def spread(n: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(n)`` (all of them if ``limit`` is None or >= n)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})


def resolve(model: str | nn.Module, weights: str, data: Any) -> tuple[str, nn.Module, Any, Any]:
    """(name, model, zoo entry or None, dataset) for a zoo name or a module, and a dataset given by
    name, directory or object (None: the model's own)."""
    from dyno import zoo

    if isinstance(model, str):
        entry = zoo.get_model(model)
        module = zoo.load_model(entry, weights=weights)
        name = entry.name
    elif isinstance(model, nn.Module):
        entry, module, name = None, model.eval(), type(model).__name__
    else:
        raise ConfigError(f"model must be a zoo name or an nn.Module, not {type(model).__name__}")
    if data is None:
        if entry is None or entry.default_data is None:
            raise ConfigError(f"{name} has no default dataset; pass data= (a dataset, a directory or (x, y))")
        data = entry.default_data
    if isinstance(data, (str, os.PathLike)):
        dataset = zoo.load_dataset(data, model=entry) if entry is not None else zoo.load_dataset(data)
    else:
        dataset = data
    return name, module, entry, dataset


def input_spec(entry: Any, dataset: Any) -> InputSpec | None:
    """How the input relates to an 8-bit image, from the model's preprocessing (None if unknown)."""
    from dyno.zoo import ImagePreprocess

    pre = getattr(entry, "preprocess", None)
    if isinstance(pre, ImagePreprocess) and pre.mode in ("L", "RGB"):
        return InputSpec(mean=tuple(pre.mean), std=tuple(pre.std), image_mode=pre.mode)
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    if isinstance(mean, float) and isinstance(std, float):
        return InputSpec(mean=(mean,), std=(std,), image_mode="L")
    return None


def input_images(x: torch.Tensor, spec: InputSpec | None
                 ) -> tuple[list[np.ndarray] | None, Normalize | None, str]:
    """uint8 H x W x C images behind the normalised inputs and the cloud's normalisation (a batch of
    images -> model inputs), if they invert exactly; else ``(None, None, why not)``."""
    if spec is None or x.dim() != 4 or x.shape[1] != len(spec.mean):
        return None, None, "no 8-bit image behind the input (unknown preprocessing): no jpeg/webp options"
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)

    def normalize(pixels: np.ndarray) -> torch.Tensor:  # (B, H, W, C) values 0..255 -> (B, C, H, W)
        array = (np.asarray(pixels, np.float32) / np.float32(255.0) - mean) / std
        # Plain (B, C, H, W) strides: with one channel, a permuted (B, H, W, 1) array also passes as
        # contiguous, but its strides read as channels-last and make convolutions return channels-last
        # outputs, on which a model's later `.view` fails.
        return torch.from_numpy(array).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)

    images: list[np.ndarray] = []
    for start in range(0, len(x), _CHUNK):  # a chunk at a time: the float temporaries stay small
        part = x[start:start + _CHUNK]
        pixels = np.rint((part.permute(0, 2, 3, 1).numpy() * std + mean) * np.float32(255.0))
        if pixels.min() < 0 or pixels.max() > 255:
            return None, None, "inputs are not normalised 8-bit images: no jpeg/webp options"
        codes = pixels.astype(np.uint8)
        error = float((normalize(codes.astype(np.float32)) - part).abs().max())
        if error > 1e-4:
            return None, None, f"inputs are not normalised 8-bit images (error {error:.2g}): no jpeg/webp options"
        images += [np.ascontiguousarray(p[:, :, 0] if p.shape[2] == 1 else p) for p in codes]
    return images, (lambda b: normalize(b if b.ndim == 4 else b[..., None])), ""
