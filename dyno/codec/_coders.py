"""The frame-version-2 coders of the codes: centring, Zstandard on the codes' bytes, and rANS.

- **Centring** (mode ``centre-zstd``): a permutation of the codes ``0..L`` that sorts them by distance
  from the zero point ``zp`` (``zp -> 0, zp+1 -> 1, zp-1 -> 2, zp+2 -> 3, ...``, then the longer side
  in order), so that a signed, peaked tensor's codes become small numbers whose high bit planes are
  empty after bit-shuffling. The identity when ``zp == 0`` (every non-negative tensor). The payload is
  then an ordinary bit-shuffled blosc2 Zstandard chunk (``_pack``), at ``CENTRE_ZSTD_LEVEL``.
- **zstd** (mode ``zstd``): one Zstandard frame (python-zstandard, level ``ZSTD_LEVEL``) of the codes'
  bytes, not shuffled: its Huffman literals and repeat matches approach the codes' entropy at 6..8
  bits where bit-shuffling stops paying. Checked before decompressing: one frame, no dictionary, the
  content size declared and equal to the expected codes' bytes, the window within that size.
- **rANS** (mode ``rans``, 1..8 bits): an order-0 entropy coder (constriction's ``AnsCoder`` with a
  ``Categorical`` model). Payload: a table of ``2**bits`` bytes, one weight per code (``weight``:
  a 4-bit exponent and 4-bit mantissa, so both sides compute the same integers), then the rANS words
  (uint32, little-endian). The model is the table's weights normalised in float64; constriction gives
  every code at least its smallest probability, so a code missing from the table's sample still
  encodes. The weights count a strided sample of at most ``RANS_SAMPLE`` codes. Decoding checks that
  the stream holds exactly the expected number of codes (the coder ends empty).

Every decoder here allocates only the expected codes (rANS: their int32 symbols), and turns any
library error into FrameError.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from dyno.codec._wire import rans_table_nbytes
from dyno.errors import FrameError

__all__ = ["fold", "unfold", "zstd_compress", "zstd_decompress", "rans_encode", "rans_decode", "weight",
           "CENTRE_ZSTD_LEVEL", "ZSTD_LEVEL", "RANS_SAMPLE"]

#: blosc2 Zstandard level of ``centre-zstd`` (as ``shuffle-zstd``). Measured on EfficientNet-Lite0
#: activations (cuts 12-68, 2-8 bits), blosc2's level 3 encoded up to 18x slower than level 1 for -2..+5%
#: bytes (7-12% fewer on payloads of a few kB): the centring, not the level, is what pays.
CENTRE_ZSTD_LEVEL = 1
#: Zstandard level of ``zstd``: at 3 it encodes ~1-3 GB/s of fp32 tensor here, within a few % of level 6.
ZSTD_LEVEL = 3
#: Codes the rANS table counts at most (a strided sample of them): the model costs ~0.1 ms, not a pass.
RANS_SAMPLE = 1 << 16

_local = threading.local()


# -------------------------------------------------------------------------------------- centring
@functools.lru_cache(maxsize=64)
def _fold_tables(zero_point: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(fold, unfold): the permutation of 0..2**bits-1 by distance from ``zero_point``, and its inverse."""
    levels = (1 << bits) - 1
    d = np.arange(levels + 1, dtype=np.int64) - zero_point
    near = min(zero_point, levels - zero_point)  # both sides hold codes up to this distance
    folded = np.where(np.abs(d) <= near, np.where(d > 0, 2 * d - 1, -2 * d), np.abs(d) + near)
    dtype = np.uint8 if bits <= 8 else np.uint16
    inverse = np.empty(levels + 1, np.int64)
    inverse[folded] = np.arange(levels + 1)
    return folded.astype(dtype), inverse.astype(dtype)


def fold(codes: np.ndarray, zero_points: np.ndarray | int, bits: int) -> np.ndarray:
    """Centred codes: per tensor (``zero_points`` an int) or per channel (one per entry of axis 0 of
    the flat codes taken as ``(channels, -1)``). The input is left as it is."""
    return _apply(codes, zero_points, bits, 0)


def unfold(codes: np.ndarray, zero_points: np.ndarray | int, bits: int) -> np.ndarray:
    """The inverse of ``fold``; the caller checked that no code exceeds ``2**bits - 1``."""
    return _apply(codes, zero_points, bits, 1)


def _apply(codes: np.ndarray, zero_points: np.ndarray | int, bits: int, which: int) -> np.ndarray:
    if isinstance(zero_points, (int, np.integer)):
        return codes if zero_points == 0 else np.take(_fold_tables(int(zero_points), bits)[which], codes)
    zps = np.asarray(zero_points, np.int64)
    if not zps.any():
        return codes
    rows = codes.reshape(len(zps), -1)
    out = np.empty_like(rows)
    for c, zp in enumerate(zps.tolist()):
        np.take(_fold_tables(zp, bits)[which], rows[c], out=out[c])
    return out.reshape(-1)


