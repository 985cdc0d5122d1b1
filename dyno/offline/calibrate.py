"""Clip calibration: a clipped quantisation range per cut, where it lowers the quantisation error.

Per cut, candidate ranges are percentiles of the activations on a calibration subset (the first
batches holding ``min_samples`` samples); each is scored by the mean squared error of
:func:`fake_quant` at the width just below the knee, and kept only if it beats the per-sample
min/max range clearly (``clip_gain``). The precision analysis then measures both variants there.

    clip, record = calibrate(calibration_batches(acts, config), bits=3, nonnegative=True, config=config,
                             generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from dyno.offline.quant import fake_quant
from dyno.offline.search import SearchConfig

__all__ = ["calibrate", "calibration_batches"]


def calibration_batches(acts: Sequence[torch.Tensor], config: SearchConfig) -> list[torch.Tensor]:
    """The first batches holding at least ``min_samples`` samples."""
    out, n = [], 0
    for a in acts:
        out.append(a)
        n += len(a)
        if n >= config.min_samples:
            break
    return out


def _order_statistics(flat: torch.Tensor, percentiles: tuple[float, ...]) -> np.ndarray:
    """The values the percentiles pick, at their places in sorted order (a partition, not a sort)."""
    values = flat.double().numpy()
    last = len(values) - 1
    places = sorted({min(last, int(round(p / 100 * last))) for p in percentiles}
                    | {int(round((1 - p / 100) * last)) for p in percentiles})
    return np.partition(values, places)


def calibrate(acts: list[torch.Tensor], bits: int, nonnegative: bool, config: SearchConfig,
              generator: torch.Generator) -> tuple[tuple[float, float] | None, dict[str, Any]]:
    """A clip range among percentiles of the activations, by quantisation error at ``bits``.

    Values are drawn from the calibration batches (at most ``config.clip_samples``); each candidate
    range is scored by the mean squared error of :func:`fake_quant` on those batches. Returns the
    best range (None when per-sample min/max is best) and a record of the scores.
    """
    per_batch = max(1, config.clip_samples // len(acts))
    drawn = []
    for a in acts:
        flat = a.reshape(-1) if a.is_contiguous() else a.contiguous().reshape(-1)
        drawn.append(flat[torch.randint(flat.numel(), (min(per_batch, flat.numel()),), generator=generator)])
    flat = torch.cat(drawn)
    candidates: dict[str, tuple[float, float] | None] = {"minmax": None}
    values = _order_statistics(flat, config.clip_percentiles)
    for p in config.clip_percentiles:
        hi = float(values[min(len(flat) - 1, int(round(p / 100 * (len(flat) - 1))))])
        lo = 0.0 if nonnegative else float(values[int(round((1 - p / 100) * (len(flat) - 1)))])
        lo, hi = float(np.float32(lo)), float(np.float32(hi))
        if lo < hi:
            candidates[f"p{p:g}"] = (min(lo, 0.0), max(hi, 0.0))
    scores = {}
    for name, clip in candidates.items():
        error = 0.0
        count = 0
        for a in acts:
            q = fake_quant(a, bits, nonnegative=nonnegative, clip=clip)
            error += float(q.sub_(a).pow_(2).sum(dtype=torch.float64))
            count += a.numel()
        scores[name] = error / max(count, 1)
    best = min(scores, key=lambda k: (scores[k], k != "minmax"))
    if scores[best] > config.clip_gain * scores["minmax"]:
        best = "minmax"  # not worth an accuracy evaluation
    record = {"method": f"percentile of activation values, chosen by quantisation MSE at {bits} bits "
                        f"(kept if under {config.clip_gain:g} x the min/max error)",
              "mse": {k: float(f"{v:.6g}") for k, v in scores.items()},
              "candidates": {k: list(v) for k, v in candidates.items() if v is not None},
              "choice": best, "calibration_samples": sum(len(a) for a in acts)}
    return candidates[best], record
