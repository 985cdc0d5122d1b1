"""What ``dyno plan show`` prints and draws: the per-cut summary of a plan and its figure.

    info = summary(plan)              # JSON-ready: per cut, fp32 bytes, fewest bits within 1 (0.5) point, ...
    plot(plan, "plan.png")            # bytes, latency and the accuracy heat map over cut x bits
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from dyno.figures import save_png
from dyno.offline.codecs import QUANT_CODEC
from dyno.packing import BITS
from dyno.plan import Plan

__all__ = ["summary", "plot"]


def summary(plan: Plan) -> dict[str, Any]:
    """The figures ``dyno plan show --json`` prints: per cut, fp32 bytes, the fewest bits within
    one point (and 0.5), their bytes (shuffle-lz4, and the coder with the fewest bytes at that width),
    device and cloud latency."""
    cuts = []
    for cut in plan.cuts:
        one, half = plan.min_bits(cut, 0.01), plan.min_bits(cut, 0.005)
        fp32 = cut.option("fp32")
        best = cut.coders(one.bits)[0] if one is not None and one.bits is not None else None
        cuts.append({
            "id": cut.id, "name": cut.name, "shape": list(cut.shape),
            "fp32_bytes": fp32.bytes if fp32 else cut.fp32_bytes,
            "min_bits_1pt": one.bits if one else None,
            "bytes_at_min_bits_1pt": one.bytes if one else None,
            "drop_se_1pt": one.drop_se if one else None,
            "min_bits_05pt": half.bits if half else None,
            "bytes_at_min_bits_05pt": half.bytes if half else None,
            "reduction_1pt": (fp32.bytes / one.bytes) if (one and fp32) else None,
            "best_coder_1pt": best.codec if best else None,
            "best_bytes_1pt": best.bytes if best else None,
            "best_reduction_1pt": (fp32.bytes / best.bytes) if (best and fp32) else None,
            "device_ms": cut.device_ms,
            "cloud_ms": cut.cloud_ms.get(1, cut.cloud_ms[min(cut.cloud_ms)]),
            "cloud_ms_per_batch": {str(b): t for b, t in sorted(cut.cloud_ms.items())},
            "measured": sum(o.measured for o in cut.options), "options": len(cut.options),
        })
    return {"model": plan.model, "accuracy_fp32": plan.accuracy_fp32, "samples": plan.samples,
            "data": plan.data, "device_profile": plan.device_profile, "cloud_profile": plan.cloud_profile,
            "cuts": cuts}


def plot(plan: Plan, path: str | os.PathLike) -> Path:
    """A figure per cut: bytes at the fewest bits within one point next to fp32 bytes, device and
    cloud latency, and the accuracy drop over cut x bits (measured cells dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = summary(plan)["cuts"]
    ids = np.array([c["id"] for c in info])
    fig, axes = plt.subplots(3, 1, figsize=(max(8.0, 0.16 * len(ids) + 4), 11.5), sharex=True,
                             gridspec_kw={"height_ratios": [1.1, 1, 1.5], "hspace": 0.28})
    fig.suptitle(f"{plan.model}: top-1 fp32 {100 * plan.accuracy_fp32:.1f}% on {plan.samples} samples of "
                 f"{plan.data}", y=0.955)
    fig.subplots_adjust(top=0.92)
    _bytes_panel(axes[0], info, ids)
    _latency_panel(axes[1], plan, info, ids)
    image = _drop_panel(axes[2], plan, info, ids)
    bar = fig.colorbar(image, ax=axes, fraction=0.02, pad=0.01)
    ticks = [0, 0.5, 1, 3, 10, 30, 90]
    bar.set_ticks([math.log10(0.1 + t) for t in ticks], labels=[str(t) for t in ticks])
    bar.set_label("top-1 drop (points)")
    return save_png(fig, path, dpi=110, bbox_inches="tight")


_LEGEND = dict(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, frameon=False, borderaxespad=0.2)


def _bytes_panel(ax: Any, info: list[dict[str, Any]], ids: np.ndarray) -> None:
    """KiB per sample: fp32 next to the fewest bits within one point (labelled with the bits)."""
    fp32 = np.array([c["fp32_bytes"] for c in info], float)
    best = np.array([c["bytes_at_min_bits_1pt"] or np.nan for c in info], float)
    width = 0.42
    ax.bar(ids - width / 2, fp32 / 1024, width, color="#bbbbbb", label="fp32")
    ax.bar(ids + width / 2, best / 1024, width, color="#1f77b4", label=f"fewest bits within 1 point ({QUANT_CODEC})")
    ax.set_yscale("log")
    ax.set_ylabel("KiB per sample")
    ax.legend(**_LEGEND)
    for c in info:
        if c["min_bits_1pt"] is not None and len(info) <= 40:
            ax.annotate(str(c["min_bits_1pt"]), (c["id"] + width / 2, (c["bytes_at_min_bits_1pt"] or 1) / 1024),
                        ha="center", va="bottom", fontsize=6)
    ax.grid(axis="y", alpha=0.3)


def _latency_panel(ax: Any, plan: Plan, info: list[dict[str, Any]], ids: np.ndarray) -> None:
    """Head and tail ms per cut (the tail at batch one and per sample at the largest batch)."""
    ax.plot(ids, [c["device_ms"] for c in info], "o-", ms=3, label=f"device: head ({plan.device_profile})")
    ax.plot(ids, [c["cloud_ms"] for c in info], "s-", ms=3, label=f"cloud: tail, batch 1 ({plan.cloud_profile})")
    big = max(plan.cuts[0].cloud_ms)
    ax.plot(ids, [cut.cloud_ms_per_sample(big) for cut in plan.cuts], "^--", ms=3,
            label=f"cloud: tail per sample at batch {big}")
    ax.set_ylabel("ms")
    ax.legend(**_LEGEND)
    ax.grid(alpha=0.3)


def _drop_panel(ax: Any, plan: Plan, info: list[dict[str, Any]], ids: np.ndarray) -> Any:
    """The heat map of the top-1 drop over cut x bits (and fp16); returns the image for the colour bar."""
    from matplotlib.colors import LinearSegmentedColormap

    columns: list[int | str] = [*BITS, "fp16"]
    drop = np.full((len(columns), len(ids)), np.nan)
    measured = np.zeros_like(drop, bool)
    for j, cut in enumerate(plan.cuts[:-1]):
        for r, col in enumerate(columns):
            option = cut.option("fp16") if col == "fp16" else cut.option(QUANT_CODEC, int(col))
            if option is not None:
                drop[r, j] = 100 * (plan.accuracy_fp32 - option.accuracy)
                measured[r, j] = option.measured
    cmap = LinearSegmentedColormap.from_list("drop", ["#1a9850", "#fee08b", "#d73027", "#67001f"])
    shown = np.clip(drop, 0, None)
    image = ax.imshow(np.log10(0.1 + shown), aspect="auto", cmap=cmap, origin="lower", vmin=-1, vmax=2,
                      extent=(ids[0] - 0.5, ids[-1] + 0.5, -0.5, len(columns) - 0.5), interpolation="nearest")
    ys, xs = np.nonzero(measured)
    ax.scatter(ids[xs], ys, s=3, c="black", marker=".", label="measured (others inferred)")
    knees = [(c["id"], c["min_bits_1pt"] - 1) for c in info if c["min_bits_1pt"] is not None]
    if knees:
        ax.plot([k[0] for k in knees], [k[1] for k in knees], "o", ms=7, mfc="none", mec="black", mew=1.2,
                label="fewest bits within 1 point")
    ax.set_yticks(range(len(columns)), [str(c) for c in columns], fontsize=7)
    ax.set_ylabel("bits (top-1 drop)")
    ax.set_xlabel("cut")
    ax.legend(**_LEGEND)
    step = 1 if len(ids) <= 30 else 5
    ax.set_xticks(ids[::step])
    ax.set_xlim(ids[0] - 0.5, ids[-1] + 0.5)
    return image
