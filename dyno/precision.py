"""Precision analysis: top-1 accuracy of every (cut, bits) on a labelled sample, efficiently.

For every cut, the accuracy and the agreement with the fp32 model's prediction when the activation
there is sent quantised to ``bits`` (1..16, per-sample ISQuant exactly as ``dyno.codec`` does it) or
as fp16; for the input cut also as JPEG and WebP at qualities 30..95.

How it stays fast (a naive sweep of every cut x 16 widths reruns the model hundreds of times):

- **One forward pass for all heads.** Each batch of the sample runs through the model once in a
  suspended fx walk (``dyno.profile.walk``); all walks advance together from cut to cut, so the
  activations of the whole sample at the current cut are at hand and heads never rerun.
- **Quantise in batches.** :func:`fake_quant` quantises and dequantises a whole batch, every sample
  with its own range, bit-for-bit as ``dyno.codec`` encode -> decode (checked at start-up on real
  activations; on any mismatch the analysis falls back to the codec's own per-sample functions).
- **Knee search, not a sweep.** Accuracy rises with bits, so per cut only the widths around the
  knee are evaluated (:class:`_Search`). The knee is first located on a screening subset (the first
  ``screen`` share of the sample) starting from the previous cut's knee - neighbouring cuts of a
  conv -> bn -> activation chain carry the same information and have similar knees, so this is
  usually one or two evaluations - then confirmed on the whole sample: the 1-point knee passes and
  the width below it fails; the 0.5-point knee is the first width up that passes. Every JPEG/WebP
  quality is measured on the screening subset, and the knees among them confirmed the same way.
  Other widths are inferred and marked so (:func:`ladder`).
- **Stop clear failures early.** A width is evaluated batch by batch; once at least
  ``min_samples`` are in and the drop is above 1 point by more than ``z`` standard errors, it stops
  (the entry records how many samples it saw). The knees always see the whole sample.
- **Share identical cuts.** A cut that only pads, reshapes or drops out (eval) the previous cut's
  tensor gives the tail the very same values after quantisation when the ranges agree (zero is on
  every grid that spans it); this is verified on the data, and the tail is then not run again.
- **Clip calibration.** Per cut, a clip range (a percentile of the activations on a calibration
  subset, chosen by the quantisation error at the width just below the knee) is tried where it
  lowers that error enough; both variants are measured there and the better kept per width.
- **No page-fault churn, no thread fights.** Large tensors come from the heap rather than fresh
  ``mmap``s during the analysis (:func:`heap_allocations`), and the thread count is whichever of 1
  or all cores runs the model faster at the start (a machine shared with busy processes makes two
  threads several times slower than one).

    >>> result = analyze_precision(model, cuts, x, y)
    >>> result.cuts[5].min_bits(0.01), ladder(result.cuts[5], result)[4].accuracy
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import functools
import math
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.fx
from torch import nn

from dyno import partition
from dyno.errors import ConfigError, DataError
from dyno.profile import IMAGE_QUALITIES, walk

__all__ = ["fake_quant", "fake_fp16", "fake_quant_reference", "Measurement", "CutPrecision",
           "PrecisionResult", "Entry", "analyze_precision", "ladder", "BITS", "THRESHOLDS"]

BITS = tuple(range(1, 17))
THRESHOLDS = (0.005, 0.01)  # accuracy drops the report and the search care about (0.5 and 1 point)
_MIN_SCALE = 1e-30          # as dyno.codec._quant: narrower ranges count as constant
_CHUNK = 1 << 22            # elements per float64 chunk in fake_quant


# ------------------------------------------------------------------------------- quantisation


def _sample_ranges(x: torch.Tensor, nonnegative: bool, clip: tuple[float, float] | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (lo, hi) in float64 exactly as the codec's ``tensor_range`` (then float32 on wire)."""
    n = x.shape[0]
    flat = x.reshape(n, -1) if x.is_contiguous() else x.contiguous().reshape(n, -1)
    if flat.shape[1] == 0:
        mn = mx = torch.zeros(n, dtype=torch.float64)
    else:
        mn, mx = torch.aminmax(flat, dim=1)
        if not bool(torch.isfinite(mn).all() and torch.isfinite(mx).all()):
            raise DataError("an activation holds NaN or infinite values; the model or the input is broken")
        mn, mx = mn.double(), mx.double()
    lo = torch.zeros_like(mn) if nonnegative else mn
    hi = mx.clamp_min(0.0) if nonnegative else mx
    if clip is not None:
        c0, c1 = float(np.float32(clip[0])), float(np.float32(clip[1]))
        lo, hi = lo.clamp(c0, c1), hi.clamp(c0, c1)
    return lo, hi


