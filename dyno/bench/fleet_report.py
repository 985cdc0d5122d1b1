"""What ``dyno simulate --fleet`` and the fleet benchmark print and draw: a table per fleet size, the
closing-note goals, and one PNG (goodput and cloud-seconds per inference against N, a line per system)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from dyno.bench.console import stdout_console

__all__ = ["print_fleet", "plot_fleet", "speeds_line", "COLUMNS"]

COLUMNS = (("goodput", "goodput/s", ".1f"), ("slo_attainment", "SLO met", ".1%"), ("cloud_s", "cloud ms/inf", "ms"),
           ("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f"), ("jain", "Jain", ".3f"),
           ("cloud_utilisation", "cloud util", ".1%"), ("dropped", "dropped", "d"), ("fallbacks", "fallbacks", "d"))


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if spec == "ms":
        return f"{value * 1000:.3f}"
    return format(value, spec)


def _table(entry: dict[str, Any], title: str, price: float | None) -> Table:
    table = Table(title=title, header_style="bold")
    table.add_column("system")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    if price is not None:
        table.add_column("$ per 1M", justify="right")
    for name, m in entry["policies"].items():
        cells = [_cell(m.get(key), spec) for key, _, spec in COLUMNS]
        if price is not None:
            cells.append(_cell(m.get("price_per_million"), ".2f"))
        table.add_row(name, *cells)
    return table


def print_fleet(document: dict[str, Any]) -> None:
    """Tables per N (and, for the benchmark, measured beside simulated), then the goals."""
    console = stdout_console()
    price = document.get("cloud_price_per_s")
    speeds = document.get("speeds")
    if speeds:
        console.print(speeds_line(speeds, document["tiers"], document.get("cloud", {})), highlight=False,
                      soft_wrap=True)
    for part in ("measured", "simulated") if "measured" in document else (None,):
        fleet = document[part]["fleet"] if part else document["fleet"]
        for entry in fleet:
            title = (f"{document['plan']}: {entry['devices']} device(s), SLO {document['slo']}, "
                     f"{_rate(document)}" + (f" ({part})" if part else ""))
            console.print(_table(entry, title, price))
            host = entry.get("host")
            if host:
                console.print(f"host: the devices' own work needs {host['device_cores']:.2f} of {host['cores']} "
                              f"cores at the offered rate; load {host['load_1min']:.1f} after", highlight=False)
    goals = document.get("goals") or (document.get("simulated") or {}).get("goals")
    if goals:
        console.print(f"goals: {goals}", highlight=False, soft_wrap=True)
    if "plot" in document:
        console.print(f"plot: {document['plot']}")


def _rate(document: dict[str, Any]) -> str:
    rate = document.get("rate")
    return "closed loop" if rate is None else f"{rate:g} frames/s per device"


def speeds_line(speeds: dict[str, Any], tiers: dict[str, float], cloud: dict[str, Any]) -> str:
    """One line: the absolute figures a run used (reference, device tiers, cloud)."""
    shown = ", ".join(f"{t} {k * speeds['reference_ms']:.3g} ms (k_d {k:.3g})" for t, k in tiers.items())
    return (f"absolute figures: {speeds['reference_model']} takes {speeds['reference_ms']:.1f} ms on the machine "
            f"that profiled the plan ({speeds['source']}); devices {shown}; cloud x{cloud.get('scale', 1):.3g} of "
            f"the plan's profile ({speeds.get('cloud_used', 'gpu')}), {cloud.get('workers', 1)} worker(s)"
            + (f"; {speeds['assumed']}" if speeds.get("assumed") else ""))


def plot_fleet(document: dict[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Goodput and cloud-seconds per inference against N, one line per system (measured solid and
    simulated dashed when the document has both)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dyno.figures import save_png

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    parts = [("measured", "-"), ("simulated", "--")] if "measured" in document else [(None, "-")]
    colours: dict[str, Any] = {}
    for part, style in parts:
        fleet = document[part]["fleet"] if part else document["fleet"]
        sizes = [e["devices"] for e in fleet]
        for name in fleet[0]["policies"]:
            label = name + (f" ({part})" if part else "")
            line, = top.plot(sizes, [e["policies"][name]["goodput"] for e in fleet], style, marker="o",
                             label=label, color=colours.get(name))
            colours[name] = line.get_color()
            bottom.plot(sizes, [e["policies"][name]["cloud_s"] * 1000 for e in fleet], style, marker="o",
                        color=colours[name])
    top.set_ylabel("goodput (inferences within SLO / s)")
    bottom.set_ylabel("cloud ms per inference")
    bottom.set_xlabel("devices")
    for axis in (top, bottom):
        axis.set_xscale("log", base=2)
        axis.grid(True, alpha=0.3)
    top.set_yscale("log")
    top.legend(fontsize=7, ncol=2)
    fig.suptitle(title or f"{document['plan']}: fleet, SLO {document['slo']}", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, format="png", dpi=110)
