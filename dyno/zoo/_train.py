"""Training the reference Fashion-MNIST models, and top-1 evaluation of any model on any dataset."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Iterator, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from dyno.errors import ConfigError, DataError, ModelError
from dyno.progress import NO_PROGRESS, Progress
from dyno.zoo._data import FashionMNIST, LabelledDataset
from dyno.zoo._registry import ModelEntry, TrainRecipe, get_model, list_models
from dyno.zoo._weights import save_weights

__all__ = ["TrainResult", "train", "evaluate", "TRAIN_THREADS"]

#: Default intra-op threads for training. One, not two, although these machines have 2 cores: on a
#: shared machine whose other core is busy, two OpenMP threads wait on each other at every op.
#: Measured on 6000 images: under load ~7, 1 thread 6-11 s and 2 threads 30-55 s; under load ~2,
#: 1 thread 3.2-4.5 s and 2 threads 2.0 s. A 1.6x loss at best against a 5x loss at worst.
TRAIN_THREADS = 1


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` measured: top-1 on the test split (0..1), wall-clock seconds of training and
    testing, where the weights went (None if not saved), and the settings used."""

    model: str
    test_accuracy: float
    seconds: float
    path: Path | None
    epochs: int
    seed: int
    train_images: int
    test_images: int
    threads: int

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path) if self.path is not None else None
        return data


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _augment(x: torch.Tensor, padding: int, hflip: bool, background: float, generator: torch.Generator
             ) -> torch.Tensor:
    """Random crop after ``padding`` pixels of ``background`` on every side, and random left-right
    flips, per image, vectorised over the batch."""
    n, c, h, w = x.shape
    if padding:
        padded = nn.functional.pad(x, (padding,) * 4, value=background)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def train(name: str | ModelEntry, *, epochs: int | None = None, seed: int = 0, limit: int | None = None,
          progress: Progress = NO_PROGRESS, data_root: str | os.PathLike | None = None,
          save: bool | None = None, path: str | os.PathLike | None = None, test_limit: int | None = None,
          threads: int | None = None) -> TrainResult:
    """Train a model that has a recipe (fmnist-resnet, fmnist-vgg) on Fashion-MNIST's training split
    and measure top-1 on the test split.

    ``epochs`` overrides the recipe's; ``limit`` uses only the first ``limit`` training images (and
    ``test_limit`` test images) for quick runs. Weights are saved (to ``path``, default the cache
    path ``weights="trained"`` reads) when ``save`` is True; by default only for full runs, so a quick
    run never replaces fully trained weights. ``threads`` is torch's intra-op thread count (default
    ``TRAIN_THREADS``). Same seed and thread count on the same machine: same weights.
    """
    entry = get_model(name)
    recipe = _recipe(entry)
    epochs = recipe.epochs if epochs is None else epochs
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    threads = TRAIN_THREADS if threads is None else threads
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    if save is None:
        save = limit is None and test_limit is None

    started = time.perf_counter()
    train_set = FashionMNIST(data_root, "train")
    test_set = FashionMNIST(data_root, "test")
    x_train, y_train = train_set.tensors(limit)
    background = (0.0 - train_set.mean) / train_set.std
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with _threads(threads):
        model = _fit(entry, recipe, x_train, y_train, epochs, background, generator, progress)
        accuracy = evaluate(model, test_set, batch_size=500, limit=test_limit, progress=progress)
    seconds = time.perf_counter() - started
    test_images = len(test_set) if test_limit is None else min(test_limit, len(test_set))
    saved = None
    if save:
        info = {"test_accuracy": accuracy, "seconds": round(seconds, 1), "seed": seed, "epochs": epochs,
                "train_images": len(y_train), "test_images": test_images, "threads": threads,
                "recipe": dataclasses.asdict(recipe), "torch": torch.__version__}
        saved = save_weights(model, entry, info, path)
    return TrainResult(model=entry.name, test_accuracy=accuracy, seconds=seconds, path=saved, epochs=epochs,
                       seed=seed, train_images=len(y_train), test_images=test_images, threads=threads)