def fake_quant(x: torch.Tensor, bits: int, *, nonnegative: bool = False,
               clip: tuple[float, float] | None = None) -> torch.Tensor:
    """Quantise and dequantise every sample of the batch ``x`` (N, ...) with its own range, as
    ``dyno.codec`` encode -> decode does for one tensor, in float32 and the memory format of ``x``.

    The grid: ``scale = (hi - lo) / (2**bits - 1)`` in float64; with ``lo <= 0 <= hi`` an integer
    zero point, else an offset ``lo``. Codes replicate torch's fused quantisation kernels that the
    codec calls: ``rint(fma(x, 1/scale, zp))`` for 1..8 bits (quint8, single rounding) and
    ``rint(x * (1/scale) + zp)`` with two roundings for 9..16 bits (qint32), clamped to the levels;
    values decode to ``(code - zp) * scale`` (plus ``lo`` in the offset form).
    """
    if not 1 <= bits <= 16:
        raise ConfigError(f"bits must be 1..16, got {bits}")
    n = x.shape[0]
    lo, hi = _sample_ranges(x, nonnegative, clip)
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels
    constant = ~(scale >= _MIN_SCALE)
    scale = torch.where(constant, torch.ones_like(scale), scale)
    zero_form = (lo <= 0.0) & (hi >= 0.0)
    zp = torch.where(zero_form, torch.round(-lo / scale).clamp(0, levels), torch.zeros_like(scale))
    s32 = scale.float()
    inv = 1.0 / s32
    shape = (n,) + (1,) * (x.dim() - 1)
    lo32, zp32, inv_, s_ = lo.float().view(shape), zp.float().view(shape), inv.view(shape), s32.view(shape)
    offset = bool((~zero_form).any())
    out = torch.empty_like(x)
    step = max(1, _CHUNK // max(1, x[0].numel()))
    for start in range(0, n, step):
        sl = slice(start, start + step)
        v = x[sl]
        zero = zero_form[sl].view((-1,) + shape[1:])
        if offset:
            v = torch.where(zero, v, v - lo32[sl])
        t = v * inv_[sl]
        t += zp32[sl]
        codes = torch.round(t)
        if bits <= 8:
            # The fused kernel rounds once (x * inv + zp); float32 here rounds twice. The results can
            # only differ next to a .5 tie, so those few values are recomputed exactly in float64
            # (where the product of two float32 is exact).
            near = t.sub_(codes).abs_().sub_(0.5).abs_() < 1e-3
            if bool(near.any()):
                inv_n = inv_[sl].expand_as(v)[near].double()
                zp_n = zp32[sl].expand_as(v)[near].double()
                codes[near] = torch.round((v[near].double() * inv_n + zp_n).float())
        codes.clamp_(0, levels)
        if bool(constant[sl].any()):
            codes = torch.where(constant[sl].view((-1,) + shape[1:]), torch.zeros_like(codes), codes)
        if offset:  # the codec decodes the offset form as one fused multiply-add: lo + code * scale
            shifted = (codes.double() * s_[sl].double() + lo32[sl].double()).float()
        values = codes.sub_(zp32[sl]).mul_(s_[sl])
        if offset:
            values = torch.where(zero, values, shifted)
        out[sl] = values
    return out


def fake_quant_reference(x: torch.Tensor, bits: int, *, nonnegative: bool = False,
                         clip: tuple[float, float] | None = None) -> torch.Tensor:
    """:func:`fake_quant` by the codec itself: encode -> decode of one sample at a time (slow)."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = torch.from_numpy(_codec_round_trip(x[i], bits, nonnegative, clip))
    return out


def fake_fp16(x: torch.Tensor) -> torch.Tensor:
    """fp16 round trip (IEEE round to nearest even, as numpy's astype in the codec)."""
    return x.half().float()


def _codec_round_trip(x: torch.Tensor, bits: int, nonnegative: bool, clip) -> np.ndarray:
    from dyno.codec import Expected, decode, encode

    sample = x.contiguous().numpy()
    return decode(encode(sample, bits=bits, mode="shuffle-lz4", nonnegative=nonnegative, clip=clip),
                  Expected(shape=sample.shape))


def _self_check(batch: torch.Tensor, nonnegative: bool, samples: int = 3) -> bool:
    """Whether :func:`fake_quant` equals the codec's encode -> decode on these real activations."""
    x = batch[:samples]
    span = float(x.abs().max()) or 1.0
    for bits in (1, 3, 4, 7, 8, 9, 12, 16):
        for clip in (None, (-0.3 * span, 0.3 * span)):
            got = fake_quant(x, bits, nonnegative=nonnegative, clip=clip).contiguous().numpy()
            for i in range(len(x)):
                if not np.array_equal(got[i], _codec_round_trip(x[i], bits, nonnegative, clip)):
                    return False
    return True


# --------------------------------------------------------------------------------- measurements


@dataclasses.dataclass
class Measurement:
    """Top-1 with one way of sending a cut's activation, on the first ``n`` samples (in order).

    ``diff`` counts per sample ``fp32 correct - this correct`` (each -1, 0 or 1): ``drop`` is its
    mean, the paired estimate of the accuracy drop, ``drop_se`` its standard error. ``stopped``: the
    evaluation ended early because the width clearly failed (see ``analyze_precision``).
    """

    key: tuple
    n: int = 0
    correct: int = 0
    agree: int = 0
    diff: int = 0
    changed: int = 0  # samples with diff != 0 (the sum of squared diffs)
    stopped: bool = False
    seconds: float = 0.0
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
    measured: dict[tuple, Measurement] = dataclasses.field(default_factory=dict)
    clip: tuple[float, float] | None = None
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    shared_with: int | None = None
    fp16_ok: bool = True
    seconds: float = 0.0

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


@dataclasses.dataclass(frozen=True)
class Entry:
    """The final accuracy of one option at a cut, measured or inferred (see :func:`ladder`)."""

    accuracy: float
    agreement: float | None
    measured: bool
    samples: int
    drop_se: float | None
    clip: tuple[float, float] | None
    note: str


# ------------------------------------------------------------------------------------ the search


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


class _Evaluator:
    """Runs a cut's tail on transformed activations batch by batch, resumably, with early stopping."""

    def __init__(self, tail: Callable[[torch.Tensor], torch.Tensor], acts: list[torch.Tensor],
                 labels: list[torch.Tensor], reference: list[torch.Tensor], config: SearchConfig,
                 tick: Callable[[str], None]) -> None:
        self.tail, self.acts, self.labels, self.reference = tail, acts, labels, reference
        self.ref_correct = [r == y for r, y in zip(reference, labels)]
        self.total = sum(len(y) for y in labels)
        self.config = config
        self.tick = tick

    def run(self, m: Measurement, transform: Callable[[int, torch.Tensor], torch.Tensor],
            until: int | None = None) -> Measurement:
        """Extend ``m`` batch by batch until it covers ``until`` samples (default all) or stops early."""
        until = self.total if until is None else min(until, self.total)
        if m.stopped or m.n >= until:
            return m
        start = time.perf_counter()
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
        m.seconds += time.perf_counter() - start
        if m.stopped:
            m.note = (f"stopped after {m.n} of {self.total} samples: drop {100 * m.drop:.1f} "
                      f"± {100 * m.drop_se:.1f} points, clearly over {100 * THRESHOLDS[-1]:g}")
        elif m.n < self.total:
            m.note = f"screening: measured on the first {m.n} of {self.total} samples"
        else:
            m.note = ""
        return m


def _describe(key: tuple) -> str:
    if key[0] in ("q", "clip"):
        return f"{key[1]} bits" + (" clipped" if key[0] == "clip" else "")
    if key[0] in ("jpeg", "webp"):
        return f"{key[0]} q{key[1]}"
    return key[0]


class _Search:
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
        if i is None:
            return None
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

    def _locate(self, start: int | None, threshold: float) -> int | None:
        last = len(self.widths) - 1
        if start is None:  # anchors at both ends, then bisection
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
        i = self.widths.index(start) if start in self.widths else 0
        if self.passes(i, threshold, False):
            while i > 0:  # down two at a time, then the one skipped
                j = max(0, i - 2)
                if self.passes(j, threshold, False):
                    i = j
                    continue
                if j + 1 < i and self.passes(j + 1, threshold, False):
                    i = j + 1
                break
            return i
        while i < last:
            m = self.m(i, False)
            step = 2 if (m.stopped and m.drop > 0.1 and i + 2 <= last) else 1
            i += step
            if self.passes(i, threshold, False):
                if step == 2 and self.passes(i - 1, threshold, False):
                    i -= 1
                return i
        return last


# -------------------------------------------------------------------------- sharing and clipping


_SHAREABLE_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ConstantPad1d, nn.ConstantPad3d, nn.Dropout,
                      nn.Identity, nn.Flatten)
_SHAREABLE_FUNCTIONS = {torch.flatten, torch.reshape, torch.nn.functional.pad, torch.nn.functional.dropout}
_SHAREABLE_METHODS = {"view", "reshape", "flatten", "contiguous"}


def _shareable(gm: torch.fx.GraphModule, node: torch.fx.Node, previous: str) -> bool:
    """Whether ``node`` maps the previous cut's tensor value by value (pad, reshape, eval dropout)."""
    tensors = [a for a in node.all_input_nodes if a.name == previous]
    if len(tensors) != 1 or node.args[:1] != (tensors[0],):
        return False
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)) and module.value != 0:
            return False
        return isinstance(module, _SHAREABLE_MODULES)
    if node.op == "call_function":
        if node.target is torch.nn.functional.pad:
            return node.kwargs.get("value", 0) in (0, None) and node.kwargs.get("mode", "constant") == "constant"
        return node.target in _SHAREABLE_FUNCTIONS
    return node.op == "call_method" and node.target in _SHAREABLE_METHODS


