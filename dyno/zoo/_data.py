"""Datasets: Fashion-MNIST from IDX files, and labelled image folders.

Every dataset here is a ``torch.utils.data.Dataset`` of ``(float tensor (C, H, W), int label)`` with
``len()`` and ``class_names`` (a ``dict`` from class id to name). Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dyno.errors import ConfigError, DataError
from dyno.zoo._paths import fashion_mnist_root, imagenet_samples_root
from dyno.zoo._preprocess import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from dyno.zoo._registry import ModelEntry, get_model

__all__ = [
    "FashionMNIST",
    "ImageFolderDataset",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "LabelledDataset",
    "load_dataset",
    "read_idx",
]

#: Dataset names ``load_dataset`` knows; anything else is taken as a directory.
DATASETS = ("fashion-mnist", "imagenet-samples")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
#: Images larger than this are refused before decoding (a 64-megapixel photo is far beyond any CNN input).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped if its name ends in ``.gz``) into a numpy array.

    Checks the magic number (two zero bytes, a known type code, a dimension count), that the header
    is complete, and that the payload holds exactly the product of the dimensions. Any failure is a
    ``DataError`` naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a valid gzip file ({error}); the file is corrupt or "
                        "truncated, reinstall or re-copy it") from error
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from error
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file: bad magic number 0x{raw[:4].hex()} (expected "
                        "00 00, a type code 08/09/0b/0c/0d/0e, and a dimension count)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, "
                        f"the file has {len(raw)}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX payload {what}: dimensions {'x'.join(map(str, dims))} of "
                        f"{dtype.itemsize}-byte values need {expected} bytes, found {actual}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}; install the Debian package "
        "dataset-fashion-mnist, or point DYNO_FASHION_MNIST (or --data) at a directory with the IDX files"
    )


class LabelledDataset(Protocol):
    """A map-style dataset of ``(float tensor, int label)`` with ``len()``: the datasets here, or any
    ``torch.utils.data.Dataset`` that defines ``__len__`` (torch's base class does not declare it)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


# ----------------------------------------------------------------------------------- Fashion-MNIST


class FashionMNIST(Dataset):
    """One split of Fashion-MNIST read from its four IDX files (gzipped or not).

    Items are ``(x, label)`` with ``x`` a float tensor ``(1, 28, 28)`` normalised as the fmnist models
    expect: ``(pixel / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD``.

        >>> ds = FashionMNIST(split="test")
        >>> len(ds), ds[0][0].shape, ds.class_names[ds[0][1]]
        (10000, torch.Size([1, 28, 28]), 'Ankle boot')
    """

    mean = FASHION_MNIST_MEAN
    std = FASHION_MNIST_STD

    def __init__(self, root: str | os.PathLike | None = None, split: str = "test") -> None:
        if split not in _FASHION_FILES:
            raise ConfigError(f"Fashion-MNIST split must be 'train' or 'test', not {split!r}")
        self.root = Path(root).expanduser() if root is not None else fashion_mnist_root()
        if not self.root.is_dir():
            raise DataError(
                f"Fashion-MNIST directory {self.root} does not exist; install the Debian package "
                "dataset-fashion-mnist, or set DYNO_FASHION_MNIST (or pass --data) to a directory "
                "holding the IDX files"
            )
        self.split = split
        image_path = _find_idx(self.root, _FASHION_FILES[split][0])
        label_path = _find_idx(self.root, _FASHION_FILES[split][1])
        images = read_idx(image_path)
        labels = read_idx(label_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{image_path}: expected unsigned-byte images of 28x28, found "
                            f"{images.dtype} of shape {'x'.join(map(str, images.shape))}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(f"{label_path}: expected a 1-D unsigned-byte label array, found "
                            f"{labels.dtype} of shape {'x'.join(map(str, labels.shape))}")
        if len(labels) != len(images):
            raise DataError(f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path.name}")
        if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{label_path}: label {int(labels.max())} out of range 0..9")
        self.images = torch.from_numpy(images.copy())  # uint8 (N, 28, 28)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.class_names = dict(enumerate(FASHION_MNIST_CLASSES))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        return x.unsqueeze(0), int(self.labels[index])

    def tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All (or the first ``limit``) items at once: ``x`` (N, 1, 28, 28) float, ``y`` (N,) int64."""
        n = len(self) if limit is None else min(limit, len(self))
        x = self.images[:n].to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        return x.unsqueeze(1), self.labels[:n].clone()

    def __repr__(self) -> str:
        return f"FashionMNIST(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


# ----------------------------------------------------------------------------------- image folders


class ImageFolderDataset(Dataset):
    """Labelled images on disk, decoded lazily and passed through ``transform``.

    Build one with :meth:`from_labels_file` (a ``labels.tsv``: file, class index[, synset, name]) or
    :meth:`from_class_folders` (one subfolder per class; sorted folder names give class ids 0, 1, ...).
    """

    def __init__(self, root: Path, samples: list[tuple[Path, int]], class_names: dict[int, str],
                 transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.root = root
        self.samples = samples
        self.class_names = class_names
        self.transform = transform

    @classmethod
    def from_labels_file(cls, root: Path, transform: Callable, labels_file: str = "labels.tsv"
                         ) -> "ImageFolderDataset":
        """Rows of ``file<TAB>class index[<TAB>synset<TAB>name]``, files relative to ``root``; blank
        and '#' lines are skipped, and so is a first row that is a header (no integer class index,
        no such image)."""
        path = root / labels_file
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read labels file ({error})") from error
        samples: list[tuple[Path, int]] = []
        names: dict[int, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 2:
                raise DataError(f"{path}:{number}: expected tab-separated 'file, class index"
                                f"[, synset, name]', found {line!r}")
            try:
                label = int(fields[1])
            except ValueError:
                if number == _first_content_line(text) and not (root / fields[0]).is_file():
                    continue  # a header row (its first field names no image)
                raise DataError(f"{path}:{number}: class index {fields[1]!r} is not an integer") from None
            if label < 0:
                raise DataError(f"{path}:{number}: class index {label} is negative")
            image = _inside(root, fields[0], f"{path}:{number}")
            if not image.is_file():
                raise DataError(f"{path}:{number}: image {fields[0]!r} not found in {root}")
            samples.append((image, label))
            name = fields[3] if len(fields) >= 4 else fields[2] if len(fields) == 3 else None
            if name:
                names.setdefault(label, name)
        if not samples:
            raise DataError(f"{path}: no labelled images listed")
        return cls(root, samples, names, transform)

    @classmethod
    def from_class_folders(cls, root: Path, transform: Callable) -> "ImageFolderDataset":
        classes = sorted(entry.name for entry in root.iterdir()
                         if entry.is_dir() and not entry.name.startswith("."))
        samples: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            for file in sorted((root / name).rglob("*")):
                if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file():
                    samples.append((_inside(root, str(file.relative_to(root)), str(root)), label))
        if not samples:
            raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in class "
                            "subfolders, and no labels.tsv")
        return cls(root, samples, dict(enumerate(classes)), transform)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with warnings.catch_warnings():  # Pillow's own warning: our limit below is lower
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path)
            with image:
                width, height = image.size   # from the header: nothing is decoded yet
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(f"{path}: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS:,} "
                                    "(a decompression bomb, or an image to downscale first)")
                return self.transform(image), label
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"{path}: cannot decode image ({error}); remove or replace it") from error

    def __repr__(self) -> str:
        return f"ImageFolderDataset(root={str(self.root)!r}, n={len(self)}, classes={len(self.class_names)})"


def _inside(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing a path that leaves ``root`` (absolute, ``..``, or a symlink out)."""
    candidate = root / relative
    if Path(relative).is_absolute() or not candidate.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{where}: image path {relative!r} leaves the folder {root}; list files inside it")
    return candidate


def _first_content_line(text: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            return number
    return 0


# -------------------------------------------------------------------------------------- entry point


def load_dataset(name: str | os.PathLike, split: str = "test", root: str | os.PathLike | None = None,
                 *, model: str | ModelEntry | None = None,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None
                 ) -> FashionMNIST | ImageFolderDataset:
    """A labelled dataset by name or directory.

    - ``"fashion-mnist"``: the IDX files under ``root`` (default ``$DYNO_FASHION_MNIST``, else
      ``/usr/share/datasets/fashion-mnist``); ``split`` is ``"train"`` or ``"test"``.
    - ``"imagenet-samples"``: a folder with ``labels.tsv`` (default ``$DYNO_IMAGENET_SAMPLES``, else
      ``shared/imagenet-samples`` beside the checkout), preprocessed for ``model``.
    - any directory: Fashion-MNIST IDX files, a ``labels.tsv``, or one subfolder per class.

    Image folders need ``model`` (a zoo name or ``ModelEntry``, whose ``preprocess`` is used) or
    ``transform``; ``imagenet-samples`` defaults to efficientnet-lite0's preprocessing.

        >>> ds = load_dataset("imagenet-samples", model="efficientnet-lite0")
        >>> x, label = ds[0]; x.shape
        torch.Size([3, 224, 224])
    """
    entry = model if isinstance(model, ModelEntry) else get_model(model) if model is not None else None
    if str(name) == "fashion-mnist":
        directory = Path(root).expanduser() if root is not None else None
        return _fashion(directory, split, entry)
    if str(name) == "imagenet-samples":
        directory = Path(root).expanduser() if root is not None else imagenet_samples_root()
        if entry is None and transform is None:
            entry = get_model("efficientnet-lite0")
        if not (directory / "labels.tsv").is_file():
            raise DataError(f"imagenet-samples: no labels.tsv in {directory}; pass the folder with "
                            "root= (or --data), or set DYNO_IMAGENET_SAMPLES")
    else:
        if root is not None:
            raise ConfigError(f"root= only applies to named datasets ({', '.join(DATASETS)}); "
                              f"{str(name)!r} is itself a directory")
        directory = Path(name).expanduser()
        if not directory.is_dir():
            raise DataError(f"no dataset named {str(name)!r} and no such directory; use one of "
                            f"{', '.join(DATASETS)}, or a folder with labels.tsv or class subfolders")
        if _holds_idx(directory):
            return _fashion(directory, split, entry)
    if split != "test":
        raise ConfigError(f"image folders have a single split; use split='test', not {split!r} "
                          "(for another split, name its own folder)")
    transform = transform or _preprocessing(directory, entry)
    if (directory / "labels.tsv").is_file():
        return ImageFolderDataset.from_labels_file(directory, transform)
    return ImageFolderDataset.from_class_folders(directory, transform)


def _preprocessing(directory: Path, entry: ModelEntry | None) -> Callable[[Image.Image], torch.Tensor]:
    if entry is None:
        raise ConfigError(f"{directory}: an image folder needs a model (its preprocessing) "
                          "or a transform: load_dataset(path, model=NAME)")
    if entry.preprocess is None:
        raise ConfigError(f"model {entry.name!r} has no image preprocessing; pass transform=")
    return entry.preprocess


def _holds_idx(directory: Path) -> bool:
    stems = [stem for pair in _FASHION_FILES.values() for stem in pair]
    return any((directory / (stem + ext)).is_file() for stem in stems for ext in ("", ".gz"))


def _fashion(directory: Path | None, split: str, entry: ModelEntry | None) -> FashionMNIST:
    if entry is not None and tuple(entry.input_shape) != (1, 28, 28):
        raise ConfigError(f"Fashion-MNIST gives 1x28x28 inputs but model {entry.name!r} expects "
                          f"{'x'.join(map(str, entry.input_shape))}; use an image folder instead")
    return FashionMNIST(directory, split)
