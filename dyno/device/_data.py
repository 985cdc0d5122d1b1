"""Labelled inputs on a device without torch: Fashion-MNIST IDX files or an image folder with a
``labels.tsv``, preprocessed as the zoo does (the export records the model's preprocessing), ``n`` items
spread evenly over the data (the same items ``dyno run`` takes with the torch backend).

    x, labels = load_inputs("fashion-mnist", 100, preprocess=manifest.notes.get("preprocess"))
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from dyno.errors import ConfigError, DataError

__all__ = ["load_inputs"]

_IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FMNIST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_FMNIST_NORMALISE = {"mean": (0.2860,), "std": (0.3530,)}  # dyno.zoo.FASHION_MNIST_MEAN/STD


def load_inputs(data: str | os.PathLike, n: int, *, preprocess: dict[str, Any] | None = None
                ) -> tuple[np.ndarray, list[int]]:
    """``n`` labelled inputs ``(x (n, C, H, W) float32, labels)`` from ``data``: ``fashion-mnist``,
    ``imagenet-samples``, or a directory (IDX files, or images with a ``labels.tsv``)."""
    if n < 1:
        raise ConfigError("n must be >= 1")
    if str(data) == "fashion-mnist":
        return _idx_inputs(Path(os.environ.get("DYNO_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")), n,
                           preprocess)
    if str(data) == "imagenet-samples":
        env = os.environ.get("DYNO_IMAGENET_SAMPLES")
        root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "imagenet-samples"
        return _image_inputs(root, n, preprocess)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; pass fashion-mnist, imagenet-samples or a folder")
    if (root / "labels.tsv").is_file():
        return _image_inputs(root, n, preprocess)
    return _idx_inputs(root, n, preprocess)


def _spread(total: int, n: int) -> np.ndarray:
    return np.linspace(0, total - 1, num=min(n, total)).round().astype(int)


def _idx_inputs(root: Path, n: int, preprocess: dict[str, Any] | None) -> tuple[np.ndarray, list[int]]:
    images, labels = (_read_idx(_find(root, stem)) for stem in _FMNIST)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: the IDX images and labels do not match")
    index = _spread(len(images), n)
    norm = preprocess or _FMNIST_NORMALISE
    x = (images[index].astype(np.float32) / 255.0 - np.float32(norm["mean"][0])) / np.float32(norm["std"][0])
    return np.ascontiguousarray(x[:, None]), [int(v) for v in labels[index]]


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no {stem} (or .gz); install dataset-fashion-mnist or set DYNO_FASHION_MNIST")


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] < 1:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dims = raw[3]
    if len(raw) < 4 + 4 * dims:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    if len(raw) - 4 - 4 * dims != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{path}: the payload does not hold {'x'.join(map(str, shape))} values")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * dims).reshape(shape)


def _image_inputs(root: Path, n: int, preprocess: dict[str, Any] | None) -> tuple[np.ndarray, list[int]]:
    if preprocess is None:
        raise ConfigError("images need the model's preprocessing; export the heads with `dyno export` "
                          "from a zoo model that has one")
    rows = []
    try:
        text = (root / "labels.tsv").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{root / 'labels.tsv'}: cannot read ({error})") from None
    for line in text.splitlines():
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) >= 2 and not line.startswith("#") and fields[1].lstrip("-").isdigit():
            rows.append((root / fields[0], int(fields[1])))
    if not rows:
        raise DataError(f"{root / 'labels.tsv'}: no rows of 'file<TAB>class index'")
    index = _spread(len(rows), n)
    x = np.stack([_preprocess(rows[i][0], preprocess) for i in index])
    return x, [rows[i][1] for i in index]


def _preprocess(path: Path, p: dict[str, Any]) -> np.ndarray:
    """The arithmetic of ``dyno.zoo.ImagePreprocess`` (resize the shorter side, centre crop, normalise)."""
    from PIL import Image

    try:
        image = Image.open(path).convert(p["mode"])
    except OSError as error:
        raise DataError(f"{path}: cannot read the image ({error})") from None
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short != p["resize"]:
        new_long = int(p["resize"] * long / short)
        size = (p["resize"], new_long) if width <= height else (new_long, p["resize"])
        resample = Image.Resampling.BICUBIC if p.get("interpolation") == "bicubic" else Image.Resampling.BILINEAR
        image = image.resize(size, resample)
    width, height = image.size
    top, left = int(round((height - p["crop"]) / 2.0)), int(round((width - p["crop"]) / 2.0))
    image = image.crop((left, top, left + p["crop"], top + p["crop"]))
    array: np.ndarray = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    array = (array - np.asarray(p["mean"], np.float32)) / np.asarray(p["std"], np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))
