"""The device client: policy, head, encoding and the uplink on the device; the tail in the cloud.

    with Client(plan, model, server="127.0.0.1:50051") as client:
        result = client.infer(x)                 # one input (C, H, W) or (1, C, H, W)
        for result in client.map(inputs):         # pipelined, results in input order
            ...

    config = ClientConfig(server="127.0.0.1:50051", slo="throughput;drop<=1", in_flight=4)
    with Client(plan, model, config, link=Link(trace), device=Device(slowdown=8.0)) as client:
        ...

Settings live in one frozen :class:`~dyno.runtime.config.ClientConfig`; keyword arguments named like
its fields (``server=``, ``policy=``, ``timeout=``, ...) replace fields of ``config``. What the client
works with at run time stays a keyword argument: ``link`` (an emulated uplink), ``device`` (an emulated
slow device), ``monitors``, ``splits`` (heads and tails already built) and ``on_result``.

The client is a facade over two parts, each a thread (``dyno.runtime.facade``, shared with the
torch-free ``dyno.device.OrtClient``):

- the **device worker** (``dyno.runtime.device_worker``), the device's single core: the policy's
  decision, the head, encoding, device-only runs and fallback tails;
- the **cloud connection** (``dyno.runtime.connection``), an asyncio loop: the gRPC channel and
  stream, the uplink (an emulated ``Link`` if given), reply timeouts, reconnection with backoff.

Up to ``in_flight`` inferences are under way at once, so device compute, uplink and cloud overlap.
Every reply feeds the monitors (bandwidth, RTT, server time and load; device time from every head).

Nothing is lost: when the server cannot be reached, refuses a request, or a reply is later than
``timeout`` seconds or fails its checks, the affected inferences finish on the device (their tail runs
locally from the activation already computed; ``Result.where == "fallback"``), and while the cloud is
away the device runs whole inferences itself. The connection retries the cloud with exponential
backoff and the client returns to it as soon as it answers; after an overload (RESOURCE_EXHAUSTED,
UNAVAILABLE, no reply in time) it also waits a back-off before returning.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from dyno.errors import ConfigError
from dyno.monitor import Monitors
from dyno.plan import Plan
from dyno.runtime.config import ClientConfig, ClientTLS
from dyno.runtime.device_worker import DeviceWorker
from dyno.runtime.facade import ClientFacade
from dyno.runtime.results import Result
from dyno.runtime.splits import Splits, warm_codecs

__all__ = ["Client", "ClientConfig", "ClientTLS"]


class Client(ClientFacade):
    """A device client for one plan and model (see the module docstring).

    ``policy`` is made from its name (``dyno.policy.make``) unless ``config.policy`` is a ``Policy``;
    ``monitors`` defaults to ``dyno.monitor.Monitors(plan)`` starting from the emulated ``device``'s
    slowdowns, if one is given (a device 20x slower that believed itself as fast as the plan's profile
    kept a small model's first inferences on the device). ``on_result`` is called (in a client
    thread) with every ``Result`` as it is made.

    What callers read: ``config``, ``plan``, ``splits``, ``policy``, ``slo``, ``monitors``,
    ``estimates()``, ``stats`` (a Counter: results by where they finished - ``cloud``, ``device``,
    ``fallback`` -; ``replies``, the valid replies the cloud sent; ``bad_replies``; ``overloaded``,
    ``timeouts``, ``unavailable``, ``connects``, ``reconnects``, ``reopened``), ``errors`` (the last
    distinct reasons the cloud could not be used, in words: "cannot connect to HOST:PORT: connection
    refused ...", "TLS handshake with HOST:PORT failed: ...", "RESOURCE_EXHAUSTED: ..."), ``connected``
    (a ``threading.Event``, set while a stream to the server is live) and ``served`` (the cuts it serves).
    A caller that wanted the cloud and got ``stats["replies"] == 0`` can print ``errors`` and fail.
    """

    def __init__(self, plan: Plan, model: nn.Module, config: ClientConfig | None = None, *,
                 link: Any = None, device: Any = None, monitors: Monitors | None = None,
                 splits: Splits | None = None, on_result: Callable[[Result], None] | None = None,
                 **settings: Any):
        self.splits = splits or Splits(model, plan)
        super().__init__(plan, config, settings, link=link, device=device, monitors=monitors,
                         on_result=on_result)

    def _make_worker(self) -> DeviceWorker:
        return DeviceWorker(self.plan, self.splits, self.policy, self.slo, telemetry=self._telemetry,
                            deliver=self._deliver, device=self.device, in_flight=self.config.in_flight,
                            top_k=self.config.top_k, want_logits=self.config.want_logits)

    def _warm(self) -> None:
        self.splits.warm()
        warm_codecs(self.plan, decode=False)
        self._warm_policy()

    def _as_input(self, x: Any) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        shape = tuple(self.plan.input_shape)
        if tuple(tensor.shape) == shape:
            tensor = tensor.unsqueeze(0)
        if tuple(tensor.shape) != (1, *shape):
            raise ConfigError(f"an input must be shaped {shape} or (1, *{shape}), got {tuple(tensor.shape)}")
        return tensor.float().contiguous()
