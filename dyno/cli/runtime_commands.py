"""``dyno serve``, ``dyno run``, ``dyno demo`` and ``dyno bench-runtime``: argument parsing only."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dyno.cli._args import (
    bounded_int,
    input_file,
    int_list,
    nonnegative_float,
    nonnegative_int,
    output_file,
    port,
    positive_float,
    positive_int,
)
from dyno.errors import ConfigError, RuntimeServiceError
from dyno.policy import DEFAULT_SLO


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_serve(subparsers)
    _register_run(subparsers)
    _register_demo(subparsers)
    _register_bench(subparsers)


# ---------------------------------------------------------------------------------------- shared

def _token(args: argparse.Namespace) -> str | None:
    """--token-file, else $DYNO_TOKEN (a token on the command line would show in `ps`). A token file
    that holds no token is an error: it must never turn authentication off."""
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read --token-file: {error}") from error
        if not token:
            raise ConfigError(f"--token-file {args.token_file} holds no token; put the bearer token in it "
                              "(an empty file would turn authentication off)")
        return token
    token = os.environ.get("DYNO_TOKEN")
    if token is not None and not token.strip():
        raise ConfigError("$DYNO_TOKEN is set but empty; unset it for no authentication, or set the token")
    return token.strip() if token else None


def _add_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token-file", metavar="F", type=input_file,
                        help="file holding the bearer token (default: $DYNO_TOKEN if set; none)")


def _optional_output(text: str) -> Path | None:
    return output_file(text) if text else None


# ---------------------------------------------------------------------------------------- serve

#: ServerConfig's limits, each a flag whose default is the config's own (one home for the numbers).
_LIMITS = {
    "max_streams": (positive_int, "open Infer streams, whole server"),
    "max_streams_per_client": (positive_int, "open streams per client (bearer token, IP)"),
    "max_in_flight_per_client": (positive_int, "requests accepted and not yet answered, per client"),
    "max_queued_requests": (positive_int, "requests accepted and not yet answered, whole server"),
    "max_queue_ms": (positive_float, "longest a request may wait for its compute; longer is refused"),
    "idle_timeout_s": (positive_float, "close a stream with nothing in flight for this long"),
    "max_stream_lifetime_s": (positive_float, "close a stream this old once it has answered its requests"),
}


def _add_limits(p: argparse.ArgumentParser) -> None:
    from dyno.runtime import ServerConfig

    defaults = ServerConfig()
    for name, (kind, text) in _LIMITS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name),
                       help=f"{text} (default %(default)s)")
    p.add_argument("--max-queued-mb", type=positive_float, default=defaults.max_queued_bytes / 2**20,
                   help="bytes of requests queued across all clients, MiB (default %(default)g)")


def _register_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run the cloud server for a plan",
        description="Serve the tails of the plan's model for every cut over gRPC (dyno.v1.Inference), "
        "with dynamic batching per cut, a health service, and Prometheus metrics over HTTP. "
        "Stops gracefully on SIGINT/SIGTERM (in-flight requests are answered).")
    p.add_argument("--plan", required=True, help="plan file (from `dyno analyze`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=50051, help="port (0: any free port; default 50051)")
    p.add_argument("--weights", default="trained", help="trained | random | trained-or-random | a path")
    p.add_argument("--max-batch", type=bounded_int(1, 4096), default=32,
                   help="largest batch per tail run (default 32)")
    p.add_argument("--max-wait-ms", type=nonnegative_float, default=2.0,
                   help="longest a request waits for its batch to fill (default 2 ms)")
    p.add_argument("--workers", type=bounded_int(1, 64), default=1, help="concurrent tail runs (default 1)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads for the tails")
    p.add_argument("--metrics-port", type=bounded_int(-1, 65535), default=0,
                   help="Prometheus metrics HTTP port (0: any free port; -1: off)")
    p.add_argument("--max-message-mb", type=positive_float, default=8.0, help="largest message (default 8 MiB)")
    _add_limits(p)
    _add_token(p)
    p.add_argument("--tls-cert", type=input_file, help="server certificate chain (PEM); enables TLS")
    p.add_argument("--tls-key", type=input_file, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=input_file, help="CA for client certificates (PEM): mutual TLS")
    p.add_argument("--grace", type=nonnegative_float, default=5.0, help="seconds to finish in-flight work on stop")
    p.add_argument("--ready-file", type=output_file,
                   help="write {address, port, metrics_port, ...} as JSON here once serving")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> None:
    from dyno.runtime import BatchConfig, ServerConfig, TLSConfig, from_plan_file, serve

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    tls = TLSConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca) if args.tls_cert else None
    config = ServerConfig(
        batching=BatchConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, workers=args.workers),
        max_message_bytes=int(args.max_message_mb * 1024 * 1024), token=_token(args), tls=tls,
        max_queued_bytes=int(args.max_queued_mb * 1024 * 1024),
        metrics_port=None if args.metrics_port < 0 else args.metrics_port, torch_threads=args.threads,
        **{name: getattr(args, name) for name in _LIMITS})
    warning = config.exposure_warning(f"{args.host}:{args.port}")
    if warning:
        print(f"dyno serve: warning: {warning}", file=sys.stderr)
    plan, model = from_plan_file(args.plan, args.weights)
    serve(plan, model, config, address=f"{args.host}:{args.port}", ready_file=args.ready_file,
          grace=args.grace)


# ---------------------------------------------------------------------------------------- run

def _add_device_and_link(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", default=None,
                   help="emulated device: low (k_d=33), mid (8), high (2), native, or a number")
    p.add_argument("--device-emulation", choices=("pad", "cgroup"), default="pad",
                   help="slow the device by padding each run (default) or by a cgroup v1 CPU quota")
    p.add_argument("--trace", type=input_file,
                   help="uplink bandwidth trace file to replay (a token bucket in the client)")


def _register_run(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="run a device client against a server over a labelled dataset",
        description="Load the plan and the model's heads, and run inputs of DATA through the policy, "
        "the head, the codec and the server, pipelined; inferences the server does not answer finish "
        "on the device. Prints a summary (--json: one document).")
    p.add_argument("--plan", required=True, help="plan file (from `dyno analyze`)")
    p.add_argument("--server", required=True, help="server address host:port")
    p.add_argument("--data", default=None,
                   help="fashion-mnist, imagenet-samples, or a dataset folder (default: the model's data)")
    p.add_argument("--n", type=positive_int, default=500, help="number of inputs (default 500)")
    p.add_argument("--weights", default="trained", help="trained | random | trained-or-random | a path")
    p.add_argument("--policy", default="dyno", help="dyno, device-only, cloud-only, cloud-only-raw, ...")
    p.add_argument("--slo", default=DEFAULT_SLO, help=f"SLO for the dyno policy (default {DEFAULT_SLO!r})")
    p.add_argument("--in-flight", type=bounded_int(1, 1024), default=8,
                   help="inferences under way at once (default 8)")
    p.add_argument("--timeout", type=positive_float, default=2.0, help="seconds to wait for a reply (default 2)")
    _add_device_and_link(p)
    _add_token(p)
    p.add_argument("--tls-ca", type=input_file, help="CA of the server's certificate (PEM); enables TLS")
    p.add_argument("--tls-cert", type=input_file, help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", type=input_file, help="client key (PEM) for mutual TLS")
    p.add_argument("--tls-server-name", help="name to check in the server's certificate")
    p.add_argument("--json", action="store_true", help="print one JSON summary document")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    from dyno.bench.console import RichProgress
    from dyno.bench.session import run_client
    from dyno.runtime import ClientTLS, from_plan_file

    tls = None
    if args.tls_ca:
        tls = ClientTLS(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)
    plan, model = from_plan_file(args.plan, args.weights)
    with RichProgress(not args.json, transient=True) as progress:
        run = run_client(plan, model, server=args.server, data=args.data, n=args.n, policy=args.policy,
                         slo=args.slo, in_flight=args.in_flight, timeout=args.timeout, tier=args.tier,
                         device_emulation=args.device_emulation, trace=args.trace, token=_token(args),
                         tls=tls, progress=progress)
    assert run.summary is not None
    if args.json:
        print(json.dumps({**run.summary, "cloud_replies": run.cloud_replies, "cloud_errors": run.errors}))
    else:
        from dyno.bench.demo import print_summary

        print_summary({args.policy: run.summary}, title=f"dyno run: {plan.model} via {args.server}")
        for error in run.errors:
            print(f"dyno run: cloud: {error}", file=sys.stderr)
    if args.policy != "device-only" and run.cloud_replies == 0:
        why = run.errors[-1] if run.errors else "no reply"
        raise RuntimeServiceError(f"no inference was answered by the cloud at {args.server} ({why}); all "
                                  f"{run.summary['n']} ran on the device. Check the address, TLS and token")


# ---------------------------------------------------------------------------------------- demo

def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole system on this machine: DynO against device-only and cloud-only",
        description="Start a cloud server on localhost (a child process), emulate a slow device and an "
        "uplink replaying a bandwidth pattern (8 -> 1 -> 0.3 -> 4 Mbit/s unless --trace), and run real "
        "labelled inputs through DynO, device-only and cloud-only in turn, with a live display; then a "
        "summary table and a PNG timeline. The first run trains and analyses what it needs (cached).")
    p.add_argument("--model", default="fmnist-resnet", help="zoo model (default fmnist-resnet)")
    p.add_argument("--data", default=None, help="dataset (default: the model's; e.g. ../shared/imagenet-samples)")
    p.add_argument("--n", type=positive_int, default=400,
                   help="distinct labelled inputs, cycled while a system runs (default 400)")
    p.add_argument("--systems", default="dyno,device-only,cloud-only",
                   help="comma-separated policies to compare (default dyno,device-only,cloud-only)")
    p.add_argument("--slo", default=DEFAULT_SLO,
                   help=f"SLO for the dyno policy (default: the most throughput losing at most 1 point of "
                   f"top-1: {DEFAULT_SLO!r}; onloading: 'throughput,cloud_cost;drop<=1')")
    p.add_argument("--tier", default="mid", help="device tier: low (33), mid (8), high (2), native, a number")
    p.add_argument("--device-emulation", choices=("pad", "cgroup"), default="pad")
    p.add_argument("--trace", type=input_file,
                   help="uplink trace file (default: the built-in 8 -> 1 -> 0.3 -> 4 Mbit/s)")
    p.add_argument("--segment-s", type=positive_float, default=7.5,
                   help="seconds per step of the built-in bandwidth pattern (default 7.5: 30 s per system)")
    p.add_argument("--duration", type=positive_float, default=None,
                   help="seconds per system (default: one pass of the pattern; a --trace file: at most 60)")
    p.add_argument("--in-flight", type=bounded_int(1, 1024), default=8,
                   help="inferences under way at once (default 8)")
    p.add_argument("--plot", type=_optional_output, default="dyno-demo.png",
                   help="timeline PNG path ('' for none)")
    p.add_argument("--json", action="store_true", help="print one JSON summary document at the end")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> None:
    from dyno.bench.demo import demo

    summary = demo(model=args.model, data=args.data, n=args.n,
                   systems=[s.strip() for s in args.systems.split(",") if s.strip()], slo=args.slo,
                   tier=args.tier, device_emulation=args.device_emulation, trace=args.trace,
                   segment_s=args.segment_s, duration=args.duration, in_flight=args.in_flight, plot=args.plot or None,
                   live=not args.json)
    if args.json:
        print(json.dumps(summary))


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
