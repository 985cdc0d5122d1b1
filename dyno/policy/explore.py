"""Exploration: how a policy that runs everything on the device keeps its bandwidth estimate fresh.

The estimate is fed only by the device's own transfers, so a device-only streak freezes it. After at
least ``every`` device-only decisions in a row *and* at least ``interval_s`` of (predicted) device time
since the last offloaded inference, one inference is offloaded as a probe. The time bound keeps the cost
of probing a fixed share of a fast device's time: counting decisions alone, a device finishing an
inference every 0.1 ms would probe every 2 ms, fill its request window with probes and stall (seen in
the simulator at the high tier: 3.9k/s against device-only's 11k/s).

Devices that start together at the same speed and frame rate would all probe at the same moment (a
fleet's probes then arrive at the cloud as one burst: seen in the fleet simulator, 1,024 devices, ~400
probes within one frame period); ``phase`` in [0, 1) starts every streak before the first probe that
share of the way through (a device's first decisions are often offloaded, on the initial estimate, and
all devices leave the cloud together when their estimates fall), so that a fleet whose devices get
different phases probes spread out; after its first probe a device keeps the cadence it has.

    explorer = Explorer(every=20, interval_s=0.5)
    if explorer.device_only(device_ms=0.09): ...probe...
    explorer.offloaded()
"""

from __future__ import annotations

from dyno.errors import PolicyError

__all__ = ["Explorer", "PROBE_INTERVAL_S"]

#: Least device time between two probes.
PROBE_INTERVAL_S = 0.5


class Explorer:
    """Counts a device-only streak in decisions and predicted device seconds (module docstring)."""

    __slots__ = ("every", "interval_s", "phase", "run", "seconds", "probed")

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

    def offloaded(self) -> None:
        self._restart()

    def device_only(self, device_ms: float) -> bool:
        """One more device-only decision taking ``device_ms``: True when a probe is due (then the streak
        restarts)."""
        self.run += 1
        self.seconds += device_ms / 1000.0
        if self.every and self.run > self.every and self.seconds >= self.interval_s:
            self.probed = True
            self._restart()
            return True
        return False
