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
from dyno.cli.serve_command import _autoscale
from dyno.errors import ConfigError


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
    p.add_argument("--what", choices=("all", "overhead", "throughput", "abuse", "fleet", "scale-out", "autoscale"),
                   default="all",
                   help="all (overhead and throughput), one of them, abuse: STREAMS x REQUESTS legitimate "
                   "requests beside --junk malformed and --idle silent streams, fleet: N real clients against "
                   "one server (--server) beside the fleet simulator, scale-out: the fleet of the largest "
                   "--devices against the embedded server, Ray with 1 replica and Ray with 2, side by side over "
                   "--rounds (the Ray path's overhead, the scaling), or autoscale: the fleet stepped by --steps "
                   "against Ray Serve autoscaling between --autoscale MIN,MAX replicas (--plot: replicas over time)")
    p.add_argument("--requests", type=positive_int, default=None,
                   help="sequential requests per payload size (default 300); abuse: per stream (default 100)")
    p.add_argument("--streams", type=bounded_int(1, 4096), default=None,
                   help="concurrent streams for throughput (default 64); abuse: legitimate streams (default 512)")
    p.add_argument("--junk", type=nonnegative_int, default=32, help="abuse: streams of malformed requests")
    p.add_argument("--idle", type=nonnegative_int, default=256, help="abuse: streams that never send")
    p.add_argument("--seconds", type=positive_float, default=5.0, help="seconds per throughput measurement")
    p.add_argument("--rounds", type=positive_int, default=2,
                   help="alternating rounds per throughput setting; scale-out: rounds of the three servers (medians)")
    p.add_argument("--cuts", type=int_list, default=None,
                   help="fmnist-resnet cuts for throughput, comma-separated (default: input, middle, late)")
    p.add_argument("--max-batch", type=bounded_int(1, 4096), default=32, help="throughput: largest batch (default 32)")
    p.add_argument("--max-wait-ms", type=nonnegative_float, default=2.0,
                   help="throughput: longest a request waits for its batch to fill (default 2 ms)")
    _fleet_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_bench)


def _fleet_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int_list, default=(1, 8, 32, 64), help="fleet: sizes (default 1,8,32,64)")
    p.add_argument("--server", choices=("embedded", "ray"), default="embedded",
                   help="fleet: where the cloud runs: embedded (one dyno serve process on this machine) or ray "
                   "(dyno serve --ray: the gRPC front in one process, the tails on Ray Serve replicas of one torch "
                   "thread each); the --json document says which (\"server\", \"replicas\")")
    p.add_argument("--replicas", type=bounded_int(1, 64), default=1, help="fleet with --server ray: replicas")
    p.add_argument("--batch-in", choices=("front", "replica"), default="front",
                   help="fleet with --server ray: where batches form: front (dyno's batcher, one deployment call "
                   "per batch; default) or replica (one call per request, @serve.batch in the replica); "
                   "scale-out with replica: also runs Ray with 1 replica batching by @serve.batch")
    p.add_argument("--capacity-s", type=nonnegative_float, default=None,
                   help="fleet, scale-out: seconds of the cloud-bound case after the fleet (64 closed-loop raw "
                   "streams, all in the cloud; default 0 for fleet, 8 for scale-out)")
    p.add_argument("--ray-address", default=None,
                   help="fleet, scale-out, autoscale: a running Ray cluster (as `ray start --head` prints it); "
                   "default: a local Ray instance started by the server process")
    p.add_argument("--steps", type=_steps, default=None, metavar="N:S,...",
                   help="autoscale: devices and seconds per step (default 4:20,64:40,4:60)")
    p.add_argument("--autoscale", type=_autoscale, default=(1, 2), metavar="MIN,MAX",
                   help="autoscale: replicas Ray Serve scales between (default 1,2)")
    p.add_argument("--plan", help="fleet: plan JSON (default: fmnist-resnet's cached plan)")
    p.add_argument("--trace", default=None, help="fleet: traces (file, directory, synthetic[:NAME+...], or fast: a "
                   "constant 1 Gbit/s link, the cloud-bound case; default: the shared Norway traces)")
    p.add_argument("--policies", default=None, help="fleet: systems (default: dyno and the five baselines; "
                   "scale-out: dyno; autoscale: cloud-only, the first one given)")
    p.add_argument("--mix", default="low=0.4,mid=0.4,high=0.2", help="fleet: tier shares (default: %(default)s)")
    p.add_argument("--rate", type=positive_float, default=10.0, help="fleet: frames/s per device (default 10)")
    p.add_argument("--duration", type=positive_float, default=20.0, help="fleet: seconds per run (default 20)")
    p.add_argument("--processes", type=bounded_int(1, 64), default=4, help="fleet: client processes (default 4)")
    p.add_argument("--cloud-price", type=nonnegative_float, help="fleet: price of one cloud-second")
    p.add_argument("--plot", default=None, help="fleet: PNG of goodput and cloud ms per inference against N; "
                   "autoscale: PNG of replicas over time above the offered and answered load")


