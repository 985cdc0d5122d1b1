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

from typing import Any, Callable

import numpy as np

from dyno.device._heads import OrtHeads
from dyno.device._worker import OrtDeviceWorker
from dyno.errors import ConfigError
from dyno.monitor import Monitors
from dyno.plan import Plan
from dyno.runtime.config import ClientConfig
from dyno.runtime.facade import ClientFacade
from dyno.runtime.results import Result

__all__ = ["OrtClient"]


class OrtClient(ClientFacade):
    """A torch-free device client (see the module docstring). Arguments as ``dyno.runtime.Client``'s,
    with ``heads`` (an :class:`OrtHeads`) in place of the model; ``stats``, ``errors``, ``connected``
    and ``served`` read the same."""

    def __init__(self, plan: Plan, heads: OrtHeads, config: ClientConfig | None = None, *, link: Any = None,
                 device: Any = None, monitors: Monitors | None = None,
                 on_result: Callable[[Result], None] | None = None, **settings: Any):
        heads.manifest.check_plan(plan)
        self.heads = heads
        super().__init__(plan, config, settings, link=link, device=device, monitors=monitors,
                         on_result=on_result)

    def _make_worker(self) -> OrtDeviceWorker:
        return OrtDeviceWorker(self.plan, self.heads, self.policy, self.slo, telemetry=self._telemetry,
                               deliver=self._deliver, device=self.device, in_flight=self.config.in_flight,
                               top_k=self.config.top_k, want_logits=self.config.want_logits)

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
        self._warm_policy()

    def _as_input(self, x: Any) -> np.ndarray:
        array = np.asarray(x, dtype=np.float32)
        shape = tuple(self.plan.input_shape)
        if array.shape == shape:
            array = array[None]
        if array.shape != (1, *shape):
            raise ConfigError(f"an input must be shaped {shape} or (1, *{shape}), got {array.shape}")
        return np.ascontiguousarray(array)
