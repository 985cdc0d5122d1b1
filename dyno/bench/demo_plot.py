"""The demo's timeline: bandwidth (true and DynO's estimate), cut, bits and throughput over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dyno.bench.session import SystemRun
from dyno.figures import save_png
from dyno.packing import IMAGE_CODECS, Packing

__all__ = ["plot_timeline"]


def plot_timeline(runs: list[SystemRun], trace: Any, duration: float, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    ts = np.linspace(0, duration, 600)
    axes[0].step(ts, [trace.rate_bps(t) / 1e6 for t in ts], where="post", color="black", label="uplink (trace)")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, run in enumerate(runs):
        if not run.points:
            continue
        color = colors[k % len(colors)]
        t = np.array([p.t for p in run.points])
        if run.name == "dyno":
            axes[0].plot(t, [p.estimate_bps / 1e6 for p in run.points], ".", ms=3, color=color,
                         label="DynO's estimate")
        axes[1].plot(t, [p.cut for p in run.points], ".", ms=3, color=color, label=run.name)
        bits = np.array([Packing(p.codec, p.bits).bits_per_value if p.codec and p.codec not in IMAGE_CODECS
                         else np.nan for p in run.points], dtype=float)
        image = np.array([p.codec in IMAGE_CODECS for p in run.points])
        axes[2].plot(t[~image], bits[~image], ".", ms=3, color=color, label=run.name)
        if image.any():  # an image codec sends 8-bit pixels at a quality, not a bit width
            axes[2].plot(t[image], np.full(image.sum(), 8.0), "x", ms=3, color=color,
                         label=f"{run.name}: jpeg/webp (8-bit pixels)")
        edges = np.arange(0, max(duration, t.max()) + 1.0, 1.0)
        counts, _ = np.histogram(t, bins=edges)
        axes[3].step(edges[:-1], counts, where="post", color=color, label=run.name)
    axes[0].set_ylabel("Mbit/s")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("cut (0 = input)")
    axes[2].set_ylabel("bits per value")
    axes[3].set_ylabel("inferences / s")
    axes[3].set_xlabel("seconds into the bandwidth pattern")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_title(title)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
