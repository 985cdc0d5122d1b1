"""``dyno simulate``: every policy side by side over bandwidth traces, in a discrete-event simulation."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dyno.bench.simulate import DEFAULT_POLICIES
from dyno.cli._args import nonnegative_float, output_file, positive_float, positive_int
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
    parser.add_argument("--trace",
                        help="a trace file or a directory of traces (seconds<TAB>Mbit/s, or Mahimahi)")
    parser.add_argument("--tier", default="mid", help="low, mid, high, or all (default: mid)")
    parser.add_argument("--slowdown", type=positive_float, help="a custom device slowdown K (replaces --tier)")
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES + ("oracle",)),
                        help="comma-separated policy names (default: all, and the hindsight oracle)")
    parser.add_argument("--slo", default=DEFAULT_SLO,
                        help=f"objectives;constraints, e.g. {DEFAULT_SLO!r} or {ONLOADING_SLO!r} "
                        "(default: %(default)s)")
    parser.add_argument("--duration", type=positive_float,
                        help="seconds of inferences per trace (default: one trace period)")
    parser.add_argument("--limit", type=positive_int, help="use only the first N traces (sorted by name)")
    parser.add_argument("--rtt-ms", type=nonnegative_float, default=40.0, help="round-trip time (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=1,
                        help="expected cloud batch size (default: %(default)s)")
    parser.add_argument("--inflight", type=positive_int, default=8,
                        help="the client's request window: inferences started and not answered "
                        "(default: %(default)s)")
    parser.add_argument("--probe-every", type=nonnegative_float, default=30.0,
                        help="Neurosurgeon's bandwidth probe period in seconds, 0 = only at start "
                        "(default: %(default)s)")
    parser.add_argument("--summary", action="store_true",
                        help="the closing-note figures: DynO/baseline throughput ratios, bytes vs Neurosurgeon, "
                        "regret against the oracle, and the onloading run (min cloud cost at cloud-only's throughput)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--plot", type=output_file,
                        help="write a PNG: bandwidth and each policy's cut and bits over time")
    parser.add_argument("--plot-trace", help="the trace to draw (default: the first)")
    parser.add_argument("--bench-decide", action="store_true",
                        help="time one DynO decision (80 cuts x 16 bits synthetic plan, and --plan if given)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _tiers(args: argparse.Namespace) -> dict[str, float]:
    from dyno.errors import ConfigError

    if args.slowdown is not None:
        return {f"k{args.slowdown:g}": args.slowdown}
    if args.tier == "all":
        return dict(TIERS)
    tiers = {}
    for name in args.tier.split(","):
        if name not in TIERS:
            raise ConfigError(f"unknown tier {name!r}; use low, mid, high, all, or --slowdown K")
        tiers[name] = TIERS[name]
    return tiers


def run(args: argparse.Namespace) -> None:
    from dyno.bench.console import RichProgress
    from dyno.bench.simulate import experiment
    from dyno.bench.simulate_report import print_report
    from dyno.emulate.traces import load_traces
    from dyno.errors import ConfigError
    from dyno.plan import Plan
    from dyno.policy import SLO

    plan = Plan.load(args.plan) if args.plan else None
    if args.bench_decide:
        return _bench(plan, args.json)
    if plan is None or not args.trace:
        raise ConfigError("dyno simulate needs --plan and --trace (or --bench-decide)")
    traces = load_traces(args.trace)[: args.limit]
    config = {"duration_s": args.duration, "rtt_ms": args.rtt_ms, "batch": args.batch,
              "max_inflight": args.inflight, "probe_every_s": args.probe_every or None}
    with RichProgress(not args.no_progress) as progress:
        document = experiment(plan, traces, tiers=_tiers(args), slo=SLO.parse(args.slo), config=config,
                              policies=[p.strip() for p in args.policies.split(",") if p.strip()],
                              closing=args.summary, plot=args.plot, plot_trace=args.plot_trace, progress=progress)
    if args.json:
        print(json.dumps(document, default=_jsonable))
    else:
        print_report(document)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _bench(plan: Any, as_json: bool) -> None:
    from dyno.bench.decide import bench_decide
    from dyno.bench.simulate_report import print_decide

    results = bench_decide(plan)
    if as_json:
        print(json.dumps({"bench_decide": results}))
    else:
        print_decide(results)
