"""``dyno bench``: systems x traces x device tiers through real server and client processes, each beside
the simulator on the same configuration (parsing only)."""

from __future__ import annotations

import argparse
import json

from dyno.cli._args import bounded_int, output_file, positive_float, positive_int
from dyno.cli._runtime_args import optional_output
from dyno.policy import DEFAULT_SLO


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="ground truth: every system on the real runtime beside the simulator",
        description="Run every system over each trace at each device tier through a real server process and "
        "one real client process per run, and simulate the same configuration beside it. The uplink is "
        "shaped by the kernel (tc tbf on a veth pair between two network namespaces; needs root) or, "
        "where that cannot be made, by the client's in-process token bucket; the device is slowed to its "
        "tier's absolute latency by a cgroup v1 CPU quota on the client process, or by padding each head "
        "run; the report says which. A tier faster than this machine runs at native speed (the report "
        "keeps both). Prints a markdown table (measured and simulated throughput and their ratio, top-1 "
        "and its drop against the fp32 model with a 95% interval, bytes and p95 latency per run), the "
        "agreement per system and DynO against every other system; --json prints one document with each "
        "run's evidence (SLO, choices, per-second timeline, predicted against observed throughput).")
    p.add_argument("--plan", help="plan JSON (default: the model's cached plan, made on first use)")
    p.add_argument("--model", default="fmnist-resnet", help="zoo model (default fmnist-resnet)")
    p.add_argument("--data", default=None, help="labelled data (default: the model's; e.g. ../shared/imagenet-samples)")
    p.add_argument("--n", type=positive_int, default=400, help="distinct labelled inputs, cycled (default 400)")
    p.add_argument("--weights", default="trained", help="weights the server and clients load (default trained)")
    p.add_argument("--trace", action="append", default=None,
                   help="a trace file, directory or synthetic[:pattern] (repeatable); 'builtin' is the demo's "
                   "8 -> 1 -> 0.3 -> 4 Mbit/s pattern (default: builtin)")
    p.add_argument("--limit", type=positive_int, help="at most this many traces from each --trace")
    p.add_argument("--systems", default="dyno,device-only,cloud-only,neurosurgeon,jalad,split-int8",
                   help="comma-separated systems (default: %(default)s)")
    p.add_argument("--tier", default="low,mid,high", help="comma-separated tiers (default: %(default)s)")
    p.add_argument("--slo", default=DEFAULT_SLO, help="the SLO every system gets (default: %(default)s)")
    p.add_argument("--duration", type=positive_float, default=30.0, help="seconds per run (default 30)")
    p.add_argument("--rounds", type=bounded_int(1, 100), default=1,
                   help="run each trace's systems this many times, every other round in reverse order, and keep "
                   "each system's median round (default 1; more where the machine's speed drifts between runs)")
    p.add_argument("--in-flight", type=bounded_int(1, 1024), default=8, help="each client's window (default 8)")
    p.add_argument("--link", choices=("auto", "tbf", "token-bucket"), default="auto",
                   help="auto: tbf where the machine allows it, else the in-process token bucket")
    p.add_argument("--device-emulation", choices=("auto", "cgroup", "pad"), default="auto",
                   help="auto: a cgroup v1 CPU quota where writable, else padding each head run")
    p.add_argument("--reference-ms", type=positive_float,
                   help="Lite0's latency on the machine that profiled the plan (default: measured here)")
    p.add_argument("--rtt-ms", type=positive_float, default=0.5,
                   help="round trip the simulator is given (default 0.5: loopback or veth)")
    p.add_argument("--timeout", type=positive_float, default=10.0,
                   help="client reply timeout in seconds (default 10: frames wait on slow kernel-shaped links)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--markdown", type=output_file, help="also write the markdown table to this file")
    p.add_argument("--plot", type=optional_output, default="dyno-bench.png", help="PNG path ('' for none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_bench)


def _traces(args: argparse.Namespace) -> list:
    from dyno.bench.demo import builtin_trace
    from dyno.emulate.patterns import trace_set

    out: list = []
    for spec in args.trace or ["builtin"]:
        found = [builtin_trace()] if spec == "builtin" else trace_set(spec)
        out += found[: args.limit]
    return out


def _bench(args: argparse.Namespace) -> None:
    from dyno.bench.console import RichProgress, stdout_console
    from dyno.bench.ground import ground_truth
    from dyno.bench.ground_report import markdown, plot_ground, summary

    plan_path = args.plan
    if plan_path is None:
        from dyno.bench.demo import prepare

        plan_path = str(prepare(args.model, args.data)[2])
    with RichProgress(not args.no_progress) as progress:
        document = ground_truth(plan_path, systems=[s.strip() for s in args.systems.split(",") if s.strip()],
                                traces=_traces(args), tiers=[t.strip() for t in args.tier.split(",") if t.strip()],
                                slo=args.slo, duration=args.duration, in_flight=args.in_flight, data=args.data,
                                n=args.n, weights=args.weights, link=args.link, device_emulation=args.device_emulation,
                                reference_ms=args.reference_ms, rtt_ms=args.rtt_ms, timeout=args.timeout,
                                rounds=args.rounds, progress=progress)
    document["summary"] = summary(document)
    if args.plot:
        document["plot"] = str(plot_ground(document, args.plot))
    table = markdown(document)
    if args.markdown:
        from dyno.datafile import atomic_write

        atomic_write(args.markdown, table + "\n")
    if args.json:
        print(json.dumps(document))
    else:
        stdout_console().print(table, highlight=False, markup=False, soft_wrap=True)
        if "plot" in document:
            print(f"plot: {document['plot']}")
