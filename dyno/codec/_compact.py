"""Frame version 3: the compact metadata layout that encode writes.

The fields are those of versions 1 and 2 (``dyno.codec._wire``); the layout spends bytes only where a
frame needs them. Little-endian; a varint is unsigned LEB128 (7 bits a byte, low bits first, the high
bit set on every byte but the last), at most 5 bytes, below 2**32, and minimal (no trailing zero byte)::

    offset  size        field
    0       2           magic b"DY"
    2       1           version     3
    3       1           mode | compressor << 4                indices into MODES, COMPRESSORS
    4       1           dtype | ndim << 3 | per-channel << 7   index into DTYPES; 0..MAX_NDIM
    5       1           bits | LO_ZERO                         bits as in versions 1/2 (0..100)
    6       ndim varints shape
    ..      0, 4, 8, 8*C ranges     float32: none for fp16/fp32; (lo, hi) per channel (C = shape[0]);
                                    hi alone when LO_ZERO (lo is +0.0); else (lo, hi)
    ..      1..5        payload_nbytes  a varint
    ..      4           crc32       zlib.crc32 of all the bytes above followed by the payload

A (96, 112, 112) signed tensor takes 6 + 3 + 8 + 3 + 4 = 24 bytes of metadata (37 in version 2), a
(1280,) non-negative one 6 + 2 + 4 + 2 + 4 = 18 (29). The encoding is canonical: LO_ZERO is set
exactly when a single range's lo is +0.0 (a frame that sends a lo of +0.0 is refused), varints are
minimal, so ``FrameMeta.from_bytes(b).to_bytes() == b`` for every frame it accepts. Reading the
layout (``read_shape``, ``layout``) reads at most 6 + 5 * ndim + 5 bytes and allocates nothing whose
size the frame declares: a per-channel table is skipped by arithmetic, and a frame whose table would
end beyond the bytes at hand is refused as truncated.
"""

from __future__ import annotations

import math
import struct
from typing import Any, NamedTuple, Protocol

from dyno.codec._wire import (
    COMPACT_VERSION,
    COMPRESSORS,
    DTYPES,
    FLOAT_MODES,
    HEAD3,
    LO_ZERO,
    MAGIC,
    MODES,
    Head,
)
from dyno.errors import FrameError

__all__ = ["varint", "read_varint", "read_shape", "layout", "Layout", "Fields", "pack_unsigned", "parse",
           "MAX_VARINT"]

MAX_VARINT = 5
_ZERO32 = b"\0\0\0\0"
_CRC = struct.Struct("<I")
_BYTES = [bytes((i,)) for i in range(0x80)]
_F32 = struct.Struct("<f")
_RANGE = struct.Struct("<2f")
_MODE = {name: i for i, name in enumerate(MODES)}
_COMPRESSOR = {name: i for i, name in enumerate(COMPRESSORS)}
_DTYPE = {name: i for i, name in enumerate(DTYPES)}


