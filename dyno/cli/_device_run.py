"""``dyno run --backend onnxruntime --heads DIR``: the torch-free device client from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from dyno.errors import ConfigError, RuntimeServiceError

__all__ = ["add_backend", "run_onnxruntime"]


def add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="run the heads with torch (default) or with onnxruntime from exported ONNX heads (--heads); "
                   "onnxruntime imports no torch: `pip install 'dyno[device]'` on the device. Inferences the cloud "
                   "does not answer then run the whole model on the device")
    p.add_argument("--heads", metavar="DIR", help="--backend onnxruntime: the directory `dyno export --plan` wrote")


def run_onnxruntime(args: argparse.Namespace) -> None:
    from dyno.bench.console import RichProgress
    from dyno.cli._runtime_args import token
    from dyno.device import OrtHeads, run_labelled
    from dyno.plan import Plan
    from dyno.runtime.config import ClientTLS

    if args.heads is None:
        raise ConfigError("--backend onnxruntime needs --heads DIR (from `dyno export --plan PLAN --out DIR`)")
    if args.weights is not None:
        raise ConfigError("--weights goes with --backend torch; the exported heads hold their weights (their sha256 "
                          "is checked against the plan)")
    tls = ClientTLS(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                    server_name=args.tls_server_name) if args.tls_ca else None
    plan = Plan.load(args.plan)
    heads = OrtHeads(args.heads, plan)
    with RichProgress(not args.json, transient=True) as progress:
        run = run_labelled(plan, heads, server=args.server, data=args.data, n=args.n, policy=args.policy, slo=args.slo,
                           in_flight=args.in_flight, timeout=args.timeout, tier=args.tier,
                           device_emulation=args.device_emulation, trace=args.trace, token=token(args), tls=tls,
                           progress=progress)
    summary = run["summary"]
    if args.json:
        print(json.dumps({**summary, "cloud_replies": run["cloud_replies"], "cloud_errors": run["errors"]}))
    else:
        accuracy = "-" if summary["accuracy"] is None else f"{summary['accuracy']:.1%}"
        throughput = "-" if summary["throughput"] is None else f"{summary['throughput']:.1f}/s"
        print(f"dyno run: {plan.model} via {args.server} (onnxruntime): {summary['n']} inputs, top-1 {accuracy}, "
              f"{throughput}, p50 {summary['p50_ms']:.1f} ms, {summary['fallbacks']} fallbacks, "
              f"{run['cloud_replies']} cloud replies")
        for error in run["errors"]:
            print(f"dyno run: cloud: {error}", file=sys.stderr)
    if args.policy != "device-only" and run["cloud_replies"] == 0:
        why = run["errors"][-1] if run["errors"] else "no reply"
        raise RuntimeServiceError(f"no inference was answered by the cloud at {args.server} ({why}); all "
                                  f"{summary['n']} ran on the device. Check the address, TLS and token")
