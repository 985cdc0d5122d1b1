"""The device client: policy, head, encoding and the uplink on the device; the tail in the cloud.

    with Client(plan, model, server="127.0.0.1:50051") as client:
        result = client.infer(x)                 # one input (C, H, W) or (1, C, H, W)
        for result in client.map(inputs):         # pipelined, results in input order
            ...

    config = ClientConfig(server="127.0.0.1:50051", slo="throughput;drop<=1", in_flight=4)
    with Client(plan, model, config, link=Link(trace), device=Device.tier("mid")) as client:
        ...

Settings live in one frozen :class:`~dyno.runtime.config.ClientConfig`; keyword arguments named like
its fields (``server=``, ``policy=``, ``timeout=``, ...) replace fields of ``config``. What the client
works with at run time stays a keyword argument: ``link`` (an emulated uplink), ``device`` (an emulated
slow device), ``monitors``, ``splits`` (heads and tails already built) and ``on_result``.

The client is a facade over two parts, each a thread:

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

import collections
import concurrent.futures
import itertools
import logging
import threading
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from dyno import policy as policies
from dyno.errors import ConfigError, RuntimeServiceError
from dyno.monitor import Monitors
from dyno.plan import Plan
from dyno.runtime.config import ClientConfig, ClientTLS
from dyno.runtime.connection import CloudConnection
from dyno.runtime.device_worker import DeviceWorker
from dyno.runtime.inflight import Inference, Telemetry
from dyno.runtime.results import Result
from dyno.runtime.splits import Splits, warm_codecs

__all__ = ["Client", "ClientConfig", "ClientTLS"]

log = logging.getLogger("dyno.client")


class Client:
    """A device client for one plan and model (see the module docstring).

    ``policy`` is made from its name (``dyno.policy.make``) unless ``config.policy`` is a ``Policy``;
    ``monitors`` defaults to ``dyno.monitor.Monitors(plan)``. ``on_result`` is called (in a client
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
        config = config or ClientConfig()
        self.config = config.replace(**settings) if settings else config
        self.plan = plan
        self.splits = splits or Splits(model, plan)
        self.policy = (policies.make(self.config.policy) if isinstance(self.config.policy, str)
                       else self.config.policy)
        assert isinstance(self.config.slo, policies.SLO)  # ClientConfig parses it
        self.slo: policies.SLO = self.config.slo
        self.monitors = monitors or Monitors(plan)
        self.link, self.device, self.on_result = link, device, on_result
        self._telemetry = Telemetry(self.monitors)
        if self.config.warm:  # pay one-time costs now, not in the first (timed) inferences
            self._warm()
        self._ids = itertools.count()
        self._slots = threading.BoundedSemaphore(self.config.in_flight)
        self._closed = False
        self._device = DeviceWorker(plan, self.splits, self.policy, self.slo, telemetry=self._telemetry,
                                    deliver=self._deliver, device=device, in_flight=self.config.in_flight,
                                    top_k=self.config.top_k, want_logits=self.config.want_logits)
        self._cloud = CloudConnection(plan, self.config, telemetry=self._telemetry,
                                      fall_back=self._device.fall_back, deliver=self._deliver, link=link)
        self._device.start(self._cloud)
        try:
            self._cloud.start()
        except BaseException:  # e.g. an unreadable TLS file: leave no thread behind
            self._cloud.close()
            self._device.stop()
            raise
        if self.config.server is not None:  # a head start for the first inputs; fine if it fails
            self.connected.wait(self.config.connect_timeout)

    def _warm(self) -> None:
        self.splits.warm()
        warm_codecs(self.plan, decode=False)
        self.policy.decide(policies.State(self.plan, self.monitors.estimates(), self.slo, 1,
                                          self.config.in_flight))
        self.policy.reset()

    # ------------------------------------------------------------------------------ what callers read

    @property
    def connected(self) -> threading.Event:
        return self._cloud.connected

    @property
    def served(self) -> set[int]:
        return self._cloud.served

    @property
    def stats(self) -> collections.Counter[str]:
        return self._telemetry.stats

    @property
    def errors(self) -> collections.deque[str]:
        return self._telemetry.errors

    def estimates(self) -> policies.Estimates:
        return self._telemetry.estimates()

    # ------------------------------------------------------------------------------ inferences

    def submit(self, x: Any) -> concurrent.futures.Future:
        """Start one inference; blocks while ``in_flight`` inferences are under way."""
        if self._closed:
            raise RuntimeServiceError("the client is closed")
        tensor = self._as_input(x)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._slots.acquire()
        inference = Inference(next(self._ids), tensor, future)
        future.add_done_callback(lambda _: self._slots.release())
        self._device.infer(inference)
        return future

    def infer(self, x: Any) -> Result:
        """One inference, start to finish."""
        return self.submit(x).result()

    def map(self, inputs: Iterable[Any]) -> Iterator[Result]:
        """Pipelined inferences over ``inputs``, yielded in input order."""
        window: collections.deque[concurrent.futures.Future] = collections.deque()
        for x in inputs:
            window.append(self.submit(x))
            while window and window[0].done():
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def close(self) -> None:
        """Wait for the inferences under way, then close the connection and the threads."""
        if self._closed:
            return
        for _ in range(self.config.in_flight):
            self._slots.acquire()
        self._closed = True
        self._cloud.close()
        self._device.stop()
        for _ in range(self.config.in_flight):
            self._slots.release()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ internals

    def _as_input(self, x: Any) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        shape = tuple(self.plan.input_shape)
        if tuple(tensor.shape) == shape:
            tensor = tensor.unsqueeze(0)
        if tuple(tensor.shape) != (1, *shape):
            raise ConfigError(f"an input must be shaped {shape} or (1, *{shape}), got {tuple(tensor.shape)}")
        return tensor.float().contiguous()

    def _deliver(self, inference: Inference, result: Result) -> None:
        """Every result, from either thread: count it, show it to ``on_result``, resolve its future."""
        if inference.future.done():
            return
        self._telemetry.count(result.where)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception as error:  # a display callback must not lose a result
                log.warning("on_result failed: %r", error)
        inference.future.set_result(result)
