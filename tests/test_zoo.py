"""The zoo: IDX parsing, image folders, preprocessing, the registry, weights, evaluation, training, CLI.

No test needs the fully trained cached weights: every test runs with DYNO_CACHE in a temporary
directory. Expected figures are constants measured once and never rewritten by the tests.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGENET_SAMPLES, needs_fmnist, needs_imagenet
from PIL import Image
from torch import nn

import dyno.cli
import dyno.zoo as zoo
from dyno.errors import ConfigError, DataError, ModelError

# efficientnet-lite0, preprocessing of the zoo, first 50 rows of imagenet-samples/labels.tsv: 44 correct.
# (All 500 images: 444 correct, 88.8%.)
EFFICIENTNET_LITE0_FIRST50_CORRECT = 44
# sha256 of the tensors {"a": arange(4, float32), "b": [[1, 2]] int64} as weights_hash defines it.
WEIGHTS_HASH_FIXTURE = "5a0fdbcfb8c3571dcc421fa1605e98d04d99253766661816dcd784c1740675e7"



@pytest.fixture(autouse=True)
def empty_cache(tmp_path_factory, monkeypatch):
    """Every test sees an empty dyno cache, so none can depend on weights trained earlier."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DYNO_CACHE", str(cache))
    return cache


# ---------------------------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion(directory: Path, images: np.ndarray, labels: np.ndarray, split: str = "test",
                  gz: bool = True) -> None:
    stems = {"test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
             "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}[split]
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in zip(stems, (images, labels)):
        data = idx_bytes(array)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)


def small_fashion(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def test_read_idx_round_trip_gzip_and_raw(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    (tmp_path / "a").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(zoo.read_idx(tmp_path / "a.gz"), array)
    np.testing.assert_array_equal(zoo.read_idx(tmp_path / "a"), array)
    ints = np.array([[-1, 2], [70000, -5]], dtype=np.int32)  # big-endian 4-byte values
    (tmp_path / "i").write_bytes(idx_bytes(ints, 0x0C))
    np.testing.assert_array_equal(zoo.read_idx(tmp_path / "i"), ints)


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x00", "shorter than the 4-byte magic"),
    (b"\x00\x01\x08\x01" + b"\x00" * 8, "bad magic number 0x00010801"),
    (b"\x00\x00\x07\x01" + b"\x00" * 8, "bad magic number"),           # unknown type code
    (b"\x00\x00\x08\x00", "bad magic number"),                         # zero dimensions
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-1], "payload truncated: dimensions 4x28x28"),
    (idx_bytes(np.zeros((4,), np.uint8)) + b"\x00", "has trailing bytes"),
])
def test_corrupt_idx_is_a_data_error_naming_file_and_fault(tmp_path, raw, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=message) as caught:
        zoo.read_idx(path)
    assert str(path) in str(caught.value)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((100, 28, 28), np.uint8)))
    (tmp_path / "garbage.gz").write_bytes(b"this is not gzip at all")
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    for name in ("garbage.gz", "cut.gz"):
        with pytest.raises(DataError, match=f"{name}: not a valid gzip file"):
            zoo.read_idx(tmp_path / name)
    with pytest.raises(DataError, match="no such file"):
        zoo.read_idx(tmp_path / "absent.gz")


def test_fashion_mnist_from_a_directory(tmp_path):
    images, labels = small_fashion()
    write_fashion(tmp_path / "gz", images, labels, "test", gz=True)
    write_fashion(tmp_path / "raw", images, labels, "train", gz=False)
    for ds in (zoo.load_dataset("fashion-mnist", root=tmp_path / "gz"), zoo.load_dataset(tmp_path / "gz"),
               zoo.load_dataset(tmp_path / "raw", split="train")):
        assert len(ds) == 12
        x, label = ds[3]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and label == 3
        expected = (images[3].astype(np.float32) / 255 - zoo.FASHION_MNIST_MEAN) / zoo.FASHION_MNIST_STD
        np.testing.assert_allclose(x[0].numpy(), expected, rtol=1e-5, atol=1e-6)
        xs, ys = ds.tensors(5)
        assert xs.shape == (5, 1, 28, 28) and ys.tolist() == [0, 1, 2, 3, 4]
        torch.testing.assert_close(xs[3], x)
    assert zoo.load_dataset("fashion-mnist", root=tmp_path / "gz").class_names[9] == "Ankle boot"


