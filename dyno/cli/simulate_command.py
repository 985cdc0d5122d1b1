"""``dyno simulate``: every policy side by side over bandwidth traces, in a discrete-event simulation; with
``--fleet``, fleets of devices sharing one cloud."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dyno.bench.simulate import DEFAULT_POLICIES
from dyno.cli._args import int_list, nonnegative_float, output_file, positive_float, positive_int
from dyno.policy import DEFAULT_SLO, ONLOADING_SLO


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate every policy over bandwidth traces and device tiers (or fleets of devices)",
        description="Discrete-event simulation of inferences through the device -> link -> cloud pipeline, "
        "with the plan's numbers, the link driven by each trace, and every policy side by side on the same "
        "trace and tier. Tiers are absolute: the latency of EfficientNet-Lite0 on the device (low 49 ms, "
        "Raspberry Pi 4 CPU; mid 12 ms, Pixel 4 CPU; high 3 ms, Jetson AGX Xavier class) and on the cloud "
        "(gpu 1.5 ms); the plan's profiles give each model's per-cut shape, scaled by the tier's latency "
        "over Lite0's on the machine that profiled the plan (measured here once, if the plan does not say). "
        "The cloud batches requests per cut as the server does. --fleet simulates N devices of mixed tiers "
        "sharing one cloud.",
    )
    parser.add_argument("--plan", help="plan JSON (from `dyno analyze`)")
    parser.add_argument("--trace",
                        help="a trace file, a directory of traces (seconds<TAB>Mbit/s, Mahimahi files, or "
                        "Mahimahi NAME.up/NAME.down: the uplink files), or synthetic[:step+burst+onoff]")
    parser.add_argument("--tier", default="mid",
                        help="low, mid, high, all, comma-separated tiers, or a Lite0 latency in ms (default: mid)")
    parser.add_argument("--slowdown", type=positive_float,
                        help="a device slowdown K against the plan's own device profile (replaces --tier)")
    parser.add_argument("--cloud", default="gpu",
                        help="gpu (Lite0 in 1.5 ms, the default), measured (the plan's cloud profile: this "
                        "machine's server, as `dyno bench` has it) or a Lite0 latency in ms")
    parser.add_argument("--reference-ms", type=positive_float,
                        help="Lite0's latency on the machine that profiled the plan (default: the plan's note, "
                        "else measured here)")
    parser.add_argument("--workers", type=positive_int, default=1, help="cloud compute workers (default 1)")
    parser.add_argument("--max-batch", type=positive_int, default=32, help="cloud batch size limit (default 32)")
    parser.add_argument("--policies", default=None,
                        help="comma-separated policy names (default: all and the hindsight oracle; "
                        "--fleet: dyno and the five baselines)")
    parser.add_argument("--slo", default=None,
                        help=f"objectives;constraints, e.g. {DEFAULT_SLO!r} (the default) or {ONLOADING_SLO!r} "
                        "(--fleet default: least cloud at the frame rate, latency<=200, drop<=1)")
    parser.add_argument("--duration", type=positive_float,
                        help="seconds of inferences per trace (default: one trace period; --fleet: 60)")
    parser.add_argument("--limit", type=positive_int, help="use only the first N traces (sorted by name)")
    parser.add_argument("--rtt-ms", type=nonnegative_float, default=40.0, help="round-trip time (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=1,
                        help="the batch size policies expect before replies say (default: %(default)s)")
    parser.add_argument("--inflight", type=positive_int, default=8,
                        help="the client's request window: inferences started and not answered "
                        "(default: %(default)s)")
    _fleet_arguments(parser)
    parser.add_argument("--summary", action="store_true",
                        help="the closing-note figures: DynO/baseline throughput ratios, bytes vs Neurosurgeon, "
                        "regret against the oracle, and the onloading run (min cloud cost at cloud-only's throughput)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--plot", type=output_file,
                        help="write a PNG: bandwidth and each policy's cut and bits over time (--fleet: goodput "
                        "and cloud ms per inference against N)")
    parser.add_argument("--plot-trace", help="the trace to draw (default: the first)")
    parser.add_argument("--bench-decide", action="store_true",
                        help="time one DynO decision (80 cuts x 16 bits synthetic plan, and --plan if given)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", type=int_list,
                        help="fleet sizes, e.g. 1,4,16,64,256,1024: N devices sharing one cloud")
    parser.add_argument("--mix", default="low=0.4,mid=0.4,high=0.2",
                        help="--fleet: the tiers' shares of the devices (default: %(default)s)")
    parser.add_argument("--rate", type=nonnegative_float, default=15.0,
                        help="--fleet: frames per second each device asks for, 0 = as fast as it can "
                        "(default: %(default)s)")
    parser.add_argument("--cloud-price", type=nonnegative_float,
                        help="price of one cloud-second (e.g. 0.0006 $/s): adds the price per million inferences")
    parser.add_argument("--decide-every", type=nonnegative_float, default=0.0,
                        help="--fleet: a device reuses its last decision for this many seconds (default 0: "
                        "decides for every inference)")
    parser.add_argument("--target-utilisation", type=positive_float, default=1.0,
                        help="the cloud's target utilisation: above it replies ask devices to take work back")
    parser.add_argument("--seed", type=int, default=0, help="--fleet: the seed of tiers, traces and offsets")


def _mix(text: str) -> dict[str, float]:
    from dyno.errors import ConfigError

    out = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        try:
            out[name.strip()] = float(share)
        except ValueError:
            raise ConfigError(f"--mix: {part!r} is not TIER=SHARE") from None
    if not out or any(v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise ConfigError("--mix needs TIER=SHARE pairs with positive shares")
    return out


def run(args: argparse.Namespace) -> None:
    from dyno.bench.console import RichProgress
    from dyno.bench.reference import resolve
    from dyno.emulate.patterns import trace_set
    from dyno.errors import ConfigError
    from dyno.plan import Plan
    from dyno.simulate import CloudConfig

    plan = Plan.load(args.plan) if args.plan else None
    if args.bench_decide:
        return _bench(plan, args.json)
    if plan is None or not args.trace:
        raise ConfigError("dyno simulate needs --plan and --trace (or --bench-decide)")
    traces = trace_set(args.trace)[: args.limit]
    tier = ",".join(_mix(args.mix)) if args.fleet and args.tier == "mid" else args.tier
    tiers, scale, speeds = resolve(plan, tier=tier, slowdown=args.slowdown, cloud=args.cloud,
                                   reference_ms=args.reference_ms)
    cloud = CloudConfig(workers=args.workers, max_batch=args.max_batch, scale=scale,
                        target_utilisation=args.target_utilisation)
    with RichProgress(not args.no_progress) as progress:
        if args.fleet:
            document = _fleet(args, plan, traces, tiers, cloud, speeds, progress)
        else:
            document = _single(args, plan, traces, tiers, cloud, speeds, progress)
    if args.json:
        print(json.dumps(document, default=_jsonable))
    elif args.fleet:
        from dyno.bench.fleet_report import print_fleet

        print_fleet(document)
    else:
        from dyno.bench.simulate_report import print_report

        print_report(document)


def _single(args: argparse.Namespace, plan: Any, traces: list, tiers: dict, cloud: Any, speeds: dict,
            progress: Any) -> dict:
    from dyno.bench.simulate import experiment
    from dyno.policy import SLO

    config = {"duration_s": args.duration, "rtt_ms": args.rtt_ms, "batch": args.batch,
              "max_inflight": args.inflight}
    policies = args.policies or ",".join(DEFAULT_POLICIES + ("oracle",))
    return experiment(plan, traces, tiers=tiers, slo=SLO.parse(args.slo or DEFAULT_SLO), config=config,
                      policies=[p.strip() for p in policies.split(",") if p.strip()], closing=args.summary,
                      plot=args.plot, plot_trace=args.plot_trace, progress=progress, cloud=cloud, speeds=speeds)


def _fleet(args: argparse.Namespace, plan: Any, traces: list, tiers: dict, cloud: Any, speeds: dict,
           progress: Any) -> dict:
    from dyno.bench.fleet import FLEET_POLICIES, fleet_experiment, fleet_slo
    from dyno.policy import SLO
    from dyno.simulate import FleetConfig

    rate = args.rate or None
    config = FleetConfig(duration_s=args.duration or 60.0, rtt_ms=args.rtt_ms, window=args.inflight,
                         batch_hint=args.batch, decide_every_s=args.decide_every, cloud=cloud)
    policies = [p.strip() for p in (args.policies or ",".join(FLEET_POLICIES)).split(",") if p.strip()]
    document = fleet_experiment(plan, traces, sizes=args.fleet, policies=policies, mix=_mix(args.mix), tiers=tiers,
                                slo=SLO.parse(args.slo or fleet_slo(rate)), rate=rate, config=config,
                                price=args.cloud_price, seed=args.seed, speeds=speeds, progress=progress)
    if args.plot:
        from dyno.bench.fleet_report import plot_fleet

        document["plot"] = str(plot_fleet(document, args.plot))
    return document


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
