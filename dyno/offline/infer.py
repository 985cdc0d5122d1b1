"""The plan's entry for every bit width at a cut, measured or inferred from the measured ones.

The knee search measures a few widths per cut; :func:`ladder` fills in the rest from the measured
widths of the same variant (per-sample min/max or the calibrated clip range): linearly between two
measured widths, halving the drop per extra bit above the highest, growing it fourfold per bit below
the lowest. Every entry says how it was obtained.

    entries = ladder(result.cuts[5], result)    # {1: Entry, ..., 16: Entry, "fp16": Entry, ("jpeg", 90): ...}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dyno.offline.search import THRESHOLDS, CutPrecision, Measurement, PrecisionResult
from dyno.packing import BITS, IMAGE_CODECS, IMAGE_QUALITIES

__all__ = ["Entry", "ladder"]

Clip = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Entry:
    """The final accuracy of one option at a cut, measured or inferred (see :func:`ladder`)."""

    accuracy: float
    agreement: float | None
    measured: bool
    samples: int
    drop_se: float | None
    clip: Clip | None
    note: str


def ladder(cut: CutPrecision, result: PrecisionResult) -> dict[Any, Entry]:
    """Final entries for every bit width 1..16 (keys 1..16) and ``"fp16"`` at one cut.

    Measured widths are reported as measured (an early-stopped one as the fp32 accuracy minus its
    paired drop estimate). The others are inferred from the measured widths of the same variant:
    linearly between two measured widths; above the highest, the drop halves with every extra bit
    (quantisation noise halves); below the lowest, the drop grows fourfold per bit (conservative),
    up to chance level. Widths below the min/max 1-point knee use the calibrated clip range where
    it measured better. fp16 is inferred as 10 bits: its error is at most ``|x| * 2**-11``, within
    a 10-bit step ``range / 1023 / 2`` when the range spans zero.
    """
    fp32 = result.accuracy_fp32
    chance = 1.0 / max(result.num_classes, 1)
    entries: dict[Any, Entry] = {}
    variants = {kind: {k[1]: m for k, m in cut.measured.items() if k[0] == kind} for kind in ("q", "clip")}
    knee_q = cut.knee(THRESHOLDS[-1], "q")
    use_clip = cut.clip is not None and any(m.passes(THRESHOLDS[-1]) for m in variants["clip"].values())
    for bits in BITS:
        kind = "clip" if (use_clip and knee_q is not None and bits < knee_q) else "q"
        if kind == "clip" and bits in variants["q"] and bits in variants["clip"]:
            if _estimate(variants["q"][bits], fp32) > _estimate(variants["clip"][bits], fp32):
                kind = "q"
        measured = variants[kind]
        clip = cut.clip if kind == "clip" else None
        if bits in measured:
            entries[bits] = _measured_entry(measured[bits], fp32, clip)
            continue
        if not measured:  # nothing measured for this cut (no knee found): pessimistic chance level
            entries[bits] = Entry(chance, None, False, 0, None, clip, "not measured")
            continue
        entries[bits] = _inferred(bits, measured, fp32, chance, clip)
    if ("fp16",) in cut.measured:
        entries["fp16"] = _measured_entry(cut.measured[("fp16",)], fp32, None)
    elif cut.fp16_ok:
        ten = entries[10]
        entries["fp16"] = Entry(ten.accuracy, None, False, 0, None, None,
                                "inferred: fp16 error is within a 10-bit step (as 10 bits)")
    for codec in IMAGE_CODECS:
        measured = {k[1]: m for k, m in cut.measured.items() if k[0] == codec}
        if not measured:
            continue
        for quality in result.notes.get("search", {}).get("image_qualities", IMAGE_QUALITIES):
            if quality in measured:
                entries[(codec, quality)] = _measured_entry(measured[quality], fp32, None)
            else:
                entries[(codec, quality)] = _inferred(quality, measured, fp32, chance, None, image=True)
    return entries


def _estimate(m: Measurement, fp32: float) -> float:
    return min(1.0, max(0.0, fp32 - m.drop))


def _measured_entry(m: Measurement, fp32: float, clip: Clip | None) -> Entry:
    return Entry(_estimate(m, fp32), m.agreement, True, m.n, m.drop_se, clip, m.note)


def _inferred(bits: int, measured: dict[int, Measurement], fp32: float, chance: float, clip: Clip | None,
              image: bool = False) -> Entry:
    widths = sorted(measured)
    drop = {b: fp32 - _estimate(measured[b], fp32) for b in widths}
    unit = "quality" if image else "bits"
    below = [b for b in widths if b < bits]
    above = [b for b in widths if b > bits]
    if below and above:
        a, b = below[-1], above[0]
        t = (bits - a) / (b - a)
        value = drop[a] + t * (drop[b] - drop[a])
        note = f"inferred: interpolated between {a} and {b} {unit}"
    elif below:
        a = below[-1]
        steps = (bits - a) / (10 if image else 1)
        value = drop[a] * 0.5 ** steps
        note = f"inferred: above {a} {unit} the drop halves per {'10 quality' if image else 'bit'}"
    else:
        b = above[0]
        steps = (b - bits) / (10 if image else 1)
        value = min(fp32 - chance, max(drop[b], THRESHOLDS[-1]) * 4.0 ** steps)
        note = f"inferred: below {b} {unit} the drop grows fourfold per {'10 quality' if image else 'bit'}"
    return Entry(min(1.0, max(0.0, fp32 - value)), None, False, 0, None, clip, note)

