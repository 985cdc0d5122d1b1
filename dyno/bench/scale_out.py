"""``dyno bench-runtime --what scale-out``: the same fleet against the embedded server, Ray Serve with one
replica and Ray Serve with two, side by side, alternating over ``rounds``.

Each configuration is one ``dyno.bench.fleet_runtime.fleet_bench`` run (its own server, calibration,
round-trip probe and fleet); a round runs every configuration once, rounds alternate so that drift in
the machine's load spreads over all of them; figures are medians over the rounds. Derived:

- ``overhead_ms``: the Ray path's per-request overhead against the embedded server, as the difference of
  the unloaded round trip's p50 (one request at a time, all in the cloud), Ray with one replica minus
  embedded; beside it the same difference of the fleet's own p50 latency (which adds queueing);
- ``scaling``: goodput (and throughput) of the fleet with two replicas over one, and of the cloud-bound
  case (closed-loop raw streams, all in the cloud, no device work: what the deployment itself can do).

    document = scale_out_bench("plan.json", traces=trace_set("synthetic"), devices=64, policies=("dyno",))
    document["overhead_ms"]["round_trip_p50"], document["scaling"]["dyno"]["goodput"]
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from dyno.emulate.traces import Trace
from dyno.progress import NO_PROGRESS, Progress

__all__ = ["CONFIGS", "SERVE_BATCH", "scale_out_bench", "derived", "constant_trace", "print_scale_out"]

#: (server, replicas, where Ray batches form) compared; ``SERVE_BATCH``: Ray Serve's own batching, one
#: replica (``RayConfig.batch_in="replica"``), the design not chosen, measured beside on request.
CONFIGS: tuple[tuple[str, int, str], ...] = (("embedded", 1, "front"), ("ray", 1, "front"), ("ray", 2, "front"))
SERVE_BATCH = ("ray", 1, "replica")
FIGURES = ("goodput", "throughput", "p50_ms", "p95_ms", "slo_attainment", "cloud_s", "offloaded_share")


def constant_trace(rate_bps: float = 1e9, name: str = "fast") -> Trace:
    """A link that never limits (default 1 Gbit/s): the cloud-bound case."""
    return Trace([0.0, 3600.0], [rate_bps], name=name)


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _summary(runs: list[dict[str, Any]], policies: Sequence[str]) -> dict[str, Any]:
    """Medians over the rounds of one configuration."""
    out: dict[str, Any] = {"round_trip_p50": _median([r["round_trip_ms"]["p50"] for r in runs]),
                           "round_trip_p95": _median([r["round_trip_ms"]["p95"] for r in runs]),
                           "capacity_per_s": _median([(r["capacity"] or {}).get("per_s") for r in runs]),
                           "capacity_p50_ms": _median([(r["capacity"] or {}).get("p50_ms") for r in runs]),
                           "policies": {}}
    for name in policies:
        figures = [r["measured"]["fleet"][0]["policies"][name] for r in runs]
        out["policies"][name] = {k: _median([f.get(k) for f in figures]) for k in FIGURES}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _key(server: str, replicas: int, batch_in: str) -> str:
    if server == "embedded":
        return server
    return f"{server}-{replicas}" + ("-serve-batch" if batch_in == "replica" else "")


def derived(summary: dict[str, Any], policies: Sequence[str]) -> dict[str, Any]:
    """``overhead_ms`` (Ray with one replica minus embedded: round-trip p50, fleet p50 per policy) and
    ``scaling`` (two replicas over one: goodput and throughput per policy, the cloud-bound rate), where
    the configurations they need were run."""
    out: dict[str, Any] = {}
    embedded, one, two = summary.get("embedded"), summary.get("ray-1"), summary.get("ray-2")
    if embedded and one:
        out["overhead_ms"] = {
            "round_trip_p50": one["round_trip_p50"] - embedded["round_trip_p50"],
            "fleet_p50": {p: (one["policies"][p]["p50_ms"] or 0) - (embedded["policies"][p]["p50_ms"] or 0)
                          for p in policies}}
    if one and two:
        out["scaling"] = {p: {k: _ratio(two["policies"][p][k], one["policies"][p][k])
                              for k in ("goodput", "throughput")} for p in policies}
        out["scaling"]["cloud_bound"] = _ratio(two["capacity_per_s"], one["capacity_per_s"])
    return out


def scale_out_bench(plan_path: str, *, traces: Sequence[Trace], devices: int = 64, policies: Sequence[str] = ("dyno",),
                    rounds: int = 1, configs: Sequence[tuple[str, int, str]] = CONFIGS, capacity_s: float = 8.0,
                    progress: Progress = NO_PROGRESS, **fleet: Any) -> dict[str, Any]:
    """Run every configuration ``rounds`` times (module docstring); ``fleet``: ``fleet_bench``'s other
    keywords (rate, duration, mix, processes, probe, ray_address, ...). Each run ends with the cloud-bound
    case (``capacity_s`` seconds of closed-loop raw streams, ``fleet_capacity.capacity``)."""
    from dyno.bench.fleet_runtime import fleet_bench

    runs: dict[str, list[dict[str, Any]]] = {_key(*c): [] for c in configs}
    tick = progress.task("scale-out bench", rounds * len(configs))
    for round_ in range(rounds):
        for server, replicas, batch_in in configs:
            tick(status=f"round {round_ + 1}: {_key(server, replicas, batch_in)}")
            runs[_key(server, replicas, batch_in)].append(
                fleet_bench(plan_path, sizes=(devices,), policies=policies, traces=traces, server=server,
                            replicas=replicas, batch_in=batch_in, capacity_s=capacity_s,
                            apart=False, **fleet))      # every server on every core, as Ray's replicas are
    summary = {key: _summary(value, policies) for key, value in runs.items()}
    document: dict[str, Any] = {"devices": devices, "rounds": rounds, "policies": list(policies),
                                "traces": sorted({t.name for t in traces}), "configs": summary, "runs": runs}
    document.update(derived(summary, policies))
    return document


def print_scale_out(document: dict[str, Any]) -> None:
    """One table: per configuration and policy the medians; then the overhead and the scaling."""
    from rich.table import Table

    from dyno.bench.console import stdout_console

    table = Table(title=f"{document['devices']} devices, traces {', '.join(document['traces'])}, "
                        f"medians over {document['rounds']} round(s)")
    for column in ("server", "policy", "goodput/s", "answered/s", "p50 ms", "p95 ms", "SLO met",
                   "round trip p50 ms", "cloud-bound /s"):
        table.add_column(column, justify="left" if column in ("server", "policy") else "right")
    for key, config in document["configs"].items():
        for name, f in config["policies"].items():
            table.add_row(key, name, f"{f['goodput']:.1f}", f"{f['throughput']:.1f}", _ms(f["p50_ms"]),
                          _ms(f["p95_ms"]), f"{f['slo_attainment']:.0%}", _ms(config["round_trip_p50"]),
                          _ms(config["capacity_per_s"]))
    console = stdout_console()
    console.print(table)
    if "overhead_ms" in document:
        console.print(f"Ray path overhead (ray-1 minus embedded): round trip p50 "
                      f"{document['overhead_ms']['round_trip_p50']:+.2f} ms; fleet p50 "
                      f"{document['overhead_ms']['fleet_p50']}", highlight=False, soft_wrap=True)
    if "scaling" in document:
        console.print(f"scaling 1 -> 2 replicas: {document['scaling']}", highlight=False, soft_wrap=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
