"""The receiver: what it accepts (``Expected``) and decoding (``decode_frame``, ``decode``).

``decode_frame(meta, payload, expected)`` is the receiver's one entry point. It judges a frame in this
order and raises FrameError at the first failure:

1. the fixed-size header (6 bytes in version 3, 9 in versions 1 and 2): magic, version (1, 2 or 3, and
   not older than its mode and compressor), flags, mode / dtype / compressor numbers, ndim <= MAX_NDIM;
2. the header against ``expected``: ndim, mode accepted, compressor valid for the mode, bits (the
   accepted range for a quantised mode, at most 8 for rans, 0 for fp16/fp32, 1..100 for jpeg/webp),
   per-channel ranges wanted or not (and only for a quantised mode with a channel axis);
3. versions 1 and 2: the metadata's length against the one the *expected* shape implies, so a
   per-channel table is read only when it holds exactly the cut's channel count;
4. the shape (at most MAX_NDIM uint32, or in version 3 minimal varints) equal to the expected shape;
   version 3 then its metadata's length against the one its (now expected) shape implies;
5. the declared payload size: possible for the expected shape (exact for fp16/fp32 and dense packing,
   for an entropy coder between its smallest output - a blosc2 header, a zstd magic number, a rANS
   table and one word - and dense packing), within ``max_nbytes`` with the metadata, and equal to the
   payload's length.

Steps 1-5 (``Expected.check_wire``, in ``_expected``) read at most 9 + 4 * MAX_NDIM + 4 bytes (version
3: 6 + 5 * MAX_NDIM + 5) and allocate nothing whose size the frame declares: a frame declaring 900,000
ranges to a 32-channel cut costs what any other bad header costs. Then:

6. every field parsed and validated (``FrameMeta.from_bytes``): ranges finite with lo <= hi, ...;
7. the crc32 of metadata and payload;
8. quantised frames and float images: every code of the grid dequantises to a finite float32
   (arithmetic on lo, hi and bits, ``_quant.decodes_finite``; no pass over the data);
9. the compressor's own header (blosc2: sizes, typesize, codec, filters; zstd: one frame, its content
   size the expected codes', no dictionary, a window within it; rANS: a table that weighs some code;
   images: format, size, mode);
10. decoding, into at most the expected tensor's memory (rANS: its int32 symbols); then no code above
    the bit width (blosc2 and zstd below 8 bits; rANS by its alphabet), a rANS stream that ends with
    the expected count, or for fp16/fp32 one vectorised pass that every value is finite; centred
    codes (``centre-zstd``) are unfolded by a table of the alphabet.

A decoded tensor is therefore always finite, float32, of the expected shape.
"""

from __future__ import annotations

import sys

import numpy as np

from dyno.codec import _coders, _image, _pack, _quant
from dyno.codec._codec import Encoded
from dyno.codec._expected import Expected
from dyno.codec._meta import FrameMeta
from dyno.codec._wire import FLOAT_MODES, IMAGE_MODES, Head
from dyno.errors import ConfigError, FrameError

__all__ = ["decode", "decode_frame"]


# ------------------------------------------------------------------------------------------ decode
def decode_frame(meta: bytes | bytearray | memoryview, payload: bytes | bytearray | memoryview,
                 expected: Expected, *, nthreads: int | None = None) -> np.ndarray:
    """The receiver's entry point: metadata and payload bytes as they arrived -> a finite float32
    tensor of ``expected.shape``, after every check of the module docstring, in its order.

    Raises FrameError for anything wrong with the frame (including ``meta``/``payload`` that are not
    bytes-like) and nothing else; ConfigError only for the receiver's own arguments (``expected`` not
    an Expected, a bad ``nthreads``).
    """
    if not isinstance(expected, Expected):
        raise ConfigError(f"decode_frame needs an Expected, got {type(expected).__name__}")
    return decode(Encoded.from_parts(meta, payload, expected=expected), expected, nthreads=nthreads)


def decode(enc: Encoded, expected: Expected, *, nthreads: int | None = None) -> np.ndarray:
    """Validate a parsed frame against what the receiver expects, then decode it to float32 of that shape.

    Steps 2-10 of the module docstring on an ``Encoded`` (metadata already parsed: a receiver of
    untrusted bytes calls ``decode_frame``, which checks before parsing). All before any buffer is
    allocated but the decoded tensor's. Every failure raises FrameError; nothing else escapes, no
    allocation exceeds the expected tensor's, and the result is finite.
    """
    if not isinstance(expected, Expected):
        raise ConfigError(f"decode needs an Expected, got {type(expected).__name__}")
    if not isinstance(enc, Encoded):
        raise FrameError(f"decode needs an Encoded frame, got {type(enc).__name__}")
    _check_parsed(expected, enc)
    meta, payload = enc.meta, enc.payload
    if len(payload) != meta.payload_nbytes:
        raise FrameError(f"payload is {len(payload)} bytes; the frame metadata says {meta.payload_nbytes}")
    if meta.checksum(payload) != meta.crc32:
        raise FrameError("frame checksum mismatch: the metadata or payload was corrupted in transit")
    if meta.mode in FLOAT_MODES:
        return _decode_float(meta, payload)
    if meta.mode in IMAGE_MODES:
        if meta.dtype != "uint8" and not _quant.decodes_finite(meta.lo, meta.hi, 8):
            raise _beyond_float32(f"range [{meta.lo}, {meta.hi}]", 8)
        return _image.decode_image(payload, meta.mode, meta.dtype, meta.shape, meta.lo, meta.hi)
    return _decode_quantized(meta, payload, nthreads)


