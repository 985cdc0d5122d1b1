"""The receiver: what it accepts (``Expected``) and decoding (``decode_frame``, ``decode``).

``decode_frame(meta, payload, expected)`` is the receiver's one entry point. It judges a frame in this
order and raises FrameError at the first failure:

1. the fixed 9-byte header: magic, version (1 or 2, and not older than its mode and compressor),
   flags, mode / dtype / compressor numbers, ndim <= MAX_NDIM;
2. the header against ``expected``: ndim, mode accepted, compressor valid for the mode, bits (the
   accepted range for a quantised mode, at most 8 for rans, 0 for fp16/fp32, 1..100 for jpeg/webp),
   per-channel ranges wanted or not (and only for a quantised mode with a channel axis);
3. the metadata's length against the one the *expected* shape implies, so a per-channel table is
   read only when it holds exactly the cut's channel count;
4. the shape (at most MAX_NDIM uint32) equal to the expected shape;
5. the declared payload size: possible for the expected shape (exact for fp16/fp32 and dense packing,
   for an entropy coder between its smallest output - a blosc2 header, a zstd magic number, a rANS
   table and one word - and dense packing), within ``max_nbytes`` with the metadata, and equal to the
   payload's length.

Steps 1-5 (``Expected.check_wire``) read at most 9 + 4 * MAX_NDIM + 4 bytes and allocate nothing whose
size the frame declares: a frame declaring 900,000 ranges to a 32-channel cut costs what any other bad
header costs. Then:

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

import dataclasses
import math
import struct
import sys
from typing import Any

import numpy as np

from dyno.codec import _coders, _image, _pack, _quant
from dyno.codec._codec import Encoded
from dyno.codec._meta import FrameMeta
from dyno.codec._wire import (
    ALLOWED_COMPRESSORS,
    FLOAT_MODES,
    HEAD,
    IMAGE_MODES,
    MODES,
    QUANT_MODES,
    TAIL,
    Head,
    bits_problem,
    check_payload_size,
    meta_nbytes,
    read_head,
)
from dyno.errors import ConfigError, FrameError

__all__ = ["Expected", "decode", "decode_frame"]


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a receiver accepts, typically taken from the plan for the cut it serves.

    ``shape`` must equal the frame's shape exactly; ``modes`` (None: any) lists the accepted modes;
    quantised frames must have ``min_bits <= bits <= max_bits``; ``per_channel`` (None: either)
    requires or forbids per-channel ranges; ``max_nbytes`` (None: no limit) caps ``Encoded.nbytes``.
    """

    shape: tuple[int, ...]
    modes: frozenset[str] | None = None
    max_bits: int = 16
    min_bits: int = 1
    per_channel: bool | None = None
    max_nbytes: int | None = None

    def __init__(self, shape: Any, modes: Any = None, max_bits: int = 16, *, min_bits: int = 1,
                 per_channel: bool | None = None, max_nbytes: int | None = None) -> None:
        set_ = object.__setattr__
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ConfigError(f"Expected.shape must be a sequence of ints, got {shape!r}") from None
        if any(d < 0 for d in shape):
            raise ConfigError(f"Expected.shape {shape} has a negative size")
        if modes is not None:
            if isinstance(modes, str):
                modes = (modes,)
            modes = frozenset(modes)
            unknown = modes - set(MODES)
            if unknown:
                raise ConfigError(f"unknown codec modes {sorted(unknown)}; known: {', '.join(MODES)}")
        if not (isinstance(min_bits, int) and isinstance(max_bits, int) and 1 <= min_bits <= max_bits <= 16):
            raise ConfigError(f"need 1 <= min_bits <= max_bits <= 16, got {min_bits}, {max_bits}")
        if max_nbytes is not None and (not isinstance(max_nbytes, int) or max_nbytes < 0):
            raise ConfigError(f"max_nbytes must be a non-negative int or None, got {max_nbytes!r}")
        set_(self, "shape", shape)
        set_(self, "modes", modes)
        set_(self, "max_bits", max_bits)
        set_(self, "min_bits", min_bits)
        set_(self, "per_channel", per_channel)
        set_(self, "max_nbytes", max_nbytes)

    # ------------------------------------------------------------------------------------- checks
    def check_wire(self, meta: bytes | memoryview, payload_nbytes: int | None = None) -> None:
        """FrameError unless metadata bytes ``meta`` (with a payload of ``payload_nbytes`` bytes, if
        given) can be a frame this receiver accepts, judged from the fixed-size header, the shape and
        the declared sizes alone (steps 1-5 of the module docstring). Reads at most
        9 + 4 * ndim + 4 bytes of ``meta`` and allocates nothing whose size the frame declares."""
        head = read_head(meta)
        self._check_head(head)
        size = meta_nbytes(head.ndim, self.shape[0] if head.per_channel else None)
        if len(meta) != size:
            raise FrameError(f"frame metadata is {len(meta)} bytes; a frame of the expected shape "
                             f"{self.shape} has {size}")
        self._check_shape(struct.unpack_from(f"<{head.ndim}I", meta, HEAD.size))
        declared = struct.unpack_from("<I", meta, size - TAIL.size)[0]
        bits = None if head.mode in FLOAT_MODES else head.bits
        check_payload_size(head.mode, head.compressor, bits, math.prod(self.shape), declared)
        self._check_nbytes(size + declared)
        if payload_nbytes is not None and payload_nbytes != declared:
            raise FrameError(f"payload is {payload_nbytes} bytes; the frame metadata says {declared} "
                             "(truncated or padded in transit)")

    def check(self, enc: Encoded) -> None:
        """FrameError unless the (parsed) frame's metadata is what this receiver accepts."""
        m = enc.meta
        self._check_head(Head(m.mode, m.bits or 0, m.per_channel, m.dtype, m.compressor, len(m.shape)))
        self._check_shape(m.shape)
        self._check_nbytes(enc.nbytes)

    def _check_head(self, head: Head) -> None:
        if head.ndim != len(self.shape):
            raise FrameError(f"frame has {head.ndim} dimensions; the expected shape {self.shape} has "
                             f"{len(self.shape)}")
        if self.modes is not None and head.mode not in self.modes:
            raise FrameError(f"frame mode {head.mode!r} is not accepted here (accepted: "
                             f"{', '.join(sorted(self.modes))})")
        if head.compressor not in ALLOWED_COMPRESSORS[head.mode]:
            raise FrameError(f"compressor {head.compressor!r} is not valid for mode {head.mode!r}")
        if head.mode in QUANT_MODES and not self.min_bits <= head.bits <= self.max_bits:
            raise FrameError(f"frame has {head.bits} bits; accepted {self.min_bits}..{self.max_bits}")
        wrong = bits_problem(head.mode, head.bits)
        if wrong:
            raise FrameError(wrong)
        if head.per_channel and (head.mode not in QUANT_MODES or not self.shape):
            raise FrameError(f"per-channel ranges need a quantised mode and a channel axis "
                             f"(mode {head.mode!r}, expected shape {self.shape})")
        if self.per_channel is not None and head.per_channel != self.per_channel:
            raise FrameError(f"frame {'has' if head.per_channel else 'lacks'} per-channel ranges; "
                             f"this receiver wants {'them' if self.per_channel else 'one range'}")

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if shape != self.shape:
            raise FrameError(f"frame shape {shape} does not match the expected {self.shape}")

    def _check_nbytes(self, nbytes: int) -> None:
        if self.max_nbytes is not None and nbytes > self.max_nbytes:
            raise FrameError(f"frame of {nbytes} bytes exceeds the limit of {self.max_nbytes}")


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
    expected.check(enc)
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
