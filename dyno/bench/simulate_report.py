"""The tables ``dyno simulate`` prints: per tier, every policy side by side; then the closing-note
figures (DynO against every baseline, bytes against Neurosurgeon, regret, onloading)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

from dyno.bench.console import stdout_console

__all__ = ["print_report", "print_decide"]


def print_decide(results: list[dict[str, Any]]) -> None:
    """``dyno simulate --bench-decide``: microseconds per DynO decision."""
    console = stdout_console()
    for r in results:
        console.print(f"{r['plan']}: {r['cuts']} cuts, {r['rows']} (cut, codec, bits) rows "
                      f"({r['priced_rows']} undominated), SLO {r['slo']}: "
                      f"{r['us_per_decision']:.1f} us per decision wall-clock (best run {r['us_min']:.1f} us), "
                      f"{r['cpu_us_per_decision']:.1f} us CPU", highlight=False)


def print_report(document: dict[str, Any]) -> None:
    """The tables of a ``dyno simulate`` document: per tier, every policy; then the summary figures."""
    console = stdout_console()
    if document.get("speeds"):
        from dyno.bench.fleet_report import speeds_line

        console.print(speeds_line(document["speeds"], document["tiers"], document.get("cloud", {})),
                      highlight=False, soft_wrap=True)
    for tier, policies in document["by_tier"].items():
        table = Table(title=f"{document['plan']}, tier {tier} (slowdown {document['tiers'][tier]:.3g}), "
                      f"SLO {document['slo']}, {len({p['trace'] for p in document['per_trace']})} trace(s)",
                      header_style="bold")
        for column in ("policy", "inf/s", "median inf/s", "p50 ms", "p95 ms", "bytes/inf", "bytes/offloaded",
                       "top-1", "cloud ms/inf", "violations"):
            table.add_column(column, justify="left" if column == "policy" else "right")
        for name, m in policies.items():
            table.add_row(name, f"{m['throughput']:.2f}", f"{m['throughput_median']:.2f}", _ms(m["p50_ms"]),
                          _ms(m["p95_ms"]), f"{m['bytes_mean']:,.0f}", f"{m['bytes_per_offloaded']:,.0f}",
                          f"{m['accuracy']:.4f}", f"{m['cloud_s'] * 1000:.2f}", str(m["violations"]))
        console.print(table)
    if "summary" in document:
        _print_summary(console, document["summary"])
    if "plot" in document:
        console.print(f"plot: {document['plot']}")
    console.print(f"simulated in {document['seconds']:.1f} s", style="dim")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    table = Table(title=f"DynO throughput / baseline throughput over traces (SLO {s['slo']})",
                  header_style="bold")
    tiers = list(s["tiers"])
    table.add_column("baseline")
    for tier in tiers:
        table.add_column(f"{tier} median", justify="right")
        table.add_column(f"{tier} min", justify="right")
        table.add_column(f"{tier} <1x", justify="right")
        table.add_column(f"{tier} X breaks SLO", justify="right")
    baselines = list(next(iter(s["tiers"].values()))["speedup"])
    for b in baselines:
        cells = []
        for tier in tiers:
            sp = s["tiers"][tier]["speedup"].get(b, {})
            cells += [f"{sp.get('median', math.nan):.2f}x", f"{sp.get('min', math.nan):.2f}x",
                      str(sp.get("below_1", "-")), f"{sp.get('baseline_violation_share', math.nan):.0%}"]
        table.add_row(b, *cells)
    console.print(table)
    for tier in tiers:
        t = s["tiers"][tier]
        lines = [f"[bold]{tier}[/] (slowdown {t['slowdown']:.3g}):"]
        if t.get("bytes_ratio_neurosurgeon"):
            r = t["bytes_ratio_neurosurgeon"]
            b = t["bytes_per_offloaded"]
            lines.append(f"  bytes per offloaded inference: Neurosurgeon {b['neurosurgeon']:,.0f}, "
                         f"DynO {b['dyno']:,.0f}; Neurosurgeon/DynO over traces median {r['median']:.1f}x, "
                         f"max {r['max']:.1f}x")
        if t.get("regret"):
            r = t["regret"]
            lines.append(f"  regret vs hindsight oracle: median {r['median']:.1%}, max {r['max']:.1%}, "
                         f"min {r['min']:.1%}")
        if "onloading" in t:
            o = t["onloading"]
            a = o["throughput_vs_cloud_only"]
            lines.append(f"  onloading ({o['slo']}): cloud ms/inference cloud-only "
                         f"{o['cloud_s']['cloud-only'] * 1000:.2f}, DynO {o['cloud_s']['dyno'] * 1000:.2f} -> "
                         f"{o['cloud_s_reduction']:.2f}x less; DynO throughput / cloud-only median "
                         f"{a['median']:.2f}x, min {a['min']:.2f}x")
        console.print("\n".join(lines))
