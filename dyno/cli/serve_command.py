"""``dyno serve``: the cloud server, from the command line (parsing only)."""

from __future__ import annotations

import argparse
import sys

from dyno.cli._args import (
    bounded_int,
    input_file,
    nonnegative_float,
    output_file,
    port,
    positive_float,
    positive_int,
)
from dyno.cli._model_args import PLAN_WEIGHTS_HELP, plan_weights
from dyno.cli._runtime_args import add_token, token
from dyno.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_serve(subparsers)


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
        "with dynamic batching per cut, a health service, and Prometheus metrics over HTTP; in this process, "
        "or with --ray on the replicas of a Ray Serve deployment. "
        "Stops gracefully on SIGINT/SIGTERM (in-flight requests are answered).")
    p.add_argument("--plan", required=True, help="plan file (from `dyno analyze`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=50051, help="port (0: any free port; default 50051)")
    p.add_argument("--weights", default=None, help=PLAN_WEIGHTS_HELP)
    p.add_argument("--max-batch", type=bounded_int(1, 4096), default=32,
                   help="largest batch per tail run (default 32)")
    p.add_argument("--max-wait-ms", type=nonnegative_float, default=2.0,
                   help="longest a request waits for its batch to fill (default 2 ms)")
    p.add_argument("--workers", type=bounded_int(1, 64), default=None,
                   help="concurrent tail runs (default 1); with --ray: batches each replica holds at once, "
                   "one computing and the rest queued in it (default 2)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads for the tails (default: torch's); with --ray: per replica (default 1)")
    p.add_argument("--metrics-port", type=bounded_int(-1, 65535), default=0,
                   help="Prometheus metrics HTTP port (0: any free port; -1: off)")
    p.add_argument("--max-message-mb", type=positive_float, default=8.0, help="largest message (default 8 MiB)")
    _add_limits(p)
    add_token(p)
    p.add_argument("--tls-cert", type=input_file, help="server certificate chain (PEM); enables TLS")
    p.add_argument("--tls-key", type=input_file, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=input_file, help="CA for client certificates (PEM): mutual TLS")
    p.add_argument("--grace", type=nonnegative_float, default=5.0, help="seconds to finish in-flight work on stop")
    p.add_argument("--ready-file", type=output_file,
                   help="write {address, port, metrics_port, ...} as JSON here once serving")
    _add_ray(p)
    p.set_defaults(func=_serve)


def _add_ray(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Ray Serve (--ray)",
        "Run the tails as a Ray Serve application, one deployment of the plan's model, behind this same "
        "dyno.v1 gRPC front (token, TLS, limits, frame checks and per-cut batching stay here; each batch "
        "runs on a replica). Needs `pip install 'dyno[ray]'`. Replies' load, headroom and pressure describe "
        "the whole deployment; the gRPC health service says NOT_SERVING while no replica is up.")
    g.add_argument("--ray", action="store_true", help="serve the tails on Ray Serve instead of in this process")
    scale = g.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=bounded_int(1, 4096), default=None,
                       help="a fixed number of replicas (default 1 unless --autoscale)")
    scale.add_argument("--autoscale", type=_autoscale, default=None, metavar="MIN,MAX",
                       help="let Ray Serve scale between MIN and MAX replicas on the batches in flight per "
                       "replica (see --target-ongoing)")
    g.add_argument("--target-ongoing", type=positive_float, default=None,
                   help="with --autoscale: batches in flight (computing or queued) per replica that Ray Serve "
                   "scales to keep (default 2)")
    g.add_argument("--address", default=None,
                   help="a running Ray cluster to deploy on, as `ray start --head` prints it (host:6379; "
                   "'auto': the one on this node); default: start a local Ray instance")
    g.add_argument("--torch-device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="where replicas run their tails: cpu, cuda (one GPU per replica), or auto (a GPU per "
                   "replica if the cluster has GPUs); each decoded batch is moved once (default cpu)")


def _autoscale(text: str) -> tuple[int, int]:
    from dyno.cloud import parse_autoscale

    try:
        return parse_autoscale(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _ray_config(args: argparse.Namespace):  # -> dyno.cloud.RayConfig
    from dyno.cloud import RayConfig

    return RayConfig(replicas=args.replicas, autoscale=args.autoscale, address=args.address,
                     torch_device=args.torch_device, replica_threads=args.threads or 1,
                     max_ongoing=args.workers or 2,
                     **({} if args.target_ongoing is None else {"target_ongoing": args.target_ongoing}))


def _check_ray_flags(args: argparse.Namespace) -> None:
    if args.ray:
        if args.target_ongoing is not None and args.autoscale is None:
            raise ConfigError("--target-ongoing goes with --autoscale MIN,MAX")
        return
    given = [flag for flag, value in (("--replicas", args.replicas), ("--autoscale", args.autoscale),
                                      ("--target-ongoing", args.target_ongoing), ("--address", args.address))
             if value is not None]
    if args.torch_device != "cpu":
        given.append("--torch-device")
    if given:
        raise ConfigError(f"{', '.join(given)} need --ray (they configure the Ray Serve deployment)")


def _serve(args: argparse.Namespace) -> None:
    from dyno.runtime import BatchConfig, ServerConfig, TLSConfig, from_plan_file, serve

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    _check_ray_flags(args)
    ray_config = _ray_config(args) if args.ray else None
    tls = TLSConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca) if args.tls_cert else None
    config = ServerConfig(
        batching=BatchConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             workers=1 if args.ray else args.workers or 1),
        max_message_bytes=int(args.max_message_mb * 1024 * 1024), token=token(args), tls=tls,
        max_queued_bytes=int(args.max_queued_mb * 1024 * 1024),
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        torch_threads=None if args.ray else args.threads,
        **{name: getattr(args, name) for name in _LIMITS})
    warning = config.exposure_warning(f"{args.host}:{args.port}")
    if warning:
        print(f"dyno serve: warning: {warning}", file=sys.stderr)
    plan, model = from_plan_file(args.plan, plan_weights(args.plan, args.weights))
    if ray_config is not None:
        from dyno.cloud import serve_ray

        serve_ray(plan, model, config, ray_config, address=f"{args.host}:{args.port}", ready_file=args.ready_file,
                  grace=args.grace)
        return
    serve(plan, model, config, address=f"{args.host}:{args.port}", ready_file=args.ready_file,
          grace=args.grace)
