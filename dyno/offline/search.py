"""The knee search: accuracy per bit width at one cut, evaluated only where it matters.

Accuracy rises with bits, so per cut only the widths around the *knee* (the fewest bits within a
threshold) are evaluated. The knee is first located on a screening subset (the first ``screen``
samples) starting from the previous cut's knee, then confirmed on the whole sample: the 1-point knee
passes and the width below it fails; the 0.5-point knee is the first width up that passes
(:class:`Search`). A width is evaluated batch by batch (:class:`Evaluator`); once at least
``min_samples`` are in and its drop is above 1 point by more than ``z`` standard errors it stops
early, and the :class:`Measurement` records how many samples it saw.

    search = Search(BITS, evaluate, screen=100, total=500)   # evaluate(bits, until) -> Measurement
    knee = search.run(start=8)                                # the confirmed 1-point knee, or None
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import torch

from dyno.errors import ConfigError
from dyno.packing import IMAGE_CODECS, IMAGE_QUALITIES

__all__ = ["THRESHOLDS", "Key", "Measurement", "CutPrecision", "PrecisionResult", "SearchConfig", "Evaluator",
           "Search", "Transform"]

THRESHOLDS = (0.005, 0.01)  # accuracy drops the report and the search care about (0.5 and 1 point)

#: What a measurement measured: ``("q", bits)``, ``("clip", bits)``, ``("fp16",)``, ``("jpeg", quality)``.
Key = tuple[Any, ...]
#: ``transform(batch index, activations) -> what the tail receives``.
Transform = Callable[[int, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------- measurements


@dataclasses.dataclass
class Measurement:
    """Top-1 with one way of sending a cut's activation, on the first ``n`` samples (in order).

    ``diff`` counts per sample ``fp32 correct - this correct`` (each -1, 0 or 1): ``drop`` is its
    mean, the paired estimate of the accuracy drop, ``drop_se`` its standard error. ``stopped``: the
    evaluation ended early because the width clearly failed (see :class:`Evaluator`).
    """

    key: Key
    n: int = 0
    correct: int = 0
    agree: int = 0
    diff: int = 0
    changed: int = 0  # samples with diff != 0 (the sum of squared diffs)
    stopped: bool = False
    note: str = ""
    batches: int = 0  # batches evaluated so far (the first ``n`` samples)

    @property
    def drop(self) -> float:
        return self.diff / self.n if self.n else math.nan

    @property
    def drop_se(self) -> float:
        if self.n < 2:
            return math.inf
        mean = self.diff / self.n
        var = max(self.changed / self.n - mean * mean, 0.0) * self.n / (self.n - 1)
        return math.sqrt(var / self.n)

    @property
    def agreement(self) -> float:
        return self.agree / self.n if self.n else math.nan

    def passes(self, threshold: float) -> bool:
        return not self.stopped and self.n > 0 and self.drop <= threshold + 1e-12


@dataclasses.dataclass
class CutPrecision:
    """Everything measured at one cut. ``measured`` maps keys to measurements:

    ``("q", bits)`` quantised with per-sample min/max; ``("clip", bits)`` quantised within the
    calibrated ``clip`` range; ``("fp16",)``; ``("jpeg", quality)``/``("webp", quality)`` at cut 0.
    ``shared_with`` names the earlier cut whose measurements were reused (identical tail inputs).
    """

    id: int
    name: str
    nonnegative: bool
    measured: dict[Key, Measurement] = dataclasses.field(default_factory=dict)
    clip: tuple[float, float] | None = None
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    shared_with: int | None = None
    fp16_ok: bool = True

    def knee(self, threshold: float, kind: str = "q") -> int | None:
        """The fewest measured bits of ``kind`` whose drop is within ``threshold``."""
        ok = [k[1] for k, m in self.measured.items() if k[0] == kind and m.passes(threshold)]
        return min(ok) if ok else None

    def min_bits(self, threshold: float) -> int | None:
        """The fewest bits (min/max or clipped) whose measured drop is within ``threshold``."""
        ok = [b for b in (self.knee(threshold, "q"), self.knee(threshold, "clip")) if b is not None]
        return min(ok) if ok else None


@dataclasses.dataclass
class PrecisionResult:
    accuracy_fp32: float
    samples: int
    num_classes: int
    cuts: list[CutPrecision]
    notes: dict[str, Any]


# ---------------------------------------------------------------------------------------- search


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Knobs of the knee search (defaults are what ``dyno analyze`` uses)."""

    batch_size: int = 50
    min_samples: int = 50        # an early stop needs at least this many samples
    z: float = 3.0               # ... and the drop above 1 point by this many standard errors
    clip_percentiles: tuple[float, ...] = (99.9, 99.99, 99.999)
    clip_samples: int = 1 << 21  # activation values drawn for the percentiles
    clip_gain: float = 0.8       # a clip range is tried only if its quantisation MSE is below this x min/max
    fp16: str = "auto"           # "all": measure fp16 at every cut; "auto": at a few; "none"
    fp16_cuts: int = 4
    start_bits: int = 8
    screen: float = 0.2          # share of the sample the knees are located on before confirming
    min_screen: int = 100        # ... but at least this many samples
    image_qualities: tuple[int, ...] = IMAGE_QUALITIES

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.min_samples < 1 or self.z <= 0:
            raise ConfigError("batch_size and min_samples must be >= 1 and z > 0")
        if self.fp16 not in ("all", "auto", "none"):
            raise ConfigError(f"fp16 must be 'all', 'auto' or 'none', not {self.fp16!r}")


