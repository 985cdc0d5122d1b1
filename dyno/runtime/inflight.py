"""What a client's two threads share: the record of one inference under way (``Inference``) and what the
client has seen so far (``Telemetry``: the monitors behind one lock, counters, recent server batch sizes
and recent connection errors), and this client's own share of the server's compute (``OwnShare``).

The device thread (``dyno.runtime.device_worker``) and the loop thread (``dyno.runtime.connection``)
both write to these; nothing here does I/O.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import statistics
import threading
import time
from typing import TYPE_CHECKING

from dyno.wire import on_the_wire

if TYPE_CHECKING:
    import asyncio

    import torch

    from dyno.monitor import Monitors
    from dyno.policy import Decision, Estimates
    from dyno.runtime.proto import inference_pb2 as pb

__all__ = ["Inference", "Telemetry", "WireClock"]

log = logging.getLogger("dyno.client")


class Inference:
    """One input on its way through the pipeline: filled by the device (decision, activation, frame),
    then by the connection (time on the link, when it was written, its reply timer)."""

    __slots__ = ("index", "x", "future", "submitted", "decision", "activation", "device_ms", "request",
                 "nbytes", "transfer_ms", "written", "timer")

    def __init__(self, index: int, x: torch.Tensor, future: concurrent.futures.Future):
        self.index, self.x, self.future = index, x, future
        self.submitted = time.perf_counter()
        self.decision: Decision | None = None
        self.activation: torch.Tensor | None = None
        self.device_ms = 0.0
        self.request: pb.Request | None = None
        self.nbytes = 0                       # the request's wire size
        self.transfer_ms = 0.0                # time on the uplink
        self.written = 0.0                    # perf_counter() when it went on the stream (0: never)
        self.timer: asyncio.TimerHandle | None = None

    @property
    def cut(self) -> int:
        assert self.decision is not None
        return self.decision.cut


class WireClock:
    """Time on the wire of each frame sent over a real network, from the client's clock alone.

    A reply tells how long the request spent at the server (queue + compute), so ``replied - server``
    is when it reached the server, plus the constant way back. Frames on one connection arrive in the
    order sent, so a frame written while the one before was still on the link started when that one
    arrived: its own transfer is the difference of the two arrivals (the ways back cancel). One written
    onto an idle link started when written, and took ``arrival - written - RTT``. So::

        transfer_i = arrival_i - max(written_i + rtt, arrival_(i-1))

    ``rtt`` is the least of a round trip without payload (``note_rtt``: the ``Describe`` call at
    connection) and the recent round trips of whole frames. Counting the wait behind earlier frames as
    transfer time (what ``replied - written - server`` does) reads a queue of 8 frames as a link 8 times
    slower. A reply read late (the client busy or throttled) makes its frame look slow and the next
    one fast by as much, below zero if need be: both are kept, so that they cancel in the estimator's
    window (``dyno.bandwidth``)."""

    def __init__(self) -> None:
        self.rtt_s: float | None = None
        self._last = float("-inf")
        self._recent: collections.deque[float] = collections.deque(maxlen=32)

    def note_rtt(self, seconds: float) -> None:
        if seconds > 0:
            self.rtt_s = seconds if self.rtt_s is None else min(self.rtt_s, seconds)

    def reset(self) -> None:
        """A new connection: no frame is ahead on the link."""
        self._last = float("-inf")

    def frame(self, written: float, replied: float, server_s: float) -> tuple[float | None, float]:
        """(transfer seconds or None when the sample says nothing, the round trip in seconds). A frame
        queued behind the one before can read zero or below: that one was read late, and looked slow
        by as much (``dyno.bandwidth``: the two cancel). One sent onto an idle link that reads faster
        than the least round trip says nothing."""
        arrival = replied - server_s
        self._recent.append(max(arrival - written, 0.0))
        rtt = min(self._recent) if self.rtt_s is None else min(self.rtt_s, min(self._recent))
        queued = self._last > written + rtt
        transfer = arrival - max(written + rtt, self._last)
        self._last = arrival     # not the latest so far: a late reading is then taken back by the next
        return (transfer if queued or transfer > 1e-6 else None), rtt


class Telemetry:
    """What one client has seen; safe to use from any thread.

    ``stats`` counts results by where they finished (``cloud``, ``device``, ``fallback``) and events
    (``unavailable``, ``connects``, ``reconnects``, ``reopened``, ``timeouts``, ``overloaded``), valid
    ``replies`` from the cloud and ``bad_replies``; ``errors`` keeps the last 16 distinct reasons the
    cloud could not be used, in words; ``batches`` the last 16 server batch sizes.
    """

    def __init__(self, monitors: Monitors):
        self.monitors = monitors
        self.stats: collections.Counter[str] = collections.Counter()
        self.errors: collections.deque[str] = collections.deque(maxlen=16)
        self.batches: collections.deque[int] = collections.deque(maxlen=16)
        self._batch_hint = 1
        self.wire = WireClock()
        self._monitor_lock = threading.Lock()
        self._stats_lock = threading.Lock()

    def estimates(self) -> Estimates:
        with self._monitor_lock:
            return self.monitors.estimates()

    def batch_hint(self) -> int:
        """The server's typical batch size lately (1 before any reply): kept up to date per reply, since
        every decision asks for it and a median per decision cost the device thread ~2% of a 1.5 ms model."""
        return self._batch_hint

    def record_device(self, cut_id: int, ms: float) -> None:
        with self._monitor_lock:
            self.monitors.record_device(cut_id, ms, at=time.perf_counter())   # the replies' clock

    def record_transfer(self, nbytes: int, seconds: float) -> None:
        with self._monitor_lock:
            self.monitors.record_transfer(nbytes, seconds)

    def record_reply(self, cut_id: int, reply: pb.Reply, *, at: float, decode_ms: float, rtt_ms: float,
                     wire: tuple[int, float] | None) -> None:
        """One (checked) reply: the server's compute, wait and headroom, the round trip, and (without an
        emulated link) the wire transfer ``(request bytes, seconds)``, counted with the framing and packet
        headers the link carried (``dyno.wire``), as the model prices it."""
        headroom = reply.headroom if reply.HasField("headroom") else None
        pressure = reply.pressure if reply.HasField("pressure") else 1.0
        with self._monitor_lock:
            self.monitors.record_reply(cut_id, reply.compute_ms, reply.batch, reply.queue_ms, headroom,
                                       pressure=pressure, at=at, decode_ms=decode_ms,
                                       cpu_ms=reply.cpu_ms if reply.HasField("cpu_ms") else None)
            self.monitors.record_rtt(rtt_ms)
            if wire is not None:
                self.monitors.record_transfer(float(on_the_wire(wire[0])), wire[1])
        self.batches.append(reply.batch)
        self._batch_hint = max(1, int(statistics.median(self.batches)))

    def count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def note_error(self, message: str) -> None:
        if not self.errors or self.errors[-1] != message:
            log.info("cloud unavailable: %s", message)
            self.errors.append(message)


