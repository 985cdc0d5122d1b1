"""Fake quantisation: what the tail receives when a batch of activations is sent at a bit width.

:func:`fake_quant` quantises and dequantises a whole batch, every sample with its own range (ISQuant),
bit-for-bit as ``dyno.codec`` encode -> decode does for each sample alone; :func:`self_check` verifies
that on real activations (the precision analysis falls back to :func:`fake_quant_reference`, the
codec itself, when it fails). :func:`fake_fp16` is the fp16 round trip.

    sent = fake_quant(activations, 4, nonnegative=True)   # (N, ...) float32, as the cloud decodes it
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from dyno.errors import ConfigError, DataError
from dyno.offline.codecs import QUANT_CODEC

__all__ = ["fake_quant", "fake_quant_reference", "fake_fp16", "self_check", "Quantize"]

_MIN_SCALE = 1e-30          # as dyno.codec._quant: narrower ranges count as constant
_CHUNK = 1 << 22            # elements per float64 chunk in fake_quant

Clip = tuple[float, float]


class Quantize(Protocol):
    """:func:`fake_quant` or :func:`fake_quant_reference`."""

    def __call__(self, x: torch.Tensor, bits: int, *, nonnegative: bool = False,
                 clip: Clip | None = None) -> torch.Tensor: ...


def _sample_ranges(x: torch.Tensor, nonnegative: bool, clip: Clip | None
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
               clip: Clip | None = None) -> torch.Tensor:
    """Quantise and dequantise every sample of the batch ``x`` (N, ...) with its own range, as
    ``dyno.codec`` encode -> decode does for one tensor, in float32 and the memory format of ``x``.

    The grid: ``scale = (hi - lo) / (2**bits - 1)`` in float64; with ``lo <= 0 <= hi`` an integer
    zero point, else an offset ``lo``. Codes replicate torch's fused quantisation kernels that the
    codec calls: ``rint(fma(x, 1/scale, zp))`` for 1..8 bits (quint8, single rounding) and
    ``rint(x * (1/scale) + zp)`` with two roundings for 9..16 bits (qint32), clamped to the levels;
    values decode to ``(code - zp) * scale``, or in the offset form to ``lo + code * scale`` as the
    codec computes it (:func:`_decode_offset`).
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
        rows = {i: _decode_offset(codes[i], lo32[start + i], float(scale[start + i]), bits)
                for i in range(len(v)) if not zero_form[start + i]}
        values = codes.sub_(zp32[sl]).mul_(s_[sl])
        for i, row in rows.items():
            values[i] = row
        out[sl] = values
    return out


def _decode_offset(codes: torch.Tensor, lo: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    """``lo + code * scale`` for one sample's codes (float32, exact integers) in the offset form, by
    the very op the codec decodes it with: ``torch.add`` with ``alpha`` on the flat integer codes. It
    rounds once (a fused multiply-add) or twice depending on the kernels this CPU runs
    (``ATEN_CPU_CAPABILITY``); calling it keeps the codec's rounding whichever it is."""
    flat = codes.contiguous().view(-1).to(torch.uint8 if bits <= 8 else torch.int32)
    return torch.add(lo.reshape(()), flat, alpha=scale).view(codes.shape)


def fake_quant_reference(x: torch.Tensor, bits: int, *, nonnegative: bool = False,
                         clip: Clip | None = None) -> torch.Tensor:
    """:func:`fake_quant` by the codec itself: encode -> decode of one sample at a time (slow)."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = torch.from_numpy(_codec_round_trip(x[i], bits, nonnegative, clip))
    return out


def fake_fp16(x: torch.Tensor) -> torch.Tensor:
    """fp16 round trip (IEEE round to nearest even, as numpy's astype in the codec)."""
    return x.half().float()


def _codec_round_trip(x: torch.Tensor, bits: int, nonnegative: bool, clip: Clip | None) -> np.ndarray:
    from dyno.codec import Expected, decode, encode

    sample = x.contiguous().numpy()
    return decode(encode(sample, bits=bits, mode=QUANT_CODEC, nonnegative=nonnegative, clip=clip),
                  Expected(shape=sample.shape))


def self_check(batch: torch.Tensor, nonnegative: bool, samples: int = 3) -> bool:
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
