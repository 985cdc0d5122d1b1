"""Models named by a spec rather than registered by name: ``module.path:callable`` or an entry point.

    >>> get_model("mypkg.models:build")       # imports mypkg.models, calls build()
    >>> get_model("tiny")                     # a package's entry point in the group ``dyno.models``

The callable (or the entry point's object) is one of:

- a :class:`ModelEntry` (preprocessing, input shape, default data: everything the zoo knows), or a
  callable returning one;
- a callable returning an ``nn.Module``. Its input shape comes from an ``input_shape`` attribute
  (``(C, H, W)``) on the callable or on the module it returns; ``num_classes``, ``default_data`` and
  ``preprocess`` likewise when present (``num_classes`` is otherwise read from one forward pass).

The entry keeps the spec as its name, so a plan made from it (``Plan.model``) names the spec again and
``dyno serve --plan P`` rebuilds the same architecture. Weights are separate (``--weights FILE``, a
state_dict read with ``weights_only=True``); the plan holds their sha256.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
import sys
from typing import Any, Callable

import torch
from torch import nn

from dyno.errors import ModelError
from dyno.zoo._registry import KNOWN, RESOLVERS, ModelEntry

__all__ = ["ENTRY_POINT_GROUP", "is_spec", "spec_entry", "entry_point_entry", "entry_point_names"]

#: The entry-point group in which installed packages register models by name.
ENTRY_POINT_GROUP = "dyno.models"

_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
                   r"(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_RESOLVED: dict[str, ModelEntry] = {}


def is_spec(name: str) -> bool:
    """Whether ``name`` looks like ``module.path:callable``."""
    return ":" in name


def spec_entry(spec: str) -> ModelEntry:
    """The zoo entry for ``module.path:callable`` (cached per spec); ``ModelError`` saying what failed."""
    if spec in _RESOLVED:
        return _RESOLVED[spec]
    if not _SPEC.match(spec):
        raise ModelError(f"{spec!r} is not a model spec: write module.path:callable (e.g. mypkg.models:build)")
    module_name, _, attribute = spec.partition(":")
    target = _attribute(_import(module_name, spec), attribute, spec)
    entry = _entry(spec, target)
    _RESOLVED[spec] = entry
    return entry


def entry_point_names() -> list[str]:
    """Names installed packages register in the ``dyno.models`` entry-point group."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def entry_point_entry(name: str) -> ModelEntry | None:
    """The zoo entry an installed package registers as ``name`` in ``dyno.models``, or None."""
    if name in _RESOLVED:
        return _RESOLVED[name]
    found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        return None
    try:
        target = found[0].load()
    except Exception as error:
        raise ModelError(f"entry point {name!r} ({found[0].value}) of group {ENTRY_POINT_GROUP} cannot be "
                         f"loaded: {type(error).__name__}: {error}") from error
    entry = _entry(name, target)
    _RESOLVED[name] = entry
    return entry


def _import(module_name: str, spec: str) -> Any:
    if os.getcwd() not in sys.path and "" not in sys.path:  # `dyno` as a console script: find ./mypkg too
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ModelError(f"model {spec!r}: cannot import {error.name!r}; install the package or add its "
                         "directory to PYTHONPATH") from error
    except Exception as error:
        raise ModelError(f"model {spec!r}: importing {module_name} failed: {type(error).__name__}: "
                         f"{error}") from error


def _attribute(module: Any, path: str, spec: str) -> Any:
    target = module
    for part in path.split("."):
        if not hasattr(target, part):
            raise ModelError(f"model {spec!r}: {module.__name__} has no attribute {path!r}")
        target = getattr(target, part)
    return target


def _entry(name: str, target: Any) -> ModelEntry:
    """A ModelEntry named ``name`` from a ModelEntry, or a callable returning a ModelEntry or a module."""
    if isinstance(target, ModelEntry):
        return dataclasses.replace(target, name=name)
    if not callable(target):
        raise ModelError(f"model {name!r}: {type(target).__name__} is neither a ModelEntry nor callable")
    built = _call(name, target)
    if isinstance(built, ModelEntry):
        return dataclasses.replace(built, name=name)
    if not isinstance(built, nn.Module):
        raise ModelError(f"model {name!r}: the callable returned {type(built).__name__}; it must return an "
                         "nn.Module or a dyno.zoo.ModelEntry")
    input_shape = _from(target, built, "input_shape")
    if input_shape is None:
        raise ModelError(f"model {name!r}: the nn.Module's input shape is unknown; return a "
                         "dyno.zoo.ModelEntry(input_shape=(C, H, W), ...) or set an input_shape attribute "
                         "on the callable or the module")
    num_classes = _from(target, built, "num_classes") or _classes(name, built, tuple(input_shape))
    return ModelEntry(name=name, input_shape=tuple(input_shape), num_classes=int(num_classes),
                      build=_builder(name, target), default_data=_from(target, built, "default_data"),
                      preprocess=_from(target, built, "preprocess"),
                      description=(getattr(target, "__doc__", None) or "").strip().split("\n")[0])


def _call(name: str, target: Callable[[], Any]) -> Any:
    try:
        return target()
    except Exception as error:
        raise ModelError(f"model {name!r}: calling it failed: {type(error).__name__}: {error}") from error


def _builder(name: str, target: Callable[[], Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return _call(name, target)

    return build


def _from(target: Any, built: nn.Module, attribute: str) -> Any:
    value = getattr(target, attribute, None)
    return value if value is not None else getattr(built, attribute, None)


def _classes(name: str, module: nn.Module, input_shape: tuple[int, ...]) -> int:
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(1, *input_shape))
    except Exception as error:
        raise ModelError(f"model {name!r} fails on an input of shape {input_shape}: "
                         f"{type(error).__name__}: {error}") from error
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelError(f"model {name!r} must return logits shaped (N, classes)")
    return int(out.shape[1])


def _resolve(name: str) -> ModelEntry | None:
    return spec_entry(name) if is_spec(name) else entry_point_entry(name)


RESOLVERS.append(_resolve)
KNOWN.append(entry_point_names)
