"""The device client with the onnxruntime backend: no torch anywhere in the process.

    heads = OrtHeads("heads/", plan)                       # from `dyno export --plan plan.json --out heads/`
    with OrtClient(plan, heads, server="10.0.0.2:50051") as client:
        result = client.infer(x)                           # x: numpy (C, H, W) or (1, C, H, W), float32

The same pipeline as ``dyno.runtime.Client`` - the policy, the head, the codec and the uplink on the
device, the tail in the cloud, up to ``in_flight`` inferences under way, the same gRPC connection
(``dyno.runtime.connection``) with its timeouts, reconnection and back-off - with the heads run by
onnxruntime (``OrtDeviceWorker``). What the cloud does not answer finishes on the device by running
the whole model from the input (the device holds no tails).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import threading
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from dyno import policy as policies
from dyno.device._heads import OrtHeads
from dyno.device._worker import OrtDeviceWorker
from dyno.errors import ConfigError, RuntimeServiceError
from dyno.monitor import Monitors
from dyno.plan import Plan
from dyno.runtime.config import ClientConfig
from dyno.runtime.connection import CloudConnection
from dyno.runtime.inflight import Inference, Telemetry
from dyno.runtime.results import Result

__all__ = ["OrtClient"]

log = logging.getLogger("dyno.client")


class OrtClient:
    """A torch-free device client (see the module docstring). Arguments as ``dyno.runtime.Client``'s,
    with ``heads`` (an :class:`OrtHeads`) in place of the model; ``stats``, ``errors``, ``connected``
    and ``served`` read the same."""

    def __init__(self, plan: Plan, heads: OrtHeads, config: ClientConfig | None = None, *, link: Any = None,
                 device: Any = None, monitors: Monitors | None = None,
                 on_result: Callable[[Result], None] | None = None, **settings: Any):
        config = config or ClientConfig()
        self.config = config.replace(**settings) if settings else config
        self.plan, self.heads = plan, heads
        heads.manifest.check_plan(plan)
        self.policy = (policies.make(self.config.policy) if isinstance(self.config.policy, str)
                       else self.config.policy)
        assert isinstance(self.config.slo, policies.SLO)
        self.slo: policies.SLO = self.config.slo
        self.monitors = monitors or Monitors(plan)
        self.on_result = on_result
        self._telemetry = Telemetry(self.monitors)
        if self.config.warm:
            self._warm()
        self._ids = itertools.count()
        self._slots = threading.BoundedSemaphore(self.config.in_flight)
        self._closed = False
        self._device = OrtDeviceWorker(plan, heads, self.policy, self.slo, telemetry=self._telemetry,
                                       deliver=self._deliver, device=device, in_flight=self.config.in_flight,
                                       top_k=self.config.top_k, want_logits=self.config.want_logits)
        self._cloud = CloudConnection(plan, self.config, telemetry=self._telemetry,
                                      fall_back=self._device.fall_back, deliver=self._deliver, link=link)
        self._device.start(self._cloud)
        try:
            self._cloud.start()
        except BaseException:
            self._cloud.close()
            self._device.stop()
            raise
        if self.config.server is not None:
            self.connected.wait(self.config.connect_timeout)

    def _warm(self) -> None:
        from dyno import codec

        self.heads.warm()
        rng = np.random.default_rng(0)
        seen: set[str] = set()
        for cut in self.plan.cuts:
            for option in cut.options:
                if option.codec not in seen:
                    seen.add(option.codec)
                    codec.encode(rng.random(tuple(cut.shape), dtype=np.float32), bits=option.bits,
                                 mode=option.codec, nonnegative=True)
        self.policy.decide(policies.State(self.plan, self.monitors.estimates(), self.slo, 1, self.config.in_flight))
        self.policy.reset()

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

    def submit(self, x: Any) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeServiceError("the client is closed")
        array = self._as_input(x)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._slots.acquire()
        inference = Inference(next(self._ids), array, future)  # type: ignore[arg-type]
        future.add_done_callback(lambda _: self._slots.release())
        self._device.infer(inference)
        return future

    def infer(self, x: Any) -> Result:
        return self.submit(x).result()

    def map(self, inputs: Iterable[Any]) -> Iterator[Result]:
        window: collections.deque[concurrent.futures.Future] = collections.deque()
        for x in inputs:
            window.append(self.submit(x))
            while window and window[0].done():
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def close(self) -> None:
        if self._closed:
            return
        for _ in range(self.config.in_flight):
            self._slots.acquire()
        self._closed = True
        self._cloud.close()
        self._device.stop()
        for _ in range(self.config.in_flight):
            self._slots.release()

    def __enter__(self) -> OrtClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _as_input(self, x: Any) -> np.ndarray:
        array = np.asarray(x, dtype=np.float32)
        shape = tuple(self.plan.input_shape)
        if array.shape == shape:
            array = array[None]
        if array.shape != (1, *shape):
            raise ConfigError(f"an input must be shaped {shape} or (1, *{shape}), got {array.shape}")
        return np.ascontiguousarray(array)

    def _deliver(self, inference: Inference, result: Result) -> None:
        if inference.future.done():
            return
        self._telemetry.count(result.where)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception as error:
                log.warning("on_result failed: %r", error)
        inference.future.set_result(result)
