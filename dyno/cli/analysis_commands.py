"""``dyno analyze``, ``dyno profile`` and ``dyno plan show``: offline analysis from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING

from dyno.cli._args import input_file, int_list, output_file, positive_int, str_list
from dyno.cli._model_args import MODEL_HELP, WEIGHTS_HELP, weights_source
from dyno.errors import ConfigError

if TYPE_CHECKING:
    from dyno.plan import CutPlan, Plan


def register(subparsers: argparse._SubParsersAction) -> None:
    analyze = subparsers.add_parser(
        "analyze",
        help="profile a model and measure accuracy per cut and bit width; write its plan",
        description="Measure (or load) a device and a cloud profile, then the top-1 accuracy of every cut "
        "at every bit width (knee search with early stopping; see dyno.offline.precision), and the bytes of every "
        "option from real encodes. Writes the plan (versioned JSON) and prints a summary table.",
    )
    analyze.add_argument("model", help=MODEL_HELP)
    _data_arguments(analyze)
    analyze.add_argument("--out", type=output_file,
                         help="plan file to write (default: CACHE/plans/MODEL.json, CACHE being "
                         "$DYNO_CACHE or ~/.cache/dyno)")
    analyze.add_argument("--device-profile", metavar="FILE", type=input_file,
                         help="a device profile from `dyno profile "
                         "--role device` (default: measure one here)")
    analyze.add_argument("--cloud-profile", metavar="FILE", type=input_file, help="a cloud profile from `dyno profile "
                         "--role cloud` (default: measure one here)")
    analyze.add_argument("--threads", type=positive_int, default=1, help="torch threads for the profiles (default 1)")
    analyze.add_argument("--json", action="store_true", help="print the plan summary as one JSON document")
    analyze.add_argument("--quiet", action="store_true", help="no progress bars")
    analyze.set_defaults(func=run_analyze)

    prof = subparsers.add_parser(
        "profile",
        help="measure a device or cloud profile of a model on this machine",
        description="Device role: head time per cut at batch size 1, encode time and bytes per codec option. "
        "Cloud role: tail time per batch at batch sizes 1..32 and decode time per option. Warm-up, repeats, "
        "medians; the thread count is stated in the file. Combine profiles from two machines with "
        "`dyno analyze MODEL --device-profile D --cloud-profile C`.",
    )
    prof.add_argument("model", nargs="?", help=MODEL_HELP + " (with --backend onnxruntime: optional, the heads' "
                      "model)")
    prof.add_argument("--role", choices=("device", "cloud"), required=True)
    prof.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                      help="device role: run the heads with torch (default) or with onnxruntime from exported ONNX "
                      "heads (--heads DIR from `dyno export`); onnxruntime needs no torch: `pip install "
                      "'dyno[device]'` on the device")
    prof.add_argument("--heads", metavar="DIR", help="--backend onnxruntime: the directory `dyno export` wrote")
    prof.add_argument("--codec-samples", type=positive_int, default=4,
                      help="--backend onnxruntime: inputs each codec option is encoded on (default 4)")
    prof.add_argument("--out", required=True, type=output_file, help="profile file to write (JSON)")
    prof.add_argument("--data", help="real inputs for the codec timings (default: the model's dataset)")
    prof.add_argument("--weights", default="trained-or-random",
                      help="trained, random, trained-or-random (default) or a state_dict file (read with "
                      "weights_only=True)")
    prof.add_argument("--threads", type=positive_int, default=1,
                      help="torch threads, or onnxruntime intra-op threads (default 1)")
    prof.add_argument("--name", help="profile name recorded in plans (default ROLE@HOST (N threads))")
    prof.add_argument("--batch-sizes", type=int_list, default=(1, 2, 4, 8, 16, 32),
                      help="cloud role: batch sizes (default 1..32)")
    prof.add_argument("--json", action="store_true", help="print the profile as one JSON document")
    prof.add_argument("--quiet", action="store_true", help="no progress bars")
    prof.set_defaults(func=run_profile)

    _register_plan(subparsers)


def _register_plan(subparsers: argparse._SubParsersAction) -> None:
    plan = subparsers.add_parser("plan", help="inspect a plan file", description="Inspect a plan file.")
    actions = plan.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser(
        "show", help="table (and figure) of a plan",
        description="Per cut: fp32 bytes, the fewest bits within 0.5 and 1 point of top-1 (with the "
        "paired standard error of the drop), bytes there and the reduction, device and cloud latency.")
    show.add_argument("plan", help="a plan file")
    show.add_argument("--plot", metavar="PNG", type=output_file,
                      help="also draw bytes, latency and the accuracy heat map")
    show.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    show.set_defaults(func=run_plan_show)
    restrict = actions.add_parser(
        "restrict", help="the plan with only some coders (e.g. LZ4 only, for comparisons)",
        description="Write the plan with only the given quantising coders at every width (fp32, fp16 and "
        "the input's image options stay): `dyno plan restrict P --codecs shuffle-lz4 --out P-lz4` is the plan "
        "as DynO saw it before the stronger coders, for `dyno simulate --plan P-lz4`.")
    restrict.add_argument("plan", type=input_file, help="a plan file")
    restrict.add_argument("--codecs", type=str_list, required=True,
                          help="comma-separated quantising coders to keep (shuffle-lz4, centre-zstd, zstd, rans)")
    restrict.add_argument("--out", type=output_file, required=True, help="plan file to write")
    restrict.set_defaults(func=run_plan_restrict)
    plan.set_defaults(func=lambda _args: (plan.print_help(), 2)[1])


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset name (fashion-mnist, imagenet-samples) or directory "
                        "(default: the model's own)")
    parser.add_argument("--limit", type=positive_int, help="samples, spread evenly over the dataset (default: "
                        "2000 of fashion-mnist, all 500 imagenet-samples, else 1000)")
    parser.add_argument("--weights", default="trained", help=WEIGHTS_HELP + "; the plan records where they "
                        "came from and their sha256")


def run_analyze(args: argparse.Namespace) -> None:
    from dyno import offline
    from dyno.bench.console import RichProgress

    out = args.out or offline.default_plan_path(args.model)
    with RichProgress(enabled=not args.quiet) as progress:
        plan = offline.analyze(args.model, data=args.data, limit=args.limit, out=out, progress=progress,
                               weights=args.weights, device_profile=args.device_profile,
                               cloud_profile=args.cloud_profile, threads=args.threads)
    plan = dataclasses.replace(plan, weights=weights_source(args.weights))  # how to rebuild it
    plan.save(out)
    if args.json:
        print(json.dumps({**offline.summary(plan), "plan": str(out),
                          "seconds": plan.notes["analysis_seconds"]["total"]}))
        return
    _print_table(plan)
    print(f"plan written to {out} ({plan.notes['analysis_seconds']['total']:.0f} s)")


def run_profile(args: argparse.Namespace) -> None:
    if args.backend == "onnxruntime":
        return _profile_onnxruntime(args)
    if args.heads is not None:
        raise ConfigError("--heads goes with --backend onnxruntime")
    if args.model is None:
        raise ConfigError("name the model to profile (MODEL), or use --backend onnxruntime --heads DIR")
    import torch

    from dyno import offline, partition, zoo
    from dyno.bench.console import RichProgress

    batch_sizes = args.batch_sizes
    entry = zoo.get_model(args.model)
    model = zoo.load_model(entry, weights=args.weights)
    data = args.data or entry.default_data
    if data is None:
        raise ConfigError(f"{entry.name} has no default dataset; pass --data")
    dataset = zoo.load_dataset(data, model=entry)
    x, _, _ = offline.load_sample(dataset, 8)
    cuts = partition.cuts(model, x[:1])
    images, _, _ = offline.input_images(x, offline.input_spec(entry, dataset))
    with RichProgress(enabled=not args.quiet) as progress, torch.no_grad():
        result = offline.measure(args.role, model, cuts, x, model_name=entry.name, name=args.name,
                                 threads=args.threads, batch_sizes=batch_sizes, images=images, progress=progress)
    result.save(args.out)
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    method = result.method.get("head" if args.role == "device" else "tail")
    print(f"{result.role} profile {result.name!r} of {entry.name}: {len(result.cuts)} cuts, "
          f"{result.threads} thread(s), {method}; written to {args.out}", file=sys.stdout)


def _profile_onnxruntime(args: argparse.Namespace) -> None:
    """``dyno profile --role device --backend onnxruntime --heads DIR``: no torch is imported."""
    from dyno.bench.console import RichProgress
    from dyno.device import OrtHeads, load_inputs, measure_device, save_profile

    if args.role != "device":
        raise ConfigError("--backend onnxruntime measures the device role (the heads); profile the cloud with torch")
    if args.heads is None:
        raise ConfigError("--backend onnxruntime needs --heads DIR (from `dyno export MODEL --out DIR`)")
    heads = OrtHeads(args.heads, threads=args.threads)
    manifest = heads.manifest
    if args.model is not None and args.model != manifest.model:
        raise ConfigError(f"the heads in {args.heads} are of {manifest.model}, not {args.model}")
    data = args.data or manifest.notes.get("data")
    if not data:
        raise ConfigError(f"{manifest.model} has no default dataset; pass --data")
    x, _ = load_inputs(data, max(8, args.codec_samples), preprocess=manifest.notes.get("preprocess"))
    with RichProgress(enabled=not args.quiet) as progress:
        document = measure_device(heads, x, name=args.name, codec_samples=args.codec_samples, progress=progress)
    save_profile(document, args.out)
    if args.json:
        print(json.dumps(document))
        return
    print(f"device profile {document['name']!r} of {manifest.model}: {len(document['cuts'])} cuts, "
          f"onnxruntime, {heads.threads} thread(s); written to {args.out}")


def run_plan_show(args: argparse.Namespace) -> None:
    from dyno import offline
    from dyno.plan import Plan

    plan = Plan.load(args.plan)
    if args.plot:
        offline.plot(plan, args.plot)
    if args.json:
        info = offline.summary(plan)
        keys = ("id", "name", "fp32_bytes", "min_bits_1pt", "bytes_at_min_bits_1pt", "device_ms", "cloud_ms")
        print(json.dumps({"model": info["model"], "cuts": [{k: c[k] for k in keys} for c in info["cuts"]]}))
        return
    _print_table(plan)
    if args.plot:
        print(f"figure written to {args.plot}")


def run_plan_restrict(args: argparse.Namespace) -> None:
    from dyno.plan import Plan

    plan = Plan.load(args.plan).restricted(args.codecs)
    plan.save(args.out)
    rows = sum(len(c.options) for c in plan.cuts)
    print(f"{args.out}: {plan.model} with coders {', '.join(args.codecs)} only ({rows} options)")


def _print_table(plan: Plan) -> None:
    from rich.table import Table

    from dyno import offline
    from dyno.bench.console import stdout_console

    info = offline.summary(plan)
    big = max(plan.cuts[0].cloud_ms)
    table = Table(title=f"{plan.model}: top-1 fp32 {100 * plan.accuracy_fp32:.2f}% on {plan.samples} samples "
                  f"of {plan.data}; device {plan.device_profile}, cloud {plan.cloud_profile}",
                  header_style="bold")
    columns = ("id", "node", "shape", "fp32 KiB", "bits ≤0.5pt", "bits ≤1pt", "KiB @≤1pt", "reduction",
               "best coder", "its reduction", "device ms", "cloud ms b=1", f"cloud ms/sample b={big}", "measured")
    for column in columns:
        table.add_column(column, justify="left" if column in ("node", "shape") else "right")
    for c, cut in zip(info["cuts"], plan.cuts):
        table.add_row(
            str(c["id"]), c["name"], "×".join(map(str, c["shape"])), f"{c['fp32_bytes'] / 1024:,.1f}",
            _bits(plan, cut, c["min_bits_05pt"], 0.005), _bits(plan, cut, c["min_bits_1pt"], 0.01),
            "-" if c["bytes_at_min_bits_1pt"] is None else f"{c['bytes_at_min_bits_1pt'] / 1024:,.2f}",
            "-" if c["reduction_1pt"] is None else f"{c['reduction_1pt']:,.1f}×",
            c["best_coder_1pt"] or "-",
            "-" if c["best_reduction_1pt"] is None else f"{c['best_reduction_1pt']:,.1f}×",
            f"{c['device_ms']:.2f}", f"{c['cloud_ms']:.2f}", f"{cut.cloud_ms_per_sample(big):.2f}",
            f"{c['measured']}/{c['options']}" if c["options"] else "-")
    stdout_console().print(table)
    best = [c for c in info["cuts"] if c["reduction_1pt"]]
    if best:
        top = max(best, key=lambda c: c["reduction_1pt"])
        print(f"largest reduction within 1 point: {top['reduction_1pt']:.1f}× at cut {top['id']} ({top['name']}, "
              f"{top['min_bits_1pt']} bits, {top['bytes_at_min_bits_1pt']:.0f} B vs {top['fp32_bytes']:.0f} B fp32). "
              "± is the paired standard error of the drop, in points.")
        strong = max(best, key=lambda c: c["best_reduction_1pt"] or 0)
        if strong["best_reduction_1pt"]:
            print(f"with the strongest coder: {strong['best_reduction_1pt']:.1f}× at cut {strong['id']} "
                  f"({strong['best_coder_1pt']}, {strong['min_bits_1pt']} bits, {strong['best_bytes_1pt']:.0f} B)")


def _bits(plan: Plan, cut: CutPlan, value: int | None, max_drop: float) -> str:
    """A table cell: the fewest bits within ``max_drop`` with the standard error of its drop."""
    if value is None:
        return "-" if not cut.options else "none"
    option = plan.min_bits(cut, max_drop)
    se = f" ±{100 * option.drop_se:.2f}" if option is not None and option.drop_se is not None else ""
    return f"{value}{se}"
