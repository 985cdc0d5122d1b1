"""``dyno cuts MODEL``: list every valid split point of a zoo model."""

from __future__ import annotations

import argparse
import json

import torch

from dyno import partition


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cuts",
        help="list every valid split point of a model",
        description="Trace MODEL with torch.fx and list every cut where exactly one tensor is live: "
        "its shape, size at fp32 and at 8/4/2 bits, and the device's share of the MACs. "
        "Cut 0 is the input (cloud-only), the last cut is the output (device-only).",
    )
    parser.add_argument("model", help="a zoo model name (see `dyno train --help` for the list)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dyno import zoo

    entry = zoo.get_model(args.model)
    model = zoo.load_model(args.model, weights="random")  # shapes and MACs do not depend on weights
    cuts = partition.cuts(model, torch.zeros(1, *entry.input_shape))
    if args.json:
        print(json.dumps({"model": args.model, "cuts": [c.to_dict() for c in cuts]}))
        return
    _print_table(args.model, cuts)


def _print_table(model: str, cuts: list[partition.Cut]) -> None:
    from rich.table import Table

    from dyno.bench.console import stdout_console

    total = cuts[-1].device_macs or 1
    table = Table(title=f"{model}: {len(cuts)} cuts", header_style="bold")
    for column in ("id", "node", "shape", "fp32 KiB", "8-bit KiB", "4-bit KiB", "2-bit KiB", "≥0",
                   "device MACs", "side values"):
        table.add_column(column, justify="left" if column in ("node", "shape", "side values") else "right")
    for cut in cuts:
        kib = [cut.numel * bits / 8 / 1024 for bits in (32, 8, 4, 2)]
        sides = ", ".join(f"{s.name}:{s.kind}" for s in cut.side_values)
        if not cut.batchable:
            sides += " (batch size 1 only)"
        table.add_row(str(cut.id), cut.name, "×".join(map(str, cut.shape)), *(f"{k:,.1f}" for k in kib),
                      "yes" if cut.nonnegative else "", f"{cut.device_macs / total:.0%}", sides)
    stdout_console().print(table)

