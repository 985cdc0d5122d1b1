"""Inputs on a device without torch: `dyno.device.load_inputs` reads the same items and computes the
same tensors as the zoo's datasets (Fashion-MNIST IDX, ImageNet samples with EfficientNet-Lite0's
preprocessing recorded by the export); broken files are DataErrors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import IMAGENET_SAMPLES, needs_fmnist, needs_imagenet

from dyno import export, zoo
from dyno.device import load_inputs
from dyno.errors import DataError


def _zoo_items(name: str, model: str, n: int) -> tuple[np.ndarray, list[int]]:
    dataset = zoo.load_dataset(name, model=model)
    index = np.linspace(0, len(dataset) - 1, num=n).round().astype(int)
    items = [dataset[int(i)] for i in index]
    return np.stack([x.numpy() for x, _ in items]), [int(y) for _, y in items]


@needs_fmnist
def test_fashion_mnist_as_the_zoo_reads_it():
    notes = export.device_notes(zoo.get_model("fmnist-resnet"))
    x, y = load_inputs("fashion-mnist", 7, preprocess=notes["preprocess"])
    ref_x, ref_y = _zoo_items("fashion-mnist", "fmnist-resnet", 7)
    assert y == ref_y and x.shape == ref_x.shape == (7, 1, 28, 28)
    assert np.abs(x - ref_x).max() < 1e-5


@needs_imagenet
def test_imagenet_samples_with_the_recorded_preprocessing(monkeypatch):
    monkeypatch.setenv("DYNO_IMAGENET_SAMPLES", str(IMAGENET_SAMPLES))
    notes = export.device_notes(zoo.get_model("efficientnet-lite0"))
    assert notes["data"] == "imagenet-samples" and notes["preprocess"]["crop"] == 224
    x, y = load_inputs("imagenet-samples", 4, preprocess=notes["preprocess"])
    ref_x, ref_y = _zoo_items("imagenet-samples", "efficientnet-lite0", 4)
    assert y == ref_y and x.shape == ref_x.shape == (4, 3, 224, 224)
    assert np.abs(x - ref_x).max() < 1e-5


def test_broken_idx_files_are_data_errors(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"\x00")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big")
                                                                      + bytes(5)))
    with pytest.raises(DataError, match="payload"):
        load_inputs(tmp_path, 2)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match="magic"):
        load_inputs(tmp_path, 2)
    with pytest.raises(DataError, match="not a directory"):
        load_inputs(tmp_path / "none", 2)
