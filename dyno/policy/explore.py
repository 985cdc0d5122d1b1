"""Exploration: how a policy that runs everything on the device keeps its bandwidth estimate fresh.

The estimate is fed only by the device's own transfers, so a device-only streak freezes it. After at
least ``every`` device-only decisions in a row *and* at least ``interval_s`` of (predicted) device time
since the last offloaded inference, one inference is offloaded as a probe. The time bound keeps the cost
of probing a fixed share of a fast device's time: counting decisions alone, a device finishing an
inference every 0.1 ms would probe every 2 ms, fill its request window with probes and stall (seen in
the simulator at the high tier: 3.9k/s against device-only's 11k/s).

The other way round, an offload at the input cut runs no layer on the device, so the device's slowdown
estimate is not refreshed while the policy sends the input: a slowdown read during a burst of load
elsewhere on the machine then holds forever (seen in ``dyno demo`` on a shared machine: DynO sent WebP
at 91/s against the device's ~600/s for seconds, its slowdown estimate stuck at 9). The same two bounds
on such a *blind* streak run one inference on the device as a device probe.

Devices that start together at the same speed and frame rate would all probe at the same moment (a
fleet's probes then arrive at the cloud as one burst: seen in the fleet simulator, 1,024 devices, ~400
probes within one frame period); ``phase`` in [0, 1) starts every streak before the first probe that
share of the way through (a device's first decisions are often offloaded, on the initial estimate, and
all devices leave the cloud together when their estimates fall), so that a fleet whose devices get
different phases probes spread out; after its first probe a device keeps the cadence it has.

    explorer = Explorer(every=20, interval_s=0.5)
    if explorer.device_only(device_ms=0.09): ...probe...
    explorer.offloaded()                         # at a cut whose head runs on the device
    if explorer.blind(stage_ms=1.8): ...run one on the device...
"""

from __future__ import annotations

from dyno.errors import PolicyError

__all__ = ["Explorer", "PROBE_INTERVAL_S"]

#: Least device time between two probes.
PROBE_INTERVAL_S = 0.5


class Explorer:
    """Counts a device-only streak in decisions and predicted device seconds (module docstring)."""

    __slots__ = ("every", "interval_s", "phase", "run", "seconds", "probed", "blind_run", "blind_seconds")

    def __init__(self, every: int = 20, interval_s: float = PROBE_INTERVAL_S, phase: float = 0.0) -> None:
        if every < 0 or interval_s < 0:
            raise PolicyError("probe_every and the probe interval must be >= 0")
        if not 0.0 <= phase < 1.0:
            raise PolicyError(f"the probe phase must be in [0, 1), got {phase!r}")
        self.every, self.interval_s, self.phase = every, interval_s, phase
        self.reset()

    def reset(self) -> None:
        """Back to the start of the first streak (``phase`` of the way through)."""
        self.probed = False
        self._restart()

    def _restart(self) -> None:
        phase = 0.0 if self.probed else self.phase
        self.run, self.seconds = int(phase * self.every), phase * self.interval_s
        self.blind_run, self.blind_seconds = self.run, self.seconds

    def offloaded(self) -> None:
        """An offload whose head runs on the device (it refreshes the device's estimate)."""
        self._restart()

    def blind(self, stage_ms: float) -> bool:
        """An offload at the input cut, one pipeline stage of ``stage_ms``: True when a device probe is
        due (then the blind streak restarts). The device-only streak restarts too: this was an offload."""
        run, seconds = self.blind_run + 1, self.blind_seconds + stage_ms / 1000.0
        self._restart()
        if self.every and run > self.every and seconds >= self.interval_s:
            self.probed = True
            self._restart()
            return True
        self.blind_run, self.blind_seconds = run, seconds
        return False

    def device_only(self, device_ms: float) -> bool:
        """One more device-only decision taking ``device_ms``: True when a probe is due (then the streak
        restarts)."""
        self.run += 1
        self.seconds += device_ms / 1000.0
        self.blind_run, self.blind_seconds = 0, 0.0
        if self.every and self.run > self.every and self.seconds >= self.interval_s:
            self.probed = True
            self._restart()
            return True
        return False
