"""``dyno bench-runtime``: what the runtime costs (parsing only)."""

from __future__ import annotations

import argparse
import json

from dyno.cli._args import (
    bounded_int,
    int_list,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_bench(subparsers)


# ---------------------------------------------------------------------------------------- bench

def _register_bench(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench-runtime", help="measure the runtime: per-request overhead and batching throughput",
        description="(1) Overhead per request on loopback (gRPC, framing, validation, decoding, "
        "batching) against calling the tail in-process, for fp32 payloads of 1 KB..1 MB; "
        "(2) server throughput on fmnist-resnet tails with dynamic batching against batch size 1, "
        "64 concurrent streams, in the same run. The server runs in a child process.")
    p.add_argument("--what", choices=("all", "overhead", "throughput", "abuse", "fleet"), default="all",
                   help="all (overhead and throughput), one of them, abuse: STREAMS x REQUESTS legitimate "
                   "requests beside --junk malformed and --idle silent streams, or fleet: N real clients against "
                   "one server beside the fleet simulator")
    p.add_argument("--requests", type=positive_int, default=None,
                   help="sequential requests per payload size (default 300); abuse: per stream (default 100)")
    p.add_argument("--streams", type=bounded_int(1, 4096), default=None,
                   help="concurrent streams for throughput (default 64); abuse: legitimate streams (default 512)")
    p.add_argument("--junk", type=nonnegative_int, default=32, help="abuse: streams of malformed requests")
    p.add_argument("--idle", type=nonnegative_int, default=256, help="abuse: streams that never send")
    p.add_argument("--seconds", type=positive_float, default=5.0, help="seconds per throughput measurement")
    p.add_argument("--rounds", type=positive_int, default=2, help="alternating rounds per throughput setting")
    p.add_argument("--cuts", type=int_list, default=None,
                   help="fmnist-resnet cuts for throughput, comma-separated (default: input, middle, late)")
    p.add_argument("--max-batch", type=bounded_int(1, 4096), default=32)
    p.add_argument("--max-wait-ms", type=nonnegative_float, default=2.0)
    _fleet_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_bench)


def _fleet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int_list, default=(1, 8, 32, 64), help="fleet: sizes (default 1,8,32,64)")
    p.add_argument("--server", choices=("embedded",), default="embedded",
                   help="fleet: where the cloud runs (embedded: one dyno serve process on this machine)")
    p.add_argument("--plan", help="fleet: plan JSON (default: fmnist-resnet's cached plan)")
    p.add_argument("--trace", default=None, help="fleet: traces (file, directory or synthetic; default: the "
                   "shared Norway traces)")
    p.add_argument("--policies", default=None, help="fleet: systems (default: dyno and the five baselines)")
    p.add_argument("--mix", default="low=0.4,mid=0.4,high=0.2", help="fleet: tier shares (default: %(default)s)")
    p.add_argument("--rate", type=positive_float, default=10.0, help="fleet: frames/s per device (default 10)")
    p.add_argument("--duration", type=positive_float, default=20.0, help="fleet: seconds per run (default 20)")
    p.add_argument("--processes", type=bounded_int(1, 64), default=4, help="fleet: client processes (default 4)")
    p.add_argument("--cloud-price", type=nonnegative_float, help="fleet: price of one cloud-second")
    p.add_argument("--plot", default=None, help="fleet: PNG of goodput and cloud ms per inference against N")


def _fleet(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dyno.bench.console import RichProgress
    from dyno.bench.fleet import FLEET_POLICIES
    from dyno.bench.fleet_report import plot_fleet, print_fleet
    from dyno.bench.fleet_runtime import fleet_bench
    from dyno.cli.simulate_command import _mix
    from dyno.emulate.patterns import trace_set

    plan = args.plan
    if plan is None:
        from dyno.bench.demo import prepare

        plan = str(prepare("fmnist-resnet", None)[2])
    traces = trace_set(args.trace or Path(__file__).resolve().parents[3] / "shared" / "traces" / "norway-hsdpa")
    policies = [p.strip() for p in (args.policies or ",".join(FLEET_POLICIES)).split(",") if p.strip()]
    with RichProgress(not args.json) as progress:
        document = fleet_bench(plan, sizes=args.devices, policies=policies, traces=traces, mix=_mix(args.mix),
                               rate=args.rate, duration=args.duration, processes=args.processes, server=args.server,
                               price=args.cloud_price, progress=progress)
    if args.plot:
        document["plot"] = str(plot_fleet(document, args.plot))
    if args.json:
        print(json.dumps(document))
    else:
        print_fleet(document)


def _bench(args: argparse.Namespace) -> None:
    from dyno.bench.runtime import run_bench

    if args.what == "fleet":
        return _fleet(args)
    abuse = args.what == "abuse"
    report = run_bench(what=args.what, requests=args.requests or (100 if abuse else 300),
                       streams=args.streams or (512 if abuse else 64), junk=args.junk, idle=args.idle,
                       seconds=args.seconds, rounds=args.rounds,
                       cuts=list(args.cuts) if args.cuts else None,
                       max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, verbose=not args.json)
    if args.json:
        print(json.dumps(report))
