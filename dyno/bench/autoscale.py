"""``dyno bench-runtime --what autoscale``: Ray Serve's autoscaler following a stepped fleet.

The tails run on Ray Serve with autoscaling between ``autoscale`` = (MIN, MAX) replicas of one torch
thread each (``dyno.bench.fleet_runtime.start_cloud``), behind dyno's gRPC front. The fleet's load is
stepped: ``steps`` = [(devices, seconds), ...], e.g. 4 devices for 20 s, then 64 for 40 s, then 4 for
60 s. All devices of the largest step are started at once (the fleet benchmark's clients, workers and
emulation); device j is fed frames only during the steps that have more than j devices, so the load
changes at once at each step with no restart between them.

While the fleet runs, the front's metrics are read every ``poll_s``: ``dyno_replicas`` (replicas
running, as the front's ``ReplicaWatch`` sees them through ``serve.status``) and ``dyno_load``. The
document holds that timeline, the answers per second, and per step the answers per second and p50/p95 latency;
``plot_autoscale`` draws replicas over time above the offered and answered load (one PNG).

    document = autoscale_bench("plan.json", traces=trace_set("synthetic"), steps=[(4, 20), (64, 40), (4, 60)])
    plot_autoscale(document, "autoscale.png")
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dyno.bench.fleet import DEFAULT_MIX
from dyno.emulate.traces import Trace
from dyno.errors import ConfigError
from dyno.figures import save_png
from dyno.progress import NO_PROGRESS, Progress

__all__ = ["DEFAULT_STEPS", "parse_steps", "active_spans", "autoscale_bench", "plot_autoscale"]

#: 4 devices, then 64, then 4 again (seconds each): the up-step and a back-step longer than the
#: downscale delay (15 s) plus Ray Serve's look-back.
DEFAULT_STEPS: tuple[tuple[int, float], ...] = ((4, 20.0), (64, 40.0), (4, 60.0))


def parse_steps(text: str) -> list[tuple[int, float]]:
    """``"4:20,64:40,4:60"`` -> [(4, 20.0), (64, 40.0), (4, 60.0)]; ConfigError on anything else."""
    steps = []
    for part in text.split(","):
        try:
            devices, seconds = part.split(":")
            step = (int(devices), float(seconds))
        except ValueError:
            raise ConfigError(f"steps are DEVICES:SECONDS,..., got {text!r}") from None
        if not 1 <= step[0] <= 4096 or not 0 < step[1] <= 3600:
            raise ConfigError(f"a step needs 1..4096 devices and 0..3600 seconds, got {part!r}")
        steps.append(step)
    return steps


def active_spans(steps: Sequence[tuple[int, float]]) -> list[list[list[float]]]:
    """Per device of the largest step, the [from, to] seconds it is fed (adjacent steps merged)."""
    spans: list[list[list[float]]] = [[] for _ in range(max(n for n, _ in steps))]
    start = 0.0
    for devices, seconds in steps:
        for j in range(devices):
            if spans[j] and spans[j][-1][1] == start:
                spans[j][-1][1] = start + seconds
            else:
                spans[j].append([start, start + seconds])
        start += seconds
    return spans


class _Poller:
    """Reads the front's replicas and load every ``period_s`` in a thread: (perf_counter, replicas, load)."""

    def __init__(self, cloud: Any, period_s: float):
        self.cloud, self.period_s = cloud, period_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dyno-autoscale-poll", daemon=True)

    def _loop(self) -> None:
        from dyno.bench.fleet_runtime import server_metrics

        while not self._stop.is_set():
            try:
                metrics = server_metrics(self.cloud)
            except OSError:
                metrics = {}
            self.samples.append((time.perf_counter(), metrics.get(("dyno_replicas", ()), float("nan")),
                                 metrics.get(("dyno_load", ()), float("nan"))))
            self._stop.wait(self.period_s)

    def __enter__(self) -> _Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _per_step(steps: Sequence[tuple[int, float]], reports: list[dict[str, Any]], start: float) -> list[dict]:
    answers = [(finished - start, latency) for report in reports
               for latency, *_, finished, _correct, _nbytes in report["answers"]]
    out, at = [], 0.0
    for devices, seconds in steps:
        inside = [latency for t, latency in answers if at <= t < at + seconds]
        p50, p95 = np.percentile(inside, [50, 95]) if inside else (float("nan"), float("nan"))
        out.append({"devices": devices, "from_s": at, "seconds": seconds, "answered_per_s": len(inside) / seconds,
                    "p50_ms": float(p50), "p95_ms": float(p95)})
        at += seconds
    return out