class Evaluator:
    """Runs a cut's tail on transformed activations batch by batch, resumably, with early stopping."""

    def __init__(self, tail: Callable[[torch.Tensor], torch.Tensor], acts: Sequence[torch.Tensor],
                 labels: list[torch.Tensor], reference: list[torch.Tensor], config: SearchConfig,
                 tick: Callable[[str], None]) -> None:
        self.tail, self.acts, self.labels, self.reference = tail, acts, labels, reference
        self.ref_correct = [r == y for r, y in zip(reference, labels)]
        self.total = sum(len(y) for y in labels)
        self.config = config
        self.tick = tick

    def run(self, m: Measurement, transform: Transform,
            until: int | None = None) -> Measurement:
        """Extend ``m`` batch by batch until it covers ``until`` samples (default all) or stops early."""
        until = self.total if until is None else min(until, self.total)
        if m.stopped or m.n >= until:
            return m
        self.tick(_describe(m.key) + ("" if until == self.total else f" (first {until})"))
        with torch.no_grad():
            while m.batches < len(self.acts) and m.n < until:
                k = m.batches
                pred = self.tail(transform(k, self.acts[k])).argmax(1)
                correct = pred == self.labels[k]
                diff = self.ref_correct[k].to(torch.int8) - correct.to(torch.int8)
                m.batches += 1
                m.n += len(pred)
                m.correct += int(correct.sum())
                m.agree += int((pred == self.reference[k]).sum())
                m.diff += int(diff.sum())
                m.changed += int((diff != 0).sum())
                if (m.n < self.total and m.n >= self.config.min_samples
                        and m.drop - self.config.z * m.drop_se > THRESHOLDS[-1]):
                    m.stopped = True
                    break
        if m.stopped:
            m.note = (f"stopped after {m.n} of {self.total} samples: drop {100 * m.drop:.1f} "
                      f"± {100 * m.drop_se:.1f} points, clearly over {100 * THRESHOLDS[-1]:g}")
        elif m.n < self.total:
            m.note = f"screening: measured on the first {m.n} of {self.total} samples"
        else:
            m.note = ""
        return m


def _describe(key: Key) -> str:
    if key[0] in ("q", "clip"):
        return f"{key[1]} bits" + (" clipped" if key[0] == "clip" else "")
    if key[0] in IMAGE_CODECS:
        return f"{key[0]} q{key[1]}"
    return key[0]


class Search:
    """The knee search over ordered ``widths`` (bits, or image qualities) of one setting.

    Phase one locates the knees on a screening subset (the first ``screen`` samples): linearly from
    a start width (the previous cut's knee), or by bisection between the two end widths as anchors.
    Phase two confirms on the whole sample: the width found must pass and the one below must fail
    (each failing width stops early once clearly over the line); the 0.5-point knee is then the
    next widths up that pass on the whole sample. Only the knees and their neighbours see every
    sample; other entries record the samples they saw.
    """

    def __init__(self, widths: Sequence[int], evaluate: Callable[[int, int | None], Measurement],
                 screen: int, total: int) -> None:
        self.widths, self.evaluate, self.screen, self.total = list(widths), evaluate, screen, total

    def m(self, i: int, full: bool) -> Measurement:
        return self.evaluate(self.widths[i], None if full else self.screen)

    def passes(self, i: int, threshold: float, full: bool) -> bool:
        return self.m(i, full).passes(threshold)

    def run(self, start: int | None, half: bool = True, screen_all: bool = False) -> int | None:
        """Find and confirm the knees (the 0.5-point one too if ``half``); returns the confirmed
        1-point knee width, or None if no width keeps the drop within one point. With
        ``screen_all`` every width is first measured on the screening subset."""
        high = THRESHOLDS[-1]
        if screen_all:
            for i in range(len(self.widths)):
                self.m(i, False)
        i = self._locate(start, high)
        while True:  # confirm on every sample
            if self.passes(i, high, True):
                if i > 0 and self.passes(i - 1, high, True):
                    i -= 1
                    continue
                break
            if i == len(self.widths) - 1:
                return None
            i += 1
        knee = i
        for threshold in reversed(THRESHOLDS[:-1] if half else ()):
            j = knee
            while not self.passes(j, threshold, True) and j < len(self.widths) - 1:
                j += 1
        return self.widths[knee]

    def _locate(self, start: int | None, threshold: float) -> int:
        """The index of the fewest-bits width that passes on the screening subset."""
        if start is None:
            return self._bisect(threshold)
        i = self.widths.index(start) if start in self.widths else 0
        return self._down(i, threshold) if self.passes(i, threshold, False) else self._up(i, threshold)

    def _bisect(self, threshold: float) -> int:
        """Anchors at both ends, then bisection."""
        last = len(self.widths) - 1
        if not self.passes(last, threshold, False):
            return last
        if self.passes(0, threshold, False):
            return 0
        lo, hi = 0, last
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.passes(mid, threshold, False):
                hi = mid
            else:
                lo = mid
        return hi

    def _down(self, i: int, threshold: float) -> int:
        """From a passing width: down two at a time, then the one skipped."""
        while i > 0:
            j = max(0, i - 2)
            if self.passes(j, threshold, False):
                i = j
                continue
            if j + 1 < i and self.passes(j + 1, threshold, False):
                i = j + 1
            break
        return i

    def _up(self, i: int, threshold: float) -> int:
        """From a failing width: up one at a time, two past widths that fail clearly."""
        last = len(self.widths) - 1
        while i < last:
            m = self.m(i, False)
            step = 2 if (m.stopped and m.drop > 0.1 and i + 2 <= last) else 1
            i += step
            if self.passes(i, threshold, False):
                if step == 2 and self.passes(i - 1, threshold, False):
                    i -= 1
                return i
        return last