def test_fashion_mnist_inconsistent_files_are_data_errors(tmp_path):
    images, labels = small_fashion()
    write_fashion(tmp_path / "count", images, labels[:-1])
    with pytest.raises(DataError, match="11 labels for 12 images"):
        zoo.load_dataset("fashion-mnist", root=tmp_path / "count")
    write_fashion(tmp_path / "dims", images[:, :27], labels)
    with pytest.raises(DataError, match="expected unsigned-byte images of 28x28, found uint8 of shape 12x27x28"):
        zoo.load_dataset("fashion-mnist", root=tmp_path / "dims")
    write_fashion(tmp_path / "range", images, labels + 5)
    with pytest.raises(DataError, match="label 14 out of range 0..9"):
        zoo.load_dataset("fashion-mnist", root=tmp_path / "range")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\[.gz\] not found .*dataset-fashion-mnist"):
        zoo.load_dataset("fashion-mnist", root=tmp_path / "count", split="train")
    with pytest.raises(DataError, match="does not exist; install the Debian package dataset-fashion-mnist"):
        zoo.load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        zoo.load_dataset("fashion-mnist", root=tmp_path / "count", split="validation")


def test_fashion_mnist_root_from_environment(tmp_path, monkeypatch):
    images, labels = small_fashion(7)
    write_fashion(tmp_path, images, labels)
    monkeypatch.setenv("DYNO_FASHION_MNIST", str(tmp_path))
    assert len(zoo.load_dataset("fashion-mnist")) == 7


@needs_fmnist
def test_installed_fashion_mnist():
    test = zoo.load_dataset("fashion-mnist", split="test")
    train = zoo.load_dataset("fashion-mnist", split="train")
    assert (len(train), len(test)) == (60000, 10000)
    assert test[0][1] == 9 and train[0][1] == 9  # both splits start with an ankle boot
    x, _ = train.tensors()
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3  # normalised as trained


# ------------------------------------------------------------------------------------ image folders


