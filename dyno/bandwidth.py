"""The uplink's bandwidth as the device sees it, from its own transfers.

``BandwidthEstimator``: uplink bits/s as the **bits over the seconds of the last ``window``
transfers**: for frames of one size, the harmonic mean of their rates. A harmonic mean is dominated by
the slow samples, so one lucky burst cannot inflate it, and it is the right mean for rates when the
quantity of interest is time per byte.

Response to a step from rate B1 to B2 (every sample then at B2, frames of one size): after k of the
window's n samples the estimate is ``n / ((n - k) / B1 + k / B2)``. It equals B2 exactly once ``k = n``
(the window has turned over: ``settle_samples == window``). On a drop it reacts fast (after one sample
of a 10x drop with n = 8 it is already below half of B1); on a rise it is cautious (it reaches the
midpoint only when about (n - k)/B1 = k/B2). Both are the behaviour a scheduler wants: back off at
once, believe good news only when it lasts.

A transfer of zero or negative seconds is kept: on a real network a frame's time is read from the
client's clock (``dyno.runtime.inflight.WireClock``), and a reply read late (the client's process was
throttled or its loop busy) makes that frame look slow and the frame queued behind it look faster by
as much, down to below zero. Summed over the window the two cancel. Dropping the second, as a mean of
per-frame rates must, kept only the slow half of that jitter: on a kernel-shaped 8 Mbit/s link under
``dyno bench``'s CPU quota the estimate read ~3 Mbit/s, and one reply read 0.3 s late read the link at
0.1 Mbit/s and kept DynO on the device for three seconds.
"""

from __future__ import annotations

import collections
import math

from dyno.errors import ConfigError

__all__ = ["BandwidthEstimator"]


class BandwidthEstimator:
    """Bits over seconds (bits/s) of the last ``window`` transfers (module docstring).

    Transfers with ``nbytes <= 0`` or a non-finite time carry no rate information and are ignored.
    ``estimate_bps`` is None until the window's seconds sum above zero, and while a correction holds
    them at or below zero it keeps the last estimate.
    """

    def __init__(self, window: int = 8) -> None:
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"bandwidth window must be an int >= 1, got {window!r}")
        self.window = window
        self._transfers: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)  # (bits, s)
        self._estimate: float | None = None

    @property
    def settle_samples(self) -> int:
        """Samples after a step change until the estimate equals the new rate (the window length)."""
        return self.window

    def update(self, nbytes: float, seconds: float) -> None:
        if not (nbytes > 0 and math.isfinite(nbytes) and math.isfinite(seconds)):
            return
        self._transfers.append((8.0 * nbytes, seconds))
        total = math.fsum(s for _, s in self._transfers)   # a short window: exact and cheap, no drift
        if total > 0:
            self._estimate = math.fsum(b for b, _ in self._transfers) / total

    @property
    def estimate_bps(self) -> float | None:
        return self._estimate

    @property
    def samples(self) -> int:
        return len(self._transfers)

    def reset(self) -> None:
        self._transfers.clear()
        self._estimate = None