def _apply_node(gm: torch.fx.GraphModule, node: torch.fx.Node, value: torch.Tensor,
                cut: partition.Cut) -> torch.Tensor:
    """Run the single fx ``node`` on ``value`` (side values rebuilt from the cut's recipes)."""
    interpreter = torch.fx.Interpreter(gm)
    env: dict[torch.fx.Node, Any] = {}
    by_name = {n.name: n for n in gm.graph.nodes}
    env[by_name[cut.name]] = value
    for side in cut.side_values:
        if side.kind == "constant":
            env[by_name[side.name]] = side.value
        elif side.kind == "batch":
            env[by_name[side.name]] = value.shape[0]
        elif side.kind == "shape":
            env[by_name[side.name]] = tuple(value.shape[0] if v is None else v for v in side.value)
    interpreter.env = env
    with torch.no_grad():
        return interpreter.run_node(node)


def _calibrate(acts: list[torch.Tensor], bits: int, nonnegative: bool, config: SearchConfig,
               generator: torch.Generator) -> tuple[tuple[float, float] | None, dict[str, Any]]:
    """A clip range among percentiles of the activations, by quantisation error at ``bits``.

    Values are drawn from the calibration batches (at most ``config.clip_samples``); each candidate
    range is scored by the mean squared error of :func:`fake_quant` on those batches. Returns the
    best range (None when per-sample min/max is best) and a record of the scores.
    """
    per_batch = max(1, config.clip_samples // len(acts))
    drawn = []
    for a in acts:
        flat = a.reshape(-1) if a.is_contiguous() else a.contiguous().reshape(-1)
        drawn.append(flat[torch.randint(flat.numel(), (min(per_batch, flat.numel()),), generator=generator)])
    flat = torch.cat(drawn)
    candidates: dict[str, tuple[float, float] | None] = {"minmax": None}
    values = flat.double().sort().values
    for p in config.clip_percentiles:
        hi = float(values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))])
        lo = 0.0 if nonnegative else float(values[int(round((1 - p / 100) * (len(values) - 1)))])
        lo, hi = float(np.float32(lo)), float(np.float32(hi))
        if lo < hi:
            candidates[f"p{p:g}"] = (min(lo, 0.0), max(hi, 0.0))
    scores = {}
    for name, clip in candidates.items():
        error = 0.0
        count = 0
        for a in acts:
            q = fake_quant(a, bits, nonnegative=nonnegative, clip=clip)
            error += float(q.sub_(a).pow_(2).sum(dtype=torch.float64))
            count += a.numel()
        scores[name] = error / max(count, 1)
    best = min(scores, key=lambda k: (scores[k], k != "minmax"))
    if scores[best] > config.clip_gain * scores["minmax"]:
        best = "minmax"  # not worth an accuracy evaluation
    record = {"method": f"percentile of activation values, chosen by quantisation MSE at {bits} bits "
                        f"(kept if under {config.clip_gain:g} x the min/max error)",
              "mse": {k: float(f"{v:.6g}") for k, v in scores.items()},
              "candidates": {k: list(v) for k, v in candidates.items() if v is not None},
              "choice": best, "calibration_samples": sum(len(a) for a in acts)}
    return candidates[best], record


