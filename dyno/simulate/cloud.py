"""The simulated cloud: one server with dynamic batching per cut and ``workers`` compute workers, as
``dyno.runtime`` runs it, on the plan's numbers.

- **Batching** (``dyno.runtime.batching`` with ``eager=True``): requests queue per cut; a free worker
  takes at once up to ``max_batch`` requests of the cut whose oldest request is oldest. A batch of b at
  cut c takes the sum of its requests' decode times plus ``tail(c, b)``, the plan's cloud profile
  interpolated linearly between the batch sizes it measured (per sample beyond the largest), times
  ``scale`` (the cloud tier: ``dyno.bench.reference``).
- **A cold worker** (``cold``): a worker idle for a while computes its next batch slower, by the
  multiplier ``cold`` gives for that idle time (``(idle ms, multiplier)`` points, interpolated, flat
  beyond the last). A CPU server asked rarely computes slower (caches, clocks): fmnist-resnet's cut-0
  tail on the 2-core development VM took 0.9-1.0 ms per request back to back and 1.4-1.8 ms 100 ms apart,
  which is what a device sending 10 requests a second finds. Empty (the default) leaves it out;
  ``dyno.bench.calibrate.server_warmth`` measures it for a run to compare with.
- **Refusals** (``dyno.runtime.admission`` and the batcher): a request whose estimated wait for compute
  exceeds ``ADMIT_SHARE`` of ``max_queue_ms`` is refused on arrival, and one that has waited
  ``max_queue_ms`` when its batch forms is refused rather than run.
- **What replies carry** (``dyno.runtime.server``): the batch's compute time and size, the request's
  wait, and ``ServerConfig.cloud_signal`` of the load - the share of the last ``CLOUD_WINDOW_S`` the
  workers were busy: headroom (worker-seconds per second left under ``target_utilisation``) and
  pressure (load / target, at least 1).

The cloud schedules its own events through ``push(time, kind, a, b)``: ``DONE`` when a batch ends and
``REPLY`` for each of its requests (``Reply``) half a round trip later.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import math
from typing import Callable

from dyno.errors import ConfigError
from dyno.monitor import CLOUD_WINDOW_S

__all__ = ["CloudConfig", "DEFAULT_CLOUD", "Request", "Reply", "SimCloud", "ADMIT_SHARE", "DONE", "REPLY"]

#: Admission refuses a request estimated to wait more than this share of ``max_queue_ms`` (as the runtime).
ADMIT_SHARE = 0.75
#: Event kinds the cloud pushes (the fleet engine dispatches on them).
DONE, REPLY = 2, 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class CloudConfig:
    """The simulated server: ``workers`` compute workers, batches of at most ``max_batch``, ``scale``
    times the plan's cloud profile, ``target_utilisation`` and ``max_queue_ms`` as ``ServerConfig``;
    ``overhead_ms`` of handling per request beyond its decode and tail (gRPC, checks, batching, the
    reply: what the runtime's replies report as ``cpu_ms`` beyond compute), on the worker of its batch;
    ``cold`` the slower first batch after idling (module docstring)."""

    workers: int = 1
    max_batch: int = 32
    scale: float = 1.0
    target_utilisation: float = 1.0
    max_queue_ms: float = 1000.0
    overhead_ms: float = 0.0
    cold: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.workers, int) and 1 <= self.workers <= 4096):
            raise ConfigError(f"cloud workers must be an int in 1..4096, got {self.workers!r}")
        if not (isinstance(self.max_batch, int) and 1 <= self.max_batch <= 4096):
            raise ConfigError(f"max_batch must be an int in 1..4096, got {self.max_batch!r}")
        if not self.scale > 0:
            raise ConfigError(f"the cloud's scale must be > 0, got {self.scale!r}")
        if not 0.05 <= self.target_utilisation <= 1.0:
            raise ConfigError(f"target_utilisation must be in 0.05..1, got {self.target_utilisation!r}")
        if not self.max_queue_ms > 0:
            raise ConfigError("max_queue_ms must be > 0")
        if not 0 <= self.overhead_ms < 1e4:
            raise ConfigError(f"the cloud's overhead_ms must be in 0..1e4, got {self.overhead_ms!r}")
        idle = [p[0] for p in self.cold]
        if not (all(len(p) == 2 and 0 <= p[0] < 1e7 and 1 <= p[1] <= 10 for p in self.cold)
                and idle == sorted(set(idle))):
            raise ConfigError(f"cold must be (idle ms, multiplier in 1..10) points, idle rising, got {self.cold!r}")

    def warmth(self, idle_s: float) -> float:
        """How many times slower a worker idle for ``idle_s`` seconds computes its next batch."""
        cold = self.cold
        if not cold:
            return 1.0
        idle_ms = idle_s * 1000.0
        k = bisect.bisect_right(cold, idle_ms, key=lambda point: point[0])
        if k == 0:
            return cold[0][1]
        if k == len(cold):
            return cold[-1][1]
        (x0, y0), (x1, y1) = cold[k - 1], cold[k]
        return y0 + (y1 - y0) * (idle_ms - x0) / (x1 - x0)

    def signal(self, load: float) -> tuple[float, float]:
        """(headroom, pressure) at ``load``, as ``ServerConfig.cloud_signal``."""
        target = self.target_utilisation
        return max(0.0, target - load) * self.workers, max(1.0, load / target)


DEFAULT_CLOUD = CloudConfig()


class Request:
    """One offloaded inference on its way through the cloud."""

    __slots__ = ("device", "row", "t0", "cut", "decode_s", "arrived")

    def __init__(self, device: int, row: int, t0: float, cut: int, decode_s: float) -> None:
        self.device, self.row, self.t0, self.cut, self.decode_s = device, row, t0, cut, decode_s
        self.arrived = 0.0


class Reply:
    """What the server tells a device about its request (``refused``: no compute, finish on the device)."""

    __slots__ = ("request", "compute_ms", "batch", "queue_ms", "headroom", "pressure", "refused", "cloud_s")

    def __init__(self, request: Request, compute_ms: float, batch: int, queue_ms: float, headroom: float,
                 pressure: float, refused: bool = False, cloud_s: float = 0.0) -> None:
        self.request, self.compute_ms, self.batch, self.queue_ms = request, compute_ms, batch, queue_ms
        self.headroom, self.pressure, self.refused, self.cloud_s = headroom, pressure, refused, cloud_s


def batch_times(cloud_ms: dict[int, float], max_batch: int, scale: float) -> list[float]:
    """Seconds for a batch of b = 0..max_batch at one cut: the profile interpolated linearly between
    measured sizes, per sample beyond the largest and below the smallest."""
    sizes = sorted(cloud_ms)
    out = [0.0]
    for b in range(1, max_batch + 1):
        k = bisect.bisect_left(sizes, b)
        if k < len(sizes) and sizes[k] == b:
            ms = cloud_ms[b]
        elif k == 0:
            ms = cloud_ms[sizes[0]] * b / sizes[0]
        elif k == len(sizes):
            ms = cloud_ms[sizes[-1]] * b / sizes[-1]
        else:
            lo, hi = sizes[k - 1], sizes[k]
            ms = cloud_ms[lo] + (cloud_ms[hi] - cloud_ms[lo]) * (b - lo) / (hi - lo)
        out.append(ms * scale / 1000.0)
    return out


class SimCloud:
    """The server (module docstring). ``push(time, kind, a, b)`` schedules the engine's events;
    ``half_rtt`` (seconds) separates a batch's end from its replies' arrival at the devices."""

    def __init__(self, cut_profiles: list[dict[int, float]], config: CloudConfig,
                 push: Callable[[float, int, object, object], None], half_rtt: float) -> None:
        self.config, self.push, self.half_rtt = config, push, half_rtt
        self.times = [batch_times(p, config.max_batch, config.scale) if p else [] for p in cut_profiles]
        self.queues: dict[int, collections.deque[Request]] = {}
        self.idle = list(range(config.workers))
        self.running: dict[int, tuple[float, float]] = {}   # worker -> (start, end) of its batch
        self.ended = [-math.inf] * config.workers             # when each worker's last batch ended
        self.spans: collections.deque[tuple[float, float]] = collections.deque()
        self.busy_in_window = 0.0
        self.busy_total = 0.0
        self.queued_s = 0.0                           # estimated compute of the queued requests
        self.per_sample: dict[int, float] = {}        # recent seconds per sample, per cut
        self.refused = self.batches = self.served = 0

    def arrive(self, request: Request, t: float) -> None:
        request.arrived = t
        cut = request.cut
        cost = self.per_sample.get(cut)
        if cost is None:
            cost = self.per_sample[cut] = self.times[cut][1] + request.decode_s
        wait = (self.queued_s + self._remaining(t)) / self.config.workers
        if wait * 1000.0 > ADMIT_SHARE * self.config.max_queue_ms:
            self._refuse(request, t)
            return
        self.queued_s += cost
        self.queues.setdefault(cut, collections.deque()).append(request)
        if self.idle:
            self._start(self.idle.pop(), t)

    def done(self, worker: int, t: float, batch: list[Request]) -> None:
        """A batch ended at ``t``: replies go out, the worker takes the next batch."""
        start = self.running.pop(worker)[0]
        self.ended[worker] = t
        self.spans.append((start, t))
        self.busy_in_window += t - start
        self.busy_total += t - start
        load = self.load(t)
        headroom, pressure = self.config.signal(load)
        b = len(batch)
        compute_s = t - start - self._handling_s(b)   # as the runtime: handling is not compute
        compute_ms = compute_s * 1000.0
        self.per_sample[batch[0].cut] = (t - start) / b
        share = compute_s / b                          # cloud-seconds: compute, as the server's counter
        arrive = t + self.half_rtt
        for request in batch:
            reply = Reply(request, compute_ms, b, (start - request.arrived) * 1000.0, headroom, pressure,
                          cloud_s=share)
            self.push(arrive, REPLY, request.device, reply)
        self.served += b
        self.batches += 1
        self._start(worker, t)

    def _handling_s(self, requests: int) -> float:
        return requests * self.config.overhead_ms / 1000.0

    def load(self, t: float) -> float:
        """Share of the last ``CLOUD_WINDOW_S`` the workers were busy (as ``LoadMeter``)."""
        horizon = t - CLOUD_WINDOW_S
        spans = self.spans
        while spans and spans[0][1] <= horizon:
            start, end = spans.popleft()
            self.busy_in_window -= end - start
        busy = self.busy_in_window
        if spans and spans[0][0] < horizon:
            busy -= horizon - spans[0][0]
        busy += sum(t - max(s, horizon) for s, _ in self.running.values())
        return min(1.0, max(busy, 0.0) / (CLOUD_WINDOW_S * self.config.workers))

    def _remaining(self, t: float) -> float:
        """Compute left in the batches running at ``t``."""
        return sum(end - t for _, end in self.running.values()) if self.running else 0.0

    def _start(self, worker: int, t: float) -> None:
        """Worker ``worker`` takes the oldest cut's queue (up to max_batch), or goes idle."""
        while True:
            best, oldest = None, None
            for cut, queue in self.queues.items():
                if queue and (oldest is None or queue[0].arrived < oldest):
                    best, oldest = cut, queue[0].arrived
            if best is None:
                self.idle.append(worker)
                return
            queue = self.queues[best]
            take = min(len(queue), self.config.max_batch)
            batch = [queue.popleft() for _ in range(take)]
            self.queued_s = max(0.0, self.queued_s - take * self.per_sample.get(best, 0.0))
            limit = self.config.max_queue_ms / 1000.0
            kept = []
            for request in batch:
                if t - request.arrived > limit:
                    self._refuse(request, t)
                else:
                    kept.append(request)
            if not kept:
                continue
            compute = (self.times[best][len(kept)] + sum(r.decode_s for r in kept)) * self.config.warmth(
                t - self.ended[worker])
            seconds = compute + self._handling_s(len(kept))
            self.running[worker] = (t, t + seconds)
            self.push(t + seconds, DONE, worker, kept)
            return

    def _refuse(self, request: Request, t: float) -> None:
        self.refused += 1
        headroom, pressure = self.config.signal(self.load(t))
        self.push(t + self.half_rtt, REPLY, request.device,
                  Reply(request, 0.0, 1, (t - request.arrived) * 1000.0, headroom, pressure, refused=True))
