"""The frame's numbers and names: modes, compressors, dtypes, versions, and the fixed-size header.

Frames of version 3 (what encode writes) have the compact metadata of ``dyno.codec._compact``: a 6-byte
head, then varints and only the ranges a frame needs (17-23 bytes for the tensors of a CNN, against
29-37 in versions 1 and 2). Wire layout of the metadata of versions 1 and 2 (little-endian), 37 bytes
for a 3-d tensor with one range::

    offset  size      field
    0       2         magic b"DY"
    2       1         version       1 or 2 (see "Versions")
    3       1         mode          index into MODES
    4       1         bits          1..16 quantised modes (1..8 for rans); quality 1..100 image modes; 0 fp16/fp32
    5       1         flags         bit 0: per-channel ranges; other bits must be 0
    6       1         dtype         index into DTYPES: what encode was given
    7       1         compressor    index into COMPRESSORS: what produced the payload
    8       1         ndim          0..MAX_NDIM
    9       4*ndim    shape         uint32 each
    ..      8 or 8*C  ranges        float32 (lo, hi), or (lo, hi) per channel, C = shape[0]
    ..      4         payload_nbytes
    ..      4         crc32         zlib.crc32 of all the bytes above followed by the payload

Versions. Version 1 knows the modes ``shuffle-lz4``, ``shuffle-zstd``, ``dense``, ``fp16``, ``fp32``,
``jpeg``, ``webp`` and the compressors ``raw``, ``bitpack``, ``blosc2-lz4``, ``blosc2-zstd``, ``jpeg``,
``webp``. Version 2 adds the modes ``centre-zstd``, ``zstd``, ``rans`` and the compressors ``zstd`` and
``rans`` (see ``dyno.codec._coders``); nothing else changed. Version 3 carries every mode and
compressor with the same payloads; only the metadata's layout is new (``dyno.codec._compact``).
Encode writes version 3; ``FrameMeta(version=1 or 2)`` still writes the older layouts (the lowest that
carries a frame is ``required_version``) for a receiver that reads only those, which refuses version 3
by its version ("upgrade the older side"). This receiver reads all three, and refuses a version-1 frame
that names a version-2 mode or compressor.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from dyno.errors import FrameError

__all__ = ["MODES", "QUANT_MODES", "IMAGE_MODES", "FLOAT_MODES", "COMPRESSORS", "ALLOWED_COMPRESSORS", "DTYPES",
           "FORMAT_VERSION", "VERSIONS", "MAX_NDIM", "MAX_BITS", "FLAG_PER_CHANNEL", "MAGIC", "HEAD", "TAIL",
           "Head", "read_head", "COMPACT_VERSION", "HEAD3", "LO_ZERO",
           "meta_nbytes", "check_payload_size", "byte_view", "dense_nbytes",
           "container_itemsize", "required_version", "bits_problem", "rans_table_nbytes", "ZSTD_MIN_NBYTES"]

MODES: tuple[str, ...] = ("shuffle-lz4", "shuffle-zstd", "dense", "fp16", "fp32", "jpeg", "webp",
                          "centre-zstd", "zstd", "rans")
QUANT_MODES = frozenset({"shuffle-lz4", "shuffle-zstd", "dense", "centre-zstd", "zstd", "rans"})
FLOAT_MODES = frozenset({"fp16", "fp32"})
IMAGE_MODES = frozenset({"jpeg", "webp"})
#: The widest codes a quantised mode takes (16 unless listed): rANS models an alphabet of 2**bits codes.
MAX_BITS: dict[str, int] = {"rans": 8}

#: What turned the codes (or values, or pixels) into the payload.
#: ``raw``: fp16/fp32 values as they are; ``bitpack``: exactly ``bits`` bits per code (see _pack);
#: ``blosc2-*``: one blosc2 chunk, bit-shuffled; ``jpeg``/``webp``: a Pillow-written image file;
#: ``zstd``: one Zstandard frame of the codes' bytes; ``rans``: a code table and an rANS stream.
COMPRESSORS: tuple[str, ...] = ("raw", "bitpack", "blosc2-lz4", "blosc2-zstd", "jpeg", "webp", "zstd", "rans")

#: Which compressors each mode may carry. A quantised mode other than ``dense`` falls back to
#: ``bitpack`` whenever its coder would not make the payload smaller than dense packing.
ALLOWED_COMPRESSORS: dict[str, frozenset[str]] = {
    "shuffle-lz4": frozenset({"blosc2-lz4", "bitpack"}),
    "shuffle-zstd": frozenset({"blosc2-zstd", "bitpack"}),
    "centre-zstd": frozenset({"blosc2-zstd", "bitpack"}),
    "zstd": frozenset({"zstd", "bitpack"}),
    "rans": frozenset({"rans", "bitpack"}),
    "dense": frozenset({"bitpack"}),
    "fp16": frozenset({"raw"}),
    "fp32": frozenset({"raw"}),
    "jpeg": frozenset({"jpeg"}),
    "webp": frozenset({"webp"}),
}

DTYPES: tuple[str, ...] = ("float32", "float16", "float64", "bfloat16", "uint8")

MAGIC = b"DY"
#: The newest frame version, and every version this receiver reads.
FORMAT_VERSION = 3
VERSIONS = (1, 2, 3)
#: The first version with the compact metadata (``dyno.codec._compact``).
COMPACT_VERSION = 3
_SINCE = {"centre-zstd": 2, "zstd": 2, "rans": 2}  # modes and compressors newer than version 1
MAX_NDIM = 8
FLAG_PER_CHANNEL = 0x01

HEAD = struct.Struct("<2sBBBBBBB")
#: The compact head (version 3): magic, version, mode | compressor << 4, dtype | ndim << 3 | per-channel
#: << 7, bits | LO_ZERO (see ``dyno.codec._compact``).
HEAD3 = struct.Struct("<2sBBBB")
#: In the compact head's bits byte: the range's lo is +0.0 and is not on the wire.
LO_ZERO = 0x80
TAIL = struct.Struct("<II")
#: The smallest payloads the entropy coders can write: a zstd frame's magic number; a rANS table.
ZSTD_MIN_NBYTES = 4


def required_version(mode: str, compressor: str) -> int:
    """The lowest frame version that can carry ``mode`` with ``compressor`` (what encode writes)."""
    return max(_SINCE.get(mode, 1), _SINCE.get(compressor, 1))


def container_itemsize(bits: int) -> int:
    """Bytes per code in memory: 1 for 1..8 bits, 2 for 9..16."""
    return 1 if bits <= 8 else 2


def dense_nbytes(numel: int, bits: int) -> int:
    """Payload bytes of dense packing: exactly ``bits`` bits per value, rounded up to whole bytes."""
    return (numel * bits + 7) // 8


def rans_table_nbytes(bits: int) -> int:
    """Bytes of a rANS payload's code table: one byte per code of the alphabet."""
    return 1 << bits