# ----------------------------------------------------------------------------- the analysis


def analyze_precision(model: nn.Module, cuts: Sequence[partition.Cut], x: torch.Tensor, y: torch.Tensor, *,
                      images: Sequence[np.ndarray] | None = None,
                      normalize: Callable[[np.ndarray], torch.Tensor] | None = None,
                      config: SearchConfig | None = None, channels_last: bool | None = None,
                      threads: int | None = None, progress: Callable[[int, str], None] | None = None
                      ) -> PrecisionResult:
    """Measure accuracy per cut and bit width on the labelled sample ``x`` (N, C, H, W), ``y`` (N,).

    ``images`` (one uint8 H x W x C array per sample) and ``normalize`` (a batch of decoded uint8
    images -> model input) enable the JPEG/WebP options of the input cut. ``progress(cut index,
    message)`` is called as the work proceeds. ``channels_last`` (None: whichever layout runs the
    model faster here) selects the memory format the tails run in; ``threads`` (None: one or all
    cores, whichever runs the model faster right now - on a machine shared with other busy processes
    one thread is often several times faster than two) the torch threads.
    """
    from dyno.profile import torch_threads

    batch = (config or SearchConfig()).batch_size
    most = torch.get_num_threads()
    auto = threads is None
    if auto:
        threads = _faster_threads(model, x[: 2 * batch], batch, most)
    state: dict[str, Any] = {"checked": time.perf_counter(), "switches": []}

    def rethread(index: int) -> None:
        """Other processes come and go: re-choose the thread count every two minutes."""
        if not auto or time.perf_counter() - state["checked"] < 120:
            return
        best = _faster_threads(model, x[:batch], batch, most)
        if best != torch.get_num_threads():
            torch.set_num_threads(best)
            state["switches"].append([index, best])
        state["checked"] = time.perf_counter()

    with torch_threads(threads), heap_allocations() as heap:
        result = _analyze_precision(model, cuts, x, y, images=images, normalize=normalize, config=config,
                                    channels_last=channels_last, progress=progress, rethread=rethread)
    result.notes["threads"] = threads
    if state["switches"]:
        result.notes["thread_switches"] = state["switches"]  # [cut index, threads from then on]
    result.notes["allocator"] = "heap (glibc mmap disabled during the analysis)" if heap else "default"
    return result


