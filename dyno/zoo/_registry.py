"""The model registry: name -> architecture, weights source, preprocessing, default dataset, shape.

    >>> entry = get_model("fmnist-resnet")
    >>> entry.input_shape, entry.default_data
    ((1, 28, 28), 'fashion-mnist')

Users add their own ``nn.Module`` with :func:`register_model` (a decorator, or a plain call); lookups
of unknown names raise ``ModelError`` naming the known ones. torchvision classification models are
found by name (``resnet18`` or ``torchvision/resnet18``) when torchvision is importable.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Callable

import torch
from torch import nn

from dyno.errors import ConfigError, ModelError

__all__ = ["ModelEntry", "TrainRecipe", "register_model", "unregister_model", "get_model",
           "list_models", "check_input"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+:-]*$")  # ":" for module.path:callable specs
TORCHVISION_PREFIX = "torchvision/"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainRecipe:
    """How ``dyno train`` trains a model on its default dataset (SGD or AdamW with a one-cycle LR).

    ``crop_padding`` pads each image by that many pixels and crops it back at a random offset;
    ``hflip`` flips half the images left-right.
    """

    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    crop_padding: int = 0
    hflip: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1 or self.crop_padding < 0:
            raise ConfigError(f"invalid training hyper-parameters in {self!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One model of the zoo.

    - ``name``: the registry key.
    - ``input_shape``: ``(C, H, W)`` of one input, without the batch dimension.
    - ``num_classes``: size of the output logits.
    - ``default_data``: the dataset it is evaluated on (``"imagenet-samples"``, ``"fashion-mnist"``,
      a directory) or None.
    - ``preprocess``: PIL image -> float tensor of ``input_shape``, or None (tensor datasets only).
    - ``build()``: a new ``nn.Module`` of the architecture, randomly initialised.
    - ``description``: one line for listings.
    - ``pretrained``: where ``weights="trained"`` comes from when weights ship with a package: a
      callable returning a state_dict, or a path to one. None: the weights ``dyno train`` caches.
    - ``recipe``: how ``dyno train`` trains it on ``default_data``; None if it cannot.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    build: Callable[[], nn.Module]
    default_data: str | None = None
    preprocess: Callable | None = None
    description: str = ""
    pretrained: Callable[[], dict] | str | os.PathLike | None = None
    recipe: TrainRecipe | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"model name {self.name!r} must be a non-empty string of letters, digits "
                              "and . _ / + - : (no spaces)")
        shape = tuple(self.input_shape) if isinstance(self.input_shape, (tuple, list)) else None
        if shape is None or len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ConfigError(f"model {self.name!r}: input_shape must be (C, H, W) of positive ints, "
                              f"got {self.input_shape!r}")
        object.__setattr__(self, "input_shape", shape)
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConfigError(f"model {self.name!r}: num_classes must be a positive int, got {self.num_classes!r}")
        if not callable(self.build):
            raise ConfigError(f"model {self.name!r}: build must be callable (a class or a factory)")
        if self.preprocess is not None and not callable(self.preprocess):
            raise ConfigError(f"model {self.name!r}: preprocess must be callable or None")
        if self.recipe is not None and not isinstance(self.recipe, TrainRecipe):
            raise ConfigError(f"model {self.name!r}: recipe must be a TrainRecipe or None")


_REGISTRY: dict[str, ModelEntry] = {}
#: Tried in order for a name that is not registered (``dyno.zoo._spec`` adds ``module.path:callable``
#: specs and the ``dyno.models`` entry points): name -> entry, or None when not theirs.
RESOLVERS: list[Callable[[str], ModelEntry | None]] = []
#: More known names for error messages (the entry points' names).
KNOWN: list[Callable[[], list[str]]] = []


def register_model(name: str | ModelEntry | None = None, build: Callable[[], nn.Module] | None = None, *,
                   input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None,
                   default_data: str | None = None, preprocess: Callable | None = None,
                   description: str = "", pretrained=None, recipe: TrainRecipe | None = None,
                   replace: bool = False):
    """Add a model to the zoo. Three forms:

        >>> register_model(ModelEntry(name="tiny", input_shape=(1, 28, 28), num_classes=10, build=Tiny))
        >>> register_model("tiny", Tiny, input_shape=(1, 28, 28), num_classes=10)
        >>> @register_model("tiny", input_shape=(1, 28, 28), num_classes=10, default_data="fashion-mnist")
        ... class Tiny(nn.Module): ...

    The first two return the ``ModelEntry``; the decorator returns the class or factory unchanged
    (its name is the key when ``name`` is omitted). A name already taken is a ``ConfigError`` unless
    ``replace=True``.
    """
    if isinstance(name, ModelEntry):
        return _add(name, replace)

    def make(target: Callable[[], nn.Module], key: str | None) -> ModelEntry:
        if input_shape is None or num_classes is None:
            raise ConfigError(f"register_model({key!r}): input_shape and num_classes are required")
        return ModelEntry(name=key if key else getattr(target, "__name__", ""), input_shape=input_shape,
                          num_classes=num_classes, build=target, default_data=default_data,
                          preprocess=preprocess, description=description, pretrained=pretrained,
                          recipe=recipe)

    if build is not None:
        return _add(make(build, name), replace)

    def decorator(target):
        _add(make(target, name), replace)
        return target

    return decorator


def _add(entry: ModelEntry, replace: bool) -> ModelEntry:
    if entry.name in _REGISTRY and not replace:
        raise ConfigError(f"model {entry.name!r} is already registered; pass replace=True to override it")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_model(name: str) -> None:
    """Remove a registered model (``ModelError`` if there is none by that name)."""
    if name not in _REGISTRY:
        raise ModelError(_unknown_message(name))
    del _REGISTRY[name]


def list_models(include_torchvision: bool = False) -> list[str]:
    """Registered model names, sorted; with ``include_torchvision``, also ``torchvision/NAME`` for
    every torchvision classification model (when torchvision is importable)."""
    names = sorted(_REGISTRY)
    if include_torchvision:
        tv = _torchvision_models()
        if tv is not None:
            names += [TORCHVISION_PREFIX + n for n in tv.list_models(module=tv)]
    return names


def get_model(name: str | ModelEntry) -> ModelEntry:
    """The entry for ``name``: a registered model; a ``module.path:callable`` spec; a model an installed
    package registers in the entry-point group ``dyno.models``; else a torchvision classification model
    (bare name or ``torchvision/NAME``). Unknown names raise ``ModelError`` listing the known ones."""
    if isinstance(name, ModelEntry):
        return name
    if not isinstance(name, str):
        raise ModelError(f"a model name must be a string, got {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    for resolve in RESOLVERS:
        found = resolve(name)
        if found is not None:
            return found
    entry = _torchvision_entry(name.removeprefix(TORCHVISION_PREFIX))
    if entry is not None:
        return entry
    raise ModelError(_unknown_message(name))


def _unknown_message(name: str) -> str:
    known = sorted({*_REGISTRY, *(n for names in KNOWN for n in names())})
    message = (f"unknown model {name!r}; known models: {', '.join(known) or '(none)'}, or module.path:callable "
               "(a callable returning an nn.Module or a dyno.zoo.ModelEntry)")
    if _torchvision_models() is None:
        return message + "; torchvision classification models work by name after `pip install torchvision`"
    return message + "; or a torchvision classification model (torchvision.models.list_models())"


@functools.cache
def _torchvision_models():
    try:
        import torchvision.models as models
    except Exception:  # not installed, or installed for another torch: both mean "not available"
        return None
    return models


@functools.cache
def _torchvision_entry(name: str) -> ModelEntry | None:
    models = _torchvision_models()
    if models is None or name not in models.list_models(module=models):
        return None
    from dyno.zoo._preprocess import ImagePreprocess

    resize, crop = 256, 224
    try:  # the resolution torchvision's own weights were trained at (metadata only, no download)
        transforms = models.get_model_weights(name).DEFAULT.transforms()
        resize, crop = int(transforms.resize_size[0]), int(transforms.crop_size[0])
    except Exception:
        pass
    preprocess = ImagePreprocess(mode="RGB", resize=resize, crop=crop,
                                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                 interpolation="bilinear")
    return ModelEntry(
        name=TORCHVISION_PREFIX + name, input_shape=(3, crop, crop), num_classes=1000,
        build=functools.partial(models.get_model, name, weights=None), default_data="imagenet-samples",
        preprocess=preprocess,
        description=f"torchvision {name} (weights cannot be downloaded here: use weights='random' "
                    "or a state_dict path)",
    )


def check_input(entry: str | ModelEntry, x) -> torch.Tensor:
    """Check that ``x`` is a float tensor of ``(N, *input_shape)`` (or one sample ``input_shape``,
    which gets a batch dimension) and return it batched; otherwise raise ``ModelError``."""
    entry = get_model(entry)
    want = "(N, " + ", ".join(map(str, entry.input_shape)) + ")"
    hint = (f"preprocess images with dyno.zoo.get_model({entry.name!r}).preprocess or "
            f"load_dataset(..., model={entry.name!r})")
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"{entry.name} takes a torch.Tensor of shape {want}, got {type(x).__name__}; {hint}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or tuple(x.shape[1:]) != entry.input_shape:
        raise ModelError(f"{entry.name} expects input of shape {want}, got {tuple(x.shape)}; {hint}")
    if not x.is_floating_point():
        raise ModelError(f"{entry.name} expects a floating-point tensor, got {x.dtype}; {hint}")
    return x
