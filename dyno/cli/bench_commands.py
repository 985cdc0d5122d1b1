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
    p.add_argument("--what", choices=("all", "overhead", "throughput", "abuse"), default="all",
                   help="all (overhead and throughput), one of them, or abuse: STREAMS x REQUESTS legitimate "
                   "requests beside --junk malformed and --idle silent streams")
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
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> None:
    from dyno.bench.runtime import run_bench

    abuse = args.what == "abuse"
    report = run_bench(what=args.what, requests=args.requests or (100 if abuse else 300),
                       streams=args.streams or (512 if abuse else 64), junk=args.junk, idle=args.idle,
                       seconds=args.seconds, rounds=args.rounds,
                       cuts=list(args.cuts) if args.cuts else None,
                       max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, verbose=not args.json)
    if args.json:
        print(json.dumps(report))
