"""The simulator's picture: bandwidth over time, and each policy's cut and bits over time (one trace)."""

from __future__ import annotations

from pathlib import Path

from dyno.emulate.traces import Trace
from dyno.figures import save_png
from dyno.packing import Packing
from dyno.simulate import SimResult

__all__ = ["plot_timeline"]


def _bits_axis(codec: str | None, bits: int) -> float:
    if codec is None:
        return float("nan")       # device-only: nothing sent
    return Packing(codec, None if bits < 0 else bits).bits_per_value   # an image: its 8-bit pixels


def plot_timeline(per_policy: dict[str, SimResult], trace: Trace, path: str | Path, title: str) -> Path:
    """Bandwidth, cut and bits over time of every policy that kept a timeline on ``trace``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    duration = max((r.timeline["t"][-1] for r in per_policy.values() if r.timeline and r.timeline["t"]),
                   default=trace.period)
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True, constrained_layout=True)
    ax = axes[0]
    xs, ys = [], []
    loop = 0
    while loop * trace.period <= duration:
        for k, rate in enumerate(trace.rates_bps):
            t0 = loop * trace.period + trace.times[k]
            xs += [t0, loop * trace.period + trace.times[k + 1]]
            ys += [rate / 1e6, rate / 1e6]
        loop += 1
    ax.plot(xs, ys, color="0.7", lw=2.5, label="trace (true uplink)")
    for name, r in per_policy.items():
        if r.timeline and name in ("dyno", "neurosurgeon"):
            ax.plot(r.timeline["t"], [b / 1e6 for b in r.timeline["bw_est"]], lw=0.9,
                    label=f"{name} estimate (own transfers)")
    ax.set_ylabel("Mbit/s")
    ax.set_xlim(0, duration)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    styles = ["-", "--", "-.", ":"]
    for j, (name, r) in enumerate(per_policy.items()):
        if not r.timeline:
            continue
        tl = r.timeline
        style = dict(lw=1.2 if name == "dyno" else 0.9, ls=styles[j % len(styles)], drawstyle="steps-post")
        axes[1].plot(tl["t"], tl["cut"], label=f"{name} ({r.throughput:.3g}/s)", **style)
        axes[2].plot(tl["t"], [_bits_axis(c, b) for c, b in zip(tl["codec"], tl["bits"])], label=name, **style)
    axes[1].set_ylabel("cut (last = device-only)")
    axes[1].legend(loc="upper right", fontsize=8, ncol=2)
    axes[2].set_ylabel("bits sent per value")
    axes[2].set_xlabel("time (s)")
    axes[2].set_yscale("log", base=2)
    axes[2].set_yticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8 (jpeg/webp)", "16 (fp16)", "32 (fp32)"])
    return save_png(fig, path, dpi=110)