def make_image(path: Path, color, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_labels_tsv_folder(tmp_path):
    make_image(tmp_path / "a.png", (255, 255, 255))
    make_image(tmp_path / "b.jpg", (0, 0, 0))
    make_image(tmp_path / "sub" / "c.png", (255, 0, 0))
    (tmp_path / "labels.tsv").write_text("file\tclass\tsynset\tname\n"
                                         "a.png\t7\tn1\tseven\nb.jpg\t3\tn2\tthree\n\n# comment\n"
                                         "sub/c.png\t7\tn1\tseven\n")
    ds = zoo.load_dataset(tmp_path, model="efficientnet-lite0")
    assert len(ds) == 3 and ds.class_names == {7: "seven", 3: "three"}
    x, label = ds[0]
    assert x.shape == (3, 224, 224) and label == 7
    torch.testing.assert_close(x, torch.ones(3, 224, 224))                # white -> +1
    assert ds[1][0].max().item() == pytest.approx(-1.0, abs=0.02)           # black -> -1 (JPEG)
    assert ds[2][1] == 7 and ds[2][0][0].mean().item() == pytest.approx(1.0)
    gray = zoo.load_dataset(tmp_path, model="fmnist-vgg")                   # the fmnist preprocessing
    assert gray[0][0].shape == (1, 28, 28)
    assert gray[0][0].max().item() == pytest.approx((1 - zoo.FASHION_MNIST_MEAN) / zoo.FASHION_MNIST_STD)


def test_labels_tsv_without_header_and_two_columns(tmp_path):
    make_image(tmp_path / "a.png", (10, 20, 30))
    (tmp_path / "labels.tsv").write_text("a.png\t5\n")
    ds = zoo.load_dataset(tmp_path, transform=lambda im: torch.tensor(im.getpixel((0, 0))))
    assert ds[0][1] == 5 and ds[0][0].tolist() == [10, 20, 30] and ds.class_names == {}


@pytest.mark.parametrize("rows, message", [
    ("a.png\tseven\n", "labels.tsv:1: class index 'seven' is not an integer"),  # not a header: no 2nd row
    ("f\tc\na.png\tx\n", "labels.tsv:2: class index 'x' is not an integer"),
    ("a.png\t-1\n", "labels.tsv:1: class index -1 is negative"),
    ("a.png\t1\nmissing.png\t2\n", "labels.tsv:2: image 'missing.png' not found"),
    ("a.png 1\n", "labels.tsv:1: expected tab-separated"),
    ("# only a comment\n", "no labelled images listed"),
])
def test_bad_labels_tsv(tmp_path, rows, message):
    make_image(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "labels.tsv").write_text(rows)
    with pytest.raises(DataError, match=message):
        zoo.load_dataset(tmp_path, model="efficientnet-lite0")


def test_class_per_subfolder_tree(tmp_path):
    for cls, count in (("dog", 2), ("cat", 1), ("emu", 3)):
        for i in range(count):
            make_image(tmp_path / cls / f"{i}.png", (i * 50, 0, 0))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = zoo.load_dataset(tmp_path, model="fmnist-resnet")
    assert ds.class_names == {0: "cat", 1: "dog", 2: "emu"}
    assert [label for _, label in ds] == [0, 1, 1, 2, 2, 2]
    assert ds[0][0].shape == (1, 28, 28)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no dataset named 'nope-data' and no such directory"):
        zoo.load_dataset("nope-data", model="efficientnet-lite0")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images .* in class subfolders, and no labels.tsv"):
        zoo.load_dataset(tmp_path / "empty", model="efficientnet-lite0")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "broken" / "labels.tsv").write_text("x.jpg\t0\n")
    ds = zoo.load_dataset(tmp_path / "broken", model="efficientnet-lite0")
    with pytest.raises(DataError, match="x.jpg: cannot decode image"):
        ds[0]
    with pytest.raises(ConfigError, match="needs a model"):
        zoo.load_dataset(tmp_path / "broken")
    with pytest.raises(ConfigError, match="single split"):
        zoo.load_dataset(tmp_path / "broken", split="train", model="efficientnet-lite0")
    with pytest.raises(DataError, match="imagenet-samples: no labels.tsv in"):
        zoo.load_dataset("imagenet-samples", root=tmp_path / "empty")
    with pytest.raises(ConfigError, match="Fashion-MNIST gives 1x28x28 inputs but model 'efficientnet-lite0'"):
        zoo.load_dataset("fashion-mnist", model="efficientnet-lite0")


# ------------------------------------------------------------------------------------ preprocessing


def test_preprocess_resizes_shorter_side_and_centre_crops():
    pre = zoo.ImagePreprocess(mode="L", resize=4, crop=2, mean=(0.0,), std=(1.0,))
    pixels = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10  # 4 high, 6 wide: no resize needed
    out = pre(Image.fromarray(pixels))
    np.testing.assert_allclose(out.numpy()[0], pixels[1:3, 2:4] / 255, rtol=1e-6)
    assert pre.output_shape == (1, 2, 2)


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (1000, 240), (64, 48)])
def test_efficientnet_preprocess_shape_and_range(size):
    pre = zoo.get_model("efficientnet-lite0").preprocess
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    x = pre(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert -1.0 <= x.min().item() < -0.8 and 0.8 < x.max().item() <= 1.0
    assert pre(image.convert("L")).shape == (3, 224, 224)  # grayscale input becomes RGB
    assert pre(Image.new("RGBA", size, (255, 255, 255, 0))).eq(1.0).all()


# ----------------------------------------------------------------------------------------- registry


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture
def registered():
    names = []
    yield names
    for name in names:
        zoo.unregister_model(name)


def test_builtin_models_listed():
    names = zoo.list_models()
    assert {"efficientnet-lite0", "fmnist-resnet", "fmnist-vgg"} <= set(names) and names == sorted(names)
    entry = zoo.get_model("efficientnet-lite0")
    assert (entry.input_shape, entry.num_classes, entry.default_data) == ((3, 224, 224), 1000, "imagenet-samples")
    for name in ("fmnist-resnet", "fmnist-vgg"):
        entry = zoo.get_model(name)
        assert (entry.input_shape, entry.num_classes, entry.default_data) == ((1, 28, 28), 10, "fashion-mnist")
        assert entry.recipe is not None


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ModelError) as caught:
        zoo.get_model("resnet-9000")
    message = str(caught.value)
    assert "unknown model 'resnet-9000'" in message
    assert "efficientnet-lite0, fmnist-resnet, fmnist-vgg" in message
    try:
        import torchvision  # noqa: F401
    except Exception:
        assert "pip install torchvision" in message


