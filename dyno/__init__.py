"""dyno: adaptive device-to-cloud split inference for CNNs (DynO, arXiv 2104.09949).

The curated public API; everything else is internal and may change::

    import dyno
    cuts = dyno.partition.cuts(model, example)          # where a CNN can be split
    head, tail = dyno.partition.split(model, cuts[10])
    frame = dyno.codec.encode(head(x)[0], bits=4)        # CNN-ISPM packing
    plan = dyno.Plan.load("plan.json", model=model)      # what offline analysis learned
    with dyno.Client(plan, model, server="127.0.0.1:50051") as client:
        result = client.infer(x)

Submodules load on first use, so ``import dyno`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

from dyno import errors
from dyno.errors import DynoError

__version__ = "0.1.0"

_SUBMODULES = ("codec", "partition", "plan", "policy", "monitor", "zoo", "analysis", "profile",
               "precision", "runtime", "emulate", "simulate")
_NAMES = {
    "Plan": ("dyno.plan", "Plan"),
    "Cut": ("dyno.partition", "Cut"),
    "Decision": ("dyno.policy", "Decision"),
    "SLO": ("dyno.policy", "SLO"),
    "Client": ("dyno.runtime", "Client"),
    "create_server": ("dyno.runtime", "create_server"),
}

__all__ = ["errors", "DynoError", *_SUBMODULES, *_NAMES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"dyno.{name}")
    if name in _NAMES:
        module, attribute = _NAMES[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'dyno' has no attribute {name!r}")