def _trim_heap() -> None:
    """Give free heap pages back to the system (glibc), so that the heap holds about one cut."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def heap_allocations() -> Iterator[bool]:
    """With glibc, serve large blocks from the heap instead of a fresh ``mmap`` each time.

    The analysis allocates and frees activation-sized tensors (tens to hundreds of MB) thousands of
    times; by default glibc maps each one afresh and the kernel zero-fills every page on first touch,
    which here cost as much system time as the model's own arithmetic. Restored (and the heap
    trimmed) on exit; yields whether the setting took effect.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield False
        return
    m_trim_threshold, m_mmap_max = -1, -4
    ok = mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    try:
        yield ok
    finally:
        mallopt(m_mmap_max, 65536)
        mallopt(m_trim_threshold, 128 * 1024)
        trim(0)


def _faster_threads(model: nn.Module, x: torch.Tensor, batch_size: int, most: int) -> int:
    """1 or ``most`` threads, whichever runs ``model`` over ``x`` faster (each timed twice)."""
    from dyno.profile import time_call, torch_threads

    if most <= 1:
        return 1
    times = {}
    for n in (1, most):
        with torch_threads(n):
            times[n] = time_call(lambda: [model(x[i: i + batch_size]) for i in range(0, len(x), batch_size)],
                                 min_repeats=2, min_seconds=0.0, warmup=1)
    return min(times, key=times.get)


