"""Uplink emulation: an in-process rate limiter under the device client's send path, replaying a trace.

The link is a FIFO that carries one frame at a time at the trace's rate (a token bucket of one frame's
depth): a frame of n bytes handed over at time t starts when the previous frame has left,
``start = max(t, busy_until)``, and takes ``trace.transfer_time(n, start)`` seconds, integrating a rate
that may change during the transfer. A fixed one-way ``latency_ms`` can be added on top. Time is the
link's own clock, zero at ``start()`` (or the first send), so every run replays the trace from its
beginning: deterministic, and the same for every compared system.

``trace`` is anything with ``rate_bps(t)`` and ``transfer_time(nbytes, start_t)`` (seconds), e.g. a
``dyno.emulate.traces.Trace``.

    link = Link(trace)
    transfer = link.reserve(len(frame))      # booked behind the frames before it; it has crossed
                                             # at transfer.end (link time; link.now() is now)
    transfer = await link.send(len(frame))   # or: book it and sleep until it has crossed
    transfer.seconds                          # what the device measures for its bandwidth estimate
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Callable, Protocol

from dyno.errors import ConfigError

__all__ = ["RateSource", "Transfer", "Link"]


class RateSource(Protocol):
    def rate_bps(self, t: float) -> float: ...

    def transfer_time(self, nbytes: int, start_t: float) -> float: ...


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One frame on the link, in link time (seconds since the link started)."""

    nbytes: int
    queued: float   # when it was handed to the link
    start: float    # when its first byte left
    end: float      # when its last byte arrived (latency included)

    @property
    def seconds(self) -> float:
        """Time on the link itself (serialisation + latency), without the wait behind earlier frames."""
        return self.end - self.start

    @property
    def waited(self) -> float:
        return self.start - self.queued


class Link:
    """An emulated uplink replaying ``trace`` (see the module docstring). Thread-safe."""

    def __init__(self, trace: RateSource, *, latency_ms: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        if not (hasattr(trace, "rate_bps") and hasattr(trace, "transfer_time")):
            raise ConfigError("a link needs a trace with rate_bps(t) and transfer_time(nbytes, t)")
        if not latency_ms >= 0:
            raise ConfigError(f"link latency must be >= 0 ms, got {latency_ms!r}")
        self.trace = trace
        self.latency = latency_ms / 1000
        self._clock = clock
        self._t0: float | None = None
        self._busy_until = 0.0
        self._lock = threading.Lock()
        self.sent_bytes = 0
        self.frames = 0

    def start(self) -> None:
        """Start (or restart) the trace's clock now; the link is idle."""
        with self._lock:
            self._t0 = self._clock()
            self._busy_until = 0.0

    def now(self) -> float:
        """Seconds of link time (0 before the first start or send)."""
        if self._t0 is None:
            return 0.0
        return self._clock() - self._t0

    def rate_bps(self, t: float | None = None) -> float:
        """The trace's rate at link time ``t`` (default: now)."""
        return float(self.trace.rate_bps(self.now() if t is None else t))

    def reserve(self, nbytes: int) -> Transfer:
        """Book the link for one frame; returns when it will have arrived (link time)."""
        if nbytes < 0:
            raise ConfigError("a frame has a non-negative size")
        with self._lock:
            if self._t0 is None:
                self._t0 = self._clock()
            queued = self._clock() - self._t0
            start = max(queued, self._busy_until)
            seconds = float(self.trace.transfer_time(int(nbytes), start))
            self._busy_until = start + seconds
            self.sent_bytes += int(nbytes)
            self.frames += 1
            return Transfer(int(nbytes), queued, start, start + seconds + self.latency)

    async def send(self, nbytes: int) -> Transfer:
        """Carry one frame: wait (asynchronously) until it has crossed the link."""
        transfer = self.reserve(nbytes)
        delay = transfer.end - self.now()
        if delay > 0:
            await asyncio.sleep(delay)
        return transfer

    def send_blocking(self, nbytes: int) -> Transfer:
        transfer = self.reserve(nbytes)
        delay = transfer.end - self.now()
        if delay > 0:
            time.sleep(delay)
        return transfer

    def __repr__(self) -> str:
        return f"Link({self.trace!r}, latency_ms={self.latency * 1000:g})"
