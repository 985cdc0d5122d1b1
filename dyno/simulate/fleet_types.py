"""What a fleet simulation is given and what it gives back (``dyno.simulate.fleet`` runs it): one
device's spec, the settings all devices share, each device's tally and the fleet's result."""

from __future__ import annotations

import dataclasses
import math

from dyno.emulate.traces import Trace
from dyno.errors import ConfigError
from dyno.policy import SLO, Policy
from dyno.policy.model import PerfModel
from dyno.simulate.cloud import DEFAULT_CLOUD, CloudConfig

__all__ = ["DeviceSpec", "FleetConfig", "DeviceTally", "FleetResult", "met_rows"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    """One device: its policy (a fresh instance per device), slowdown k_d against the plan's device
    profile (and ``codec_slowdown`` against its encode times: ``Estimates.codec_slowdown``), uplink trace
    and where in it the device starts (``offset_s``), SLO, and frame ``rate``."""

    policy: Policy
    slowdown: float
    trace: Trace
    slo: SLO
    offset_s: float = 0.0
    rate: float | None = None
    tier: str = ""
    phase_s: float | None = None     # the first frame's time (None: spread over the frame period by index)
    codec_slowdown: float = 1.0

    def __post_init__(self) -> None:
        if not (self.slowdown > 0 and math.isfinite(self.slowdown)
                and self.codec_slowdown > 0 and math.isfinite(self.codec_slowdown)):
            raise ConfigError(f"device slowdowns must be > 0, got {self.slowdown!r}, {self.codec_slowdown!r}")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError(f"a device's frame rate must be > 0, got {self.rate!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """What all devices share: the run, the network's round trip, the client's settings, the cloud."""

    duration_s: float
    rtt_ms: float = 40.0
    window: int = 8
    batch_hint: int = 1
    initial_bandwidth_bps: float = 1e6
    monitor_window: int = 8
    oracle_horizon_s: float = 1.0
    backlog: int = 1
    backoff_s: tuple[float, float] = (0.1, 2.0)
    overhead_ms: float = 0.0
    local_overhead_ms: float = 0.0
    decide_every_s: float = 0.0
    timeline: bool = False
    cloud: CloudConfig = DEFAULT_CLOUD

    def __post_init__(self) -> None:
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise ConfigError("duration must be > 0 seconds")
        if self.window < 1 or self.batch_hint < 1 or self.backlog < 1:
            raise ConfigError("window, batch_hint and backlog must be >= 1")
        if self.rtt_ms < 0 or min(self.overhead_ms, self.local_overhead_ms) < 0 or self.decide_every_s < 0:
            raise ConfigError("rtt, overhead and decide_every must be >= 0")


@dataclasses.dataclass
class DeviceTally:
    """What happened on one device."""

    tier: str
    trace: str
    demanded: int = 0          # frames generated (closed loop: inferences started)
    started: int = 0
    answered: int = 0
    met: int = 0               # answered within the SLO's latency, accuracy and bytes
    dropped: int = 0
    fallbacks: int = 0
    refused: int = 0
    offloaded: int = 0
    bytes_total: float = 0.0
    accuracy_sum: float = 0.0
    cloud_s_total: float = 0.0
    end: float = 0.0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    timeline: dict[str, list] | None = None


@dataclasses.dataclass
class FleetResult:
    """Every device's tally and the cloud's: worker-busy seconds, batches, requests served and refused;
    ``end`` is when the last inference was answered (after ``duration_s``, the drain)."""

    devices: list[DeviceTally]
    duration_s: float
    cloud_busy_s: float
    workers: int
    batches: int
    served: int
    refused: int
    end: float = 0.0


def met_rows(model: PerfModel, slo: SLO) -> list[bool]:
    """Per row, whether it meets the SLO's accuracy (point estimate) and bytes constraints."""
    ok = []
    for k in range(len(model.rows)):
        drop_ok = slo.max_accuracy_drop is None or model.drop[k] <= slo.max_accuracy_drop + 1e-9
        bytes_ok = slo.max_bytes is None or model.bytes[k] <= slo.max_bytes
        ok.append(bool(drop_ok and bytes_ok))
    return ok
