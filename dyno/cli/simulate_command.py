"""``dyno simulate``: every policy side by side over bandwidth traces, in a discrete-event simulation."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from dyno.bench.simulate import DEFAULT_POLICIES
from dyno.emulate.device import TIERS
from dyno.policy import DEFAULT_SLO, ONLOADING_SLO


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate every policy over bandwidth traces and device tiers",
        description="Discrete-event simulation of a stream of inferences through the device -> link -> "
        "cloud pipeline, with the plan's numbers, the link driven by each trace, and every policy side "
        "by side on the same trace and tier. Tiers are device slowdowns relative to the cloud process "
        "that measured the plan: low = 33 (Raspberry Pi 4 CPU), mid = 8 (Pixel 4 CPU), high = 2 (Jetson "
        "AGX Xavier class).",
    )
    parser.add_argument("--plan", help="plan JSON (from `dyno analyze`)")
    parser.add_argument("--trace", help="a trace file or a directory of traces (seconds<TAB>Mbit/s, or Mahimahi)")
    parser.add_argument("--tier", default="mid", help="low, mid, high, or all (default: mid)")
    parser.add_argument("--slowdown", type=float, help="a custom device slowdown K (replaces --tier)")
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES + ("oracle",)),
                        help="comma-separated policy names (default: all, and the hindsight oracle)")
    parser.add_argument("--slo", default=DEFAULT_SLO,
                        help=f"objectives;constraints, e.g. {DEFAULT_SLO!r} or {ONLOADING_SLO!r} (default: %(default)s)")
    parser.add_argument("--duration", type=float, help="seconds of inferences per trace (default: one trace period)")
    parser.add_argument("--limit", type=int, help="use only the first N traces (sorted by name)")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip time (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="expected cloud batch size (default: %(default)s)")
    parser.add_argument("--inflight", type=int, default=8,
                        help="the client's request window: inferences started and not answered (default: %(default)s)")
    parser.add_argument("--probe-every", type=float, default=30.0,
                        help="Neurosurgeon's bandwidth probe period in seconds, 0 = only at start (default: %(default)s)")
    parser.add_argument("--summary", action="store_true",
                        help="the closing-note figures: DynO/baseline throughput ratios, bytes vs Neurosurgeon, "
                        "regret against the oracle, and the onloading run (min cloud cost at cloud-only's throughput)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--plot", help="write a PNG: bandwidth and each policy's cut and bits over time")
    parser.add_argument("--plot-trace", help="the trace to draw (default: the first)")
    parser.add_argument("--bench-decide", action="store_true",
                        help="time one DynO decision (80 cuts x 16 bits synthetic plan, and --plan if given)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _tiers(args: argparse.Namespace) -> dict[str, float]:
    from dyno.errors import ConfigError

    if args.slowdown is not None:
        if not (args.slowdown > 0 and math.isfinite(args.slowdown)):
            raise ConfigError("--slowdown must be a positive number")
        return {f"k{args.slowdown:g}": args.slowdown}
    if args.tier == "all":
        return dict(TIERS)
    tiers = {}
    for name in args.tier.split(","):
        if name not in TIERS:
            raise ConfigError(f"unknown tier {name!r}; use low, mid, high, all, or --slowdown K")
        tiers[name] = TIERS[name]
    return tiers


def run(args: argparse.Namespace) -> int | None:
    from dyno.bench.console import RichProgress
    from dyno.errors import ConfigError
    from dyno.plan import Plan

    plan = Plan.load(args.plan) if args.plan else None
    if args.bench_decide:
        return _bench(plan, args)
    if plan is None or not args.trace:
        raise ConfigError("dyno simulate needs --plan and --trace (or --bench-decide)")
    from dyno.bench.simulate import run as simulate
    from dyno.bench.simulate import summary
    from dyno.emulate.traces import load_traces
    from dyno.policy import SLO

    traces = load_traces(args.trace)
    if args.limit:
        traces = traces[: args.limit]
    tiers = _tiers(args)
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    slo = SLO.parse(args.slo)
    if args.summary:
        for needed in ("dyno", "oracle"):
            if needed not in policies:
                policies += (needed,)
    config = {"duration_s": args.duration, "rtt_ms": args.rtt_ms, "batch": args.batch,
              "max_inflight": args.inflight, "probe_every_s": args.probe_every or None}
    plot_trace = args.plot_trace or traces[0].name
    if args.plot and plot_trace not in {t.name for t in traces}:
        raise ConfigError(f"--plot-trace {plot_trace!r} is not among the traces")
    runs = [("main", slo, policies)]
    if args.summary:
        runs.append(("onloading", SLO.parse(ONLOADING_SLO), ("dyno", "cloud-only")))
    reports = {}
    with RichProgress(not args.no_progress) as progress:
        tick = progress.task("simulate", len(traces) * len(tiers) * len(runs))
        for label, run_slo, run_policies in runs:
            reports[label] = simulate(
                plan, traces, tiers=tiers, policies=run_policies, slo=run_slo, config=config,
                timeline_for=(next(iter(tiers)), plot_trace) if args.plot and label == "main" else None,
                progress=lambda what, label=label: tick(status=f"{label}: {what}"))
    main = reports["main"]
    document: dict[str, Any] = main.to_json()
    if args.summary:
        document["summary"] = summary(main, reports.get("onloading"))
        document["onloading"] = reports["onloading"].to_json()["by_tier"]
    if args.plot:
        from dyno.bench.simulate_plot import plot_timeline

        trace = next(t for t in traces if t.name == plot_trace)
        path = plot_timeline(main, trace, next(iter(tiers)), args.plot)
        document["plot"] = str(path)
    if args.json:
        print(json.dumps(document, default=_jsonable))
        return None
    _print(document, args)
    return None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _bench(plan, args: argparse.Namespace) -> None:
    from dyno.bench.decide import bench_decide

    results = bench_decide(plan)
    if args.json:
        print(json.dumps({"bench_decide": results}))
        return
    for r in results:
        print(f"{r['plan']}: {r['cuts']} cuts, {r['rows']} (cut, codec, bits) rows, SLO {r['slo']}: "
              f"{r['us_per_decision']:.1f} us per decision wall-clock (best run {r['us_min']:.1f} us), "
              f"{r['cpu_us_per_decision']:.1f} us CPU")


def _print(document: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.table import Table

    from dyno.bench.console import stdout_console

    console = stdout_console()
    for tier, policies in document["by_tier"].items():
        table = Table(title=f"{document['plan']}, tier {tier} (slowdown {document['tiers'][tier]:g}), "
                      f"SLO {document['slo']}, {len({p['trace'] for p in document['per_trace']})} trace(s)",
                      header_style="bold")
        for column in ("policy", "inf/s", "median inf/s", "p50 ms", "p95 ms", "bytes/inf", "bytes/offloaded",
                       "top-1", "cloud ms/inf", "violations"):
            table.add_column(column, justify="left" if column == "policy" else "right")
        for name, m in policies.items():
            table.add_row(name, f"{m['throughput']:.2f}", f"{m['throughput_median']:.2f}", _ms(m["p50_ms"]),
                          _ms(m["p95_ms"]), f"{m['bytes_mean']:,.0f}", f"{m['bytes_per_offloaded']:,.0f}",
                          f"{m['accuracy']:.4f}", f"{m['cloud_s'] * 1000:.2f}", str(m["violations"]))
        console.print(table)
    if "summary" in document:
        _print_summary(console, document["summary"])
    if "plot" in document:
        console.print(f"plot: {document['plot']}")
    console.print(f"simulated in {document['seconds']:.1f} s", style="dim")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _print_summary(console, s: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"DynO throughput / baseline throughput over traces (SLO {s['slo']})", header_style="bold")
    tiers = list(s["tiers"])
    table.add_column("baseline")
    for tier in tiers:
        table.add_column(f"{tier} median", justify="right")
        table.add_column(f"{tier} min", justify="right")
        table.add_column(f"{tier} <1x", justify="right")
        table.add_column(f"{tier} X breaks SLO", justify="right")
    baselines = list(next(iter(s["tiers"].values()))["speedup"])
    for b in baselines:
        cells = []
        for tier in tiers:
            sp = s["tiers"][tier]["speedup"].get(b, {})
            cells += [f"{sp.get('median', math.nan):.2f}x", f"{sp.get('min', math.nan):.2f}x",
                      str(sp.get("below_1", "-")), f"{sp.get('baseline_violation_share', math.nan):.0%}"]
        table.add_row(b, *cells)
    console.print(table)
    for tier in tiers:
        t = s["tiers"][tier]
        lines = [f"[bold]{tier}[/] (slowdown {t['slowdown']:g}):"]
        if t.get("bytes_ratio_neurosurgeon"):
            r = t["bytes_ratio_neurosurgeon"]
            b = t["bytes_per_offloaded"]
            lines.append(f"  bytes per offloaded inference: Neurosurgeon {b['neurosurgeon']:,.0f}, DynO {b['dyno']:,.0f}; "
                         f"Neurosurgeon/DynO over traces median {r['median']:.1f}x, max {r['max']:.1f}x")
        if t.get("regret"):
            r = t["regret"]
            lines.append(f"  regret vs hindsight oracle: median {r['median']:.1%}, max {r['max']:.1%}, min {r['min']:.1%}")
        if "onloading" in t:
            o = t["onloading"]
            a = o["throughput_vs_cloud_only"]
            lines.append(f"  onloading ({o['slo']}): cloud ms/inference cloud-only {o['cloud_s']['cloud-only'] * 1000:.2f}, "
                         f"DynO {o['cloud_s']['dyno'] * 1000:.2f} -> {o['cloud_s_reduction']:.2f}x less; "
                         f"DynO throughput / cloud-only median {a['median']:.2f}x, min {a['min']:.2f}x")
        console.print("\n".join(lines))
