"""What ``dyno bench`` prints and draws: the markdown table of every (system, tier, trace) with measured
and simulated throughput side by side, the per-system agreement, DynO against every other system on the
real runtime, and a PNG (measured against simulated, and DynO / X)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

__all__ = ["markdown", "summary", "plot_ground"]


def _f(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary(document: dict[str, Any]) -> dict[str, Any]:
    """Per system: measured/simulated throughput (median, min, max, how many outside 0.85..1.15); per
    other system X: DynO / X on the runtime per (tier, trace), median and min."""
    rows = document["rows"]
    out: dict[str, Any] = {"agreement": {}, "dyno_vs": {}}
    for system in dict.fromkeys(r["system"] for r in rows):
        ratios = [r["ratio"] for r in rows if r["system"] == system and r["ratio"] is not None]
        if ratios:
            out["agreement"][system] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                        "outside_15pct": sum(not 0.85 <= x <= 1.15 for x in ratios), "n": len(ratios)}
    dyno = {(r["tier"], r["trace"]): r["measured_throughput"] for r in rows if r["system"] == "dyno"}
    for system in dict.fromkeys(r["system"] for r in rows if r["system"] != "dyno"):
        ratios = [dyno[(r["tier"], r["trace"])] / r["measured_throughput"] for r in rows
                  if r["system"] == system and r["measured_throughput"] and dyno.get((r["tier"], r["trace"]))]
        if ratios:
            out["dyno_vs"][system] = {"median": statistics.median(ratios), "min": min(ratios),
                                      "below_1": sum(x < 1.0 for x in ratios), "n": len(ratios)}
    return out


def markdown(document: dict[str, Any]) -> str:
    """The rows as a markdown table, then the agreement and DynO / X tables."""
    lines = [f"`dyno bench` {document['plan']}: link {document['link']} ({document.get('link_detail', '')}), "
             f"device {document['device_emulation']}, SLO `{document['slo']}`, {document['duration_s']:g} s per run"
             + (f", each system's median of {document['rounds']} rounds" if document.get("rounds", 1) > 1 else ""),
             "", "| system | tier | trace | measured inf/s | simulated inf/s | measured/simulated | top-1 | "
             "drop vs fp32 (95% CI) | bytes/inf | p95 ms |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in document["rows"]:
        acc = r["evidence"]["accuracy"]
        low, high = acc.get("drop_interval_points") or (None, None)
        drop = "-" if acc.get("drop_points") is None else f"{acc['drop_points']:.2f} [{low:.2f}, {high:.2f}]"
        lines.append(f"| {r['system']} | {r['tier']} | {r['trace']} | {_f(r['measured_throughput'], '.1f')} | "
                     f"{_f(r['simulated_throughput'], '.1f')} | {_f(r['ratio'], '.2f')} | {_f(r['accuracy'], '.3f')} | "
                     f"{drop} | {_f(r['bytes_mean'], ',.0f')} | {_f(r['p95_ms'], '.1f')} |")
    s = summary(document)
    lines += ["", "| system | measured/simulated median | min | max | outside 0.85-1.15 |", "|---|---:|---:|---:|---:|"]
    for system, a in s["agreement"].items():
        lines.append(f"| {system} | {a['median']:.2f} | {a['min']:.2f} | {a['max']:.2f} | "
                     f"{a['outside_15pct']}/{a['n']} |")
    lines += ["", "| DynO / X (runtime) | median | min | runs below 1 |", "|---|---:|---:|---:|"]
    for system, d in s["dyno_vs"].items():
        lines.append(f"| {system} | {d['median']:.2f} | {d['min']:.2f} | {d['below_1']}/{d['n']} |")
    speeds = document.get("speeds", {})
    if speeds:
        k = ", ".join(f"{t} {speeds['tier_ms'].get(t, '?')} ms (k_d {v:.3g})"
                      for t, v in speeds.get("slowdowns", {}).items())
        lines += ["", f"Absolute figures: {speeds['reference_model']} {speeds['reference_ms']:.1f} ms on this machine "
                      f"({speeds['source']}); device tiers {k}; a tier faster than this machine runs at native speed "
                      "(k_emulated = 1); the cloud is this machine's server process"
                      + (f". {speeds['assumed']}" if speeds.get("assumed") else "")]
    return "\n".join(lines)


def plot_ground(document: dict[str, Any], path: str | Path) -> Path:
    """Measured against simulated throughput (log-log, the 15% band), and DynO / X on the runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dyno.figures import save_png

    rows = document["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system and r["measured_throughput"] and r["simulated_throughput"]]
        left.scatter([r["simulated_throughput"] for r in mine], [r["measured_throughput"] for r in mine], label=system,
                     s=18)
    values = [v for r in rows for v in (r["measured_throughput"], r["simulated_throughput"]) if v]
    if values:
        lo, hi = min(values) * 0.8, max(values) * 1.25
        left.plot([lo, hi], [lo, hi], color="0.4", lw=1)
        left.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="0.85", alpha=0.5)
        left.set_xscale("log")
        left.set_yscale("log")
    left.set_xlabel("simulated inferences/s")
    left.set_ylabel("measured inferences/s")
    left.legend(fontsize=7)
    s = summary(document)["dyno_vs"]
    names = list(s)
    right.bar(range(len(names)), [s[n]["median"] for n in names], color="C0", label="median")
    right.scatter(range(len(names)), [s[n]["min"] for n in names], color="C3", zorder=3, label="min")
    right.axhline(1.0, color="0.3", lw=1)
    right.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    right.set_ylabel("DynO / X, runtime throughput")
    right.legend(fontsize=7)
    fig.suptitle(f"dyno bench {document['plan']}: link {document['link']}, device {document['device_emulation']}",
                 fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, format="png", dpi=110)
