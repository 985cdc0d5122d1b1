"""Each cut's undominated rows: the only ones DynO needs to price.

Rows at one cut share the device's head, the cloud's tail and its batching; they differ only in what the
row itself carries: bytes on the wire and in the frame, encode and decode time, accuracy and the drop's
confidence bound. Every figure the performance model and the SLO read is monotone in those (the stage
times, latency, throughput, energy, cloud cost, the constraints and their violations), so a row that
another row at its cut matches or beats on all of them, and beats on one, is never better on any
objective or constraint, whatever the estimates: it can be the choice only on an exact tie. Dropping
those rows leaves the choice unchanged up to such ties and prices a fraction of the plan (Lite0's plan:
1,339 of 3,598 rows), which keeps a decision within its budget as plans list more coders.
"""

from __future__ import annotations

import numpy as np

from dyno.policy.model import PerfModel

__all__ = ["undominated", "front_model"]


def front_model(whole: PerfModel, confidence: float, allowed: np.ndarray | None = None) -> PerfModel:
    """The model of ``whole``'s undominated rows among ``allowed``, built once per model and shared as
    ``shared_model`` shares the whole: a fleet of simulated devices prices one front, not one each."""
    key = (confidence, None if allowed is None else allowed.tobytes())
    front = whole.fronts.get(key)
    if front is None:
        front = whole.fronts[key] = whole.subset(undominated(whole, confidence, allowed))
    return front


def undominated(model: PerfModel, confidence: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """Mask of the rows (among ``allowed``, default all) that no other allowed row at the same cut
    dominates, with drop bounds at ``confidence``; the device-only row is always kept."""
    cost = np.column_stack([model.bits8, model.bytes, model.encode_ms, model.decode_ms,
                            model.drop_bound(confidence), -model.accuracy])
    keep = np.ones(len(model.rows), dtype=bool) if allowed is None else allowed.copy()
    cuts = np.array([r.cut for r in model.rows])
    for cut in np.unique(cuts):
        rows = np.flatnonzero((cuts == cut) & keep)
        if len(rows) < 2:
            continue
        c = cost[rows]
        # [j, i]: row j no worse than row i on every figure, and better on one
        no_worse = (c[:, None, :] <= c[None, :, :]).all(axis=2)
        better = (c[:, None, :] < c[None, :, :]).any(axis=2)
        keep[rows[(no_worse & better).any(axis=0)]] = False
    keep[model.device_only] = True
    return keep
