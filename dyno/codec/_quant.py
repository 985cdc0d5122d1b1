"""ISQuant: input-specific affine quantisation of a float tensor to unsigned b-bit codes, and back.

The range ``[lo, hi]`` comes from the tensor itself (its min and max), optionally pinned to ``lo = 0``
for tensors non-negative by construction, and optionally intersected with a clip range calibrated
offline (values outside are clamped). ``grid(lo, hi, bits)`` turns a range into the reconstruction
grid, computed the same way on both sides from the float32 ``lo``/``hi`` on the wire, with
``scale = (hi - lo) / (2**bits - 1)`` (float64) and ``step = float32(scale)``:

- a range holding 0 (``lo <= 0 <= hi``, every activation after BN or ReLU): an integer zero point
  ``zp = round(-lo / scale)`` and ``value = (code - zp) * step``. Zero is exact (ReLU zeros become
  code 0 and compress to nothing; peaked signed tensors keep their mode at low bit widths), and the
  grid sits within half a step of ``[lo, hi]``.
- a range that excludes 0: ``value = lo + code * step``.
- a range narrower than ``_MIN_SCALE`` per step: constant; scale 1.0, every code 0.

The kernels are numpy's, in float32, one IEEE rounding per operation and no fused multiply-add, so
every CPU computes the same codes and values whatever SIMD it has (and torch is never imported):

    encode   p = x * inv            (inv = float32(1) / step; offset form: (x - lo) * inv)
             code = clamp(rint(p + zp), 0, 2**bits - 1)     rint: to nearest, ties to even
    decode   value = (code - zp) * step,  or  lo + code * step

``rint(p + zp)`` is one rounding of the exact sum: ``p + (zp + 1.5 * 2**23)`` in float32 lands on an
integer, whose low bits are the code (the clamp is done on that float). The passes run block by
block (``BLOCK`` values, in memory order) so that each pass after the first reads cache, not memory;
the arithmetic per value is the same. The offline analysis's fake quantisation calls these very
kernels (``dyno.offline.quant``, ``fake_quantize``). Per-channel ranges (axis 0) use the
same rules per channel. Codes are uint8 for 1..8 bits and uint16 for 9..16. Error bound:
``|decode(x) - x| <= scale / 2`` for x inside ``[lo, hi]`` (plus float32 rounding); values outside the
range clamp to (within half a step of) its nearest end.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from dyno.codec._layout import dense as _dense
from dyno.codec._layout import restore as _restore
from dyno.errors import ConfigError

__all__ = ["Grid", "grid", "channel_grids", "tensor_range", "minmax", "span_range", "channel_ranges", "quantize",
           "dequantize", "fake_quantize", "BLOCK", "WHOLE",
           "quantize_per_channel", "dequantize_per_channel", "as_float32_array", "decodes_finite",
           "channels_decode_finite", "container", "SAFE_MAX"]

_MIN_SCALE = 1e-30  # below this the float32 reciprocal of the step overflows; such ranges count as constant
_F32_MAX = float(np.finfo(np.float32).max)
#: The largest |value| a grid may decode to: float32's largest finite value less 4 ulps, so that the
#: float32 rounding of the dequantise kernels (a multiply and an add) can never carry a value past it.
SAFE_MAX = _F32_MAX - 4 * 2.0**104  # float32's ulp at its largest value is 2**104
#: Ranges inside +-_EASY always decode finite (|value| <= max(|lo|, |hi|) + (hi - lo) <= 3e38): no grid needed.
_EASY = 1e38
#: 1.5 * 2**23: a float32 sum with it in [2**23, 2**24) has ulp 1, i.e. it rounds to an integer.
_MAGIC = np.float32(12582912.0)
_ONE = np.float32(1.0)
#: Values per block of the element-wise kernels: a float32 block (256 KiB) stays in the core's cache
#: between the kernel's passes (multiply, add, clamp, narrow), so only the first reads memory.
BLOCK = 1 << 16
#: Arrays up to this many values (1 MiB of float32) run each pass over the whole array: they and their
#: temporaries fit a core's cache anyway, and a loop of blocks only adds calls.
WHOLE = 4 * BLOCK


@dataclasses.dataclass(frozen=True)
class Grid:
    """The reconstruction grid of one range: ``value = offset + (code - zero_point) * step``.

    ``offset`` is 0 for a range holding 0 (then ``zero_point`` is the code of 0) and ``lo`` for a
    range that excludes it (then ``zero_point`` is 0). ``constant``: every code is 0.
    """

    scale: float
    zero_point: int
    offset: float
    levels: int  # 2**bits - 1, the largest code
    constant: bool

    @property
    def step(self) -> np.float32:
        """The float32 step the kernels multiply codes by."""
        return np.float32(self.scale)

    def value(self, code: int) -> float:
        return self.offset + (code - self.zero_point) * self.scale


def grid(lo: float, hi: float, bits: int) -> Grid:
    """The grid for range ``[lo, hi]`` (float32 values) at ``bits`` bits; see the module docstring."""
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels
    constant = not scale >= _MIN_SCALE
    if constant:
        scale = 1.0
    if lo <= 0.0 <= hi:
        return Grid(scale, min(max(round(-lo / scale), 0), levels), 0.0, levels, constant)
    return Grid(scale, 0, lo, levels, constant)


def container(bits: int) -> np.dtype:
    """The codes' dtype: uint8 for 1..8 bits, uint16 for 9..16."""
    return np.dtype(np.uint8) if bits <= 8 else np.dtype(np.uint16)


