"""Run-time estimates from what the device itself observes (never from a one-off probe).

``Estimates`` is what a policy decides on; the monitor knows nothing about the policies that read it.

- ``BandwidthEstimator``: uplink bits/s as the **harmonic mean of the per-transfer rates of the last
  ``window`` transfers**. A harmonic mean is dominated by the slow samples, so one lucky burst cannot
  inflate it, and it is the right mean for rates when the quantity of interest is time per byte.

  Response to a step from rate B1 to B2 (every sample then at B2): after k of the window's n samples
  the estimate is ``n / ((n - k) / B1 + k / B2)``. It equals B2 exactly once ``k = n`` (the window has
  turned over: ``settle_samples == window``). On a drop it reacts fast (after one sample of a 10x drop
  with n = 8 it is already below half of B1); on a rise it is cautious (it reaches the midpoint only
  when about (n - k)/B1 = k/B2). Both are the behaviour a scheduler wants: back off at once, believe
  good news only when it lasts.
- ``Monitors``: the bundle the device client and the simulator feed. Device slowdown is the median of
  observed / profiled head time; server time factor the median of observed / profiled per-sample
  tail time; server load an EWMA; RTT the median of recent samples.

    monitors = Monitors(plan, initial_bandwidth_bps=2e6)
    monitors.record_transfer(nbytes=12_000, seconds=0.05)
    monitors.estimates()   # -> Estimates, what a policy decides on
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from typing import TYPE_CHECKING

from dyno.errors import ConfigError, PolicyError

if TYPE_CHECKING:
    from dyno.plan import Plan

__all__ = ["Estimates", "BandwidthEstimator", "Monitors"]


@dataclasses.dataclass(frozen=True)
class Estimates:
    """Run-time estimates a policy decides on (from ``dyno.monitor.Monitors`` or a probe).

    - ``bandwidth_bps``: uplink bits per second.
    - ``rtt_ms``: round-trip time added once per offloaded inference.
    - ``device_slowdown``: k_d, device time / profiled (plan) device time.
    - ``server_ms_factor``: observed / profiled server time per sample.
    - ``server_load``: server utilisation in [0, 1] by other clients; the model scales the server's
      per-sample time for this client by 1 / (1 - load) (clamped at load 0.95), an M/M/1 reading.
    """

    bandwidth_bps: float
    rtt_ms: float = 1.0
    device_slowdown: float = 1.0
    server_ms_factor: float = 1.0
    server_load: float = 0.0

    def __post_init__(self) -> None:
        for name in ("bandwidth_bps", "rtt_ms", "device_slowdown", "server_ms_factor", "server_load"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise PolicyError(f"Estimates.{name} must be a finite number >= 0, got {value!r}")
        if self.device_slowdown <= 0 or self.server_ms_factor <= 0:
            raise PolicyError("Estimates.device_slowdown and server_ms_factor must be > 0")


class BandwidthEstimator:
    """Harmonic mean of the rates (bits/s) of the last ``window`` transfers.

    Transfers with ``seconds <= 0`` or ``nbytes <= 0`` carry no rate information and are ignored.
    ``estimate_bps`` is None until the first sample.
    """

    def __init__(self, window: int = 8) -> None:
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"bandwidth window must be an int >= 1, got {window!r}")
        self.window = window
        self._inverse: collections.deque[float] = collections.deque(maxlen=window)  # seconds per bit
        self._sum = 0.0

    @property
    def settle_samples(self) -> int:
        """Samples after a step change until the estimate equals the new rate (the window length)."""
        return self.window

    def update(self, nbytes: int, seconds: float) -> None:
        if not (nbytes > 0 and seconds > 0 and math.isfinite(seconds)):
            return
        self._inverse.append(seconds / (8.0 * nbytes))
        self._sum = math.fsum(self._inverse)  # a short window: exact and cheap, no drift

    @property
    def estimate_bps(self) -> float | None:
        if not self._inverse:
            return None
        return len(self._inverse) / self._sum

    @property
    def samples(self) -> int:
        return len(self._inverse)

    def reset(self) -> None:
        self._inverse.clear()
        self._sum = 0.0


class Monitors:
    """All run-time estimates for one device and plan, fed by the client's own traffic.

    - ``record_transfer(nbytes, seconds)``: one uplink transfer (wire bytes, seconds on the link).
    - ``record_device(cut_id, head_ms)``: observed head time at a cut; slowdown = head_ms / plan's
      ``device_ms`` (cuts profiled below 0.05 ms, e.g. the input cut, are ignored).
    - ``record_server(cut_id, server_ms, load, batch)``: from a reply; ``server_ms`` is the tail time of
      the batch the request ran in and ``batch`` that batch's size, so per-sample time is
      ``server_ms / batch``, compared with the plan's ``cloud_ms_per_sample(batch)``. ``load`` is the
      server's utilisation in [0, 1]; a value above 1 is read as a queue length q and mapped to q/(q+1).
    - ``record_rtt(ms)``: a round-trip time sample.
    """

    def __init__(self, plan: "Plan", *, initial_bandwidth_bps: float = 1e6, window: int = 8,
                 initial_rtt_ms: float = 1.0, initial_slowdown: float = 1.0,
                 load_alpha: float = 0.3) -> None:
        if not (initial_bandwidth_bps > 0 and initial_slowdown > 0 and initial_rtt_ms >= 0):
            raise ConfigError("initial bandwidth and slowdown must be > 0, initial RTT >= 0")
        if not 0 < load_alpha <= 1:
            raise ConfigError("load_alpha must be in (0, 1]")
        self.plan = plan
        self.window = window
        self.initial_bandwidth_bps = float(initial_bandwidth_bps)
        self.initial_rtt_ms = float(initial_rtt_ms)
        self.initial_slowdown = float(initial_slowdown)
        self.load_alpha = load_alpha
        self.bandwidth = BandwidthEstimator(window)
        self._slowdown: collections.deque[float] = collections.deque(maxlen=window)
        self._server: collections.deque[float] = collections.deque(maxlen=window)
        self._rtt: collections.deque[float] = collections.deque(maxlen=window)
        self._load = 0.0
        self._cached: Estimates | None = None
        self._profiled: dict[tuple[int, int], float] = {}

    def record_transfer(self, nbytes: int, seconds: float) -> None:
        self.bandwidth.update(nbytes, seconds)
        self._cached = None

    def record_device(self, cut_id: int, head_ms: float) -> None:
        profiled = self.plan.cuts[cut_id].device_ms
        if profiled >= 0.05 and head_ms > 0 and math.isfinite(head_ms):
            self._slowdown.append(head_ms / profiled)
            self._cached = None

    def record_server(self, cut_id: int, server_ms: float, load: float, batch: int = 1) -> None:
        batch = max(1, int(batch))
        profiled = self._profiled.get((cut_id, batch))
        if profiled is None:
            profiled = self._profiled[(cut_id, batch)] = self.plan.cuts[cut_id].cloud_ms_per_sample(batch)
        if profiled > 0 and server_ms > 0 and math.isfinite(server_ms):
            self._server.append((server_ms / batch) / profiled)
        if load is not None and math.isfinite(load) and load >= 0:
            utilisation = load if load <= 1 else load / (load + 1)
            self._load += self.load_alpha * (utilisation - self._load)
        self._cached = None

    def record_rtt(self, ms: float) -> None:
        if ms >= 0 and math.isfinite(ms):
            self._rtt.append(ms)
            self._cached = None

    def estimates(self) -> Estimates:
        if self._cached is None:
            bandwidth = self.bandwidth.estimate_bps
            self._cached = Estimates(
                bandwidth_bps=self.initial_bandwidth_bps if bandwidth is None else bandwidth,
                rtt_ms=statistics.median(self._rtt) if self._rtt else self.initial_rtt_ms,
                device_slowdown=statistics.median(self._slowdown) if self._slowdown else self.initial_slowdown,
                server_ms_factor=statistics.median(self._server) if self._server else 1.0,
                server_load=min(self._load, 1.0),
            )
        return self._cached

    def reset(self) -> None:
        self.bandwidth.reset()
        self._slowdown.clear()
        self._server.clear()
        self._rtt.clear()
        self._load = 0.0
        self._cached = None
