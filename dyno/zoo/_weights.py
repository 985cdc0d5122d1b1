"""Weights: loading a zoo model with trained or random weights, caching trained ones, hashing them.

Weight files are state_dicts written with ``torch.save`` and read with ``torch.load(weights_only=True)``
(tensors only, no code), each with a JSON sidecar describing how it was made.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from dyno.datafile import atomic_path, atomic_write
from dyno.errors import ConfigError, ModelError
from dyno.zoo._paths import weights_dir
from dyno.zoo._registry import ModelEntry, get_model

__all__ = ["WEIGHTS", "load_model", "weights_hash", "trained_weights_path", "trained_weights_info",
           "save_weights", "read_state_dict"]

#: The named weight choices of :func:`load_model`; anything else is a path to a state_dict file.
WEIGHTS = ("trained", "random", "trained-or-random")


def _file_stem(name: str) -> str:
    return name.replace("/", "__")


def trained_weights_path(name: str | ModelEntry) -> Path:
    """Where ``dyno train NAME`` writes (and ``weights="trained"`` looks for) the weights."""
    return weights_dir() / f"{_file_stem(get_model(name).name)}.pt"


def trained_weights_info(name: str | ModelEntry) -> dict | None:
    """The JSON sidecar of the cached trained weights (accuracy, seconds, seed, epochs...), or None."""
    sidecar = trained_weights_path(name).with_suffix(".json")
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None


def save_weights(model: nn.Module, name: str | ModelEntry, info: Mapping, path: str | os.PathLike | None = None
                 ) -> Path:
    """Write ``model``'s state_dict (default: the cache path of ``name``) and a ``.json`` sidecar
    holding ``info`` plus the model name and :func:`weights_hash`. Written atomically."""
    entry = get_model(name)
    path = Path(path) if path is not None else trained_weights_path(entry)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    sidecar = {"model": entry.name, "weights_sha256": weights_hash(state), **info}
    atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict file, read with ``weights_only=True``; any failure is a ``ModelError``."""
    path = Path(path).expanduser()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"weights file {path} does not exist") from None
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on bad files
        raise ModelError(f"{path} is not a readable state_dict file ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); re-create it") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return dict(state)


def load_model(name: str | ModelEntry, weights: str | os.PathLike = "trained") -> nn.Module:
    """A zoo model in eval mode.

    ``weights``:
    - ``"trained"``: the weights shipped with a package (efficientnet-lite0) or cached by
      ``dyno train NAME``; ``ModelError`` saying to run ``dyno train NAME`` if there are none;
    - ``"random"``: the untrained architecture (deterministic only under ``torch.manual_seed``);
    - ``"trained-or-random"``: trained if available, else random with a warning;
    - a path to a state_dict file (as written by ``dyno train`` or ``torch.save(model.state_dict())``).
    """
    entry = get_model(name)
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and weights not in WEIGHTS):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"weights must be one of {', '.join(WEIGHTS)} or a path to a state_dict "
                             f"file; {str(weights)!r} is neither (no such file)")
        state = read_state_dict(path)
        source = str(path)
    elif weights == "random":
        state, source = None, "random"
    elif isinstance(weights, str):
        try:
            state, source = _trained_state(entry)
        except ModelError as error:
            if weights == "trained":
                raise
            warnings.warn(f"{error}; using random weights", stacklevel=2)
            state, source = None, "random"
    else:
        raise ConfigError(f"weights must be a string or a path, not {type(weights).__name__}")
    model = _build(entry)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ModelError(f"weights {source} do not fit model {entry.name!r}: "
                             f"{_mismatch(model, state)}") from error
    return model.eval()


def _build(entry: ModelEntry) -> nn.Module:
    try:
        model = entry.build()
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"building model {entry.name!r} failed: {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {entry.name!r}: build() returned {type(model).__name__}, not an nn.Module")
    return model


def _trained_state(entry: ModelEntry) -> tuple[dict[str, torch.Tensor], str]:
    if entry.pretrained is not None:
        if callable(entry.pretrained):
            return entry.pretrained(), f"pretrained {entry.name}"
        return read_state_dict(entry.pretrained), str(entry.pretrained)
    path = trained_weights_path(entry)
    if path.is_file():
        return read_state_dict(path), str(path)
    if entry.recipe is not None:
        raise ModelError(f"no trained weights for {entry.name} in {path.parent}; run `dyno train "
                         f"{entry.name}` first (or use random weights: weights='random', --weights random)")
    raise ModelError(f"model {entry.name!r} has no trained weights; pass weights=PATH to a state_dict "
                     "file, or weights='random'")


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if state[k].shape != own[k].shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            parts.append(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''} ({len(items)})")
    return "; ".join(parts) or "state_dict mismatch"


def weights_hash(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over a model's state_dict: for each key in sorted order its name, dtype, shape
    and raw bytes. Equal for equal weights regardless of device or module identity."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