def _check_parsed(expected: Expected, enc: Encoded) -> None:
    """FrameError unless the (parsed) frame's metadata is what ``expected`` accepts."""
    m = enc.meta
    expected.check_head(Head(m.mode, m.bits or 0, m.per_channel, m.dtype, m.compressor, len(m.shape)))
    expected.check_shape(m.shape)
    expected.check_nbytes(enc.nbytes)


def _beyond_float32(what: str, bits: int) -> FrameError:
    return FrameError(f"frame {what} at {bits} bits decodes beyond float32 (values would be infinite)")


def _decode_float(meta: FrameMeta, payload: bytes) -> np.ndarray:
    """The values of an fp16/fp32 frame, FrameError unless all are finite (one vectorised pass)."""
    n = meta.numel
    if meta.mode == "fp32":
        wire = np.frombuffer(payload, "<f4", count=n)
        finite = bool(np.isfinite(wire).all())  # on the bytes the checksum just read: still in cache
        values = wire.astype(np.float32)
    else:  # an all-ones exponent is infinity or NaN: on the raw bits, faster than np.isfinite on fp16
        bits = np.frombuffer(payload, "<u2", count=n)
        finite = n == 0 or int(np.bitwise_and(bits, 0x7C00).max()) != 0x7C00
        values = _widen(np.frombuffer(payload, "<f2", count=n))
    if not finite:
        raise FrameError(f"{meta.mode} payload holds NaN or infinite values")
    return values.reshape(meta.shape)


def _widen(half: np.ndarray) -> np.ndarray:
    """float16 -> float32: torch's kernel when the process has torch already (several times faster than
    numpy's), numpy's otherwise; both exact."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.from_numpy(half.copy()).to(torch.float32).numpy()  # a writable copy for torch
    return half.astype(np.float32)


def _decode_quantized(meta: FrameMeta, payload: bytes, nthreads: int | None) -> np.ndarray:
    bits, n, shape = meta.quant_bits, meta.numel, meta.shape
    if meta.per_channel:
        ranges = np.asarray(meta.channel_ranges, np.float32).reshape(-1, 2)
        lo, hi = np.ascontiguousarray(ranges[:, 0]), np.ascontiguousarray(ranges[:, 1])
        if not _quant.channels_decode_finite(lo, hi, bits):
            raise _beyond_float32("channel range", bits)
    elif not _quant.decodes_finite(meta.lo, meta.hi, bits):
        raise _beyond_float32(f"range [{meta.lo}, {meta.hi}]", bits)
    if n == 0:
        return np.zeros(shape, np.float32)
    codes = _codes(meta, payload, nthreads)
    if meta.mode == "centre-zstd" and meta.compressor != "bitpack":
        zero_points = (_quant.channel_grids(lo, hi, bits)[1].astype(np.int64) if meta.per_channel
                       else _quant.grid(meta.lo, meta.hi, bits).zero_point)
        codes = _coders.unfold(codes, zero_points, bits)
    if meta.per_channel:
        values = _quant.dequantize_per_channel(codes, lo, hi, bits)
    else:
        values = _quant.dequantize(codes, meta.lo, meta.hi, bits)
    return values.reshape(shape)


def _codes(meta: FrameMeta, payload: bytes, nthreads: int | None) -> np.ndarray:
    """The flat codes of a quantised frame's payload, none above the bit width."""
    bits, n, compressor = meta.quant_bits, meta.numel, meta.compressor
    if compressor == "bitpack":
        return _pack.unpack_dense(payload, bits, n)
    if compressor == "rans":
        return _coders.rans_decode(payload, bits, n)  # its alphabet is 0..2**bits-1
    if compressor == "zstd":
        codes = _coders.zstd_decompress(payload, bits, n)
    else:
        codes = _pack.blosc2_decompress(payload, compressor, bits, n, nthreads)
    if bits not in (8, 16) and int(codes.max()) >> bits:
        raise FrameError(f"frame holds codes above {(1 << bits) - 1}, impossible at {bits} bits")
    return codes
