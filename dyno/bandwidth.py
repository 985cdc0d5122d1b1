"""The uplink's bandwidth as the device sees it, from its own transfers.

``BandwidthEstimator``: uplink bits/s as the **harmonic mean of the per-transfer rates of the last
``window`` transfers**. A harmonic mean is dominated by the slow samples, so one lucky burst cannot
inflate it, and it is the right mean for rates when the quantity of interest is time per byte.

Response to a step from rate B1 to B2 (every sample then at B2): after k of the window's n samples
the estimate is ``n / ((n - k) / B1 + k / B2)``. It equals B2 exactly once ``k = n`` (the window has
turned over: ``settle_samples == window``). On a drop it reacts fast (after one sample of a 10x drop
with n = 8 it is already below half of B1); on a rise it is cautious (it reaches the midpoint only
when about (n - k)/B1 = k/B2). Both are the behaviour a scheduler wants: back off at once, believe
good news only when it lasts.
"""

from __future__ import annotations

import collections
import math

from dyno.errors import ConfigError

__all__ = ["BandwidthEstimator"]


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

    def update(self, nbytes: float, seconds: float) -> None:
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