def test_register_model_forms(registered):
    entry = zoo.register_model("tiny-call", Tiny, input_shape=(1, 28, 28), num_classes=10,
                               default_data="fashion-mnist")
    registered.append("tiny-call")
    assert zoo.get_model("tiny-call") is entry and "tiny-call" in zoo.list_models()

    @zoo.register_model("tiny-deco", input_shape=[1, 28, 28], num_classes=10)
    def make_tiny():
        return Tiny()
    registered.append("tiny-deco")
    assert callable(make_tiny) and zoo.get_model("tiny-deco").input_shape == (1, 28, 28)

    zoo.register_model(zoo.ModelEntry(name="tiny-entry", input_shape=(1, 28, 28), num_classes=10, build=Tiny))
    registered.append("tiny-entry")
    model = zoo.load_model("tiny-entry", weights="random")
    assert isinstance(model, Tiny) and not model.training

    with pytest.raises(ConfigError, match="already registered; pass replace=True"):
        zoo.register_model("tiny-call", Tiny, input_shape=(1, 28, 28), num_classes=10)
    zoo.register_model("tiny-call", Tiny, input_shape=(1, 28, 28), num_classes=7, replace=True)
    assert zoo.get_model("tiny-call").num_classes == 7
    with pytest.raises(ConfigError, match=r"input_shape must be \(C, H, W\)"):
        zoo.register_model("tiny-bad", Tiny, input_shape=(28, 28), num_classes=10)
    with pytest.raises(ConfigError, match="no spaces"):
        zoo.register_model("tiny bad", Tiny, input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ConfigError, match="input_shape and num_classes are required"):
        zoo.register_model("tiny-bad", Tiny)
    with pytest.raises(ModelError, match="has no trained weights; pass weights=PATH"):
        zoo.load_model("tiny-entry")


def test_check_input():
    entry = zoo.get_model("efficientnet-lite0")
    assert zoo.check_input(entry, torch.zeros(3, 224, 224)).shape == (1, 3, 224, 224)
    assert zoo.check_input("fmnist-vgg", torch.zeros(5, 1, 28, 28)).shape == (5, 1, 28, 28)
    with pytest.raises(ModelError, match=r"expects input of shape \(N, 3, 224, 224\), got \(2, 1, 28, 28\); "
                                         r"preprocess images with"):
        zoo.check_input(entry, torch.zeros(2, 1, 28, 28))
    with pytest.raises(ModelError, match="floating-point tensor, got torch.uint8"):
        zoo.check_input("fmnist-vgg", torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ModelError, match="takes a torch.Tensor"):
        zoo.check_input("fmnist-vgg", np.zeros((1, 1, 28, 28)))


# ------------------------------------------------------------------------------------------ weights


def test_weights_hash_is_fixed_and_sensitive():
    state = {"b": torch.tensor([[1, 2]]), "a": torch.arange(4, dtype=torch.float32)}
    assert zoo.weights_hash(state) == WEIGHTS_HASH_FIXTURE
    torch.manual_seed(0)
    model = zoo.load_model("fmnist-vgg", weights="random")
    copy = zoo.load_model("fmnist-vgg", weights="random")
    copy.load_state_dict(model.state_dict())
    assert zoo.weights_hash(model) == zoo.weights_hash(copy) == zoo.weights_hash(model.state_dict())
    with torch.no_grad():
        copy.fc.bias[0] += 1e-6
    assert zoo.weights_hash(copy) != zoo.weights_hash(model)


