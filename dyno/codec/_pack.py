"""Codes to payload bytes and back: dense bit packing and blosc2 (bit-shuffle + LZ4/Zstandard).

Dense packing stores exactly ``bits`` bits per code, ``ceil(n * bits / 8)`` bytes in all: for 8 and 16
bits the codes' own bytes (uint16 little-endian); otherwise bit planes (see ``pack_dense``), built and
taken apart with vectorised passes per plane (``numpy.packbits``; a 256-entry table that spreads one
plane byte over eight codes), never a loop over values.

blosc2 payloads are one blosc2 chunk with the BITSHUFFLE filter, typesize 1 (codes of 1..8 bits) or 2
(9..16 bits). Before a chunk reaches blosc2 its 32-byte header is checked against what the frame
metadata and the expected shape imply: sizes, typesize, codec, filters, flags (see ``check_chunk``).
"""

from __future__ import annotations

import os
from typing import Any

import blosc2
import numpy as np

from dyno.errors import ConfigError, FrameError

__all__ = ["pack_dense", "unpack_dense", "blosc2_compress", "blosc2_decompress", "check_chunk",
           "THREADS_THRESHOLD", "threads_for"]

#: Below this many bytes of codes blosc2 runs single-threaded. Measured on the 2-core build machine:
#: a second thread costs ~0.1 ms to start per call and only pays off from ~1 MiB of codes (LZ4
#: decompress) to ~2-4 MiB (LZ4 compress); ``DYNO_CODEC_THREADS`` overrides the thread count.
THREADS_THRESHOLD = 4 << 20

_CODECS = {"blosc2-lz4": blosc2.Codec.LZ4, "blosc2-zstd": blosc2.Codec.ZSTD}
#: blosc2 levels, measured on EfficientNet-Lite0 activations: LZ4 5 (1 vs 9 differ by ~2% in size);
#: Zstandard 1, within 1-2% of level 5's size at 3-8x its speed.
CLEVELS = {"blosc2-lz4": 5, "blosc2-zstd": 1}
_HEADER = 32
_CODE_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype(np.uint8), 2: np.dtype("<u2")}


