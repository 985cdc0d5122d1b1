"""What every device client shares, without torch: ``dyno.runtime.Client`` (heads by torch) and
``dyno.device.OrtClient`` (heads by onnxruntime) differ only in the worker that runs the device's part
and in how an input becomes an array.

A client is a facade over two threads - a device worker (the policy's decision, the head, encoding,
device-only runs and fallbacks) and a cloud connection (``dyno.runtime.connection``) - with up to
``in_flight`` inferences under way, so device compute, uplink and cloud overlap. Subclasses set what
their worker needs, then call ``ClientFacade.__init__``, and provide ``_make_worker``, ``_warm`` and
``_as_input``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import threading
from typing import Any, Callable, Iterable, Iterator, Self

from dyno import policy as policies
from dyno.errors import RuntimeServiceError
from dyno.monitor import Monitors
from dyno.plan import Plan
from dyno.runtime.config import ClientConfig
from dyno.runtime.connection import CloudConnection
from dyno.runtime.inflight import Inference, Telemetry
from dyno.runtime.results import Result

__all__ = ["ClientFacade"]

log = logging.getLogger("dyno.client")


class ClientFacade:
    """The pipeline, the connection and what callers read (see ``dyno.runtime.Client``)."""

    def __init__(self, plan: Plan, config: ClientConfig | None, settings: dict[str, Any], *,
                 link: Any = None, device: Any = None, monitors: Monitors | None = None,
                 on_result: Callable[[Result], None] | None = None):
        config = config or ClientConfig()
        self.config = config.replace(**settings) if settings else config
        self.plan = plan
        self.policy = (policies.make(self.config.policy) if isinstance(self.config.policy, str)
                       else self.config.policy)
        assert isinstance(self.config.slo, policies.SLO)  # ClientConfig parses it
        self.slo: policies.SLO = self.config.slo
        self.monitors = monitors or Monitors(plan, initial_slowdown=float(getattr(device, "slowdown", 1.0)),
                                             codec_slowdown=float(getattr(device, "codec_slowdown", 1.0)))
        self.link, self.device, self.on_result = link, device, on_result
        self._telemetry = Telemetry(self.monitors)
        if self.config.warm:  # pay one-time costs now, not in the first (timed) inferences
            self._warm()
        self._ids = itertools.count()
        self._slots = threading.BoundedSemaphore(self.config.in_flight)
        self._closed = False
        self._device = self._make_worker()
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

    # ------------------------------------------------------------------------------ for subclasses

    def _make_worker(self) -> Any:
        """The device worker: ``start(cloud)``, ``infer(inference)``, ``fall_back``, ``stop()``."""
        raise NotImplementedError

    def _warm(self) -> None:
        """Build and run once what the first inferences would otherwise pay for."""

    def _as_input(self, x: Any) -> Any:
        """One input as the worker takes it, shaped ``(1, *plan.input_shape)``, or ConfigError."""
        raise NotImplementedError

    def _warm_policy(self) -> None:
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
        array = self._as_input(x)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._slots.acquire()
        inference = Inference(next(self._ids), array, future)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
