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
moment (updates are applied in time order, never early):

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
from dyno.policy.base import SLO, Estimates, Policy, State
from dyno.policy.model import PerfModel

__all__ = ["SimConfig", "SimResult", "simulate_policy", "FEEDS"]

FEEDS = ("own", "probe", "oracle")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Simulation settings. ``duration_s`` None = one period of the trace."""

    slowdown: float
    duration_s: float | None = None
    rtt_ms: float = 40.0
    batch: int = 1
    max_inflight: int = 8
    server_load: float = 0.0
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
        if self.rtt_ms < 0 or not 0 <= self.server_load < 1:
            raise ConfigError("rtt must be >= 0 and server load in [0, 1)")


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


def simulate_policy(policy: Policy, model: PerfModel, trace: Trace, slo: SLO, config: SimConfig, *,
                    feed: str = "own") -> SimResult:
    """Run ``policy`` over ``trace`` and return what happened (see the module docstring)."""
    if feed not in FEEDS:
        raise ConfigError(f"unknown estimate feed {feed!r}; known: {', '.join(FEEDS)}")
    plan = model.plan
    policy.reset()
    kd = config.slowdown
    duration = trace.period if config.duration_s is None else config.duration_s
    rtt_s = config.rtt_ms / 1000.0
    half_rtt = rtt_s / 2.0
    load_scale = 1.0 / (1.0 - config.server_load)
    batch = config.batch
    cloud_ps = model.cloud_ps(batch).tolist()
    monitors = Monitors(plan, initial_bandwidth_bps=config.initial_bandwidth_bps, window=config.window,
                        initial_rtt_ms=config.rtt_ms, initial_slowdown=kd)
    true_server = dict(rtt_ms=config.rtt_ms, device_slowdown=kd, server_load=config.server_load)

    # pending monitor updates: (time, seq, kind, a, b)
    pending: list[tuple[float, int, str, float, float]] = []
    seq = 0
    inflight: list[float] = []   # answer times of started, unanswered inferences (a heap)
    device_free = link_free = cloud_free = 0.0
    latencies: list[float] = []
    bytes_total = accuracy_sum = cloud_s_total = 0.0
    offloaded = violations = 0
    probe_bw: float | None = None
    next_probe = 0.0
    last_est: Estimates | None = None
    last_row = -1
    timeline: dict[str, list] | None = ({"t": [], "cut": [], "bits": [], "codec": [], "bw_est": []}
                                        if config.timeline else None)
    t = 0.0
    end = 0.0
    index = model.index
    rows = model.rows
    while True:
        t = device_free
        while inflight and inflight[0] <= t:
            heapq.heappop(inflight)
        if len(inflight) >= config.max_inflight:
            t = heapq.heappop(inflight)   # the earliest answer frees a slot
            while inflight and inflight[0] <= t:
                heapq.heappop(inflight)
        if t >= duration:
            break
        # ------------------------------------------------------------ estimates at time t
        if feed == "own":
            while pending and pending[0][0] <= t:
                _, _, kind, a, b = heapq.heappop(pending)
                if kind == "x":
                    monitors.record_transfer(a, b)
                elif kind == "d":
                    monitors.record_device(int(a), b)
                else:
                    monitors.record_server(int(a), b, config.server_load, batch)
                    monitors.record_rtt(config.rtt_ms)
            est = monitors.estimates()
        elif feed == "probe":
            if probe_bw is None or (config.probe_every_s is not None and t >= next_probe):
                probe_t = t
                probe_bw = 8.0 * config.probe_bytes / trace.transfer_time(config.probe_bytes, probe_t)
                next_probe = probe_t + (config.probe_every_s or math.inf)
                est = Estimates(bandwidth_bps=probe_bw, rtt_ms=config.rtt_ms, device_slowdown=kd)
            else:
                est = last_est  # type: ignore[assignment]
        else:
            start = max(t, link_free)
            est = Estimates(bandwidth_bps=trace.mean_rate(start, start + config.oracle_horizon_s),
                            **true_server)
        # ------------------------------------------------------------ decide
        if policy.pure and last_row >= 0 and (est is last_est or est == last_est):
            i = last_row
        else:
            d = policy.decide(State(plan, est, slo, batch, config.max_inflight))
            i = index[(d.cut, d.codec, d.bits)]
        last_est, last_row = est, i
        row = rows[i]
        # ------------------------------------------------------------ run it
        head_ms = kd * row.device_ms
        dev_end = t + (head_ms + row.encode_ms) / 1000.0
        device_free = dev_end
        if row.device_ms > 0:
            heapq.heappush(pending, (dev_end, seq, "d", row.cut, head_ms))
            seq += 1
        if row.codec is None:
            done = dev_end
            cloud_s = 0.0
        else:
            link_start = max(dev_end, link_free)
            seconds = trace.transfer_time(row.bytes, link_start)
            link_free = link_start + seconds
            heapq.heappush(pending, (link_free, seq, "x", row.bytes, seconds))
            seq += 1
            server_ms = cloud_ps[i]
            cloud_start = max(link_free + half_rtt, cloud_free)
            cloud_free = cloud_start + (row.decode_ms + server_ms * load_scale) / 1000.0
            done = cloud_free + half_rtt
            heapq.heappush(pending, (done, seq, "s", row.cut, server_ms * batch))
            seq += 1
            bytes_total += row.bytes
            offloaded += 1
            cloud_s = (row.decode_ms + server_ms) / 1000.0
        heapq.heappush(inflight, done)
        end = max(end, done)
        latency_ms = (done - t) * 1000.0
        latencies.append(latency_ms)
        accuracy_sum += row.accuracy
        cloud_s_total += cloud_s
        if _violates(slo, latency_ms, (plan.accuracy_fp32 - row.accuracy) * 100.0, row.bytes):
            violations += 1
        if timeline is not None:
            timeline["t"].append(t)
            timeline["cut"].append(row.cut)
            timeline["bits"].append(-1 if row.bits is None else row.bits)
            timeline["codec"].append(row.codec)
            timeline["bw_est"].append(est.bandwidth_bps)
    return SimResult(policy=policy.name, trace=trace.name, inferences=len(latencies), makespan_s=end,
                     latencies_ms=np.asarray(latencies), bytes_total=bytes_total, offloaded=offloaded,
                     accuracy_sum=accuracy_sum, cloud_s_total=cloud_s_total, violations=violations,
                     timeline=timeline)