def test_trained_weights_missing_says_run_dyno_train(empty_cache):
    with pytest.raises(ModelError, match="no trained weights for fmnist-resnet .*run `dyno train fmnist-resnet`"):
        zoo.load_model("fmnist-resnet")
    with pytest.warns(UserWarning, match="using random weights"):
        model = zoo.load_model("fmnist-resnet", weights="trained-or-random")
    assert isinstance(model, nn.Module) and not model.training
    assert zoo.cache_dir() == empty_cache


def test_weights_file_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(1)
    model = zoo.load_model("fmnist-resnet", weights="random")
    path = zoo.save_weights(model, "fmnist-resnet", {"note": "test"}, tmp_path / "w.pt")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == {"model": "fmnist-resnet", "weights_sha256": zoo.weights_hash(model), "note": "test"}
    loaded = zoo.load_model("fmnist-resnet", weights=str(path))
    assert zoo.weights_hash(loaded) == zoo.weights_hash(model) and not loaded.training

    # the cache path is what weights="trained" reads
    zoo.save_weights(model, "fmnist-resnet", {"test_accuracy": 0.5})
    assert zoo.weights_hash(zoo.load_model("fmnist-resnet")) == zoo.weights_hash(model)
    assert zoo.trained_weights_info("fmnist-resnet")["test_accuracy"] == 0.5

    with pytest.raises(ModelError, match="do not fit model 'fmnist-vgg': missing: "):
        zoo.load_model("fmnist-vgg", weights=path)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="junk.pt is not a readable state_dict file"):
        zoo.load_model("fmnist-resnet", weights=tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="or a path to a state_dict file; 'pretrained' is neither"):
        zoo.load_model("fmnist-resnet", weights="pretrained")


@pytest.mark.parametrize("name", ["fmnist-resnet", "fmnist-vgg", "efficientnet-lite0"])
def test_builtin_models_trace_with_fx_and_use_relu_modules(name):
    torch.manual_seed(0)
    entry = zoo.get_model(name)
    model = zoo.load_model(name, weights="random")
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *entry.input_shape)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(graph(x), out)
    assert out.shape == (2, entry.num_classes)
    activations = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    assert activations and not any(m.inplace for m in activations)
    functional = [n for n in graph.graph.nodes if n.op == "call_function" and "relu" in str(n.target)]
    assert not functional


# -------------------------------------------------------------------------------- pretrained + eval