def threads_for(nbytes: int, nthreads: int | None = None) -> int:
    """blosc2 threads for ``nbytes`` of codes: 1 below THREADS_THRESHOLD, else up to 2 cores."""
    if nthreads is not None:
        if not isinstance(nthreads, int) or nthreads < 1:
            raise ConfigError(f"nthreads must be a positive int, got {nthreads!r}")
        return nthreads
    env = os.environ.get("DYNO_CODEC_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ConfigError(f"DYNO_CODEC_THREADS must be an integer, got {env!r}") from None
    if nbytes < THREADS_THRESHOLD:
        return 1
    return max(1, min(2, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------- dense
def _spread_tables() -> list[np.ndarray]:
    """``_SPREAD[j][p]``: 8 code bytes (a little-endian uint64) with bit j set where byte p has its
    bit ``7 - m`` set, m = 0..7 the code's position (numpy.packbits order: first code = top bit)."""
    p = np.arange(256, dtype=np.uint64)
    table = np.zeros(256, np.uint64)
    for m in range(8):
        table |= ((p >> np.uint64(7 - m)) & np.uint64(1)) << np.uint64(8 * m)
    return [table << np.uint64(j) for j in range(8)]


_SPREAD = _spread_tables()


def _planes(codes: np.ndarray, bits: int) -> np.ndarray:
    planes = np.empty((bits, codes.size), np.uint8)
    tmp = np.empty(codes.size, codes.dtype)
    for j in range(bits):  # a loop over bit planes; each step is one vectorised pass
        np.right_shift(codes, j, out=tmp)
        np.bitwise_and(tmp, 1, out=planes[j], casting="unsafe")
    return planes


def pack_dense(codes: np.ndarray, bits: int) -> bytes:
    """Exactly ``bits`` bits per code (flat uint8 codes for bits <= 8, uint16 above), as
    ``ceil(n * bits / 8)`` bytes.

    8 and 16 bits: the codes' bytes. Otherwise the first ``m = n - n % 8`` codes as ``bits`` planes of
    ``m / 8`` bytes each (least significant plane first, numpy.packbits bit order), then the last
    ``n % 8`` codes' planes packed back to back.
    """
    if bits in (8, 16):
        return codes.astype(_CODE_DTYPES[bits // 8], copy=False).tobytes()
    m = codes.size - codes.size % 8
    main = np.packbits(_planes(codes[:m], bits))
    tail = np.packbits(_planes(codes[m:], bits))
    return main.tobytes() + tail.tobytes()


def unpack_dense(payload: bytes, bits: int, n: int) -> np.ndarray:
    """Inverse of pack_dense: flat writable codes (uint8 or uint16). The caller checked the length."""
    if bits in (8, 16):
        return np.frombuffer(payload, _CODE_DTYPES[bits // 8], count=n).astype(
            np.uint8 if bits == 8 else np.uint16)
    m = n - n % 8
    data = np.frombuffer(payload, np.uint8)
    planes = data[: bits * m // 8].reshape(bits, m // 8)
    groups = []  # one uint64 per 8 codes, for bit planes 0..7 and then 8..15
    for first in range(0, bits, 8):
        acc = np.take(_SPREAD[0], planes[first])
        tmp = np.empty_like(acc)
        for j in range(first + 1, min(bits, first + 8)):
            np.take(_SPREAD[j - first], planes[j], out=tmp)
            acc |= tmp
        groups.append(acc.view(np.uint8))
    if bits <= 8:
        out = np.empty(n, np.uint8)
        out[:m] = groups[0]
    else:
        out = np.empty(n, np.uint16)
        np.left_shift(groups[1], 8, out=out[:m], dtype=np.uint16)
        out[:m] |= groups[0]
    r = n - m
    if r:
        tail = np.unpackbits(data[bits * m // 8:], count=bits * r).reshape(bits, r)
        weights = (1 << np.arange(bits, dtype=np.uint32))[:, None]
        out[m:] = (tail * weights).sum(axis=0)
    return out


# --------------------------------------------------------------------------------------- blosc2
def blosc2_compress(codes: np.ndarray, compressor: str, nthreads: int | None = None, clevel: int | None = None
                    ) -> bytes:
    """One bit-shuffled blosc2 chunk of the flat codes (at ``clevel``, default ``CLEVELS[compressor]``)."""
    cparams = {"codec": _CODECS[compressor], "clevel": CLEVELS[compressor] if clevel is None else clevel,
               "typesize": codes.itemsize,
               "nthreads": threads_for(codes.nbytes, nthreads), "filters": [blosc2.Filter.BITSHUFFLE],
               "filters_meta": [0]}
    return blosc2.compress2(codes, cparams=cparams)


def _expected_header() -> dict[str, int]:
    """What this blosc2 writes in the header fields we pin (its format version, filter code)."""
    chunk = blosc2.compress2(np.arange(64, dtype=np.uint8),
                             cparams={"codec": blosc2.Codec.LZ4, "clevel": CLEVELS["blosc2-lz4"], "typesize": 1,
                                      "nthreads": 1, "filters": [blosc2.Filter.BITSHUFFLE],
                                      "filters_meta": [0]})
    return {"version": chunk[0], "filter": chunk[16]}


_PINNED = _expected_header()
# blosc2_flags (byte 31): bits 4..6 a special value; only "all zeros" (1) is a valid chunk of codes.
_ALLOWED_BLOSC2_FLAGS = {0x00, 0x10}


def check_chunk(payload: bytes, compressor: str, typesize: int, nbytes: int) -> None:
    """Validate a blosc2 chunk header against what the frame must hold; FrameError on any mismatch.

    Checked: header length, format version (1..this library's), the extended-header marker, typesize,
    uncompressed size == ``nbytes`` (the expected tensor), compressed size == payload length, block
    size within (0, nbytes], the filter pipeline (BITSHUFFLE only), the codec, and the blosc2 flags
    (no dictionaries, no lazy chunks, no special values but zeros).
    """
    if len(payload) < _HEADER:
        raise FrameError(f"blosc2 payload of {len(payload)} bytes is shorter than its {_HEADER}-byte header")
    version, flags, size = payload[0], payload[2], payload[3]
    if not 1 <= version <= _PINNED["version"]:
        raise FrameError(f"blosc2 chunk format {version} is unknown to this blosc2 "
                         f"(reads up to {_PINNED['version']})")
    if flags & 0x05 != 0x05:
        raise FrameError(f"blosc2 chunk lacks the extended header (flags 0x{flags:02x})")
    if size != typesize:
        raise FrameError(f"blosc2 chunk typesize {size}, want {typesize}")
    try:
        got_nbytes, got_cbytes, blocksize = blosc2.get_cbuffer_sizes(payload[:_HEADER])
    except Exception as error:  # blosc2 raises bare RuntimeError/ValueError
        raise FrameError(f"blosc2 header unreadable: {error}") from error
    if got_nbytes != nbytes:
        raise FrameError(f"blosc2 chunk holds {got_nbytes} bytes; the expected shape needs {nbytes}")
    if got_cbytes != len(payload):
        raise FrameError(f"blosc2 chunk says {got_cbytes} bytes but the payload has {len(payload)}")
    if not 0 < blocksize <= max(nbytes, 1):
        raise FrameError(f"blosc2 block size {blocksize} is invalid for {nbytes} bytes")
    filters = payload[16:22]
    if filters[0] != _PINNED["filter"] or any(filters[1:]):
        raise FrameError(f"blosc2 filter pipeline {list(filters)} is not BITSHUFFLE alone")
    if payload[22] != _CODECS[compressor].value:
        raise FrameError(f"blosc2 codec {payload[22]} does not match {compressor}")
    if payload[31] not in _ALLOWED_BLOSC2_FLAGS:
        raise FrameError(f"blosc2 flags 0x{payload[31]:02x} are not allowed in a frame")


def blosc2_decompress(payload: bytes, compressor: str, bits: int, n: int,
                      nthreads: int | None = None) -> np.ndarray:
    """Flat codes from a blosc2 chunk, after check_chunk; never allocates beyond n codes."""
    dtype = _CODE_DTYPES[1 if bits <= 8 else 2]
    check_chunk(payload, compressor, dtype.itemsize, n * dtype.itemsize)
    out = np.empty(n, np.uint8 if bits <= 8 else np.uint16)
    try:
        blosc2.decompress2(payload, dst=out, dparams={"nthreads": threads_for(out.nbytes, nthreads)})
    except Exception as error:  # blosc2 raises RuntimeError/ValueError on corrupt streams
        raise FrameError(f"blosc2 payload is corrupt: {error}") from error
    return out
