"""Synthetic uplink patterns for the regime the Norway 3G traces do not cover: fast, bursty cellular
uplinks (LTE-class, several to tens of Mbit/s, changing within seconds). Each is seeded and
deterministic, and ``trace_set`` reads every way a run can name its traces.

- ``step``: a level held for a few seconds, then a jump to another level (log-uniform in 0.5..40
  Mbit/s); tests how fast a policy follows a lasting change.
- ``burst``: a moderate base rate (2..8 Mbit/s) with short bursts up to 5-10x (0.2..1 s) at random;
  tests that a policy is not fooled by transient good news.
- ``onoff``: the link alternates between a good rate (5..30 Mbit/s) and near-outage (0.05..0.3
  Mbit/s) every 1..6 s; tests recovery from outages without stalls.

    trace_set("synthetic")                       # step, burst and onoff, seeds 0..2 each (9 traces)
    trace_set("synthetic:burst")                 # bursts only
    trace_set("../shared/traces/fcc")            # a directory (or file) of traces, Mahimahi dirs too
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from dyno.emulate.traces import Trace, load_traces
from dyno.errors import TraceFileError

__all__ = ["PATTERNS", "step", "burst", "onoff", "synthetic", "trace_set"]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def step(seed: int = 0, *, duration_s: float = 60.0) -> Trace:
    """Levels held 3..12 s, each log-uniform in 0.5..40 Mbit/s."""
    rng = random.Random(f"step-{seed}")
    times, rates = [0.0], []
    while times[-1] < duration_s:
        rates.append(_log_uniform(rng, 0.5e6, 40e6))
        times.append(min(duration_s, times[-1] + rng.uniform(3.0, 12.0)))
    return Trace(times, rates, name=f"step-{seed}")


def burst(seed: int = 0, *, duration_s: float = 60.0) -> Trace:
    """A base of 2..8 Mbit/s (redrawn every 10 s) with bursts of 5..10x lasting 0.2..1 s, about one
    every 2 s."""
    rng = random.Random(f"burst-{seed}")
    times, rates = [0.0], []
    base = rng.uniform(2e6, 8e6)
    next_base = 10.0
    while times[-1] < duration_s:
        t = times[-1]
        if t >= next_base:
            base, next_base = rng.uniform(2e6, 8e6), next_base + 10.0
        quiet = rng.expovariate(1 / 2.0)
        rates.append(base)
        times.append(min(duration_s, t + quiet))
        if times[-1] < duration_s:
            rates.append(base * rng.uniform(5.0, 10.0))
            times.append(min(duration_s, times[-1] + rng.uniform(0.2, 1.0)))
    return Trace(times, rates, name=f"burst-{seed}")


def onoff(seed: int = 0, *, duration_s: float = 60.0) -> Trace:
    """Good (5..30 Mbit/s) and near-outage (0.05..0.3 Mbit/s) periods of 1..6 s, alternating."""
    rng = random.Random(f"onoff-{seed}")
    times, rates = [0.0], []
    good = True
    while times[-1] < duration_s:
        rates.append(rng.uniform(5e6, 30e6) if good else rng.uniform(0.05e6, 0.3e6))
        times.append(min(duration_s, times[-1] + rng.uniform(1.0, 6.0)))
        good = not good
    return Trace(times, rates, name=f"onoff-{seed}")


PATTERNS = {"step": step, "burst": burst, "onoff": onoff}


def synthetic(names: tuple[str, ...] = tuple(PATTERNS), seeds: int = 3, duration_s: float = 60.0) -> list[Trace]:
    """Every pattern in ``names`` at seeds 0..seeds-1."""
    unknown = [n for n in names if n not in PATTERNS]
    if unknown:
        raise TraceFileError(f"unknown synthetic pattern {', '.join(unknown)}; known: {', '.join(PATTERNS)}")
    return [PATTERNS[name](seed, duration_s=duration_s) for name in names for seed in range(seeds)]


def trace_set(spec: str | Path) -> list[Trace]:
    """Traces named by ``spec``: ``synthetic`` or ``synthetic:NAME[+NAME]`` (``PATTERNS``), or a file or
    directory ``load_traces`` reads (two-column, Mahimahi files, or a Mahimahi ``NAME.up``/``NAME.down``
    directory, whose uplink files are used)."""
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        names = tuple(text.split(":", 1)[1].split("+")) if ":" in text else tuple(PATTERNS)
        return synthetic(names)
    return load_traces(spec)