# ------------------------------------------------------------------------------------------ zstd
def zstd_compress(codes: np.ndarray) -> bytes:
    """One Zstandard frame of the codes' bytes (little-endian for 16-bit codes), content size declared."""
    import zstandard

    compressor = getattr(_local, "zstd", None)
    if compressor is None:
        compressor = _local.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    data = codes if codes.dtype.byteorder != ">" else codes.astype(codes.dtype.newbyteorder("<"))
    return compressor.compress(np.ascontiguousarray(data).data.cast("B"))


def zstd_decompress(payload: bytes, bits: int, n: int) -> np.ndarray:
    """Flat codes (uint8 or uint16) from one Zstandard frame declaring exactly their bytes."""
    import zstandard

    itemsize = 1 if bits <= 8 else 2
    nbytes = n * itemsize
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as error:
        raise FrameError(f"zstd payload has no valid frame header: {error}") from None
    if params.content_size >= 1 << 63 or params.content_size < 0:
        raise FrameError("zstd frame does not declare its content size")
    if params.content_size != nbytes:
        raise FrameError(f"zstd frame declares {params.content_size} bytes; the expected codes take {nbytes}")
    if params.dict_id != 0:
        raise FrameError("zstd frame needs a dictionary; frames carry none")
    if params.window_size > max(nbytes, 1 << 10):
        raise FrameError(f"zstd frame window of {params.window_size} bytes exceeds its {nbytes}-byte content")
    try:
        data = zstandard.ZstdDecompressor(max_window_size=max(nbytes, 1 << 10)).decompress(
            payload, max_output_size=nbytes, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise FrameError(f"zstd payload is corrupt: {error}") from None
    if len(data) != nbytes:
        raise FrameError(f"zstd payload decompressed to {len(data)} bytes, want {nbytes}")
    return np.frombuffer(data, np.uint8 if bits <= 8 else "<u2").astype(np.uint16 if bits > 8 else np.uint8,
                                                                        copy=bits > 8)


# ------------------------------------------------------------------------------------------ rANS
def _weights() -> np.ndarray:
    """``weight(q)`` for every table byte q: q < 16 -> q; else (16 + q % 16) << (q // 16 - 1)."""
    q = np.arange(256, dtype=np.int64)
    return np.where(q < 16, q, (16 + (q & 15)) << np.maximum((q >> 4) - 1, 0))


_WEIGHTS = _weights()


def weight(q: np.ndarray) -> np.ndarray:
    """The integer weights (int64) of table bytes ``q``."""
    return _WEIGHTS[q]


def _table(counts: np.ndarray) -> np.ndarray:
    """Table bytes whose weights are nearest to ``counts`` (at most 6% off), 0 only for a count of 0."""
    q = np.searchsorted(_WEIGHTS, counts)  # the first weight >= count (weights are increasing)
    q = np.minimum(q, 255)
    lower = np.maximum(q - 1, 0)
    closer = (counts - _WEIGHTS[lower]) < (_WEIGHTS[q] - counts)
    return np.where(closer & (lower > 0), lower, q).astype(np.uint8)


def _model(table: np.ndarray):  # -> constriction.stream.model.Categorical
    import constriction

    w = weight(table).astype(np.float64)
    return constriction.stream.model.Categorical(w / w.sum(), perfect=False)


def rans_encode(codes: np.ndarray, bits: int) -> bytes:
    """The table and the rANS words of flat uint8 codes (1..8 bits, at least one code)."""
    import constriction

    stride = max(1, codes.size // RANS_SAMPLE)
    counts = np.bincount(codes[::stride], minlength=1 << bits)
    table = _table(counts)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(codes.astype(np.int32), _model(table))
    return table.tobytes() + coder.get_compressed().astype("<u4", copy=False).tobytes()


def rans_decode(payload: bytes, bits: int, n: int) -> np.ndarray:
    """Flat uint8 codes from a rANS payload of exactly ``n`` codes; FrameError otherwise."""
    import constriction

    size = rans_table_nbytes(bits)
    table = np.frombuffer(payload, np.uint8, count=size)
    if not table.any():
        raise FrameError("rANS table gives every code weight 0")
    words = np.frombuffer(payload, "<u4", offset=size).astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_model(table), n)
        complete = coder.is_empty()
    except Exception as error:  # constriction raises ValueError/KeyError on invalid streams
        raise FrameError(f"rANS payload is corrupt: {error}") from None
    except BaseException as error:  # a Rust panic surfaces as pyo3's PanicException (a BaseException)
        if type(error).__name__ != "PanicException":
            raise
        raise FrameError(f"rANS payload is corrupt: {error}") from None
    if not complete:
        raise FrameError(f"rANS stream holds more than the expected {n} codes")
    return symbols.astype(np.uint8)
