"""The runtime: device client and cloud server over gRPC (``dyno.v1``), batching, metrics.

    from dyno.runtime import Client, ClientConfig, ServerProcess, ServerThread, create_server

- :func:`create_server` / :class:`Server` (grpc.aio) serve the tails of one model for every cut of its
  plan, with dynamic batching; :class:`ServerThread` (a loop in a background thread),
  :class:`ServerProcess` (a child process) and :func:`serve` (until SIGTERM) run one
  (``dyno.runtime.harness``), configured by :class:`ServerConfig`.
- :class:`Client`, configured by :class:`ClientConfig`, runs the policy, the heads and the codec on the
  device, pipelines inferences over one gRPC stream, and finishes anything the cloud does not answer
  on the device.
- :func:`summarize` turns results into the ``{"n", "accuracy", "throughput", ...}`` summary.

Modules, top down: ``client`` (the facade) over ``device_worker`` (the device thread) and
``connection`` (the loop thread, judging what comes back with ``replies``), sharing ``inflight``;
``harness`` over ``server`` over ``streams`` (one Infer call), ``admission`` (who may send what),
``tails`` and ``batching``; ``config``, ``metrics``, ``splits``, ``results`` and ``proto`` below them
all. ``load`` sends raw ``dyno.v1`` traffic (devices, junk, idle streams) for benchmarks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below load on first use, so torch-free parts (config, connection, proto)
    # import without torch: a device with onnxruntime only (dyno.device) uses them
    from dyno.runtime.batching import BatchConfig
    from dyno.runtime.client import Client
    from dyno.runtime.config import ClientConfig, ClientTLS, ServerConfig, TLSConfig
    from dyno.runtime.harness import ServerProcess, ServerThread, from_plan_file, serve
    from dyno.runtime.results import SUMMARY_KEYS, Result, summarize, top_k
    from dyno.runtime.server import Server, create_server
    from dyno.runtime.splits import Splits

_WHERE = {
    "BatchConfig": "batching", "Client": "client", "ClientConfig": "config", "ClientTLS": "config",
    "ServerConfig": "config", "TLSConfig": "config", "ServerProcess": "harness", "ServerThread": "harness",
    "from_plan_file": "harness", "serve": "harness", "SUMMARY_KEYS": "results", "Result": "results",
    "summarize": "results", "top_k": "results", "Server": "server", "create_server": "server", "Splits": "splits",
}

__all__ = ["BatchConfig", "Client", "ClientConfig", "ClientTLS", "Result", "SUMMARY_KEYS", "Server",
           "ServerConfig", "ServerProcess", "ServerThread", "Splits", "TLSConfig", "create_server",
           "from_plan_file", "serve", "summarize", "top_k"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"dyno.runtime.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dyno.runtime' has no attribute {name!r}")
