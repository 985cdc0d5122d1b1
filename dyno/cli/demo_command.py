"""``dyno demo``: the whole system on this machine (parsing only)."""

from __future__ import annotations

import argparse
import json

from dyno.cli._args import (
    bounded_int,
    input_file,
    positive_float,
    positive_int,
)
from dyno.cli._runtime_args import optional_output
from dyno.policy import DEFAULT_SLO


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_demo(subparsers)


# ---------------------------------------------------------------------------------------- demo

def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole system on this machine: DynO against device-only and cloud-only",
        description="Start a cloud server on localhost (a child process), emulate a slow device and an "
        "uplink replaying a bandwidth pattern (8 -> 1 -> 0.3 -> 4 Mbit/s unless --trace), and run real "
        "labelled inputs through DynO, device-only and cloud-only in turn, with a live display; then a "
        "summary table and a PNG timeline. The first run trains and analyses what it needs (cached). "
        "--json adds, per system, the SLO, the histogram of choices, a per-second timeline, predicted "
        "against observed throughput and the realised top-1 against the fp32 model with intervals.")
    p.add_argument("--model", default="fmnist-resnet", help="zoo model (default fmnist-resnet)")
    p.add_argument("--data", default=None, help="dataset (default: the model's; e.g. ../shared/imagenet-samples)")
    p.add_argument("--n", type=positive_int, default=400,
                   help="distinct labelled inputs, cycled while a system runs (default 400)")
    p.add_argument("--systems", default="dyno,device-only,cloud-only",
                   help="comma-separated policies to compare (default dyno,device-only,cloud-only)")
    p.add_argument("--slo", default=DEFAULT_SLO,
                   help=f"SLO for the dyno policy (default: the most throughput losing at most 1 point of "
                   f"top-1: {DEFAULT_SLO!r}; onloading: 'throughput,cloud_cost;drop<=1')")
    p.add_argument("--tier", default="low",
                   help="device tier, absolute: low (EfficientNet-Lite0 in 49 ms, Raspberry Pi 4; the default), "
                   "mid (12 ms, Pixel 4), high (3 ms, Jetson AGX Xavier class), scaled by Lite0's latency on this "
                   "machine (a tier faster than this machine runs at native speed); native; or a number (a "
                   "slowdown against this machine). The cloud is this machine's CPU: a device as fast as it ties "
                   "with device-only")
    p.add_argument("--device-emulation", choices=("pad", "cgroup"), default="pad",
                   help="how the device is slowed: pad (each head run padded to its emulated time; the "
                   "default) or cgroup (the device thread in a cgroup v1 cpu group with a 1/k_d CPU quota; needs "
                   "write access to /sys/fs/cgroup/cpu)")
    p.add_argument("--trace", type=input_file,
                   help="uplink trace file (default: the built-in 8 -> 1 -> 0.3 -> 4 Mbit/s)")
    p.add_argument("--segment-s", type=positive_float, default=7.5,
                   help="seconds per step of the built-in bandwidth pattern (default 7.5: 30 s per system)")
    p.add_argument("--duration", type=positive_float, default=None,
                   help="seconds per system (default: one pass of the pattern; a --trace file: at most 60)")
    p.add_argument("--rounds", type=bounded_int(1, 100), default=1,
                   help="run every system this many times, the order reversed every other round, so that a "
                   "change in the machine's load falls on every system alike; each system's figures count all "
                   "its rounds (default 1)")
    p.add_argument("--in-flight", type=bounded_int(1, 1024), default=8,
                   help="inferences under way at once (default 8)")
    p.add_argument("--plot", type=optional_output, default="dyno-demo.png",
                   help="timeline PNG path ('' for none)")
    p.add_argument("--json", action="store_true", help="print one JSON summary document at the end")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> None:
    from dyno.bench.demo import demo

    summary = demo(model=args.model, data=args.data, n=args.n,
                   systems=[s.strip() for s in args.systems.split(",") if s.strip()], slo=args.slo,
                   tier=args.tier, device_emulation=args.device_emulation, trace=args.trace,
                   segment_s=args.segment_s, duration=args.duration, in_flight=args.in_flight, rounds=args.rounds,
                   plot=args.plot or None,
                   live=not args.json)
    if args.json:
        print(json.dumps(summary))
