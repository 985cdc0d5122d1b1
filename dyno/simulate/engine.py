"""Discrete-event simulation of one policy streaming inferences over one trace.

The pipeline has three FIFO stages, each serving one inference at a time:

    device (k_d * device_ms + encode_ms) -> link (trace.transfer_time(bytes, start)) -> cloud (decode_ms + S)

with ``RTT/2`` between link and cloud and again for the reply. Inferences are generated as fast as
the pipeline admits them, with at most ``max_inflight`` inferences started and not yet answered (the
client's request window); inference i starts on the device at ``max(device free, the answer of
inference i - max_inflight)``. Latency is answer time minus start time. Device-only inferences leave
the pipeline when the device finishes. Inferences are started during ``[0, duration)``; throughput is
their number divided by the time the last one is answered.

The policy decides at each start, on estimates fed only by what a real device would know at that
moment (updates are applied in time order, never early), from the source its ``feed`` names:

- ``"own"`` (DynO, SPINN-style, JALAD-style, fixed baselines): ``dyno.monitor.Monitors`` fed by the
  simulated transfers (bytes, link seconds) when each transfer ends, the head times when the device
  finishes, and the server time, load and RTT when each reply arrives. Initial bandwidth
  ``initial_bandwidth_bps``; the initial device slowdown is the tier's (known from the device profile).
- ``"probe"`` (Neurosurgeon): bandwidth from a probe of ``probe_bytes`` timed on the trace at t = 0 and
  every ``probe_every_s`` (None: only at start); probe traffic is not charged to the link (in
  Neurosurgeon's favour). Slowdown from the offline device profile (the tier), profiled server times.
- ``"oracle"`` (the hindsight oracle for regret): the *true* mean rate of the trace over the next
  ``oracle_horizon_s`` from when the link will be free, true slowdown and server time.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Any

import numpy as np

from dyno.emulate.traces import Trace
from dyno.errors import ConfigError
from dyno.monitor import Monitors
from dyno.policy import FEEDS, SLO, DynoPolicy, Estimates, Policy, State
from dyno.policy.model import PerfModel, Row

__all__ = ["SimConfig", "SimResult", "simulate_policy", "OracleDyno"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Simulation settings. ``duration_s`` None = one period of the trace."""

    slowdown: float
    duration_s: float | None = None
    rtt_ms: float = 40.0
    batch: int = 1
    max_inflight: int = 8
    initial_bandwidth_bps: float = 1e6
    window: int = 8
    probe_bytes: int = 64_000
    probe_every_s: float | None = 30.0
    oracle_horizon_s: float = 1.0
    timeline: bool = False

    def __post_init__(self) -> None:
        if not (self.slowdown > 0 and math.isfinite(self.slowdown)):
            raise ConfigError(f"device slowdown must be > 0, got {self.slowdown!r}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError("duration must be > 0 seconds")
        if self.max_inflight < 1 or self.batch < 1:
            raise ConfigError("max_inflight and batch must be >= 1")
        if self.rtt_ms < 0:
            raise ConfigError("rtt must be >= 0")


@dataclasses.dataclass
class SimResult:
    """One policy on one trace. ``timeline`` (if asked for) holds per-inference start times, cuts and
    bits (-1 for none) and the bandwidth estimate the policy decided on."""

    policy: str
    trace: str
    inferences: int
    makespan_s: float
    latencies_ms: np.ndarray
    bytes_total: float
    offloaded: int
    accuracy_sum: float
    cloud_s_total: float
    violations: int
    timeline: dict[str, list] | None = None

    @property
    def throughput(self) -> float:
        return self.inferences / self.makespan_s if self.makespan_s > 0 else 0.0

    def metrics(self) -> dict[str, Any]:
        n = max(self.inferences, 1)
        lat = self.latencies_ms
        return {
            "throughput": self.throughput,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
            "bytes_mean": self.bytes_total / n,
            "bytes_per_offloaded": self.bytes_total / self.offloaded if self.offloaded else 0.0,
            "offloaded_share": self.offloaded / n,
            "accuracy": self.accuracy_sum / n,
            "cloud_s": self.cloud_s_total / n,
            "violations": self.violations,
            "inferences": self.inferences,
        }


def _violates(slo: SLO, latency_ms: float, drop_points: float, nbytes: float) -> bool:
    return ((slo.max_latency_ms is not None and latency_ms > slo.max_latency_ms)
            or (slo.max_accuracy_drop is not None and drop_points > slo.max_accuracy_drop + 1e-9)
            or (slo.max_bytes is not None and nbytes > slo.max_bytes))


class _Feed:
    """The estimates a policy decides on at time ``t``, from its ``feed`` (see the module docstring).

    Monitor updates are queued with the time they become known and applied in time order, never early."""

    def __init__(self, feed: str, plan, trace: Trace, config: SimConfig) -> None:
        if feed not in FEEDS:
            raise ConfigError(f"unknown estimate feed {feed!r}; known: {', '.join(FEEDS)}")
        self.feed, self.trace, self.config = feed, trace, config
        self.monitors = Monitors(plan, initial_bandwidth_bps=config.initial_bandwidth_bps, window=config.window,
                                 initial_rtt_ms=config.rtt_ms, initial_slowdown=config.slowdown)
        self.pending: list[tuple[float, int, str, tuple]] = []   # (time, seq, kind, what was observed)
        self._seq = 0
        self._probe: Estimates | None = None
        self._next_probe = 0.0

    def later(self, when: float, kind: str, *observed: float) -> None:
        """An observation the device makes at ``when``: a transfer, a head time, a reply."""
        heapq.heappush(self.pending, (when, self._seq, kind, observed))
        self._seq += 1

    def at(self, t: float, link_free: float) -> Estimates:
        if self.feed == "own":
            return self._own(t)
        if self.feed == "probe":
            return self._probed(t)
        start = max(t, link_free)
        c = self.config
        return Estimates(bandwidth_bps=self.trace.mean_rate(start, start + c.oracle_horizon_s),
                         rtt_ms=c.rtt_ms, device_slowdown=c.slowdown)

    def _own(self, t: float) -> Estimates:
        monitors, pending, c = self.monitors, self.pending, self.config
        while pending and pending[0][0] <= t:
            when, _, kind, observed = heapq.heappop(pending)
            if kind == "x":
                monitors.record_transfer(*observed)
            elif kind == "d":
                monitors.record_device(int(observed[0]), observed[1])
            else:  # a reply; this device is the cloud's only client, so no headroom is reported
                cut, compute_ms, queue_ms, decode_ms = observed
                monitors.record_reply(int(cut), compute_ms, c.batch, queue_ms, None, at=when, decode_ms=decode_ms)
                monitors.record_rtt(c.rtt_ms)
        return monitors.estimates()

    def _probed(self, t: float) -> Estimates:
        c = self.config
        if self._probe is None or (c.probe_every_s is not None and t >= self._next_probe):
            bandwidth = 8.0 * c.probe_bytes / self.trace.transfer_time(c.probe_bytes, t)
            self._next_probe = t + (c.probe_every_s or math.inf)
            self._probe = Estimates(bandwidth_bps=bandwidth, rtt_ms=c.rtt_ms, device_slowdown=c.slowdown)
        return self._probe


class _Tally:
    """What happened to the inferences started so far."""

    def __init__(self, timeline: bool) -> None:
        self.latencies: list[float] = []
        self.bytes_total = self.accuracy_sum = self.cloud_s_total = 0.0
        self.offloaded = self.violations = 0
        self.end = 0.0
        self.timeline: dict[str, list] | None = ({"t": [], "cut": [], "bits": [], "codec": [], "bw_est": []}
                                                 if timeline else None)

    def add(self, t: float, done: float, row: Row, cloud_s: float, violated: bool, estimate_bps: float) -> None:
        self.end = max(self.end, done)
        self.latencies.append((done - t) * 1000.0)
        self.accuracy_sum += row.accuracy
        self.cloud_s_total += cloud_s
        self.violations += violated
        if row.offloaded:
            self.bytes_total += row.bytes
            self.offloaded += 1
        if self.timeline is not None:
            for key, value in (("t", t), ("cut", row.cut), ("bits", -1 if row.bits is None else row.bits),
                               ("codec", row.codec), ("bw_est", estimate_bps)):
                self.timeline[key].append(value)


class _Pipeline:
    """The three FIFO stages (device, link, cloud), each serving one inference at a time."""

    def __init__(self, model: PerfModel, trace: Trace, config: SimConfig, feed: _Feed) -> None:
        self.trace, self.config, self.feed = trace, config, feed
        self.cloud_ps = model.cloud_ps(config.batch).tolist()
        self.half_rtt = config.rtt_ms / 2000.0
        self.device_free = self.link_free = self.cloud_free = 0.0

    def run(self, i: int, row: Row, t: float) -> tuple[float, float]:
        """Start ``row`` (row index ``i``) on the device at ``t``: (answer time, cloud seconds)."""
        head_ms = self.config.slowdown * row.device_ms
        dev_end = t + (head_ms + row.encode_ms) / 1000.0
        self.device_free = dev_end
        if row.device_ms > 0:
            self.feed.later(dev_end, "d", row.cut, head_ms)
        if row.codec is None:
            return dev_end, 0.0
        link_start = max(dev_end, self.link_free)
        seconds = self.trace.transfer_time(row.bytes, link_start)
        self.link_free = link_start + seconds
        self.feed.later(self.link_free, "x", row.bytes, seconds)
        server_ms = self.cloud_ps[i]
        arrival = self.link_free + self.half_rtt
        cloud_start = max(arrival, self.cloud_free)
        self.cloud_free = cloud_start + (row.decode_ms + server_ms) / 1000.0
        done = self.cloud_free + self.half_rtt
        self.feed.later(done, "s", row.cut, server_ms * self.config.batch, (cloud_start - arrival) * 1000.0,
                        row.decode_ms)
        return done, (row.decode_ms + server_ms) / 1000.0


def _next_start(device_free: float, inflight: list[float], window: int) -> float:
    """When the next inference can start: the device is free and the request window has a slot."""
    t = device_free
    while inflight and inflight[0] <= t:
        heapq.heappop(inflight)
    if len(inflight) >= window:
        t = heapq.heappop(inflight)   # the earliest answer frees a slot
        while inflight and inflight[0] <= t:
            heapq.heappop(inflight)
    return t


def simulate_policy(policy: Policy, model: PerfModel, trace: Trace, slo: SLO, config: SimConfig) -> SimResult:
    """Run ``policy`` over ``trace`` and return what happened (see the module docstring); its estimates
    come from its ``feed``."""
    plan = model.plan
    policy.reset()
    duration = trace.period if config.duration_s is None else config.duration_s
    feed = _Feed(policy.feed, plan, trace, config)
    pipeline = _Pipeline(model, trace, config, feed)
    tally = _Tally(config.timeline)
    inflight: list[float] = []   # answer times of started, unanswered inferences (a heap)
    last_est: Estimates | None = None
    last_row = -1
    while (t := _next_start(pipeline.device_free, inflight, config.max_inflight)) < duration:
        est = feed.at(t, pipeline.link_free)
        if policy.pure and last_row >= 0 and (est is last_est or est == last_est):
            i = last_row
        else:
            d = policy.decide(State(plan, est, slo, config.batch, config.max_inflight))
            i = model.index[(d.cut, d.codec, d.bits)]
        last_est, last_row = est, i
        row = model.rows[i]
        done, cloud_s = pipeline.run(i, row, t)
        heapq.heappush(inflight, done)
        latency_ms = (done - t) * 1000.0
        violated = _violates(slo, latency_ms, (plan.accuracy_fp32 - row.accuracy) * 100.0, row.bytes)
        tally.add(t, done, row, cloud_s, violated, est.bandwidth_bps)
    return SimResult(policy=policy.name, trace=trace.name, inferences=len(tally.latencies), makespan_s=tally.end,
                     latencies_ms=np.asarray(tally.latencies), bytes_total=tally.bytes_total,
                     offloaded=tally.offloaded, accuracy_sum=tally.accuracy_sum, cloud_s_total=tally.cloud_s_total,
                     violations=tally.violations, timeline=tally.timeline)


class OracleDyno(DynoPolicy):
    """The hindsight oracle: DynO's rule, no hysteresis or probing, fed the trace's true future rate."""

    name = "oracle"
    feed = "oracle"

    def __init__(self) -> None:
        super().__init__(margin=0.0, probe_every=0)