def bits_problem(mode: str, bits: int) -> str | None:
    """What is wrong with ``bits`` (the header's byte) for ``mode``, or None."""
    if mode in FLOAT_MODES:
        return None if bits == 0 else f"mode {mode!r} carries no bit width, got {bits}"
    top = MAX_BITS.get(mode, 16) if mode in QUANT_MODES else 100
    if not 1 <= bits <= top:
        what = "bits" if mode in QUANT_MODES else "quality"
        return f"{what} {bits} is out of range 1..{top} for mode {mode!r}"
    return None


def byte_view(data: Any, what: str) -> bytes | memoryview:
    """``data`` (bytes, bytearray, memoryview, any C-contiguous buffer) as bytes or a flat byte view,
    without a copy; FrameError for anything else."""
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise FrameError(f"{what} must be contiguous bytes, got {type(data).__name__}") from None


class Head(NamedTuple):
    """The fixed-size start of the metadata (9 bytes in versions 1 and 2, 6 in version 3), its numbers
    checked and turned into names."""

    mode: str
    bits: int  # the raw byte: 0 for fp16/fp32
    per_channel: bool
    dtype: str
    compressor: str
    ndim: int
    version: int = FORMAT_VERSION
    lo_zero: bool = False  # version 3: the range's lo is 0 and not on the wire