def _analyze_precision(model: nn.Module, cuts: Sequence[partition.Cut], x: torch.Tensor, y: torch.Tensor, *,
                       images, normalize, config, channels_last, progress, rethread) -> PrecisionResult:
    config = config or SearchConfig()
    progress = progress or (lambda i, message: None)
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"need a non-empty labelled sample, got {len(x)} inputs and {len(y)} labels")
    notes: dict[str, Any] = {}
    began = time.perf_counter()
    model = model.eval()
    if channels_last is None:
        channels_last = _faster_channels_last(model, x[: config.batch_size]) if x.dim() == 4 else False
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    notes["channels_last"] = channels_last
    gm = partition.trace(model)
    batches = [x[i: i + config.batch_size] for i in range(0, len(x), config.batch_size)]
    if channels_last:
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    labels = [y[i: i + config.batch_size] for i in range(0, len(y), config.batch_size)]

    # The fp32 reference: one plain forward pass.
    with torch.no_grad():
        logits = [gm(b) for b in batches]
    reference = [l.argmax(1) for l in logits]
    num_classes = int(logits[0].shape[1])
    fp32_correct = int(sum(int((r == l).sum()) for r, l in zip(reference, labels)))
    accuracy_fp32 = fp32_correct / len(x)
    notes["reference_seconds"] = round(time.perf_counter() - began, 2)

    walks = [walk(gm, b, cuts) for b in batches]
    results: list[CutPrecision] = []
    acts: list[torch.Tensor | None] = []
    generator = torch.Generator().manual_seed(0)
    quantize = fake_quant
    checked: set[bool] = set()
    fp16_every = max(1, math.ceil((len(cuts) - 1) / max(config.fp16_cuts, 1)))
    guess = config.start_bits
    total = len(x)
    nodes = {n.name: n for n in gm.graph.nodes}
    for index, cut in enumerate(cuts):
        rethread(index)
        began_cut = time.perf_counter()
        result = CutPrecision(id=cut.id, name=cut.name, nonnegative=cut.nonnegative)
        # Advance every walk to this cut. When this cut only pads or reshapes the previous cut's tensor,
        # check batch by batch (releasing the previous activations as we go) that quantising here
        # gives the tail exactly what quantising there did: then the previous measurements hold.
        previous = results[-1] if results else None
        share = (previous is not None and index < len(cuts) - 1
                 and any(k[0] in ("q", "clip", "fp16") for k in previous.measured)
                 and _shareable(gm, nodes[cut.name], cuts[index - 1].name))
        new_acts = []
        for k, w in enumerate(walks):
            got, value = next(w)
            if got != index:
                raise RuntimeError(f"walk out of step: cut {got} instead of {index}")
            if share:
                share = _same_values(gm, nodes[cut.name], cuts[index - 1], cut, acts[k], value, previous,
                                     quantize)
            if acts:
                acts[k] = None
            new_acts.append(value)
        acts = new_acts
        _trim_heap()
        results.append(result)
        if index == len(cuts) - 1:
            progress(index, "output (device-only)")
            break
        if cut.nonnegative not in checked and quantize is fake_quant:  # once signed, once non-negative
            checked.add(cut.nonnegative)
            if _self_check(acts[0].contiguous(), cut.nonnegative):
                notes["fake_quant"] = "batched, checked bit-for-bit against dyno.codec encode -> decode"
            else:
                quantize = fake_quant_reference
                notes["fake_quant"] = (f"per-sample codec encode -> decode (the batched version differed "
                                       f"from the codec at cut {index})")
        result.fp16_ok = all(bool(a.abs().max() <= 65504) for a in acts)
        if share:
            _share(previous, result)
            progress(index, f"same as cut {result.shared_with}")
            result.seconds = time.perf_counter() - began_cut
            continue

        _, tail = partition.split(gm, cut)
        if channels_last:
            tail = tail.to(memory_format=torch.channels_last)
        evaluator = _Evaluator(tail, acts, labels, reference, config,
                               lambda message, i=index: progress(i, message))
        screen = min(total, max(config.min_screen, math.ceil(config.screen * total)))

        def evaluate(kind: str, width: int, until: int | None, clip=None, _e=evaluator, _r=result,
                     _nonneg=cut.nonnegative) -> Measurement:
            m = _r.measured.setdefault((kind, width), Measurement((kind, width)))
            return _e.run(m, lambda k, a: quantize(a, width, nonnegative=_nonneg, clip=clip), until)

        knee = _Search(BITS, functools.partial(evaluate, "q"), screen, total).run(guess)
        if knee is not None:
            guess = knee
        # Clip calibration where it could lower the knee: both variants measured below the knee.
        if knee is not None and knee > 1:
            clip, record = _calibrate(_calibration_batches(acts, config), knee - 1, cut.nonnegative, config,
                                      generator)
            result.calibration = record
            record["used"] = False
            if clip is not None:
                result.clip = clip
                clipped = functools.partial(evaluate, "clip", clip=clip)
                if clipped(knee - 1, screen).passes(THRESHOLDS[-1]):
                    found = _Search(BITS[: knee - 1], lambda w, until: clipped(w, until), screen,
                                    total).run(knee - 1, half=False)
                    record["used"] = found is not None
        # fp16: measured at a few cuts (or all), inferred elsewhere.
        if result.fp16_ok and (config.fp16 == "all" or (config.fp16 == "auto" and index % fp16_every == 0)):
            result.measured[("fp16",)] = evaluator.run(Measurement(("fp16",)), lambda k, a: fake_fp16(a))
        # The input cut as an image (cloud-only as a real app sends it).
        if index == 0 and images is not None and normalize is not None:
            for codec in ("jpeg", "webp"):
                def run_image(quality: int, until: int | None, codec=codec, _e=evaluator, _r=result) -> Measurement:
                    m = _r.measured.setdefault((codec, quality), Measurement((codec, quality)))
                    transform = _image_transform(images, codec, quality, normalize, config.batch_size,
                                                 channels_last)
                    return _e.run(m, transform, until)

                _Search(config.image_qualities, run_image, screen, total).run(None, screen_all=True)
        result.seconds = time.perf_counter() - began_cut
        progress(index, f"knee {result.min_bits(THRESHOLDS[-1])} bits")
    for w in walks:
        w.close()
    notes["seconds"] = round(time.perf_counter() - began, 1)
    notes["search"] = dataclasses.asdict(config)
    return PrecisionResult(accuracy_fp32=accuracy_fp32, samples=len(x), num_classes=num_classes, cuts=results,
                           notes=notes)


