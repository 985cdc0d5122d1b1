"""What a run on the real runtime records so a reader can check it: every decision the policy made (with
its predicted throughput and the bandwidth it believed), a per-second timeline, the histogram of choices,
predicted against observed throughput, and the realised top-1 against the fp32 model with an interval.

    policy = Recorder(make("dyno"))                  # a Policy: give it to ClientConfig(policy=...)
    ...run the client; collect ``points`` (t, cut, codec, bits, where, correct, nbytes)...
    report = evidence(points, policy.log, trace=trace, duration=30.0, fp32_correct=[...])
"""

from __future__ import annotations

import collections
import math
import statistics
import time
from typing import Any, Sequence

from dyno.packing import label
from dyno.policy import Decision, Policy, State

__all__ = ["Recorder", "evidence", "timeline", "choices", "accuracy_report", "wilson"]


class Recorder(Policy):
    """A policy that decides as ``inner`` does and keeps, per decision, (time, cut, codec, bits,
    predicted throughput, bandwidth estimate, device slowdown estimate, server factor estimate at the chosen cut).
    ``start(t0)`` sets the clock's zero and clears the log."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.feed = inner.feed
        self.pure = inner.pure
        self.t0 = time.perf_counter()
        self.log: list[tuple[float, int, str | None, int | None, float, float, float, float]] = []

    def start(self, t0: float) -> None:
        self.t0 = t0
        self.log = []

    def decide(self, state: State) -> Decision:
        decision = self.inner.decide(state)
        predicted = decision.predicted.throughput if decision.predicted is not None else math.nan
        est = state.estimates
        self.log.append((time.perf_counter() - self.t0, decision.cut, decision.codec, decision.bits, predicted,
                         est.bandwidth_bps, est.device_slowdown, est.server_factor(decision.cut)))
        return decision

    def reset(self) -> None:
        self.inner.reset()


def choices(points: Sequence[Any]) -> dict[str, int]:
    """How often each (cut, packing) was used, most frequent first (``device`` for device-only)."""
    counts = collections.Counter(
        "device" if p.codec is None and p.where == "device" else f"cut {p.cut} {label(p.codec, p.bits)}"
        if p.codec is not None else f"cut {p.cut} fallback" for p in points)
    return dict(counts.most_common())


def timeline(points: Sequence[Any], log: Sequence[tuple], *, trace: Any, duration: float) -> list[dict[str, Any]]:
    """Per second: the true uplink rate (the trace's mean over the second), the policy's estimates (mean
    over its decisions: bandwidth, the device's slowdown, the server's speed against its profile), the
    most used cut and bits, completions, and the predicted throughput."""
    seconds = max(1, math.ceil(duration))
    done: list[list[Any]] = [[] for _ in range(seconds)]
    for p in points:
        if 0 <= p.t < seconds:
            done[int(p.t)].append(p)
    decided: list[list[tuple]] = [[] for _ in range(seconds)]
    for entry in log:
        if 0 <= entry[0] < seconds:
            decided[int(entry[0])].append(entry)
    rows = []
    for s in range(seconds):
        picks = collections.Counter((e[1], e[2], e[3]) for e in decided[s])
        cut, codec, bits = picks.most_common(1)[0][0] if picks else (None, None, None)
        rows.append({
            "t": s, "bandwidth_bps": trace.mean_rate(s, s + 1) if trace is not None else None,
            "estimate_bps": _mean_of(decided[s], 5),
            "slowdown_estimate": _mean_of(decided[s], 6), "server_factor_estimate": _mean_of(decided[s], 7),
            "cut": cut, "packing": None if cut is None else ("device" if codec is None else label(codec, bits)),
            "completions": len(done[s]), "bytes": sum(p.nbytes for p in done[s]),
            "predicted_throughput": _finite_mean(e[4] for e in decided[s]),
        })
    return rows


def _mean_of(entries: Sequence[tuple], field: int) -> float | None:
    """The mean of one field over log entries."""
    return _finite_mean(e[field] for e in entries)


def _finite_mean(values: Any) -> float | None:
    kept = [v for v in values if math.isfinite(v)]
    return statistics.fmean(kept) if kept else None


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_report(correct: Sequence[bool], fp32_correct: Sequence[bool] | None) -> dict[str, Any]:
    """Realised top-1 with its 95% Wilson interval; with the fp32 model's correctness on the same inputs,
    the realised drop in points with a 95% interval from the paired differences."""
    n = len(correct)
    hits = sum(bool(c) for c in correct)
    out: dict[str, Any] = {"n": n, "top1": hits / n if n else None, "top1_interval": list(wilson(hits, n))}
    if fp32_correct is not None and n:
        diffs = [float(f) - float(c) for f, c in zip(fp32_correct, correct, strict=True)]
        mean = statistics.fmean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else 0.0
        out.update(fp32_top1=sum(map(bool, fp32_correct)) / n, drop_points=100 * mean,
                   drop_interval_points=[100 * (mean - 1.96 * se), 100 * (mean + 1.96 * se)])
    return out


def evidence(points: Sequence[Any], log: Sequence[tuple], *, trace: Any, duration: float, slo: Any,
             fp32_correct: Sequence[bool] | None = None) -> dict[str, Any]:
    """The whole record of one system's run (module docstring)."""
    measured = len(points) / duration if duration > 0 else None
    seconds = timeline(points, log, trace=trace, duration=duration)
    # over seconds, as the measured figure is: a mean over decisions weighs the fast seconds by their many
    # decisions (cloud-only in the demo read 0.55 of its prediction that way, 0.95 second by second)
    predicted = _finite_mean(s["predicted_throughput"] for s in seconds if s["predicted_throughput"] is not None)
    return {"slo": None if slo is None else str(slo), "choices": choices(points), "timeline": seconds,
            "predicted_throughput": predicted, "observed_throughput": measured,
            "accuracy": accuracy_report([p.correct for p in points], fp32_correct),
            # seconds with no inference finished while the link was up (the dip issue 15 describes)
            "zero_seconds": sum(1 for s in seconds if s["completions"] == 0 and (s["bandwidth_bps"] or 1) > 0)}