def decodes_finite(lo: float, hi: float, bits: int) -> bool:
    """Whether every code 0..2**bits-1 on grid(lo, hi, bits) dequantises to a finite float32.

    Arithmetic on the range alone, no pass over any data: the grid is affine in the code, so its
    largest magnitude is at code 0 or code ``levels``: ``offset - zp * step`` or
    ``offset + (levels - zp) * step`` (the products are exact in float64). Both must be at most SAFE_MAX.
    """
    if abs(lo) <= _EASY and abs(hi) <= _EASY:
        return True
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    g = grid(lo, hi, bits)
    if not g.scale <= _F32_MAX:  # the step itself overflows float32
        return False
    step = float(g.step)
    ends = (g.offset - g.zero_point * step, g.offset + (g.levels - g.zero_point) * step)
    return max(abs(ends[0]), abs(ends[1])) <= SAFE_MAX


def channel_grids(lo: np.ndarray, hi: np.ndarray, bits: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel ``grid``, vectorised with the same float64 arithmetic (both sides agree):
    (scale float64, zero_point float64 holding integers, offset float32, constant bool), one entry per channel."""
    levels = (1 << bits) - 1
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = (hi64 - lo64) / levels
        constant = ~(scale >= _MIN_SCALE)
        scale = np.where(constant, 1.0, scale)
        spans_zero = (lo64 <= 0) & (hi64 >= 0)
        zero_point = np.where(spans_zero, np.clip(np.round(-lo64 / scale), 0, levels), 0.0)
    offset = np.where(spans_zero, np.float32(0), lo.astype(np.float32)).astype(np.float32)
    return scale, zero_point, offset, constant


def channels_decode_finite(lo: np.ndarray, hi: np.ndarray, bits: int) -> bool:
    """``decodes_finite`` for every channel at once (float32 arrays ``lo``/``hi``, one entry per channel)."""
    if np.abs(lo).max(initial=0.0) <= _EASY and np.abs(hi).max(initial=0.0) <= _EASY:
        return True  # (NaN compares False and takes the long way)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return False
    scale, zero_point, offset, _constant = channel_grids(lo, hi, bits)
    with np.errstate(over="ignore", invalid="ignore"):  # inf where the step overflows; 0 * inf is NaN
        step = scale.astype(np.float32).astype(np.float64)  # what the kernels multiply by
        first = offset.astype(np.float64) - zero_point * step
        last = offset.astype(np.float64) + ((1 << bits) - 1 - zero_point) * step
        return bool((np.maximum(np.abs(first), np.abs(last)) <= SAFE_MAX).all())


def as_float32_array(x: object) -> np.ndarray:
    """A C-contiguous float32 numpy view or copy of a float array or (CPU or not) torch tensor;
    ConfigError otherwise. torch is recognised by duck typing and never imported here."""
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise ConfigError(f"encode needs a float tensor, got numpy dtype {x.dtype}")
    elif _is_torch(x):
        t: Any = x
        if not t.is_floating_point():
            raise ConfigError(f"encode needs a float tensor, got torch dtype {t.dtype}")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        x = (t if str(t.dtype) == "torch.float32" else t.float()).numpy()
    else:
        raise ConfigError(f"encode needs a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    assert isinstance(x, np.ndarray)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def _is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch") and all(hasattr(x, a) for a in ("detach", "numpy", "dtype"))


def _check_clip(clip: Any) -> tuple[float, float] | None:
    if clip is None:
        return None
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise ConfigError(f"clip must be a (lo, hi) pair of floats, got {clip!r}") from None
    lo32, hi32 = float(np.float32(lo)), float(np.float32(hi))
    if not (math.isfinite(lo32) and math.isfinite(hi32)) or lo32 > hi32:
        raise ConfigError(f"clip range {clip!r} must be finite float32 values with lo <= hi")
    return lo32, hi32


def _combine(mn: float, mx: float, nonnegative: bool, clip: tuple[float, float] | None
             ) -> tuple[float, float]:
    lo = 0.0 if nonnegative else mn
    hi = max(mx, 0.0) if nonnegative else mx
    if clip is not None:
        lo = min(max(lo, clip[0]), clip[1])
        hi = max(min(hi, clip[1]), clip[0])
    return lo, hi


def minmax(x: np.ndarray) -> tuple[float, float]:
    """The min and max of a float32 array (0, 0 when empty); ConfigError for NaN or infinite values."""
    if x.size == 0:
        return 0.0, 0.0
    mn, mx = float(x.min()), float(x.max())
    if not (math.isfinite(mn) and math.isfinite(mx)):
        raise ConfigError("cannot quantise a tensor holding NaN or infinite values "
                          f"(min {mn}, max {mx}); fix the model or the input")
    return mn, mx


def span_range(span: tuple[float, float], nonnegative: bool = False, clip: object = None) -> tuple[float, float]:
    """``(lo, hi)`` from a tensor's ``(min, max)``: ``lo = 0`` if non-negative, intersected with ``clip``."""
    return _combine(span[0], span[1], nonnegative, _check_clip(clip))


def tensor_range(x: np.ndarray, nonnegative: bool = False, clip: object = None) -> tuple[float, float]:
    """``(lo, hi)`` for a float32 array (any layout): its own min/max (``lo = 0`` if non-negative), clipped.

    Raises ConfigError for NaN or infinite values (they have no place on an affine grid).
    """
    clip_range = _check_clip(clip)
    return _combine(*minmax(x), nonnegative, clip_range)


def _codes(t: np.ndarray, zero_point: Any, levels: int, bits: int) -> np.ndarray:
    """Codes from ``t`` = x * inv (float32, modified in place): clamp(rint(t + zp), 0, levels)."""
    np.add(t, _MAGIC + np.asarray(zero_point, np.float32), out=t)
    np.clip(t, _MAGIC, _MAGIC + np.float32(levels), out=t)
    return t.view(np.uint32).astype(container(bits))  # M + code: its low bits are the code


def _lands_inside(span: tuple[float, float], g: Grid, inv: np.float32) -> bool:
    """Whether the values ``span`` (min, max) take codes 0..L before any clamp: the same float32
    operations as the kernel, on two scalars."""
    offset, shift = np.float32(g.offset), _MAGIC + np.float32(g.zero_point)
    ends = [((np.float32(v) - offset) * inv if g.offset else np.float32(v) * inv) + shift for v in span]
    return bool(_MAGIC <= ends[0] and ends[1] <= _MAGIC + np.float32(g.levels))


def quantize(x: np.ndarray, lo: float, hi: float, bits: int, span: tuple[float, float] | None = None
             ) -> np.ndarray:
    """Codes (uint8 for bits <= 8, else uint16) of a float32 array on grid(lo, hi), in its shape and layout.

    ``span``: the array's own (min, max), when the caller has it. A value's pre-clamp code is monotone
    in the value (each float32 rounding is), so when the min and the max land on codes 0..L, every
    value does, and the clamp pass is skipped (the codes are the same).
    """
    g = grid(lo, hi, bits)
    if g.constant:  # everything is the range's one grid point
        return np.zeros(x.shape, container(bits))
    kernel = _Kernel(g, span)
    dense = _dense(x)
    if dense is None or x.size <= WHOLE:  # small, or a strided view: each pass over the whole array
        return kernel.codes(kernel.scaled(x, None), bits)
    flat, order = dense
    codes = np.empty(flat.size, container(bits))
    buf = np.empty(min(flat.size, BLOCK), np.float32)
    for start in range(0, flat.size, BLOCK):
        part = flat[start:start + BLOCK]
        t = kernel.scaled(part, buf[:part.size])
        np.copyto(codes[start:start + BLOCK], t.view(np.uint32), casting="unsafe")  # M + code: its low bits
    return _restore(codes, x.shape, order)


def fake_quantize(x: np.ndarray, lo: float, hi: float, bits: int, span: tuple[float, float] | None,
                  out: np.ndarray) -> np.ndarray:
    """``dequantize(quantize(x, lo, hi, bits, span), lo, hi, bits, out=out)`` bit for bit, without the codes:
    block by block, the quantiser's float32 ``M + code`` less ``M + zero_point`` is ``code - zero_point``
    exactly (integers below 2**24), which the dequantiser's float32 operations then scale. ``out`` has
    ``x``'s shape (and, for the blocked path, its strides)."""
    g = grid(lo, hi, bits)
    dense, dense_out = _dense(x), _dense(out)
    if g.constant or dense is None or dense_out is None or x.strides != out.strides or x.dtype != out.dtype:
        return dequantize(quantize(x, lo, hi, bits, span), lo, hi, bits, out=out)
    kernel = _Kernel(g, span)
    flat, flat_out = dense[0], dense_out[0]
    step, offset = g.step, np.float32(g.offset)
    back = _MAGIC if g.offset != 0.0 else _MAGIC + np.float32(g.zero_point)
    block = max(flat.size, 1) if flat.size <= WHOLE else BLOCK
    for start in range(0, flat.size, block):
        t = kernel.scaled(flat[start:start + block], flat_out[start:start + block])
        np.subtract(t, back, out=t)  # code (offset form) or code - zero_point, exact
        np.multiply(t, step, out=t)
        if g.offset != 0.0:
            np.add(t, offset, out=t)
    return out


class _Kernel:
    """The quantiser's float32 passes for one grid: ``t = x * inv`` (or ``(x - lo) * inv``), ``t += M + zp``,
    and the clamp to ``[M, M + L]`` unless ``span`` shows that no value leaves it."""

    def __init__(self, g: Grid, span: tuple[float, float] | None) -> None:
        self.inv = _ONE / g.step
        self.offset = np.float32(g.offset) if g.offset != 0.0 else None
        self.shift = _MAGIC + np.float32(g.zero_point)
        self.top = None if span is not None and _lands_inside(span, g, self.inv) else _MAGIC + np.float32(g.levels)

    def scaled(self, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """``M + code`` as float32 (into ``out`` if given, else a new array in ``x``'s layout)."""
        if self.offset is not None:
            t = np.subtract(x, self.offset, out=out)
            np.multiply(t, self.inv, out=t)
        else:
            t = np.multiply(x, self.inv, out=out)
        np.add(t, self.shift, out=t)
        if self.top is not None:
            np.clip(t, _MAGIC, self.top, out=t)
        return t

    @staticmethod
    def codes(t: np.ndarray, bits: int) -> np.ndarray:
        return t.view(np.uint32).astype(container(bits))  # M + code: its low bits are the code


def dequantize(codes: np.ndarray, lo: float, hi: float, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """Float32 values of codes on grid(lo, hi, bits), in their shape (into ``out`` if given); a two-pass
    grid (offset or zero point) block by block, the second pass on values still in cache."""
    g = grid(lo, hi, bits)
    if g.offset == 0.0 and g.zero_point == 0:  # value = code * step: one pass
        return np.multiply(codes, g.step, dtype=np.float32, out=out)
    if out is not None or not codes.flags.c_contiguous or codes.size <= WHOLE:
        return _dequantize(g, codes, out)
    values = np.empty(codes.shape, np.float32)
    flat, flat_values = codes.reshape(-1), values.reshape(-1)
    for start in range(0, flat.size, BLOCK):
        _dequantize(g, flat[start:start + BLOCK], flat_values[start:start + BLOCK])
    return values


def _dequantize(g: Grid, codes: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if g.offset != 0.0:  # value = lo + code * step
        values = np.multiply(codes, g.step, dtype=np.float32, out=out)
        return np.add(values, np.float32(g.offset), out=values)
    values = np.subtract(codes, np.float32(g.zero_point), dtype=np.float32, out=out)
    return np.multiply(values, g.step, out=values)


# ------------------------------------------------------------------------------------ per channel
def channel_ranges(x: np.ndarray, nonnegative: bool = False, clip: object = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 0) float32 ``lo`` and ``hi`` of a float32 array; ConfigError on NaN/inf."""
    clip_range = _check_clip(clip)
    channels = x.shape[0]
    if x.size == 0:
        mn = mx = np.zeros(channels, np.float32)
    else:
        flat = x.reshape(channels, -1)
        mn, mx = flat.min(axis=1), flat.max(axis=1)
        if channels and not (np.isfinite(mn).all() and np.isfinite(mx).all()):
            raise ConfigError("cannot quantise a tensor holding NaN or infinite values; "
                              "fix the model or the input")
    lo = np.zeros_like(mn) if nonnegative else mn
    hi = np.maximum(mx, np.float32(0)) if nonnegative else mx
    if clip_range is not None:
        c0, c1 = np.float32(clip_range[0]), np.float32(clip_range[1])
        lo, hi = np.clip(lo, c0, c1), np.clip(hi, c0, c1)
    return np.ascontiguousarray(lo, np.float32), np.ascontiguousarray(hi, np.float32)


def quantize_per_channel(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """Flat codes with one range per entry of axis 0 (see ``channel_grids``)."""
    channels = x.shape[0]
    if x.size == 0:
        return np.empty(0, container(bits))
    scale, zero_point, offset, constant = channel_grids(lo, hi, bits)
    inv = (_ONE / scale.astype(np.float32))[:, None]
    x2 = x.reshape(channels, -1)
    if offset.any():
        t = np.subtract(x2, offset[:, None])
        np.multiply(t, inv, out=t)
    else:
        t = np.multiply(x2, inv)
    codes = _codes(t, zero_point[:, None], (1 << bits) - 1, bits)
    if constant.any():  # a constant channel: all its codes are 0
        codes[constant] = 0
    return codes.reshape(-1)


def dequantize_per_channel(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """Float32 values (flat) of per-channel codes; ``lo``/``hi`` are float32 arrays of the ranges."""
    channels = lo.size
    scale, zero_point, offset, _constant = channel_grids(lo, hi, bits)
    values = np.subtract(codes.reshape(channels, -1), zero_point.astype(np.float32)[:, None], dtype=np.float32)
    np.multiply(values, scale.astype(np.float32)[:, None], out=values)
    if offset.any():
        np.add(values, offset[:, None], out=values)
    return values.reshape(-1)
