"""``dyno simulate --fleet``: N devices of mixed tiers, each on its own trace, sharing one batching cloud,
every system side by side on the same fleet (``dyno.simulate.fleet``).

The fleet of size N: ``mix`` gives the tiers' shares (default ``DEFAULT_MIX``: 40% low, 40% mid, 20%
high), rounded to whole devices by largest remainder and shuffled with the seed; device i replays a
trace drawn from the set, from its own offset. Every system sees the same fleet. Each device generates
``rate`` frames a second (a camera; None: as fast as it can, closed loop) and decides for itself on its
own monitors, fed by the simulated server's replies. Per system and N:

- ``goodput``: answered inferences that met the SLO (latency, accuracy, bytes) per second;
- ``slo_attainment``: their share of the frames demanded (dropped frames count as missed);
- ``cloud_s``: cloud compute seconds per answered inference (decode + the tail's share of its batch),
  and ``price_per_million`` at ``price`` per cloud-second;
- ``p50_ms``/``p95_ms`` latency; ``jain``: Jain's fairness of per-device goodput; ``cloud_utilisation``:
  worker-busy seconds over workers x the run (until the last answer).

    document = fleet_experiment(plan, traces, sizes=(1, 4, 16), tiers={"low": 1.28, ...}, ...)
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from typing import Any, Sequence

import numpy as np

from dyno.emulate.traces import Trace
from dyno.errors import ConfigError
from dyno.policy import SLO
from dyno.policy.model import shared_model
from dyno.progress import NO_PROGRESS, Progress
from dyno.simulate.fleet import DeviceSpec, FleetConfig, FleetResult, run_fleet

__all__ = ["DEFAULT_MIX", "FLEET_POLICIES", "DEFAULT_RATE", "fleet_slo", "fleet_specs", "fleet_metrics",
           "fleet_experiment", "goals"]

DEFAULT_MIX = {"low": 0.4, "mid": 0.4, "high": 0.2}
FLEET_POLICIES = ("dyno", "cloud-only", "device-only", "neurosurgeon", "jalad", "split-int8")
#: Frames a second each device asks for by default (a camera app's rate).
DEFAULT_RATE = 15.0


def fleet_slo(rate: float | None) -> str:
    """The fleet's default SLO: onloading (least cloud per inference) while keeping up with the frame
    rate, answering within 200 ms and losing at most a point of top-1."""
    if rate is None:
        return "onload;latency<=200"
    return f"cloud_cost,throughput;throughput>={rate:g};latency<=200;drop<=1"


def _tiers_of(n: int, mix: dict[str, float], rng: random.Random) -> list[str]:
    total = sum(mix.values())
    exact = {t: n * share / total for t, share in mix.items()}
    counts = {t: int(v) for t, v in exact.items()}
    for t in sorted(exact, key=lambda t: exact[t] - counts[t], reverse=True)[: n - sum(counts.values())]:
        counts[t] += 1
    names = [t for t in mix for _ in range(counts[t])]
    rng.shuffle(names)
    return names


def fleet_specs(traces: Sequence[Trace], n: int, policy: str, *, mix: dict[str, float], tiers: dict[str, float],
                slo: SLO, rate: float | None, seed: int = 0, build: Any = None,
                whole_device: bool = False) -> list[DeviceSpec]:
    """The fleet of size ``n`` running ``policy`` (a fresh instance per device, ``build(name)``); the same
    tiers, traces and offsets for every policy at one ``seed``. ``whole_device``: a tier slows the
    encoding as well, as a slower CPU does (``dyno simulate``); not where only the heads are padded (the
    runtime's fleets)."""
    if build is None:
        from dyno.bench.simulate import build_policy as build
    unknown = set(mix) - set(tiers)
    if unknown:
        raise ConfigError(f"the mix names tiers with no slowdown: {', '.join(sorted(unknown))}")
    rng = random.Random(f"fleet-{seed}-{n}")
    specs = []
    for tier in _tiers_of(n, mix, rng):
        trace = traces[rng.randrange(len(traces))]
        specs.append(DeviceSpec(policy=build(policy), slowdown=tiers[tier], trace=trace, slo=slo,
                                codec_slowdown=tiers[tier] if whole_device else 1.0,
                                offset_s=rng.uniform(0.0, trace.period), rate=rate, tier=tier))
    return specs


def _jain(values: list[float]) -> float:
    square = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * square) if square > 0 else 1.0


