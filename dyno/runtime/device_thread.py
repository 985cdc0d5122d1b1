"""The device's thread, whatever runs its heads: decide, run the head, encode, send; finish on the
device whatever the cloud does not.

Per input the policy decides (cut, codec, bits) from the client's estimates. When that means the cloud
and the cloud serves the cut, the head runs (through the emulated ``Device`` if given), the activation
is encoded and the frame goes to the cloud connection. Encoding runs at this machine's speed: only the
head is the emulated device's work (the performance model prices k_d * T_dev(c) + T_enc, with T_enc as
measured). Otherwise the whole model runs here: ``where="device"`` when the policy chose it,
``"fallback"`` when the cloud is away.

Inferences the cloud gives back (:meth:`DeviceThread.fall_back`: refused, timed out, stream broken)
finish here, before any new input, so an outage drains rather than piles up.

This part imports no torch: ``dyno.runtime.device_worker.DeviceWorker`` runs torch heads and tails,
``dyno.device.OrtDeviceWorker`` exported heads by onnxruntime; each says how a head, the whole model and
a given-back inference run, and how their outputs become numpy arrays.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from typing import Any, Callable, ContextManager, Protocol

import numpy as np

from dyno import codec
from dyno.plan import Plan
from dyno.policy import SLO, Decision, Policy, State
from dyno.runtime.inflight import Inference, Telemetry
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.results import Result, top_k

__all__ = ["Cloud", "DeviceThread"]

#: Runs of each head on the device thread that are not timed into the estimates (``_record_device``).
WARM_RUNS = 2

# queue priorities: stop first, then inferences given back by the cloud, then new inputs
_STOP, _FINISH, _START = -1, 0, 1


class Cloud(Protocol):
    """Where offloaded frames go (``dyno.runtime.connection.CloudConnection``)."""

    def serves(self, cut_id: int) -> bool:
        """Connected, and the server serves this cut."""
        ...

    def send(self, inference: Inference) -> None:
        """Hand a framed inference to the uplink (any thread)."""
        ...


class DeviceThread:
    """The device thread (see the module docstring). ``deliver(inference, result)`` is called with
    every result it makes; ``device`` (``dyno.emulate.device.Device``) slows the device's work."""

    thread_name = "dyno-device"

    def __init__(self, plan: Plan, policy: Policy, slo: SLO, *, telemetry: Telemetry,
                 deliver: Callable[[Inference, Result], None], device: Any = None, in_flight: int = 8,
                 top_k: int = 5, want_logits: bool = False):
        self.plan, self.policy, self.slo = plan, policy, slo
        self.plan_hash = plan.hash  # computed once: hashing a plan serialises it
        self.telemetry, self.device, self._deliver = telemetry, device, deliver
        self.in_flight, self.top_k, self.want_logits = in_flight, top_k, want_logits
        self.last = len(plan.cuts) - 1
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._cloud: Cloud | None = None
        self._runs: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    # ------------------------------------------------------------------------------ what a backend says

    def _head(self, cut_id: int) -> Callable[[Any], Any]:
        """The head to ``cut_id``: input batch -> activation batch."""
        raise NotImplementedError

    def _model(self) -> Callable[[Any], Any]:
        """The whole model: input batch -> logits."""
        raise NotImplementedError

    def _give_back(self, inference: Inference, note: str) -> None:
        """Finish an inference the cloud gave back (``_finish(..., "fallback", note)``)."""
        raise NotImplementedError

    def _numpy(self, value: Any) -> np.ndarray:
        """An activation or logits as a float32 numpy array."""
        return np.asarray(value, dtype=np.float32)

    def _context(self) -> ContextManager[Any]:
        """Entered around each piece of work on the thread."""
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------ the interface

    def start(self, cloud: Cloud) -> None:
        """Start the thread; offloaded frames go to ``cloud``."""
        self._cloud = cloud
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread once the work already queued before this call has run."""
        self._queue.put((_STOP, next(self._seq), None, ""))
        self._thread.join(10)

    def infer(self, inference: Inference) -> None:
        """Queue a new input (any thread)."""
        self._queue.put((_START, next(self._seq), inference, ""))

    def fall_back(self, inference: Inference, note: str) -> None:
        """Finish ``inference`` on the device, before new inputs (any thread)."""
        if not inference.future.done():
            self._queue.put((_FINISH, next(self._seq), inference, note))

    def decide(self) -> Decision:
        decision = self.policy.decide(State(self.plan, self.telemetry.estimates(), self.slo,
                                            self.telemetry.batch_hint(), self.in_flight))
        return decision if isinstance(decision, Decision) else Decision(decision.cut, decision.codec,
                                                                       decision.bits)

    # ------------------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            kind, _, inference, note = self._queue.get()
            if kind == _STOP:
                return
            try:
                with self._context():
                    if kind == _START:
                        self._start(inference)
                    else:
                        self._give_back(inference, note)
            except Exception as error:  # a bug or a bad input: the caller sees it on its future
                if not inference.future.done():
                    inference.future.set_exception(error)

    def _on_device(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
        """(value, ms, the device's own ms for the estimates: ``Device.timed``; a device that has only
        ``run`` gives its ms for both)."""
        if self.device is not None:
            timed = getattr(self.device, "timed", None)
            if timed is not None:
                return timed(fn, *args)
            value, ms = self.device.run(fn, *args)
            return value, ms, ms
        start = time.perf_counter()
        value = fn(*args)
        ms = (time.perf_counter() - start) * 1000
        return value, ms, ms

    def _start(self, inference: Inference) -> None:
        decision = inference.decision = self.decide()
        offload = decision.codec is not None and decision.cut != self.last
        assert self._cloud is not None
        if offload and not self._cloud.serves(decision.cut):
            # the cloud is away (or does not serve this cut): all of it on the device, at once
            self.telemetry.count("unavailable")
            return self._whole(inference, "fallback", "cloud unavailable")
        if not offload:
            return self._whole(inference, "device", decision.note)
        activation, head_ms, own_ms = self._on_device(self._head(decision.cut), inference.x)
        self._record_device(decision.cut, own_ms)
        inference.activation = activation
        start = time.perf_counter()
        encoded = self._encode(activation, decision)
        inference.device_ms = head_ms + (time.perf_counter() - start) * 1000
        inference.request = pb.Request(
            request_id=inference.index, model=self.plan.model, plan_hash=self.plan_hash, cut=decision.cut,
            meta=encoded.meta.to_bytes(), payload=bytes(encoded.payload), top_k=self.top_k,
            want_logits=self.want_logits)
        inference.nbytes = inference.request.ByteSize()
        self._cloud.send(inference)

    def _encode(self, activation: Any, decision: Decision) -> codec.Encoded:
        """``activation`` packed as ``decision`` says (with the plan's clip range for it, if any)."""
        assert decision.codec is not None  # offloaded
        cut = self.plan.cuts[decision.cut]
        clip = next((o.clip for o in cut.options if o.codec == decision.codec and o.bits == decision.bits),
                    None)
        return codec.encode(self._numpy(activation)[0], bits=decision.bits, mode=decision.codec,
                            nonnegative=cut.nonnegative, clip=clip)

    def _record_device(self, cut_id: int, ms: float) -> None:
        """A head's time for the estimates, except its first ``WARM_RUNS`` on this thread: those pay
        one-off costs (allocations, oneDNN's per-thread primitive caches; fmnist-resnet's first whole
        runs took 2-4x the later ones), and a device that believed them sent its work to the cloud."""
        runs = self._runs[cut_id] = self._runs.get(cut_id, 0) + 1
        if runs > WARM_RUNS:
            self.telemetry.record_device(cut_id, ms)

    def _whole(self, inference: Inference, where: str, note: str) -> None:
        logits, ms, own_ms = self._on_device(self._model(), inference.x)
        self._record_device(self.last, own_ms)
        inference.device_ms += ms
        self._finish(inference, logits, where, note)

    def _finish(self, inference: Inference, logits: Any, where: str, note: str) -> None:
        vector = self._numpy(logits).reshape(-1)
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
