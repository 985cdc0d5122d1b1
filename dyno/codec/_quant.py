"""ISQuant: input-specific affine quantisation of a float tensor to unsigned b-bit codes, and back.

The range ``[lo, hi]`` comes from the tensor itself (one ``torch.aminmax`` pass), optionally pinned to
``lo = 0`` for tensors non-negative by construction, and optionally intersected with a clip range
calibrated offline (values outside are clamped). ``grid(lo, hi, bits)`` turns a range into the
reconstruction grid, computed the same way on both sides from the float32 ``lo``/``hi`` on the wire,
with ``scale = (hi - lo) / (2**bits - 1)``:

- a range holding 0 (``lo <= 0 <= hi``, every activation after BN or ReLU): an integer zero point
  ``zp = round(-lo / scale)`` and ``value = (code - zp) * scale``. Zero is exact (ReLU zeros become
  code 0 and compress to nothing; peaked signed tensors keep their mode at low bit widths), and the
  grid sits within half a step of ``[lo, hi]``. One fused kernel each way
  (``torch.quantize_per_tensor`` and ``dequantize``), plus a clamp of the codes below 8 bits.
- a range that excludes 0: ``value = lo + code * scale`` (one more pass to encode, ``x - lo``).
- a range narrower than ``_MIN_SCALE`` per step: constant; scale 1.0, every code 0.

Per-channel ranges (axis 0) use the same rules per channel. Codes are uint8 for 1..8 bits and uint16
for 9..16. Error bound: ``|decode(x) - x| <= scale / 2`` for x inside ``[lo, hi]`` (plus float32
rounding); values outside the range clamp to (within half a step of) its nearest end.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch

from dyno.errors import ConfigError

__all__ = ["Grid", "grid", "channel_grids", "tensor_range", "channel_ranges", "quantize", "dequantize",
           "quantize_per_channel", "dequantize_per_channel", "as_float32_tensor", "decodes_finite",
           "channels_decode_finite", "SAFE_MAX"]

_MIN_SCALE = 1e-30  # below this torch's float32 1/scale overflows; such ranges count as constant
_F32_MAX = float(np.finfo(np.float32).max)
#: The largest |value| a grid may decode to: float32's largest finite value less 4 ulps, so that the
#: float32 rounding of the dequantise kernels (a multiply and an add, or a fused multiply-add with a
#: rounded premultiplied zero point) can never carry a value past it to infinity.
SAFE_MAX = _F32_MAX - 4 * 2.0**104  # float32's ulp at its largest value is 2**104
#: Ranges inside +-_EASY always decode finite (|value| <= max(|lo|, |hi|) + (hi - lo) <= 3e38): no grid needed.
_EASY = 1e38

# torch >= 2.10 deprecates the quantized dtypes (a one-time UserWarning); they remain the fastest fused
# kernels here. If a future torch drops them, the plain-op path below takes over.
_FUSED = all(hasattr(torch, name) for name in ("quantize_per_tensor", "quantize_per_channel",
                                                "_make_per_tensor_quantized_tensor",
                                                "_make_per_channel_quantized_tensor"))
if _FUSED:
    with warnings.catch_warnings():  # the warning is emitted once per process; spend it here
        warnings.simplefilter("ignore")
        try:
            torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)
            torch.quantize_per_channel(torch.zeros(1, 1), torch.ones(1, dtype=torch.float64),
                                       torch.zeros(1, dtype=torch.int64), 0, torch.quint8)
        except (RuntimeError, AttributeError):  # pragma: no cover - depends on the torch build
            _FUSED = False


@dataclasses.dataclass(frozen=True)
class Grid:
    """The reconstruction grid of one range: ``value = offset + (code - zero_point) * scale``.

    ``offset`` is 0 for a range holding 0 (then ``zero_point`` is the code of 0) and ``lo`` for a
    range that excludes it (then ``zero_point`` is 0). ``constant``: every code is 0.
    """

    scale: float
    zero_point: int
    offset: float
    levels: int  # 2**bits - 1, the largest code
    constant: bool

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


def decodes_finite(lo: float, hi: float, bits: int) -> bool:
    """Whether every code 0..2**bits-1 on grid(lo, hi, bits) dequantises to a finite float32.

    Arithmetic on the range alone, no pass over any data: the grid is affine in the code, so its
    largest magnitude is at code 0 or code ``levels``: ``offset - zp * step`` or
    ``offset + (levels - zp) * step`` (``step`` the float32 scale the kernels multiply by; the products
    are exact in float64). Both must be at most SAFE_MAX.
    """
    if abs(lo) <= _EASY and abs(hi) <= _EASY:
        return True
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return False
    g = grid(lo, hi, bits)
    if not g.scale <= _F32_MAX:  # the step itself overflows float32
        return False
    step = float(np.float32(g.scale))
    ends = (g.offset - g.zero_point * step, g.offset + (g.levels - g.zero_point) * step)
    return max(abs(ends[0]), abs(ends[1])) <= SAFE_MAX


def channel_grids(lo: torch.Tensor, hi: torch.Tensor, bits: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel ``grid``, vectorised with the same float64 arithmetic (both sides agree):
    (scale float64, zero_point int64, offset float32, constant bool), one entry per channel."""
    levels = (1 << bits) - 1
    lo64, hi64 = lo.double(), hi.double()
    scale = (hi64 - lo64) / levels
    constant = ~(scale >= _MIN_SCALE)
    scale = torch.where(constant, torch.ones_like(scale), scale)
    spans_zero = (lo64 <= 0) & (hi64 >= 0)
    zero_point = torch.where(spans_zero, torch.round(-lo64 / scale).clamp(0, levels), torch.zeros_like(scale))
    offset = torch.where(spans_zero, torch.zeros_like(lo), lo.float())
    return scale, zero_point.to(torch.int64), offset.contiguous(), constant


