"""Two options at once: while the device runs one option, the link and the cloud can carry another.

One row keeps one resource busy and leaves the others idle: device-only leaves the uplink and the cloud
unused, an input-cut offload leaves the device nearly idle. Sending a share ``q`` of the inferences by a
second row ``b`` and the rest by the chosen row ``a`` loads each stage (device, link, cloud, and the
request window's share ``L0 / W``) with ``(1 - q) * x_a + q * x_b`` seconds per inference, a line in
``q``. The mix's time per inference is the largest of those lines, so the best share is where that
maximum is least: at ``q = 0``, ``q = 1`` or where two lines cross, and all are tried at once for every
candidate ``b``. This goes beyond the paper, which runs one split at a time: with a throughput
objective a device that is faster than its link still offloads the inferences its link can carry.

``Mixer`` turns a share into decisions without randomness: a credit grows by the share per decision
and every whole unit of credit sends one inference by ``b`` (so 3 in 10 is exactly 3 in every 10). Many
devices read the same idle cloud at once and would all take its headroom together (seen in the fleet
simulator: 16 devices on one worker queued for 0.6 s and lost 15% of their throughput), so the share
a device uses grows towards the best one by ``RAMP`` per decision and shrinks by ``BACKOFF`` per decision
while the server says requests wait longer than the partner's own latency, as congestion control does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dyno.policy.model import Evaluation

__all__ = ["Mix", "Mixer", "best_mix", "RAMP", "BACKOFF"]

#: Share added per decision on the way to the best share (0 to 50% in 250 decisions).
RAMP = 0.002
#: Factor on the share per decision while the server's queue says it is congested.
BACKOFF = 0.9


@dataclasses.dataclass(frozen=True)
class Mix:
    """Send ``share`` of the inferences by row ``partner``, the rest by the chosen row: ``throughput``/s."""

    partner: int
    share: float
    throughput: float


def _stages(ev: Evaluation, in_flight: int | None) -> np.ndarray:
    """Per row, the ms each stage spends per inference: device, link, cloud and (with a bounded request
    window) the window's share of the latency without waiting."""
    lines = [ev.device, ev.link, ev.cloud]
    if in_flight is not None:
        lines.append(ev.latency / in_flight)
    return np.stack(lines, axis=1)


def best_mix(ev: Evaluation, chosen: int, partners: np.ndarray, in_flight: int | None) -> Mix | None:
    """The mix of ``chosen`` with one of ``partners`` (row indices) of highest throughput, if it beats
    ``chosen`` alone; None otherwise."""
    partners = partners[partners != chosen]
    if not len(partners):
        return None
    stages = _stages(ev, in_flight)
    a = stages[chosen]                          # (k,)
    slope = stages[partners] - a                # (n, k): line k is a[k] + q * slope[:, k]
    k = len(a)
    shares = [np.zeros(len(partners)), np.ones(len(partners))]
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(k):
            for j in range(i + 1, k):
                q = (a[j] - a[i]) / (slope[:, i] - slope[:, j])
                shares.append(np.where(np.isfinite(q), np.clip(q, 0.0, 1.0), 0.0))
    q = np.stack(shares, axis=1)                                       # (n, candidates)
    per_inference = (a[None, None, :] + q[:, :, None] * slope[:, None, :]).max(axis=2)
    at = per_inference.argmin(axis=1)
    best_ms = per_inference[np.arange(len(partners)), at]
    winner = int(best_ms.argmin())
    share, ms = float(q[winner, at[winner]]), float(best_ms[winner])
    alone = float(stages[chosen].max())
    if not 0.0 < share < 1.0 or not ms < alone or ms <= 0:
        return None
    return Mix(int(partners[winner]), share, 1000.0 / ms)


class Mixer:
    """Deterministic shares (module docstring): ``take(best, congested)`` is True for the share in use
    of the calls; the share in use ramps towards ``best`` and backs off while ``congested``."""

    __slots__ = ("credit", "share")

    def __init__(self) -> None:
        self.credit = 0.0
        self.share = 0.0

    def take(self, best: float, congested: bool = False) -> bool:
        self.share = self.share * BACKOFF if congested else min(best, self.share + RAMP)
        self.credit += self.share
        if self.credit >= 1.0:
            self.credit -= 1.0
            return True
        return False