def autoscale_bench(plan_path: str, *, traces: Sequence[Trace], steps: Sequence[tuple[int, float]] = DEFAULT_STEPS,
                    autoscale: tuple[int, int] = (1, 2), policy: str = "cloud-only",
                    mix: dict[str, float] = DEFAULT_MIX, rate: float = 10.0, window: int = 8, processes: int = 4,
                    tail_s: float = 5.0, poll_s: float = 0.5, ray_address: str | None = None, seed: int = 0,
                    n: int = 200, weights: str = "trained", progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Run the stepped fleet against an autoscaling Ray deployment (module docstring)."""
    from dyno.bench.fleet import fleet_slo, fleet_specs
    from dyno.bench.fleet_runtime import client_specs, run_clients, start_cloud
    from dyno.bench.reference import Speeds
    from dyno.plan import Plan
    from dyno.policy import SLO

    plan = Plan.load(plan_path)
    parsed = SLO.parse(fleet_slo(rate))
    tiers = {t: max(1.0, Speeds.for_plan(plan).device(t)) for t in mix}
    spans = active_spans(steps)
    duration = sum(seconds for _, seconds in steps)
    specs = fleet_specs(traces, len(spans), policy, mix=mix, tiers=tiers, slo=parsed, rate=rate, seed=seed)
    clients = [{**c, "active": s} for c, s in zip(client_specs(specs, policy, rate), spans, strict=True)]
    worker = {"plan_path": str(plan_path), "weights": weights, "slo": str(parsed), "rate": rate,
              "duration": duration, "window": window, "n": n}
    tick = progress.task("autoscale bench", 1)
    tick(status=f"{' -> '.join(str(d) for d, _ in steps)} devices, {duration:.0f} s")
    with start_cloud(str(plan_path), weights, server="ray", autoscale=autoscale, ray_address=ray_address) as cloud:
        with _Poller(cloud, poll_s) as poller:
            reports = run_clients(cloud, clients, worker, processes)
            time.sleep(tail_s)
    start = min(report["start"] for report in reports)
    finished = sorted(f - start for report in reports for *_, f, _c, _b in report["answers"])
    seconds = int(np.ceil(duration))
    samples = [(t - start, r, load) for t, r, load in poller.samples if t >= start - poll_s]
    return {"plan": plan.model, "server": "ray", "autoscale": list(autoscale), "policy": policy, "rate": rate,
            "steps": [list(s) for s in steps], "duration_s": duration, "poll_s": poll_s,
            "timeline": {"t": [s[0] for s in samples], "replicas": [s[1] for s in samples],
                         "load": [s[2] for s in samples]},
            "answered_per_s": np.histogram(finished, bins=seconds, range=(0, seconds))[0].tolist(),
            "per_step": _per_step(steps, reports, start),
            "max_replicas_seen": max((s[1] for s in samples if s[1] == s[1]), default=None)}


def plot_autoscale(document: dict[str, Any], path: str | Path) -> Path:
    """Replicas over time (top) above the devices fed and the inferences answered per second (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5), height_ratios=(1, 1.3))
    timeline = document["timeline"]
    top.step(timeline["t"], timeline["replicas"], where="post", color="tab:blue")
    top.set_ylabel("replicas running")
    low, high = document["autoscale"]
    top.set_ylim(-0.2, high + 0.5)
    top.set_title(f"{document['plan']} on Ray Serve, autoscale {low}..{high} replicas "
                  f"({document['policy']}, {document['rate']:g} frames/s per device)")
    edges, devices, at = [0.0], [], 0.0
    for count, seconds in document["steps"]:
        at += seconds
        edges.append(at)
        devices.append(count)
    bottom.stairs(np.array(devices) * document["rate"], edges, color="tab:gray", label="offered (devices x rate)")
    answered = document["answered_per_s"]
    bottom.plot(np.arange(len(answered)) + 0.5, answered, color="tab:green", label="answered per second")
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("inferences / s")
    bottom.legend(loc="upper right")
    for axis in (top, bottom):
        for edge in edges[1:-1]:
            axis.axvline(edge, color="black", linewidth=0.5, linestyle=":")
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
