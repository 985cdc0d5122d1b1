"""dyno: adaptive device-to-cloud split inference for CNNs (DynO, arXiv 2104.09949).

The curated public API; everything else is internal and may change::

    import dyno
    cuts = dyno.partition.cuts(model, example)          # where a CNN can be split
    head, tail = dyno.partition.split(model, cuts[10])
    frame = dyno.codec.encode(head(x)[0], bits=4)        # CNN-ISPM packing
    plan = dyno.analyze(model, data=(x, y))              # what offline analysis learns
    plan = dyno.Plan.load("plan.json", model=model)
    with dyno.Client(plan, model, server="127.0.0.1:50051") as client:
        result = client.infer(x)

The parts, bottom up (each imports only those below it): ``errors``, ``packing``, ``progress``,
``datafile``; ``codec``, ``graph``, ``partition``, ``plan``, ``manifest`` (exported heads), ``zoo``,
``emulate``; ``policy``, ``monitor``; ``offline`` (profiles, precision, the plan), ``export`` (heads as
ONNX), ``simulate`` (the discrete-event simulator), ``runtime`` (gRPC client and server); ``cloud``
(Ray Serve), ``device`` (the device without torch: onnxruntime); ``bench`` (experiments, the demo,
presentation); ``cli``.

Submodules load on first use, so ``import dyno`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

from dyno import errors
from dyno.errors import DynoError

try:  # one source of truth: pyproject.toml
    __version__ = importlib.metadata.version("dyno")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_SUBMODULES = ("codec", "graph", "partition", "packing", "plan", "manifest", "policy", "monitor", "zoo", "offline",
               "export", "runtime", "device", "emulate", "simulate", "bench")
_NAMES = {
    "Plan": ("dyno.plan", "Plan"),
    "Packing": ("dyno.packing", "Packing"),
    "Cut": ("dyno.partition", "Cut"),
    "Decision": ("dyno.policy", "Decision"),
    "SLO": ("dyno.policy", "SLO"),
    "analyze": ("dyno.offline", "analyze"),
    "ensure_plan": ("dyno.offline", "ensure_plan"),
    "Client": ("dyno.runtime", "Client"),
    "ClientConfig": ("dyno.runtime", "ClientConfig"),
    "ServerConfig": ("dyno.runtime", "ServerConfig"),
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
