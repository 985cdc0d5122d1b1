"""The device thread of the onnxruntime client: ``dyno.runtime.device_thread.DeviceThread`` running
exported heads, no torch. An inference the cloud gives back finishes from its activation by the cut's
exported tail when the heads were exported with ``--tails``; otherwise by running the whole model from
its input (``where="fallback"``, the note says which).
"""

from __future__ import annotations

from typing import Any, Callable

from dyno.plan import Plan
from dyno.policy import Decision
from dyno.runtime.device_thread import DeviceThread
from dyno.runtime.inflight import Inference

__all__ = ["OrtDeviceWorker"]


class OrtDeviceWorker(DeviceThread):
    """The device thread with ``heads`` (an ``OrtHeads``); arguments as ``DeviceThread``'s."""

    thread_name = "dyno-device-ort"

    def __init__(self, plan: Plan, heads: Any, *args: Any, **kwargs: Any):
        self.heads = heads
        super().__init__(plan, *args, **kwargs)

    def decide(self) -> Decision:
        decision = super().decide()
        if decision.codec is not None and not self.heads.has(decision.cut):  # a refused cut: not offered
            return Decision(self.last, None, None, note=f"no exported head for cut {decision.cut}")
        return decision

    def _head(self, cut_id: int) -> Callable[[Any], Any]:
        return self.heads.head(cut_id)

    def _model(self) -> Callable[[Any], Any]:
        return self.heads.head(self.last)

    def _give_back(self, inference: Inference, note: str) -> None:
        if inference.activation is None or not self.heads.has_tail(inference.cut):
            return self._whole(inference, "fallback", f"{note} (whole model on the device: no tail exported)")
        cut = inference.cut
        logits, ms, _ = self._on_device(lambda a: self.heads.run_tail(cut, a), inference.activation)
        inference.device_ms += ms
        self._finish(inference, logits, "fallback", note)
