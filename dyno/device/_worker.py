"""The device thread of the onnxruntime client: decide, run the head, encode, send; finish on the device.

The same protocol as ``dyno.runtime.device_worker`` (the torch device) with numpy arrays and exported
heads. An inference the cloud gives back finishes from its activation by the cut's exported tail when
the heads were exported with ``--tails``; otherwise by running the whole model from its input
(``where="fallback"``, the note says which).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from dyno import codec
from dyno.plan import Plan
from dyno.policy import SLO, Decision, Policy, State
from dyno.runtime.inflight import Inference, Telemetry
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.results import Result, top_k

__all__ = ["OrtDeviceWorker"]

_STOP, _FINISH, _START = -1, 0, 1


class OrtDeviceWorker:
    """See the module docstring; the interface of ``dyno.runtime.device_worker.DeviceWorker``."""

    def __init__(self, plan: Plan, heads: Any, policy: Policy, slo: SLO, *, telemetry: Telemetry,
                 deliver: Callable[[Inference, Result], None], device: Any = None, in_flight: int = 8,
                 top_k: int = 5, want_logits: bool = False):
        self.plan, self.heads, self.policy, self.slo = plan, heads, policy, slo
        self.plan_hash = plan.hash
        self.telemetry, self.device, self._deliver = telemetry, device, deliver
        self.in_flight, self.top_k, self.want_logits = in_flight, top_k, want_logits
        self.last = len(plan.cuts) - 1
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._cloud: Any = None
        self._thread = threading.Thread(target=self._run, name="dyno-device-ort", daemon=True)

    def start(self, cloud: Any) -> None:
        self._cloud = cloud
        self._thread.start()

    def stop(self) -> None:
        self._queue.put((_STOP, next(self._seq), None, ""))
        self._thread.join(10)

    def infer(self, inference: Inference) -> None:
        self._queue.put((_START, next(self._seq), inference, ""))

    def fall_back(self, inference: Inference, note: str) -> None:
        if not inference.future.done():
            self._queue.put((_FINISH, next(self._seq), inference, note))

    def decide(self) -> Decision:
        decision = self.policy.decide(State(self.plan, self.telemetry.estimates(), self.slo,
                                            self.telemetry.batch_hint(), self.in_flight))
        if not isinstance(decision, Decision):
            decision = Decision(decision.cut, decision.codec, decision.bits)
        if decision.codec is not None and not self.heads.has(decision.cut):  # a refused cut: not offered
            return Decision(self.last, None, None, note=f"no exported head for cut {decision.cut}")
        return decision

    def _run(self) -> None:
        while True:
            kind, _, inference, note = self._queue.get()
            if kind == _STOP:
                return
            try:
                if kind == _START:
                    self._start(inference)
                elif inference.activation is not None and self.heads.has_tail(inference.cut):
                    self._tail(inference, note)
                else:
                    self._whole(inference, "fallback", f"{note} (whole model on the device: no tail exported)")
            except Exception as error:
                if not inference.future.done():
                    inference.future.set_exception(error)

    def _on_device(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        if self.device is not None:
            return self.device.run(fn, *args)
        start = time.perf_counter()
        value = fn(*args)
        return value, (time.perf_counter() - start) * 1000

    def _start(self, inference: Inference) -> None:
        decision = inference.decision = self.decide()
        offload = decision.codec is not None and decision.cut != self.last
        if offload and not self._cloud.serves(decision.cut):
            self.telemetry.count("unavailable")
            return self._whole(inference, "fallback", "cloud unavailable")
        if not offload:
            return self._whole(inference, "device", decision.note)
        activation, head_ms = self._on_device(self.heads.head(decision.cut), inference.x)
        self.telemetry.record_device(decision.cut, head_ms)
        inference.activation = activation
        start = time.perf_counter()
        assert decision.codec is not None  # offloaded
        cut = self.plan.cuts[decision.cut]
        clip = next((o.clip for o in cut.options if o.codec == decision.codec and o.bits == decision.bits), None)
        encoded = codec.encode(np.asarray(activation, dtype=np.float32)[0], bits=decision.bits, mode=decision.codec,
                               nonnegative=cut.nonnegative, clip=clip)
        inference.device_ms = head_ms + (time.perf_counter() - start) * 1000
        inference.request = pb.Request(
            request_id=inference.index, model=self.plan.model, plan_hash=self.plan_hash, cut=decision.cut,
            meta=encoded.meta.to_bytes(), payload=bytes(encoded.payload), top_k=self.top_k,
            want_logits=self.want_logits)
        inference.nbytes = inference.request.ByteSize()
        self._cloud.send(inference)

    def _tail(self, inference: Inference, note: str) -> None:
        """The fallback from the activation already computed, by the cut's exported tail."""
        cut = inference.cut
        logits, ms = self._on_device(lambda a: self.heads.run_tail(cut, a), inference.activation)
        inference.device_ms += ms
        self._finish(inference, logits, "fallback", note)

    def _whole(self, inference: Inference, where: str, note: str) -> None:
        logits, ms = self._on_device(self.heads.head(self.last), inference.x)
        self.telemetry.record_device(self.last, ms)
        inference.device_ms += ms
        self._finish(inference, logits, where, note)

    def _finish(self, inference: Inference, logits: Any, where: str, note: str) -> None:
        vector = np.asarray(logits, dtype=np.float32).reshape(-1)
        classes, scores = top_k(vector, self.top_k)
        decision = inference.decision
        assert decision is not None
        sent = where == "fallback" and inference.request is not None and inference.written > 0
        packed = where != "device"
        self._deliver(inference, Result(
            index=inference.index, classes=classes, scores=scores, cut=decision.cut,
            codec=decision.codec if packed else None, bits=decision.bits if packed else None,
            where=where, latency_ms=(time.perf_counter() - inference.submitted) * 1000,
            device_ms=inference.device_ms, transfer_ms=inference.transfer_ms,
            bytes=inference.nbytes if sent else 0, logits=vector.copy() if self.want_logits else None,
            note=note, finished=time.perf_counter()))
