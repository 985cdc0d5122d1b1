"""The single-device simulator: one policy streaming inferences over one trace, through the very policy
code the device client runs. It is the fleet simulator (``dyno.simulate.fleet``) with one device and a
closed loop: inferences start as fast as the device and the request window (``max_inflight``) admit,
during ``[0, duration)``; throughput is their number divided by the time the last one is answered.

The pipeline is device (k_d * device_ms + codec_slowdown * encode_ms) -> link (trace.transfer_time) -> RTT/2 -> the
batching cloud (``dyno.simulate.cloud``: ``cloud.scale`` times the plan's cloud profile, its replies'
headroom and pressure fed to the device's monitors) -> RTT/2. The policy decides at each start on
estimates from its ``feed``: ``"own"`` (every real system): ``dyno.monitor.Monitors`` fed by what the
device has observed by then (its transfers, head times, the server's replies), initial bandwidth
``initial_bandwidth_bps``, initial slowdown the tier's and initial server factor the cloud's scale;
``"oracle"`` (the hindsight oracle for regret): the true mean rate of the trace over the next
``oracle_horizon_s`` from when the link will be free, true slowdown and server time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from dyno.emulate.traces import Trace
from dyno.errors import ConfigError
from dyno.policy import SLO, DynoPolicy, Policy
from dyno.policy.model import PerfModel
from dyno.simulate.cloud import DEFAULT_CLOUD, CloudConfig
from dyno.simulate.fleet import DeviceSpec, DeviceTally, FleetConfig, run_fleet

__all__ = ["SimConfig", "SimResult", "simulate_policy", "OracleDyno", "result_of"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Simulation settings. ``duration_s`` None = one period of the trace; ``batch`` the batch size the
    policy expects before any reply says otherwise; ``cloud`` the simulated server; ``overhead_ms`` /
    ``local_overhead_ms`` the client's own work per offloaded / device-only inference; ``codec_slowdown``
    the device's encoding against the plan's (``Estimates.codec_slowdown``)."""

    slowdown: float
    codec_slowdown: float = 1.0
    duration_s: float | None = None
    rtt_ms: float = 40.0
    batch: int = 1
    max_inflight: int = 8
    initial_bandwidth_bps: float = 1e6
    window: int = 8
    oracle_horizon_s: float = 1.0
    overhead_ms: float = 0.0
    local_overhead_ms: float = 0.0
    timeline: bool = False
    cloud: CloudConfig = DEFAULT_CLOUD

    def __post_init__(self) -> None:
        if not (self.slowdown > 0 and math.isfinite(self.slowdown)):
            raise ConfigError(f"device slowdown must be > 0, got {self.slowdown!r}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError("duration must be > 0 seconds")
        if self.max_inflight < 1 or self.batch < 1:
            raise ConfigError("max_inflight and batch must be >= 1")
        if self.rtt_ms < 0:
            raise ConfigError("rtt must be >= 0")

    def fleet(self, duration_s: float) -> FleetConfig:
        """The fleet engine's configuration for this single device."""
        return FleetConfig(duration_s=duration_s, rtt_ms=self.rtt_ms, window=self.max_inflight,
                           batch_hint=self.batch, initial_bandwidth_bps=self.initial_bandwidth_bps,
                           monitor_window=self.window, oracle_horizon_s=self.oracle_horizon_s,
                           overhead_ms=self.overhead_ms, local_overhead_ms=self.local_overhead_ms,
                           timeline=self.timeline, cloud=self.cloud)


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
    fallbacks: int = 0

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


def result_of(policy: str, tally: DeviceTally) -> SimResult:
    """A device's tally as a single-device result."""
    return SimResult(policy=policy, trace=tally.trace, inferences=tally.answered, makespan_s=tally.end,
                     latencies_ms=np.asarray(tally.latencies_ms), bytes_total=tally.bytes_total,
                     offloaded=tally.offloaded, accuracy_sum=tally.accuracy_sum,
                     cloud_s_total=tally.cloud_s_total, violations=tally.answered - tally.met,
                     timeline=tally.timeline, fallbacks=tally.fallbacks)


def simulate_policy(policy: Policy, model: PerfModel, trace: Trace, slo: SLO, config: SimConfig) -> SimResult:
    """Run ``policy`` over ``trace`` and return what happened (see the module docstring): the fleet
    simulator with this one device, closed loop."""
    duration = trace.period if config.duration_s is None else config.duration_s
    spec = DeviceSpec(policy=policy, slowdown=config.slowdown, trace=trace, slo=slo,
                      codec_slowdown=config.codec_slowdown)
    fleet = run_fleet(model, [spec], config.fleet(duration))
    return result_of(policy.name, fleet.devices[0])


class OracleDyno(DynoPolicy):
    """The hindsight oracle: DynO's rule, no hysteresis or probing, fed the trace's true future rate."""

    name = "oracle"
    feed = "oracle"

    def __init__(self) -> None:
        super().__init__(margin=0.0, probe_every=0)