class Oracle(nn.Module):
    """Predicts the class stored in pixel (0, 0, 0)."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 4).float()


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_counts_exactly():
    items = [(torch.full((1, 2, 2), float(p)), y) for p, y in [(0, 0), (1, 1), (2, 3), (3, 3), (1, 2)]]
    ds = ListDataset(items)
    model = Oracle().train()
    assert zoo.evaluate(model, ds, batch_size=2) == pytest.approx(3 / 5)
    assert zoo.evaluate(model, ds, limit=2) == 1.0
    assert model.training  # mode restored
    with pytest.raises(DataError, match="nothing to evaluate"):
        zoo.evaluate(model, ListDataset([]))


def test_efficientnet_lite0_loads_quietly(capsys):
    model = zoo.load_model("efficientnet-lite0")
    assert not model.training
    assert capsys.readouterr().out == ""
    assert len(zoo.weights_hash(model)) == 64


@needs_imagenet
def test_efficientnet_lite0_top1_on_first_50_imagenet_samples():
    model = zoo.load_model("efficientnet-lite0")
    data = zoo.load_dataset("imagenet-samples", root=IMAGENET_SAMPLES, model="efficientnet-lite0")
    assert len(data) == 500 and data.class_names[0] == "tench"
    top1 = zoo.evaluate(model, data, batch_size=25, limit=50)
    assert round(top1 * 50) == EFFICIENTNET_LITE0_FIRST50_CORRECT


# ----------------------------------------------------------------------------------------- training


@needs_fmnist
def test_short_training_run_learns(empty_cache):
    # The real recipe on 10000 images for one epoch: measured 81-82% (seeds 0-2); chance is 10%.
    # The full recipes (`dyno train`) reach >= 91% / 90%.
    result = zoo.train("fmnist-resnet", epochs=1, limit=10000, test_limit=2000, seed=0)
    assert result.test_accuracy >= 0.75
    assert (result.train_images, result.test_images, result.epochs, result.path) == (10000, 2000, 1, None)
    assert not any(empty_cache.rglob("*.pt"))  # a limited run never replaces cached weights


@needs_fmnist
def test_training_is_seeded_and_saves_weights_that_reload(tmp_path):
    runs = [zoo.train("fmnist-vgg", epochs=2, limit=3000, test_limit=1000, seed=3,
                      save=True, path=tmp_path / f"vgg{i}.pt") for i in range(2)]
    assert runs[0].test_accuracy >= 0.65  # measured 75%
    assert runs[0].path == tmp_path / "vgg0.pt"
    infos = [json.loads((tmp_path / f"vgg{i}.json").read_text()) for i in range(2)]
    assert infos[0]["weights_sha256"] == infos[1]["weights_sha256"]  # same seed, same weights
    assert infos[0]["seed"] == 3 and infos[0]["epochs"] == 2 and infos[0]["test_accuracy"] == runs[0].test_accuracy
    model = zoo.load_model("fmnist-vgg", weights=runs[0].path)
    test = zoo.load_dataset("fashion-mnist", split="test")
    assert zoo.evaluate(model, test, limit=1000) == runs[0].test_accuracy


def test_train_refuses_models_without_recipe():
    with pytest.raises(ModelError, match="'efficientnet-lite0' has no training recipe; `dyno train` works for "
                                         "fmnist-resnet, fmnist-vgg"):
        zoo.train("efficientnet-lite0")


# ---------------------------------------------------------------------------------------------- CLI


def run_cli(capsys, *argv):
    code = dyno.cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["eval", "no-such-model"], "dyno eval: error: unknown model 'no-such-model'; known models: "),
    (["eval", "fmnist-resnet"], "dyno eval: error: no trained weights for fmnist-resnet in "),
    (["train", "efficientnet-lite0"], "dyno train: error: model 'efficientnet-lite0' has no training recipe"),
    (["eval", "efficientnet-lite0", "--data", "/no/such/dir"],
     "dyno eval: error: no dataset named '/no/such/dir' and no such directory"),
    (["train", "fmnist-vgg", "--data", "/no/such/dir"],
     "dyno train: error: Fashion-MNIST directory /no/such/dir does not exist"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_cli_corrupt_idx_is_one_line(capsys, tmp_path):
    images, labels = small_fashion()
    write_fashion(tmp_path, images, labels)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x0c"))
    code, out, err = run_cli(capsys, "eval", "fmnist-vgg", "--weights", "random", "--data", str(tmp_path))
    assert code == 1
    assert err == (f"dyno eval: error: {tmp_path}/t10k-labels-idx1-ubyte.gz: IDX payload truncated: "
                   "dimensions 12 of 1-byte values need 12 bytes, found 0\n")


def test_cli_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        dyno.cli.main(["train", "fmnist-vgg", "--epochs", "0"])
    assert caught.value.code == 2
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err


def test_cli_eval_json_on_a_folder(capsys, tmp_path):
    images, labels = small_fashion(20)
    write_fashion(tmp_path, images, labels)
    weights = zoo.save_weights(zoo.load_model("fmnist-vgg", weights="random"), "fmnist-vgg", {}, tmp_path / "w.pt")
    code, out, err = run_cli(capsys, "eval", "fmnist-vgg", "--data", str(tmp_path), "--weights", str(weights),
                             "--limit", "15", "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"model", "data", "n", "top1"}
    assert (doc["model"], doc["data"], doc["n"]) == ("fmnist-vgg", str(tmp_path), 15)
    assert 0 <= doc["top1"] <= 1 and round(doc["top1"] * 15, 6) == round(doc["top1"] * 15)


@needs_fmnist
def test_cli_train_json(capsys, empty_cache):
    code, out, err = run_cli(capsys, "train", "fmnist-vgg", "--epochs", "1", "--limit", "10000", "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["model"], doc["epochs"], doc["seed"], doc["train_images"], doc["test_images"], doc["path"]) == \
        ("fmnist-vgg", 1, 0, 10000, 10000, None)
    assert doc["test_accuracy"] >= 0.75  # measured 82-83%
    assert not any(empty_cache.rglob("*.pt"))