def _recipe(entry: ModelEntry) -> TrainRecipe:
    if entry.recipe is None:
        trainable = [n for n in list_models() if get_model(n).recipe is not None]
        raise ModelError(f"model {entry.name!r} has no training recipe; `dyno train` works for "
                         f"{', '.join(trainable)}")
    if entry.default_data != "fashion-mnist" or entry.input_shape != (1, 28, 28):
        raise ModelError(f"model {entry.name!r}: training is implemented for Fashion-MNIST models only")
    return entry.recipe


def _optimizer(model: nn.Module, recipe: TrainRecipe, total_steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer: torch.optim.Optimizer
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
    schedule: torch.optim.lr_scheduler.LRScheduler
    if total_steps >= 8:
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total_steps,
                                                       pct_start=0.25)
    else:  # too few steps for the one-cycle's two phases (a tiny --limit run): constant LR
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    return optimizer, schedule


def _fit(entry: ModelEntry, recipe: TrainRecipe, x: torch.Tensor, y: torch.Tensor, epochs: int, background: float,
         generator: torch.Generator, progress: Progress) -> nn.Module:
    """The training loop; returns the model in eval mode, contiguous."""
    n = len(y)
    batch = min(recipe.batch_size, n)
    steps = math.ceil(n / batch)
    # channels-last is ~1.5x faster for these small convolutions on CPU (oneDNN); the weights'
    # values do not depend on it, and they are stored contiguous.
    model = _with_memory_format(entry.build(), torch.channels_last)
    optimizer, schedule = _optimizer(model, recipe, epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    model.train()
    tick = progress.task(f"train {entry.name}", epochs * steps)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        running = 0.0
        for step in range(steps):
            index = order[step * batch:(step + 1) * batch]
            xb = _augment(x[index], recipe.crop_padding, recipe.hflip, background, generator)
            loss = loss_fn(model(xb.contiguous(memory_format=torch.channels_last)), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
            tick(status=f"epoch {epoch + 1}/{epochs} loss {running:.3f}")
    return _with_memory_format(model, torch.contiguous_format).eval()


def _with_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """``model.to(memory_format=...)``: parameters and buffers of 4 dims converted in place."""
    # Module.to documents the keyword-only memory_format=, but torch's typed overloads omit it
    return model.to(memory_format=memory_format)  # type: ignore[call-overload]


def evaluate(model: nn.Module, dataset: LabelledDataset, *, batch_size: int = 64, limit: int | None = None,
             progress: Progress = NO_PROGRESS) -> float:
    """Top-1 accuracy (0..1) of ``model`` on the first ``limit`` items (default all) of ``dataset``,
    a dataset of ``(tensor, int label)``. Runs in eval mode without gradients; restores the mode."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    total = len(dataset) if limit is None else min(limit, len(dataset))
    if total <= 0:
        raise DataError(f"nothing to evaluate: the dataset has {len(dataset)} items (limit {limit})")
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    if hasattr(dataset, "tensors"):
        x_all, y_all = dataset.tensors(total)
        batches = ((x_all[i:i + batch_size], y_all[i:i + batch_size]) for i in range(0, total, batch_size))
    else:
        source = cast(Dataset, dataset)  # torch's loaders take any map-style dataset, subclass or not
        subset = source if total == len(dataset) else Subset(source, range(total))
        batches = iter(DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0))
    was_training = model.training
    model.eval()
    correct = seen = 0
    try:
        tick = progress.task("evaluate", total)
        with torch.inference_mode():
            for x, y in batches:
                logits = model(x)
                if logits.dim() != 2 or logits.shape[0] != len(y):
                    raise ModelError(f"the model returned shape {tuple(logits.shape)} for a batch of "
                                     f"{len(y)}; evaluate needs logits (N, classes)")
                correct += int((logits.argmax(1) == torch.as_tensor(y)).sum())
                seen += len(y)
                tick(len(y), status=f"top-1 {correct / seen:.1%}")
    finally:
        model.train(was_training)
    return correct / seen