def _calibration_batches(acts: list[torch.Tensor], config: SearchConfig) -> list[torch.Tensor]:
    """The first batches holding at least ``min_samples`` samples."""
    out, n = [], 0
    for a in acts:
        out.append(a)
        n += len(a)
        if n >= config.min_samples:
            break
    return out


def _same_values(gm: torch.fx.GraphModule, node: torch.fx.Node, before: partition.Cut, cut: partition.Cut,
                 a: torch.Tensor, b: torch.Tensor, previous: CutPrecision, quantize: Callable) -> bool:
    """Whether, for every setting measured at the previous cut, quantising ``b`` (this cut's batch)
    equals applying ``node`` to the quantised ``a`` (the previous cut's batch)."""
    for key in previous.measured:
        if key[0] in ("jpeg", "webp"):  # images are the input cut's own options
            continue
        if key[0] == "fp16":
            left, right = fake_fp16(a), fake_fp16(b)
        else:
            clip = previous.clip if key[0] == "clip" else None
            left = quantize(a, key[1], nonnegative=before.nonnegative, clip=clip)
            right = quantize(b, key[1], nonnegative=cut.nonnegative, clip=clip)
        mapped = _apply_node(gm, node, left, before)
        if mapped.shape != right.shape or not torch.equal(mapped.contiguous(), right.contiguous()):
            return False
    return True