def fleet_metrics(result: FleetResult, *, price: float | None = None) -> dict[str, Any]:
    """The per-system figures of one fleet run (module docstring)."""
    devices = result.devices
    duration = result.duration_s
    answered = sum(d.answered for d in devices)
    met = sum(d.met for d in devices)
    demanded = sum(d.demanded for d in devices)
    latencies = np.concatenate([np.asarray(d.latencies_ms) for d in devices]) if answered else np.zeros(0)
    cloud_s = sum(d.cloud_s_total for d in devices) / max(answered, 1)
    out = {
        "goodput": met / duration,
        "slo_attainment": met / demanded if demanded else 0.0,
        "cloud_s": cloud_s,
        "p50_ms": float(np.percentile(latencies, 50)) if answered else None,
        "p95_ms": float(np.percentile(latencies, 95)) if answered else None,
        "jain": _jain([d.met / duration for d in devices]),
        "cloud_utilisation": result.cloud_busy_s / (result.workers * max(result.end, duration)),
        "throughput": answered / duration,
        "inferences": answered, "demanded": demanded, "dropped": sum(d.dropped for d in devices),
        "fallbacks": sum(d.fallbacks for d in devices), "refused": result.refused,
        "offloaded_share": sum(d.offloaded for d in devices) / max(answered, 1),
        "accuracy": sum(d.accuracy_sum for d in devices) / max(answered, 1),
        "mean_batch": result.served / result.batches if result.batches else None,
    }
    if price is not None:
        out["price_per_million"] = cloud_s * price * 1e6
    return out


def goals(fleet: list[dict[str, Any]], baselines: Sequence[str]) -> dict[str, Any]:
    """The closing-note figures: DynO's goodput against the best baseline per N; at the smallest N where
    cloud-only's SLO attainment falls below 90%, DynO's attainment; and where both attain at least 90%,
    DynO's cloud-seconds per inference as a share of cloud-only's (the goal: at most a third)."""
    out: dict[str, Any] = {"goodput_vs_best_baseline": {}}
    for entry in fleet:
        p = entry["policies"]
        if "dyno" not in p:
            continue
        others = {b: p[b]["goodput"] for b in baselines if b in p and b != "dyno"}
        if others:
            best = max(others, key=lambda b: others[b])
            out["goodput_vs_best_baseline"][str(entry["devices"])] = {
                "best": best, "ratio": p["dyno"]["goodput"] / others[best] if others[best] > 0 else None}
    first = next((e for e in fleet if "cloud-only" in e["policies"] and "dyno" in e["policies"]
                  and e["policies"]["cloud-only"]["slo_attainment"] < 0.9), None)
    if first is not None:
        out["cloud_only_below_90"] = {"devices": first["devices"],
                                      "cloud_only": first["policies"]["cloud-only"]["slo_attainment"],
                                      "dyno": first["policies"]["dyno"]["slo_attainment"]}
    equal = [e for e in fleet if "cloud-only" in e["policies"] and "dyno" in e["policies"]
             and min(e["policies"]["cloud-only"]["slo_attainment"], e["policies"]["dyno"]["slo_attainment"]) >= 0.9
             and e["policies"]["cloud-only"]["cloud_s"] > 0]
    if equal:        # a share, not cloud-only's over DynO's: a DynO that onloads everything uses none
        shares = [e["policies"]["dyno"]["cloud_s"] / e["policies"]["cloud-only"]["cloud_s"] for e in equal]
        out["dyno_cloud_s_share_at_equal_attainment"] = {"devices": [e["devices"] for e in equal],
                                                         "median": statistics.median(shares), "max": max(shares)}
    return out


def fleet_experiment(plan: Any, traces: Sequence[Trace], *, sizes: Sequence[int], policies: Sequence[str],
                     mix: dict[str, float], tiers: dict[str, float], slo: SLO, rate: float | None,
                     config: FleetConfig, price: float | None = None, seed: int = 0,
                     speeds: dict[str, Any] | None = None, progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Every system at every fleet size (module docstring); returns the ``--json`` document."""
    if not traces:
        raise ConfigError("no traces to simulate")
    model = shared_model(plan)
    started = time.perf_counter()
    fleet = []
    for n in sizes:
        entry: dict[str, Any] = {"devices": n, "policies": {}, "seconds": {}}
        for name in policies:
            specs = fleet_specs(traces, n, name, mix=mix, tiers=tiers, slo=slo, rate=rate, seed=seed,
                                whole_device=True)
            tick = progress.task(f"fleet {n} x {name}", int(config.duration_s))
            done = [0]

            def advance(t: float, tick=tick, done=done) -> None:
                step = int(t) - done[0]
                if step > 0:
                    tick(step)
                    done[0] += step

            t0 = time.perf_counter()
            result = run_fleet(model, specs, config, progress=advance)
            advance(config.duration_s)
            entry["policies"][name] = fleet_metrics(result, price=price)
            entry["seconds"][name] = time.perf_counter() - t0
        fleet.append(entry)
    document = {"plan": plan.model, "slo": str(slo), "mix": dict(mix), "tiers": dict(tiers), "rate": rate,
                "duration_s": config.duration_s, "cloud": dataclasses.asdict(config.cloud),
                "client": {"rtt_ms": config.rtt_ms, "window": config.window, "backlog": config.backlog,
                           "decide_every_s": config.decide_every_s},
                "cloud_price_per_s": price, "fleet": fleet, "goals": goals(fleet, policies),
                "seconds": time.perf_counter() - started}
    if speeds is not None:
        document["speeds"] = speeds
    return document
