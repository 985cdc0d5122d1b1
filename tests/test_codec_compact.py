"""Frame version 3, the compact metadata (``dyno.codec._compact``): every mode, width and coder round-trips
in it, its bytes are exactly the documented layout and canonical, it is parsed as strictly as the older
layouts, and hostile version-3 headers are refused without allocating what they declare. (The 100,000-
trial fuzzing of version-3 frames: test_codec_fuzz, whose frames encode writes in version 3.)"""

from __future__ import annotations

import dataclasses
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from allocation import traced_peak

from dyno.codec import MAX_BITS, Encoded, Expected, FrameMeta, _compact, decode, decode_frame, encode
from dyno.codec._wire import COMPRESSORS, DTYPES, MODES, required_version
from dyno.errors import FrameError

QUANT = ("shuffle-lz4", "shuffle-zstd", "centre-zstd", "zstd", "rans", "dense")
CUT = Expected((32, 14, 14))
ALLOCATION_LIMIT = 64 << 10


def meta_nbytes(shape: tuple[int, ...], payload_nbytes: int, ranges: int) -> int:
    varints = [_compact.varint(d) for d in (*shape, payload_nbytes)]
    return 6 + sum(map(len, varints)) + ranges + 4


def tensors() -> list[tuple[np.ndarray, bool]]:
    """(tensor, nonnegative): ReLU-like (lo = 0) and signed, 3-d and 1-d (a pooled feature vector)."""
    rng = np.random.default_rng(3)
    relu = np.maximum(rng.standard_normal((8, 12, 12)) - 0.3, 0).astype(np.float32)
    signed = (rng.laplace(0, 0.3, (8, 12, 12)) * rng.random((8, 12, 12)) ** 2).astype(np.float32)
    pooled = np.maximum(rng.standard_normal(1280) - 1.0, 0).astype(np.float32)
    return [(relu, True), (signed, False), (pooled, True), (signed.reshape(-1)[:300].copy(), False)]


def older(enc: Encoded) -> Encoded:
    version = required_version(enc.meta.mode, enc.meta.compressor)
    return Encoded(dataclasses.replace(enc.meta, version=version).with_crc(enc.payload), enc.payload)


@pytest.mark.parametrize("mode", QUANT)
def test_every_width_and_coder_round_trips_in_version_3(mode):
    """Version 3 at every width the coder takes, per tensor and per channel: the documented size, the
    same bytes back from the wire, the same values as the older layout and as dense packing."""
    coded = 0
    for x, nonnegative in tensors():
        for bits in range(1, MAX_BITS.get(mode, 16) + 1):
            for per_channel in (False, True):
                kwargs = {"bits": bits, "nonnegative": nonnegative, "per_channel": per_channel}
                enc = encode(x, mode=mode, **kwargs)
                m = enc.meta
                assert m.version == 3 and m.to_bytes()[:3] == b"DY\x03"
                ranges = 8 * x.shape[0] if per_channel else (4 if m.lo == 0 else 8)
                assert m.nbytes == len(m.to_bytes()) == meta_nbytes(x.shape, m.payload_nbytes, ranges)
                expected = Expected(x.shape, modes={mode}, per_channel=per_channel, max_nbytes=enc.nbytes)
                wire = enc.to_bytes()
                back = Encoded.from_bytes(wire, expected=expected)
                assert back == enc and back.to_bytes() == wire
                got = decode_frame(m.to_bytes(), enc.payload, expected)
                old = older(enc)
                assert old.meta.version in (1, 2) and old.nbytes > enc.nbytes
                assert np.array_equal(got, decode(Encoded.from_bytes(old.to_bytes()), Expected(x.shape)))
                assert np.array_equal(got, decode(encode(x, mode="dense", **kwargs), Expected(x.shape)))
                coded += m.compressor != "bitpack"
    assert coded > 0 or mode == "dense"


def test_float_and_image_frames_in_version_3():
    """fp16/fp32 carry no range (0 bytes); a uint8 image's range (0, 255) costs 4 bytes, its lo a flag."""
    x = torch.randn(3, 20, 20)
    for mode in ("fp16", "fp32"):
        enc = encode(x, bits=None, mode=mode)
        assert enc.meta.nbytes == meta_nbytes((3, 20, 20), enc.meta.payload_nbytes, 0)
        assert np.array_equal(decode(Encoded.from_bytes(enc.to_bytes()), Expected(x.shape)),
                              decode(Encoded.from_bytes(older(enc).to_bytes()), Expected(x.shape)))
    yy, xx = np.mgrid[0:16, 0:24]
    image = np.stack([xx * 10, yy * 15, xx + yy], -1).astype(np.uint8)
    for mode in ("jpeg", "webp"):
        enc = encode(image, bits=80, mode=mode)
        assert enc.meta.nbytes == meta_nbytes(image.shape, enc.meta.payload_nbytes, 4)
        assert np.array_equal(decode_frame(enc.meta.to_bytes(), enc.payload, Expected(image.shape)),
                              decode(older(enc), Expected(image.shape)))


