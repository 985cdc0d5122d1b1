"""``dyno export``: the heads a device runs, as ONNX files with a manifest (parsing and printing only)."""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from dyno.cli._args import bounded_int, int_list, nonnegative_int, positive_int
from dyno.cli._model_args import MODEL_HELP, PLAN_WEIGHTS_HELP, plan_weights
from dyno.errors import ConfigError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export the head of every cut as ONNX for devices without torch",
        description="Write the head of every cut a device may use (all but the input cut) as an ONNX file, "
        "and manifest.json beside them: per head the cut id, node name, input and output shapes (batch "
        "dimension dynamic), the sha256 of the file and the largest |onnxruntime - torch| at export; the "
        "opset, the model, its weights' sha256 and the plan's hash. Side values follow the partitioner's rule: "
        "batch sizes and shapes are recomputed by the tail and constants folded, so a head returns only the "
        "activation; a cut whose side value must travel with it is refused, with the reason, in the manifest. "
        "Give --plan (heads for that plan) or MODEL (heads before any plan exists, e.g. for `dyno profile "
        "--role device --backend onnxruntime` on the device).")
    p.add_argument("model", nargs="?", help=MODEL_HELP + " (not with --plan)")
    p.add_argument("--plan", help="plan file: export the heads of its cuts for its model and weights")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="file format (onnx, the only one)")
    p.add_argument("--out", required=True, help="directory to write the heads and manifest.json into")
    p.add_argument("--weights", default=None, help=PLAN_WEIGHTS_HELP + "; with MODEL: default trained")
    p.add_argument("--opset", type=bounded_int(13, 21), default=None, help="ONNX opset (default 17)")
    p.add_argument("--tails", action="store_true",
                   help="also export each cut's tail (tail-NNN.onnx), so that a device without torch finishes an "
                   "inference the cloud gives back from its activation instead of rerunning the whole model")
    p.add_argument("--cuts", type=int_list, default=None, help="only these cut ids, e.g. 1,5,9 (default all)")
    p.add_argument("--compare", type=nonnegative_int, default=0, metavar="N",
                   help="then compare every head with the torch head on N real inputs of the model's data: max "
                   "|ORT - torch| and the head's latency in both runtimes on one thread (default 0: no comparison)")
    p.add_argument("--repeats", type=positive_int, default=20,
                   help="timed runs per head and runtime in --compare (default 20; median and range)")
    p.add_argument("--data", help="dataset for --compare (default: the plan's or the model's)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    from dyno import export, partition, zoo
    from dyno.bench.console import RichProgress
    from dyno.plan import Plan

    if (args.plan is None) == (args.model is None):
        raise ConfigError("give either MODEL or --plan PLAN")
    opset = args.opset or export.OPSET
    with RichProgress(enabled=not args.quiet and not args.json) as progress:
        if args.plan is not None:
            plan = Plan.load(args.plan)
            model = zoo.load_model(plan.model, weights=plan_weights(args.plan, args.weights))
            cuts = export.plan_cuts(plan, model)
            manifest = export.export_plan(plan, model, args.out, opset=opset, only=args.cuts, progress=progress,
                                          tails=args.tails,
                                          notes=export.device_notes(zoo.get_model(plan.model)))
            name, data = plan.model, args.data or plan.data or None
        else:
            entry = zoo.get_model(args.model)
            model = zoo.load_model(entry, weights=args.weights or "trained")
            import torch

            cuts = partition.cuts(model, torch.zeros(1, *entry.input_shape))
            manifest = export.export_heads(model, cuts, args.out, model_name=entry.name, opset=opset,
                                           only=args.cuts, progress=progress, notes=export.device_notes(entry),
                                           tails=args.tails)
            name, data = entry.name, args.data
        rows = _compare(args, name, data, manifest, model, cuts, progress) if args.compare else []
    document: dict[str, Any] = {
        "out": str(args.out), "model": manifest.model, "plan_hash": manifest.plan_hash, "opset": manifest.opset,
        "heads": len(manifest.heads), "refused": [dataclass_dict(r) for r in manifest.refused]}
    summary = _summary(rows) if rows else {}
    if rows:
        document["compare"] = summary
        document["cuts"] = [r.to_dict() for r in rows]
    if args.json:
        print(json.dumps(document))
        return
    print(f"{len(manifest.heads)} heads of {manifest.model} written to {args.out} (opset {manifest.opset}); "
          f"largest |ORT - torch| at export {max(h.max_abs_diff for h in manifest.heads):.3g}")
    for refused in manifest.refused:
        print(f"  cut {refused.cut} ({refused.name}) not exported: {refused.reason}")
    if rows:
        _print_rows(rows, summary)


def dataclass_dict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


def _compare(args: argparse.Namespace, name: str, data: str | None, manifest: Any, model: Any, cuts: Any,
             progress: Any) -> list:
    from dyno import export
    from dyno.bench.session import labelled

    xs, _ = labelled(name, data, args.compare)
    return export.compare(manifest, args.out, model, cuts, xs, repeats=args.repeats, progress=progress)


def _summary(rows: list) -> dict[str, Any]:
    ratios = [r.ratio for r in rows]
    return {"cuts": len(rows), "max_relative": max(r.relative for r in rows),
            "max_abs_diff": max(r.max_abs_diff for r in rows),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "goal_relative": 1e-4, "goal_met": all(r.relative <= 1e-4 for r in rows)}


def _print_rows(rows: list, summary: dict[str, Any]) -> None:
    from rich.table import Table

    from dyno.bench.console import stdout_console

    table = Table(title="ONNX heads (onnxruntime) against torch heads, one thread, batch 1", header_style="bold")
    for column in ("cut", "node", "max |ORT-torch|", "relative", "ORT ms (median, range)",
                   "torch ms (median, range)", "ORT/torch"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for r in rows:
        table.add_row(str(r.cut), r.name, f"{r.max_abs_diff:.2e}", f"{r.relative:.2e}",
                      f"{r.ort_ms[0]:.3f} ({r.ort_ms[1]:.3f}-{r.ort_ms[2]:.3f})",
                      f"{r.torch_ms[0]:.3f} ({r.torch_ms[1]:.3f}-{r.torch_ms[2]:.3f})", f"{r.ratio:.2f}")
    stdout_console().print(table)
    print(f"{summary['cuts']} cuts: max relative |ORT - torch| {summary['max_relative']:.2e} (goal <= 1e-4: "
          f"{'met' if summary['goal_met'] else 'NOT met'}); ORT/torch latency median {summary['ratio_median']:.2f} "
          f"(range {summary['ratio_min']:.2f}-{summary['ratio_max']:.2f})")
