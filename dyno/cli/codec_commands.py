"""``dyno codec-bench``: bytes, error and speed of the codec on real activations, with baselines."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dyno.cli._args import bounded_int, int_list, positive_int, str_list


def register(subparsers: argparse._SubParsersAction) -> None:
    from dyno.bench.codec import BITS, MODES

    parser = subparsers.add_parser(
        "codec-bench",
        help="measure the codec on real activations (bytes, bits/value, GB/s, error) against baselines",
        description="Run a zoo model's head to several cuts on a few real inputs and encode each "
        f"activation at bits {', '.join(map(str, BITS))} in modes {', '.join(MODES)}, single-threaded; "
        "report per (cut, bits, mode) the bytes on the wire, ratio to fp32, bits per value beside the order-0 "
        "entropy of the codes, encode and decode GB/s of fp32 tensor (medians) and relative L2 error; per "
        "(cut, bits <= 8) the best coder against the entropy; plus the baselines fp32, fp16, "
        "int8+zlib, dense 8-bit, memcpy (and jpeg/webp at the input cut). Default model: "
        "efficientnet-lite0 on ../shared/imagenet-samples ($DYNO_IMAGENET_SAMPLES) when present, else "
        "fmnist-resnet; 'synthetic' uses ReLU-like random tensors.",
    )
    parser.add_argument("--model", help="zoo model name, or 'synthetic' (default: see above)")
    parser.add_argument("--data", help="dataset name or folder for the inputs (default: the model's)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed runs per measurement (median; default 5)")
    parser.add_argument("--samples", type=positive_int, default=8, help="input images (default 8; medians over them)")
    parser.add_argument("--cuts", type=bounded_int(2), default=8, help="cuts to measure, input included (default 8)")
    parser.add_argument("--bits", type=int_list, default=BITS,
                        help=f"comma-separated bit widths (default {','.join(map(str, BITS))})")
    parser.add_argument("--modes", type=str_list, default=MODES,
                        help=f"comma-separated modes (default {','.join(MODES)})")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dyno.bench import codec as bench
    from dyno.bench.console import RichProgress

    with RichProgress(transient=True) as progress:
        result = bench.run(args.model, samples=args.samples, repeats=args.repeats, cuts=args.cuts,
                           bits=args.bits, modes=args.modes, data=args.data, progress=progress)
    if args.json:
        print(json.dumps(result))
        return
    _print(result)


def _print(result: dict[str, Any]) -> None:
    from rich.table import Table

    from dyno.bench.console import stdout_console

    console = stdout_console()
    src = result["source"]
    title = (f"codec-bench: {src['model']} ({src.get('weights') or 'n/a'} weights) on {src['data']}, "
             f"{src['samples']} inputs, medians of {result['settings']['repeats']} runs, 1 thread")
    if src.get("synthetic"):
        title += "  [SYNTHETIC DATA]"
    if src.get("note"):
        console.print(f"[yellow]{src['note']}[/yellow]")
    cuts = {c["id"]: c for c in result["cuts"]}
    table = Table(title=title, header_style="bold")
    for column in ("cut", "shape", "bits", "mode", "bytes", "ratio", "bits/value", "entropy", "enc GB/s",
                   "dec GB/s", "rel L2"):
        table.add_column(column, justify="left" if column in ("mode", "shape") else "right")
    previous = None
    for row in result["rows"]:
        cut = cuts[row["cut"]]
        first = row["cut"] != previous
        if first and previous is not None:
            table.add_section()
        previous = row["cut"]
        table.add_row(f"{row['cut']}" if first else "", "×".join(map(str, cut["shape"])) if first else "",
                      str(row["bits"]), row["mode"], f"{row['bytes']:,}", f"{row['fp32_bytes'] / row['bytes']:.1f}×",
                      f"{row['bits_per_value']:.3f}", f"{row['entropy_bits_per_value']:.3f}",
                      f"{row['encode_gbps']:.2f}", f"{row['decode_gbps']:.2f}", f"{row['rel_l2']:.2e}")
    console.print(table)
    base = Table(title="baselines (same run)", header_style="bold")
    for column in ("cut", "name", "bytes", "ratio", "enc GB/s", "dec GB/s", "rel L2"):
        base.add_column(column, justify="left" if column == "name" else "right")
    for row in result["baselines"]:
        fp32 = cuts[row["cut"]]["fp32_bytes"]
        base.add_row(str(row["cut"]), row["name"], f"{row['bytes']:,}", f"{fp32 / row['bytes']:.1f}×",
                     f"{row['encode_gbps']:.2f}", f"{row['decode_gbps']:.2f}", f"{row['rel_l2']:.2e}")
    console.print(base)
    console.print(f"memcpy of the fp32 tensor: {result['memcpy_gbps']:.1f} GB/s (median over cuts)")
    goals = result["goals"]
    _print_best(console, goals.get("best", []))
    if goals.get("rows"):
        for key, label in (("encode_gbps", "encode"), ("decode_gbps", "decode")):
            g = goals[key]
            verdict = "[green]met[/green]" if g["met_by_median"] else "[red]NOT met[/red]"
            console.print(f"shuffle-lz4 {label}, b<=8, tensors >= 256 KiB ({goals['rows']} rows): median "
                          f"{g['median']:.2f} GB/s, min {g['min']:.2f} GB/s, goal {g['goal']:.1f}: {verdict} "
                          f"({g['rows_below_goal']} rows below)")


def _print_best(console: Any, best: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not best:
        return
    table = Table(title="best coder per (cut, bits <= 8) against the codes' order-0 entropy", header_style="bold")
    for column in ("cut", "bits", "mode", "bits/value", "entropy", "ratio", "enc GB/s", "dec GB/s"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in best:
        ratio = f"{row['ratio_to_entropy']:.2f}"
        table.add_row(str(row["cut"]), str(row["bits"]), row["mode"], f"{row['bits_per_value']:.3f}",
                      f"{row['entropy_bits_per_value']:.3f}",
                      ratio if row["within_entropy_goal"] else f"[red]{ratio}[/red]",
                      f"{row['encode_gbps']:.2f}", f"{row['decode_gbps']:.2f}")
    console.print(table)
    met = sum(r["within_entropy_goal"] for r in best)
    console.print(f"best coder within 10% of the entropy (or below): {met} of {len(best)} (cut, bits)")