def _share(previous: CutPrecision, result: CutPrecision) -> None:
    root = previous.shared_with if previous.shared_with is not None else previous.id
    for key, m in previous.measured.items():
        if key[0] in ("jpeg", "webp"):
            continue
        m = dataclasses.replace(m)
        m.note = (m.note + "; " if m.note else "") + f"identical tail inputs to cut {root} (verified)"
        result.measured[key] = m
    result.clip = previous.clip
    result.calibration = dict(previous.calibration, shared_with=root) if previous.calibration else {}
    result.shared_with = root
    result.fp16_ok = previous.fp16_ok and result.fp16_ok


def _image_transform(images: Sequence[np.ndarray], codec: str, quality: int,
                     normalize: Callable[[np.ndarray], torch.Tensor], batch_size: int, channels_last: bool
                     ) -> Callable[[int, torch.Tensor], torch.Tensor]:
    from dyno.codec import Expected, decode, encode

    def transform(k: int, _act: torch.Tensor) -> torch.Tensor:
        decoded = []
        for image in images[k * batch_size: (k + 1) * batch_size]:
            frame = encode(image, bits=quality, mode=codec)
            decoded.append(decode(frame, Expected(shape=image.shape)))
        batch = normalize(np.stack(decoded))
        return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch

    return transform


def _faster_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model runs measurably (over 15%) faster in channels-last memory format here."""
    from dyno.profile import time_call

    if x.dim() != 4 or x.shape[-1] * x.shape[-2] < 32 * 32:
        return False
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    plain = time_call(lambda: model(x), min_repeats=2, min_seconds=0.0, warmup=1)
    other = time_call(lambda: fast(xc), min_repeats=2, min_seconds=0.0, warmup=1)
    return other < 0.85 * plain


# ------------------------------------------------------------------------------------ inference


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
    for codec in ("jpeg", "webp"):
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


def _measured_entry(m: Measurement, fp32: float, clip) -> Entry:
    return Entry(_estimate(m, fp32), m.agreement, True, m.n, m.drop_se, clip, m.note)


def _inferred(bits: int, measured: dict[int, Measurement], fp32: float, chance: float, clip,
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