def test_varints_are_minimal_and_bounded():
    for value in (0, 1, 127, 128, 300, 16383, 16384, 1 << 21, 0xFFFFFFFF):
        raw = _compact.varint(value)
        assert len(raw) == max(1, (value.bit_length() + 6) // 7)
        assert _compact.read_varint(raw + b"\xff", 0, "x") == (value, len(raw))
    for raw, message in ((b"\x80\x00", "not a minimal varint"), (b"\xff\xff\xff\xff\x1f", "beyond 2\\*\\*32-1"),
                         (b"\xff" * 6, "runs past 5 bytes"), (b"\x80", "truncated inside its x"), (b"", "truncated")):
        with pytest.raises(FrameError, match=message):
            _compact.read_varint(raw, 0, "x")


def v3_meta(*, mode: str = "dense", compressor: str = "bitpack", bits: int = 4, dtype: int = 0,
            per_channel: bool = False, lo_zero: bool = False, ndim: int | None = None,
            shape: tuple[int, ...] = (32, 14, 14), shape_bytes: bytes | None = None, ranges: bytes | None = None,
            payload_nbytes: int = 3136, payload: bytes = b"") -> bytes:
    """Version-3 metadata as any sender could write it (correct checksum over it and ``payload``)."""
    head = struct.pack("<2sBBBB", b"DY", 3, MODES.index(mode) | COMPRESSORS.index(compressor) << 4,
                       dtype | (len(shape) if ndim is None else ndim) << 3 | per_channel << 7,
                       bits | (0x80 if lo_zero else 0))
    if shape_bytes is None:
        shape_bytes = b"".join(_compact.varint(d) for d in shape)
    if ranges is None:
        ranges = struct.pack("<f", 1.0) if lo_zero else struct.pack("<2f", -1.0, 1.0)
    unsigned = head + shape_bytes + ranges + _compact.varint(payload_nbytes)
    return unsigned + struct.pack("<I", zlib.crc32(payload, zlib.crc32(unsigned)))


def test_version_3_metadata_is_parsed_strictly():
    good = v3_meta()
    assert FrameMeta.from_bytes(good).to_bytes() == good
    assert FrameMeta.from_bytes(v3_meta(lo_zero=True)).lo == 0.0
    bad = {
        "not a dyno frame": b"XY" + good[2:],
        "unsupported frame version 4": good[:2] + b"\x04" + good[3:],
        "shorter than the 6-byte header": good[:5],
        "unknown codec mode number 10": good[:3] + bytes([0x1A]) + good[4:],
        "unknown compressor number 8": good[:3] + bytes([0x82]) + good[4:],
        "unknown dtype number 5": v3_meta(dtype=5),
        "at most 8": v3_meta(ndim=9, shape=(1,) * 9),
        "bits 17 is out of range": v3_meta(bits=17),
        "compressor 'jpeg' is not valid": v3_meta(compressor="jpeg"),
        "axis 0 is not a minimal varint": v3_meta(shape_bytes=b"\xa0\x00\x0e\x0e"),
        "axis 1 .* is beyond 2\\*\\*32-1": v3_meta(shape_bytes=b"\x20\xff\xff\xff\xff\x1f\x0e"),
        "truncated inside its axis 2": good[:8],
        "metadata is": good + b"\0",
        "truncated inside its payload size": good[:-5],
        "sends a range lo of 0": v3_meta(ranges=struct.pack("<2f", 0.0, 1.0)),
        "a per-channel frame has no lo to leave out": v3_meta(per_channel=True, lo_zero=True,
                                                              ranges=struct.pack("<f", 1.0) * 63),
        "a fp16 frame has no lo to leave out": v3_meta(mode="fp16", compressor="raw", bits=0, lo_zero=True),
        "mode 'fp16' carries no bit width": v3_meta(mode="fp16", compressor="raw", bits=4, ranges=b""),
        "range lo 2.0 is above hi 1.0": v3_meta(ranges=struct.pack("<2f", 2.0, 1.0)),
        "not a finite float32": v3_meta(ranges=struct.pack("<2f", -1.0, float("inf"))),
    }
    for message, data in bad.items():
        with pytest.raises(FrameError, match=message):
            FrameMeta.from_bytes(data)
    assert FrameMeta.from_bytes(v3_meta(mode="fp16", compressor="raw", bits=0, ranges=b"",
                                        payload_nbytes=2 * 6272)).bits is None
    assert struct.pack("<f", -0.0) != b"\0\0\0\0"  # a lo of -0.0 is sent as it is, no flag
    neg = v3_meta(ranges=struct.pack("<2f", -0.0, 1.0))
    assert FrameMeta.from_bytes(neg).to_bytes() == neg


def test_the_receiver_checks_a_version_3_header_against_the_cut():
    want = {
        "frame has 2 dimensions": (v3_meta(shape=(9, 9)), CUT),
        "frame shape (32, 14, 15) does not match": (v3_meta(shape=(32, 14, 15)), CUT),
        "frame metadata is 24 bytes; its header says 23": (v3_meta() + b"\0", CUT),
        "dense payload of 7 bytes for 6272 values": (v3_meta(payload_nbytes=7), CUT),
        "frame of 3159 bytes exceeds the limit of 3158": (v3_meta(), Expected((32, 14, 14), max_nbytes=3158)),
        "payload is 0 bytes; the frame metadata says 3136": (v3_meta(), CUT),
        "frame lacks per-channel ranges": (v3_meta(), Expected((32, 14, 14), per_channel=True)),
    }
    for message, (meta, expected) in want.items():
        with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
            decode_frame(meta, b"", expected)
    payload = bytes(3136)
    out = decode_frame(v3_meta(payload=payload), payload, CUT)  # the forged header is a frame after all
    assert out.shape == (32, 14, 14) and np.isfinite(out).all()


def hostile_v3(rng: random.Random, expected: Expected) -> tuple[bytes, bytes]:
    """A well-formed version-3 head declaring sizes far beyond the cut: per-channel tables of up to
    900,000 ranges (present or not), huge axes, up to 8 axes, payload sizes up to 2**32-1."""
    cut = expected.shape
    ndim = len(cut) if rng.random() < 0.7 else rng.choice([0, 1, 8])
    shape = tuple(rng.choice([cut[i] if i < len(cut) else 1, 0xFFFFFFFF, 900_000, rng.randrange(1 << 32)])
                  if rng.random() < 0.5 else (cut[i] if i < len(cut) else 7) for i in range(ndim))
    per_channel = ndim > 0 and rng.random() < 0.6
    count = shape[0] if per_channel and shape[0] <= 900_000 and rng.random() < 0.3 else rng.choice([0, 1, 32])
    ranges = (np.tile(np.array([0.0, 1.0], "<f4"), count).tobytes() if per_channel
              else struct.pack("<2f", -1.0, 1.0))
    payload = rng.randbytes(rng.choice([0, 16, 1024]))
    declared = rng.choice([len(payload), 0xFFFFFFFF, rng.randrange(1 << 32), 900_000])
    mode, compressor, bits = rng.choice([("dense", "bitpack", 4), ("shuffle-lz4", "blosc2-lz4", 8),
                                         ("rans", "rans", 8), ("fp16", "raw", 0)])
    if mode == "fp16" and not per_channel:
        ranges = b""
    return v3_meta(mode=mode, compressor=compressor, bits=bits, per_channel=per_channel, shape=shape,
                   ranges=ranges, payload_nbytes=declared, payload=payload), payload


def test_hostile_version_3_headers_are_refused_without_allocating_what_they_declare():
    rng = random.Random(31)
    expectations = [CUT, Expected((1, 28, 28)), Expected((1280,)), Expected((32, 14, 14), per_channel=True),
                    Expected((32, 14, 14), max_nbytes=4096)]
    entries = (lambda m, p, _w, e: decode_frame(m, p, e), lambda m, _p, _w, e: FrameMeta.from_bytes(m, expected=e),
               lambda m, p, _w, e: Encoded.from_parts(m, p, expected=e),
               lambda _m, _p, w, e: Encoded.from_bytes(w, expected=e))
    refused = 0
    for _ in range(3_000):
        expected = rng.choice(expectations)
        meta, payload = hostile_v3(rng, expected)
        whole, entry = meta + payload, rng.choice(entries)
        raised, peak = traced_peak(entry, meta, payload, whole, expected)
        if raised is not None:
            assert isinstance(raised, FrameError), repr(raised)
            refused += 1
        assert peak < ALLOCATION_LIMIT, f"{len(meta)}-byte header: {peak} bytes ({raised})"
    assert refused > 0.99 * 3_000


def test_every_dtype_number_and_mode_nibble_is_checked():
    """Each value of the packed head's fields: known ones name themselves, the rest are refused."""
    for number in range(8):
        meta = v3_meta(dtype=number)
        if number < len(DTYPES):
            assert FrameMeta.from_bytes(meta).dtype == DTYPES[number]
        else:
            with pytest.raises(FrameError, match=f"unknown dtype number {number}"):
                FrameMeta.from_bytes(meta)
    good = v3_meta()
    for kinds in range(256):
        try:
            meta = FrameMeta.from_bytes(good[:3] + bytes([kinds]) + good[4:])
        except FrameError:
            continue
        assert (MODES.index(meta.mode), COMPRESSORS.index(meta.compressor)) == (kinds & 15, kinds >> 4)
