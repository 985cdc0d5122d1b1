"""Fake quantisation: what the tail receives when a batch of activations is sent at a bit width.

:func:`fake_quant` quantises and dequantises a whole batch, every sample with its own range (ISQuant),
with the codec's own kernels (``dyno.codec._quant``: numpy, float32, no fused multiply-add), so it is
``dyno.codec`` encode -> decode bit for bit on any CPU and under any ``ATEN_CPU_CAPABILITY``;
:func:`self_check` verifies that on real activations (the precision analysis falls back to
:func:`fake_quant_reference`, the codec itself, when it fails). :func:`fake_fp16` is the fp16 round trip.

    sent = fake_quant(activations, 4, nonnegative=True)   # (N, ...) float32, as the cloud decodes it
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from dyno.codec import _quant
from dyno.errors import ConfigError, DataError
from dyno.offline.codecs import QUANT_CODEC

__all__ = ["fake_quant", "fake_quant_reference", "fake_fp16", "self_check", "Quantize"]

Clip = tuple[float, float]


class Quantize(Protocol):
    """:func:`fake_quant` or :func:`fake_quant_reference`."""

    def __call__(self, x: torch.Tensor, bits: int, *, nonnegative: bool = False,
                 clip: Clip | None = None) -> torch.Tensor: ...


def fake_quant(x: torch.Tensor, bits: int, *, nonnegative: bool = False,
               clip: Clip | None = None) -> torch.Tensor:
    """Quantise and dequantise every sample of the batch ``x`` (N, ...) with its own range, as
    ``dyno.codec`` encode -> decode does for one tensor, in float32 and the memory format of ``x``.

    Each sample goes through the codec's range (``tensor_range``: min/max, ``[0, max]`` when
    non-negative, intersected with ``clip``), quantiser and dequantiser, in place in its own memory
    layout (the kernels are element-wise, so a channels-last sample needs no copy).
    """
    if not 1 <= bits <= 16:
        raise ConfigError(f"bits must be 1..16, got {bits}")
    source = x.detach()
    if source.dtype != torch.float32:
        source = source.float()
    out = torch.empty_like(source)
    src, dst = source.numpy(), out.numpy()
    for i in range(src.shape[0]):
        sample = src[i]
        try:
            span = _quant.minmax(sample)
        except ConfigError as error:
            raise DataError(f"an activation holds NaN or infinite values; the model or the input is broken "
                            f"({error})") from None
        lo, hi = _quant.span_range(span, nonnegative, clip)
        _quant.fake_quantize(sample, lo, hi, bits, span, dst[i])
    return out


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
