"""Exploration: how a policy that runs everything on the device keeps its bandwidth estimate fresh.

The estimate is fed only by the device's own transfers, so a device-only streak freezes it. After at
least ``every`` device-only decisions in a row *and* at least ``interval_s`` of (predicted) device time
since the last offloaded inference, one inference is offloaded as a probe. The time bound keeps the cost
of probing a fixed share of a fast device's time: counting decisions alone, a device finishing an
inference every 0.1 ms would probe every 2 ms, fill its request window with probes and stall (seen in
the simulator at the high tier: 3.9k/s against device-only's 11k/s).

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

    __slots__ = ("every", "interval_s", "run", "seconds")

    def __init__(self, every: int = 20, interval_s: float = PROBE_INTERVAL_S) -> None:
        if every < 0 or interval_s < 0:
            raise PolicyError("probe_every and the probe interval must be >= 0")
        self.every, self.interval_s = every, interval_s
        self.run, self.seconds = 0, 0.0

    def reset(self) -> None:
        self.run, self.seconds = 0, 0.0

    def offloaded(self) -> None:
        self.run, self.seconds = 0, 0.0

    def device_only(self, device_ms: float) -> bool:
        """One more device-only decision taking ``device_ms``: True when a probe is due (then the streak
        restarts)."""
        self.run += 1
        self.seconds += device_ms / 1000.0
        if self.every and self.run > self.every and self.seconds >= self.interval_s:
            self.run, self.seconds = 0, 0.0
            return True
        return False