def read_head(prefix: bytes | memoryview) -> Head:
    """The fixed-size header that starts ``prefix``; FrameError for a short buffer, a wrong magic, an
    unknown version (or a mode/compressor newer than the frame's version), unknown flags, unknown
    mode/dtype/compressor numbers, or more than MAX_NDIM axes."""
    compact = len(prefix) >= 3 and prefix[2] >= COMPACT_VERSION
    size = HEAD3.size if compact else HEAD.size
    if len(prefix) < size:
        raise FrameError(f"frame of {len(prefix)} bytes is shorter than the {size}-byte header")
    if compact:
        magic, version, kinds, layout, bits = HEAD3.unpack_from(prefix)
        mode, flags, dtype, comp, ndim = kinds & 15, layout >> 7, layout & 7, kinds >> 4, (layout >> 3) & 15
        lo_zero, bits = bits >= LO_ZERO, bits & ~LO_ZERO
    else:
        magic, version, mode, bits, flags, dtype, comp, ndim = HEAD.unpack_from(prefix)
        lo_zero = False
    if magic != MAGIC:
        raise FrameError(f"not a dyno frame (magic {bytes(magic)!r}, want {MAGIC!r})")
    if version not in VERSIONS:
        raise FrameError(f"unsupported frame version {version}; this dyno reads versions "
                         f"{', '.join(map(str, VERSIONS))} (upgrade the older side)")
    head = _named(version, mode, bits, flags, dtype, comp, ndim, lo_zero)
    if lo_zero and (head.per_channel or head.mode in FLOAT_MODES):
        raise FrameError(f"a {'per-channel' if head.per_channel else head.mode} frame has no lo to leave out")
    return head


def _named(version: int, mode: int, bits: int, flags: int, dtype: int, comp: int, ndim: int, lo_zero: bool) -> Head:
    """The header's numbers checked and named (FrameError for any unknown or impossible one)."""
    if flags & ~FLAG_PER_CHANNEL:
        raise FrameError(f"unknown frame flags 0x{flags:02x}")
    if mode >= len(MODES):
        raise FrameError(f"unknown codec mode number {mode}")
    if dtype >= len(DTYPES):
        raise FrameError(f"unknown dtype number {dtype}")
    if comp >= len(COMPRESSORS):
        raise FrameError(f"unknown compressor number {comp}")
    if ndim > MAX_NDIM:
        raise FrameError(f"frame claims {ndim} dimensions (at most {MAX_NDIM})")
    if version < required_version(MODES[mode], COMPRESSORS[comp]):
        raise FrameError(f"a version {version} frame cannot carry mode {MODES[mode]!r} with "
                         f"{COMPRESSORS[comp]!r} (version {required_version(MODES[mode], COMPRESSORS[comp])})")
    return Head(MODES[mode], bits, bool(flags & FLAG_PER_CHANNEL), DTYPES[dtype], COMPRESSORS[comp], ndim, version,
                lo_zero)


def meta_nbytes(ndim: int, channels: int | None) -> int:
    """Length of the version-1/2 metadata of an ``ndim``-axis frame: one range, or one per channel if given."""
    return HEAD.size + 4 * ndim + 8 * (1 if channels is None else channels) + TAIL.size


def check_payload_size(mode: str, compressor: str, bits: int | None, numel: int, size: int) -> None:
    """FrameError unless ``size`` bytes can carry ``numel`` values (``compressor`` allowed for ``mode``,
    ``bits`` valid): the exact size for fp16/fp32 and bitpack; for an entropy coder at least its
    smallest output and less than dense packing (the encoder sends dense packing otherwise)."""
    if mode in FLOAT_MODES:
        want = numel * (2 if mode == "fp16" else 4)
        if size != want:
            raise FrameError(f"{mode} payload of {size} bytes for {numel} values (want {want})")
        return
    if mode in IMAGE_MODES:
        if size == 0:
            raise FrameError(f"empty {mode} payload")
        return
    assert bits is not None
    dense = dense_nbytes(numel, bits)
    if compressor == "bitpack":
        if size != dense:
            raise FrameError(f"dense payload of {size} bytes for {numel} values at {bits} bits (want {dense})")
        return
    least = {"zstd": ZSTD_MIN_NBYTES, "rans": rans_table_nbytes(bits) + 4}.get(compressor, 32)  # blosc2: 32
    if not least <= size < dense or (compressor == "rans" and (size - least) % 4):
        raise FrameError(f"{compressor.partition('-')[0]} payload of {size} bytes is impossible for {numel} values at "
                         f"{bits} bits (dense packing takes {dense})")