def channels_decode_finite(lo: np.ndarray, hi: np.ndarray, bits: int) -> bool:
    """``decodes_finite`` for every channel at once (float32 arrays ``lo``/``hi``, one entry per channel)."""
    if np.abs(lo).max(initial=0.0) <= _EASY and np.abs(hi).max(initial=0.0) <= _EASY:
        return True  # (NaN compares False and takes the long way)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return False
    scale, zero_point, offset, _constant = channel_grids(torch.from_numpy(lo), torch.from_numpy(hi), bits)
    step = scale.float().double()  # what the kernels multiply by; inf where the step overflows
    first = offset.double() - zero_point.double() * step
    last = offset.double() + ((1 << bits) - 1 - zero_point).double() * step
    return bool((torch.maximum(first.abs(), last.abs()) <= SAFE_MAX).all())


def as_float32_tensor(x: object) -> torch.Tensor:
    """A contiguous float32 torch view or copy of a float tensor or array; ConfigError otherwise."""
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise ConfigError(f"encode needs a float tensor, got numpy dtype {x.dtype}")
        if x.dtype.byteorder == ">":
            x = x.astype(x.dtype.newbyteorder("="))
        t = torch.from_numpy(x if x.flags.c_contiguous else np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise ConfigError(f"encode needs a float tensor, got torch dtype {x.dtype}")
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
    else:
        raise ConfigError(f"encode needs a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.contiguous()


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


def tensor_range(x: torch.Tensor, nonnegative: bool = False, clip: object = None) -> tuple[float, float]:
    """``(lo, hi)`` for a float32 tensor: its own min/max (``lo = 0`` if non-negative), clipped.

    Raises ConfigError for NaN or infinite values (they have no place on an affine grid).
    """
    clip_range = _check_clip(clip)
    if x.numel() == 0:
        return _combine(0.0, 0.0, nonnegative, clip_range)
    mn, mx = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(mn) and math.isfinite(mx)):
        raise ConfigError("cannot quantise a tensor holding NaN or infinite values "
                          f"(min {mn}, max {mx}); fix the model or the input")
    return _combine(mn, mx, nonnegative, clip_range)


def _container(bits: int) -> tuple[torch.dtype, np.dtype]:
    return (torch.uint8, np.dtype(np.uint8)) if bits <= 8 else (torch.uint16, np.dtype("<u2"))


def quantize(x: torch.Tensor, lo: float, hi: float, bits: int) -> np.ndarray:
    """Flat codes (uint8 for bits <= 8, else uint16) of a contiguous float32 tensor on grid(lo, hi)."""
    g = grid(lo, hi, bits)
    flat = x.reshape(-1)
    if g.constant:  # everything is the range's one grid point
        return np.zeros(flat.numel(), _container(bits)[1])
    if g.offset != 0.0:
        flat = flat - g.offset
    if _FUSED and bits <= 8:
        codes = torch.quantize_per_tensor(flat, g.scale, g.zero_point, torch.quint8).int_repr()
        if bits < 8:
            codes.clamp_max_(g.levels)
    elif _FUSED:
        codes = torch.quantize_per_tensor(flat, g.scale, g.zero_point, torch.qint32).int_repr()
        codes = codes.clamp_(0, g.levels).to(torch.uint16)
    else:
        codes = _plain_codes(flat, torch.tensor(g.scale, dtype=torch.float64), g.zero_point, g.levels, bits)
    return codes.numpy()


def _plain_codes(flat: torch.Tensor, scale: torch.Tensor, zero_point: object, levels: int, bits: int
                 ) -> torch.Tensor:
    """Quantisation with plain torch ops (fallback when the fused quantized kernels are absent)."""
    codes = torch.round(flat * (1.0 / scale).to(torch.float32))
    codes += torch.as_tensor(zero_point, dtype=torch.float32)
    codes.clamp_(0, levels)
    return codes.to(_container(bits)[0])


def dequantize(codes: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Float32 values (flat) of writable codes on grid(lo, hi, bits)."""
    g = grid(lo, hi, bits)
    t = torch.from_numpy(codes)
    if bits > 8:
        t = t.to(torch.int32)
    if g.offset != 0.0:  # value = lo + code * scale, one fused pass
        return torch.add(torch.tensor(g.offset, dtype=torch.float32), t, alpha=g.scale).numpy()
    if _FUSED:
        return torch._make_per_tensor_quantized_tensor(t, g.scale, g.zero_point).dequantize().numpy()
    out = t.to(torch.float32)
    out -= g.zero_point
    out *= g.scale
    return out.numpy()


# ------------------------------------------------------------------------------------ per channel
def channel_ranges(x: torch.Tensor, nonnegative: bool = False, clip: object = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (axis 0) float32 ``lo`` and ``hi`` of a float32 tensor; ConfigError on NaN/inf."""
    clip_range = _check_clip(clip)
    channels = x.shape[0]
    if x.numel() == 0:
        mn = mx = torch.zeros(channels)
    else:
        mn, mx = torch.aminmax(x.reshape(channels, -1), dim=1)
        if channels and not bool(torch.isfinite(mn).all() and torch.isfinite(mx).all()):
            raise ConfigError("cannot quantise a tensor holding NaN or infinite values; "
                              "fix the model or the input")
    lo = torch.zeros_like(mn) if nonnegative else mn
    hi = mx.clamp_min(0.0) if nonnegative else mx
    if clip_range is not None:
        lo = lo.clamp(clip_range[0], clip_range[1])
        hi = hi.clamp(clip_range[0], clip_range[1])
    return lo.contiguous(), hi.contiguous()


def quantize_per_channel(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> np.ndarray:
    """Flat codes with one range per entry of axis 0 (see ``channel_grids``)."""
    channels = x.shape[0]
    if x.numel() == 0:
        return np.empty(0, _container(bits)[1])
    scale, zero_point, offset, constant = channel_grids(lo, hi, bits)
    x2 = x.reshape(channels, -1)
    if bool(offset.any()):
        x2 = x2 - offset[:, None]
    levels = (1 << bits) - 1
    if _FUSED:
        qtype = torch.quint8 if bits <= 8 else torch.qint32
        codes = torch.quantize_per_channel(x2, scale, zero_point, 0, qtype).int_repr()
        codes = codes.clamp_max_(levels) if bits <= 8 else codes.clamp_(0, levels).to(torch.uint16)
    else:
        codes = _plain_codes(x2, scale[:, None], zero_point[:, None], levels, bits)
    array = codes.numpy()
    if constant.any():  # a constant channel: all its codes are 0
        array[constant.numpy()] = 0
    return array.reshape(-1)


def dequantize_per_channel(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """Float32 values (flat) of per-channel codes; ``lo``/``hi`` are float32 arrays of the ranges."""
    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    channels = lo_t.numel()
    scale, zero_point, offset, _constant = channel_grids(lo_t, hi_t, bits)
    t = torch.from_numpy(codes).reshape(channels, -1)
    if bits > 8:
        t = t.to(torch.int32)
    if _FUSED:
        out = torch._make_per_channel_quantized_tensor(t, scale, zero_point, 0).dequantize()
    else:
        out = (t.to(torch.float32) - zero_point[:, None].to(torch.float32)) * scale[:, None].to(torch.float32)
    if bool(offset.any()):
        out += offset[:, None]
    return out.reshape(-1).numpy()
