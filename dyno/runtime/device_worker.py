"""The device with torch: ``dyno.runtime.device_thread.DeviceThread`` running the heads, the whole
model and the fallback tails built by ``Splits``. An inference the cloud gives back finishes from the
activation already computed, by the tail of its cut."""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import numpy as np
import torch

from dyno.plan import Plan
from dyno.runtime.device_thread import Cloud, DeviceThread
from dyno.runtime.inflight import Inference
from dyno.runtime.splits import Splits

__all__ = ["Cloud", "DeviceWorker"]


class DeviceWorker(DeviceThread):
    """The device thread with torch heads and tails (arguments as ``DeviceThread``'s, and ``splits``)."""

    def __init__(self, plan: Plan, splits: Splits, *args: Any, **kwargs: Any):
        self.splits = splits
        super().__init__(plan, *args, **kwargs)

    def _head(self, cut_id: int) -> Callable[[Any], Any]:
        return self.splits.head(cut_id)

    def _model(self) -> Callable[[Any], Any]:
        return self.splits.model

    def _give_back(self, inference: Inference, note: str) -> None:
        """The fallback: the tail of the decided cut, on the device, from the activation."""
        logits, ms, _ = self._on_device(self.splits.tail(inference.cut), inference.activation)
        inference.device_ms += ms
        self._finish(inference, logits, "fallback", note)

    def _numpy(self, value: Any) -> np.ndarray:
        return value.detach().float().numpy()

    def _context(self) -> ContextManager[Any]:
        return torch.inference_mode()
