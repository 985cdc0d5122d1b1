"""``dyno run``: a device client over a labelled data set, from the command line (parsing only)."""

from __future__ import annotations

import argparse
import json
import sys

from dyno.cli._args import (
    bounded_int,
    input_file,
    positive_float,
    positive_int,
)
from dyno.cli._device_run import add_backend, run_onnxruntime
from dyno.cli._model_args import PLAN_WEIGHTS_HELP, plan_weights
from dyno.cli._runtime_args import add_device_and_link, add_token, token
from dyno.errors import RuntimeServiceError
from dyno.policy import DEFAULT_SLO


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_run(subparsers)


# ---------------------------------------------------------------------------------------- run

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
    p.add_argument("--weights", default=None, help=PLAN_WEIGHTS_HELP)
    p.add_argument("--policy", default="dyno", help="dyno, device-only, cloud-only, cloud-only-raw, ...")
    p.add_argument("--slo", default=DEFAULT_SLO, help=f"SLO for the dyno policy (default {DEFAULT_SLO!r})")
    p.add_argument("--in-flight", type=bounded_int(1, 1024), default=8,
                   help="inferences under way at once (default 8)")
    p.add_argument("--timeout", type=positive_float, default=2.0, help="seconds to wait for a reply (default 2)")
    add_device_and_link(p)
    add_token(p)
    p.add_argument("--tls-ca", type=input_file, help="CA of the server's certificate (PEM); enables TLS")
    p.add_argument("--tls-cert", type=input_file, help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", type=input_file, help="client key (PEM) for mutual TLS")
    p.add_argument("--tls-server-name", help="name to check in the server's certificate")
    add_backend(p)
    p.add_argument("--json", action="store_true", help="print one JSON summary document")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    if args.backend == "onnxruntime":
        return run_onnxruntime(args)
    from dyno.bench.console import RichProgress
    from dyno.bench.run import run_client
    from dyno.runtime import ClientTLS, from_plan_file

    tls = None
    if args.tls_ca:
        tls = ClientTLS(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)
    plan, model = from_plan_file(args.plan, plan_weights(args.plan, args.weights))
    with RichProgress(not args.json, transient=True) as progress:
        run = run_client(plan, model, server=args.server, data=args.data, n=args.n, policy=args.policy,
                         slo=args.slo, in_flight=args.in_flight, timeout=args.timeout, tier=args.tier,
                         device_emulation=args.device_emulation, trace=args.trace, token=token(args),
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