def _steps(text: str) -> list[tuple[int, float]]:
    from dyno.bench.autoscale import parse_steps

    try:
        return parse_steps(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _fleet_inputs(args: argparse.Namespace, default_policies: str) -> tuple[str, list, list[str]]:
    """(plan path, traces, policies) of the fleet, scale-out and autoscale benchmarks."""
    from pathlib import Path

    from dyno.bench.scale_out import constant_trace
    from dyno.emulate.patterns import trace_set

    plan = args.plan
    if plan is None:
        from dyno.bench.demo import prepare

        plan = str(prepare("fmnist-resnet", None)[2])
    if args.trace == "fast":
        traces = [constant_trace()]
    else:
        traces = trace_set(args.trace or Path(__file__).resolve().parents[3] / "shared" / "traces" / "norway-hsdpa")
    policies = [p.strip() for p in (args.policies or default_policies).split(",") if p.strip()]
    return plan, traces, policies


def _fleet(args: argparse.Namespace) -> None:
    from dyno.bench.console import RichProgress
    from dyno.bench.fleet import FLEET_POLICIES
    from dyno.bench.fleet_report import plot_fleet, print_fleet
    from dyno.bench.fleet_runtime import fleet_bench
    from dyno.cli.simulate_command import _mix

    plan, traces, policies = _fleet_inputs(args, ",".join(FLEET_POLICIES))
    with RichProgress(not args.json) as progress:
        document = fleet_bench(plan, sizes=args.devices, policies=policies, traces=traces, mix=_mix(args.mix),
                               rate=args.rate, duration=args.duration, processes=args.processes, server=args.server,
                               replicas=args.replicas, ray_address=args.ray_address, price=args.cloud_price,
                               batch_in=args.batch_in, capacity_s=args.capacity_s or 0.0, progress=progress)
    if args.plot:
        document["plot"] = str(plot_fleet(document, args.plot))
    if args.json:
        print(json.dumps(document))
    else:
        print(f"server: {document['server']}" + (f", {document['replicas']} replica(s)" if document["replicas"]
                                                  else "") + f"; round trip {document['round_trip_ms']}")
        print_fleet(document)


def _scale_out(args: argparse.Namespace) -> None:
    from dyno.bench.console import RichProgress
    from dyno.bench.scale_out import CONFIGS, SERVE_BATCH, print_scale_out, scale_out_bench
    from dyno.cli.simulate_command import _mix

    plan, traces, policies = _fleet_inputs(args, "dyno")
    configs = CONFIGS + ((SERVE_BATCH,) if args.batch_in == "replica" else ())
    capacity_s = 8.0 if args.capacity_s is None else args.capacity_s
    with RichProgress(not args.json) as progress:
        document = scale_out_bench(plan, traces=traces, devices=max(args.devices), policies=policies, configs=configs,
                                   capacity_s=capacity_s,
                                   rounds=args.rounds, mix=_mix(args.mix), rate=args.rate, duration=args.duration,
                                   processes=args.processes, ray_address=args.ray_address, progress=progress)
    if args.json:
        print(json.dumps(document))
    else:
        print_scale_out(document)


def _autoscale_run(args: argparse.Namespace) -> None:
    from dyno.bench.autoscale import DEFAULT_STEPS, autoscale_bench, plot_autoscale
    from dyno.bench.console import RichProgress
    from dyno.cli.simulate_command import _mix

    plan, traces, policies = _fleet_inputs(args, "cloud-only")
    with RichProgress(not args.json) as progress:
        document = autoscale_bench(plan, traces=traces, steps=args.steps or DEFAULT_STEPS, autoscale=args.autoscale,
                                   policy=policies[0], mix=_mix(args.mix), rate=args.rate,
                                   processes=args.processes, ray_address=args.ray_address, progress=progress)
    if args.plot:
        document["plot"] = str(plot_autoscale(document, args.plot))
    if args.json:
        print(json.dumps(document))
        return
    for step in document["per_step"]:
        print(f"{step['devices']:>4} devices from {step['from_s']:>5.0f} s: {step['answered_per_s']:.1f} answered/s, "
              f"p50 {step['p50_ms']:.1f} ms, p95 {step['p95_ms']:.1f} ms")
    print(f"replicas seen: up to {document['max_replicas_seen']}" +
          (f"; plot: {document['plot']}" if "plot" in document else ""))


def _bench(args: argparse.Namespace) -> None:
    from dyno.bench.runtime import run_bench

    if args.what in ("fleet", "scale-out", "autoscale"):
        return {"fleet": _fleet, "scale-out": _scale_out, "autoscale": _autoscale_run}[args.what](args)
    abuse = args.what == "abuse"
    report = run_bench(what=args.what, requests=args.requests or (100 if abuse else 300),
                       streams=args.streams or (512 if abuse else 64), junk=args.junk, idle=args.idle,
                       seconds=args.seconds, rounds=args.rounds,
                       cuts=list(args.cuts) if args.cuts else None,
                       max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, verbose=not args.json)
    if args.json:
        print(json.dumps(report))
