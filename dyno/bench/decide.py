"""How long one DynO decision takes: ``dyno simulate --bench-decide``.

Times ``DynoPolicy.decide`` on a synthetic plan of 80 cuts x 16 bit widths (and on ``--plan`` if given),
with the estimates changing on every call (so nothing is cached between decisions), and reports the
plan's rows and the rows DynO prices (each cut's undominated ones: ``dyno.policy.front``), and the
median over repeats of the mean time per decision, wall-clock and CPU time of this process (on a
shared machine the CPU figure is the one to compare with the 50 us goal; wall-clock includes waiting
for a core).
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from dyno.policy import SLO, Estimates, PerfModel, State, make
from dyno.policy.front import undominated
from dyno.simulate.synthetic import synthetic_plan

__all__ = ["bench_decide"]


def _time(plan, slo: SLO, n: int, repeats: int) -> dict[str, Any]:
    policy = make("dyno")
    rng = random.Random(0)
    states = [State(plan, Estimates(bandwidth_bps=rng.uniform(1e5, 2e7), rtt_ms=rng.uniform(5, 80),
                                    device_slowdown=rng.choice([2.0, 8.0, 33.0])), slo, in_flight=8)
              for _ in range(n)]
    for s in states[:50]:   # warm-up: build the model, fill caches
        policy.decide(s)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for s in states:
            policy.decide(s)
        wall.append((time.perf_counter() - start) / n * 1e6)
        cpu.append((time.process_time() - start_cpu) / n * 1e6)
    model = PerfModel(plan)
    return {"plan": plan.model, "cuts": len(plan.cuts), "rows": len(model.rows),
            "priced_rows": int(undominated(model, slo.confidence).sum()), "slo": str(slo),
            "us_per_decision": statistics.median(wall), "us_min": min(wall),
            "cpu_us_per_decision": statistics.median(cpu)}


def bench_decide(plan=None, *, slos: tuple[str, ...] = ("throughput,cloud_cost;drop<=1",
                                                         "cloud_cost,throughput;throughput>=cloud-only;drop<=1"),
                 n: int = 2000, repeats: int = 5) -> list[dict[str, Any]]:
    plans = [synthetic_plan(80, bits=tuple(range(1, 17)), seed=1, codecs=("shuffle-lz4",))]
    if plan is not None:
        plans.append(plan)
    return [_time(p, SLO.parse(s), n, repeats) for p in plans for s in slos]