def varint(value: int) -> bytes:
    """``value`` (0..2**32-1) as a minimal LEB128 varint."""
    if value < 0x80:
        return _BYTES[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(buf: bytes | memoryview, offset: int, what: str) -> tuple[int, int]:
    """(value, offset after it) of the varint at ``offset``; FrameError if it is truncated, longer than
    MAX_VARINT bytes, not minimal, or 2**32 or more."""
    if offset < len(buf) and buf[offset] < 0x80:  # the common case: one byte
        return buf[offset], offset + 1
    value = 0
    for i in range(MAX_VARINT):
        if offset + i >= len(buf):
            raise FrameError(f"frame truncated inside its {what}")
        byte = buf[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:
                raise FrameError(f"frame {what} is not a minimal varint")
            if value > 0xFFFFFFFF:
                raise FrameError(f"frame {what} {value} is beyond 2**32-1")
            return value, offset + i + 1
    raise FrameError(f"frame {what} runs past {MAX_VARINT} bytes")


def read_shape(head: Head, prefix: bytes | memoryview) -> tuple[tuple[int, ...], int]:
    """(shape, offset after it) of a version-3 metadata; reads at most 5 bytes per axis."""
    offset = HEAD3.size
    shape = []
    for axis in range(head.ndim):
        size, offset = read_varint(prefix, offset, f"axis {axis}")
        shape.append(size)
    return tuple(shape), offset


def _ranges_nbytes(head: Head, shape: tuple[int, ...]) -> int:
    if head.per_channel:
        if not shape:
            raise FrameError("per-channel frame without a channel axis")
        return 8 * shape[0]
    if head.mode in FLOAT_MODES:
        return 0
    return 4 if head.lo_zero else 8


class Layout(NamedTuple):
    """Where a version-3 metadata's parts lie (from its head and shape alone)."""

    shape: tuple[int, ...]
    ranges_at: int
    payload_nbytes: int
    size: int  # the whole metadata's length, crc32 included


def layout(head: Head, prefix: bytes | memoryview, shape: tuple[int, ...] | None = None,
           offset: int | None = None) -> Layout:
    """The layout of the version-3 metadata that starts ``prefix`` (``shape`` and ``offset`` when
    ``read_shape`` already read them); FrameError if ``prefix`` ends before its payload size."""
    if shape is None or offset is None:
        shape, offset = read_shape(head, prefix)
    ranges_at = offset
    declared, end = read_varint(prefix, ranges_at + _ranges_nbytes(head, shape), "payload size")
    return Layout(shape, ranges_at, declared, end + _CRC.size)


class Fields(Protocol):
    """What ``pack_unsigned`` reads of a ``FrameMeta`` (which imports this module), read-only."""

    @property
    def mode(self) -> str: ...
    @property
    def bits(self) -> int | None: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def lo(self) -> float: ...
    @property
    def hi(self) -> float: ...
    @property
    def channel_ranges(self) -> tuple[tuple[float, float], ...] | None: ...
    @property
    def compressor(self) -> str: ...
    @property
    def payload_nbytes(self) -> int: ...
    @property
    def per_channel(self) -> bool: ...


def pack_unsigned(meta: Fields) -> bytes:
    """The version-3 metadata of ``meta`` without its trailing crc32."""
    lo, table = meta.lo, meta.channel_ranges
    single = table is None and meta.mode not in FLOAT_MODES
    lo_zero = single and lo == 0.0 and math.copysign(1.0, lo) > 0  # +0.0: its float32 bytes are all zero
    out = bytearray(HEAD3.pack(MAGIC, COMPACT_VERSION, _MODE[meta.mode] | _COMPRESSOR[meta.compressor] << 4,
                               _DTYPE[meta.dtype] | len(meta.shape) << 3 | (0x80 if table is not None else 0),
                               (meta.bits or 0) | (LO_ZERO if lo_zero else 0)))
    for size in meta.shape:
        out += varint(size)
    if table is not None:
        flat = [v for pair in table for v in pair]
        out += struct.pack(f"<{len(flat)}f", *flat)
    elif lo_zero:
        out += _F32.pack(meta.hi)
    elif single:
        out += _RANGE.pack(lo, meta.hi)
    out += varint(meta.payload_nbytes)
    return bytes(out)


def parse(head: Head, data: bytes | memoryview) -> dict[str, Any]:
    """The fields (shape, ranges, payload_nbytes, crc32) of exactly one version-3 metadata ``data``
    whose head is ``head``; FrameError if its length is not the one its layout declares, or a lo of
    +0.0 is on the wire."""
    where = layout(head, data)
    if len(data) != where.size:
        raise FrameError(f"frame metadata is {len(data)} bytes; its header says {where.size}")
    shape, offset = where.shape, where.ranges_at
    fields: dict[str, Any] = {"shape": shape, "lo": 0.0, "hi": 0.0, "channel_ranges": None,
                              "payload_nbytes": where.payload_nbytes,
                              "crc32": _CRC.unpack_from(data, where.size - _CRC.size)[0]}
    if head.per_channel:
        flat = struct.unpack_from(f"<{2 * shape[0]}f", data, offset)
        fields["channel_ranges"] = tuple(zip(flat[0::2], flat[1::2]))
    elif head.lo_zero:
        fields["hi"] = struct.unpack_from("<f", data, offset)[0]
    elif head.mode not in FLOAT_MODES:
        if bytes(data[offset:offset + 4]) == _ZERO32:
            raise FrameError("frame sends a range lo of 0 (version 3 marks it with a flag instead)")
        fields["lo"], fields["hi"] = struct.unpack_from("<2f", data, offset)
    return fields
