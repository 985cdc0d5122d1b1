"""The runtime: device client and cloud server over gRPC (``dyno.v1``), batching, metrics.

    from dyno.runtime import Client, ServerThread, create_server

- :func:`create_server` / :class:`Server` (grpc.aio) and :class:`ServerThread` (the same on a loop in a
  background thread) serve the tails of one model for every cut of its plan, with dynamic batching.
- :class:`Client` runs the policy, the heads and the codec on the device, pipelines inferences over one
  gRPC stream, and finishes anything the cloud does not answer on the device.
- :func:`summarize` turns results into the ``{"n", "accuracy", "throughput", ...}`` summary.
"""

from dyno.runtime.batching import BatchConfig
from dyno.runtime.client import Client, ClientTLS
from dyno.runtime.results import SUMMARY_KEYS, Result, summarize, top_k
from dyno.runtime.server import Server, ServerConfig, ServerThread, TLSConfig, create_server, serve
from dyno.runtime.splits import Splits

__all__ = ["BatchConfig", "Client", "ClientTLS", "Result", "SUMMARY_KEYS", "Server", "ServerConfig",
           "ServerThread", "Splits", "TLSConfig", "create_server", "serve", "summarize", "top_k"]
