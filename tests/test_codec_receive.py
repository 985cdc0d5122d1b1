"""The receiver's entry point: hostile headers refused from their fixed-size part, finite tensors only.

``decode_frame(meta, payload, expected)`` judges a frame by its 9-byte header, its shape and the sizes
it declares before it reads, parses or allocates anything whose size the frame declares; a decoded
tensor is always finite. Allocation is measured with tracemalloc (deterministic), not with timers.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from allocation import traced_peak

from dyno.codec import Encoded, Expected, FrameMeta, _pack, decode, decode_frame, encode
from dyno.errors import ConfigError, FrameError

MODE = {"shuffle-lz4": 0, "shuffle-zstd": 1, "dense": 2, "fp16": 3, "fp32": 4, "jpeg": 5, "webp": 6}
COMP = {"raw": 0, "bitpack": 1, "blosc2-lz4": 2, "blosc2-zstd": 3, "jpeg": 4, "webp": 5}
F32_MAX = float(np.finfo(np.float32).max)
CUT = Expected((32, 14, 14))
#: Far below anything proportional to a hostile declaration (900,000 ranges as Python tuples take
#: ~200 MB; the metadata bytes themselves 7.2 MB), above the exception and its message.
ALLOCATION_LIMIT = 64 << 10


def raw_meta(*, mode: str = "dense", bits: int = 4, per_channel: bool = False, dtype: int = 0,
             compressor: str = "bitpack", shape: tuple[int, ...] = (32, 14, 14), ranges: bytes | None = None,
             ndim: int | None = None, payload: bytes = b"", payload_nbytes: int | None = None) -> bytes:
    """Metadata bytes as any sender could write them (correct checksum over them and ``payload``)."""
    head = struct.pack("<2sBBBBBBB", b"DY", 1, MODE[mode], bits, int(per_channel), dtype, COMP[compressor],
                       len(shape) if ndim is None else ndim)
    if ranges is None:
        ranges = struct.pack("<2f", 0.0, 1.0)
    size = len(payload) if payload_nbytes is None else payload_nbytes
    unsigned = head + struct.pack(f"<{len(shape)}I", *shape) + ranges + struct.pack("<I", size)
    return unsigned + struct.pack("<I", zlib.crc32(payload, zlib.crc32(unsigned)))


def channel_ranges(channels: int, lo: float = 0.0, hi: float = 1.0) -> bytes:
    return np.tile(np.array([lo, hi], "<f4"), channels).tobytes()


def hostile_frames() -> dict[str, tuple[bytes, bytes, Expected]]:
    """(metadata, payload, the receiver's expectation): each declares far more than the cut allows."""
    many = 900_000
    return {
        # the frame: 900,000 valid per-channel ranges (7.2 MB of metadata), a 1-bit dense payload
        "900k-ranges": (raw_meta(bits=1, per_channel=True, shape=(many, 1, 1), ranges=channel_ranges(many),
                                 payload=bytes(many // 8)), bytes(many // 8), CUT),
        # the same table on the cut's own ndim and spatial size, and per-channel on a 1-channel cut
        "900k-ranges-same-ndim": (raw_meta(bits=1, per_channel=True, shape=(many, 14, 14),
                                           ranges=channel_ranges(many), payload_nbytes=many * 196 // 8),
                                  b"", CUT),
        "per-channel-on-1-channel-cut": (raw_meta(bits=8, per_channel=True, shape=(many, 28, 28),
                                                  ranges=channel_ranges(many), payload_nbytes=0xFFFFFFFF),
                                         b"", Expected((1, 28, 28))),
        # a table whose count matches the cut, on a cut that forbids per-channel ranges
        "per-channel-forbidden": (raw_meta(per_channel=True, ranges=channel_ranges(32),
                                           payload_nbytes=32 * 196 // 2),
                                  bytes(32 * 196 // 2), Expected((32, 14, 14), per_channel=False)),
        # a per-channel count of 2**32 - 1 in the shape, with a short metadata buffer
        "2**32-channels": (raw_meta(per_channel=True, shape=(0xFFFFFFFF, 1, 1), ranges=channel_ranges(4)), b"",
                           CUT),
        "ndim-255": (raw_meta(ndim=255, shape=tuple(range(1, 256))), b"", CUT),
        "shape-product-2**96": (raw_meta(bits=16, shape=(0xFFFFFFFF,) * 3, payload_nbytes=0xFFFFFFFF), b"", CUT),
        "ndim-8-product-2**256": (raw_meta(bits=16, shape=(0xFFFFFFFF,) * 8, payload_nbytes=0xFFFFFFFF), b"",
                                  Expected((1,) * 8)),
        "payload-nbytes-2**32": (raw_meta(payload_nbytes=0xFFFFFFFF), bytes(1000), CUT),
        "fp32-huge-shape": (raw_meta(mode="fp32", bits=0, compressor="raw", shape=(1 << 20, 1 << 10, 4),
                                     ranges=struct.pack("<2f", 0, 0), payload_nbytes=0xFFFFFFFF), b"", CUT),
        "over-max-nbytes": (raw_meta(payload=bytes(32 * 196 // 2)), bytes(32 * 196 // 2),
                            Expected((32, 14, 14), max_nbytes=1000)),
    }


HOSTILE = hostile_frames()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers_are_refused_without_work_proportional_to_the_declaration(name):
    meta, payload, expected = HOSTILE[name]
    whole = meta + payload
    entries = {
        "decode_frame": lambda: decode_frame(meta, payload, expected),
        "from_parts": lambda: Encoded.from_parts(meta, payload, expected=expected),
        "Encoded.from_bytes": lambda: Encoded.from_bytes(whole, expected=expected),
        "FrameMeta.from_bytes": lambda: FrameMeta.from_bytes(meta, expected=expected),
    }
    for entry, call in entries.items():
        raised, peak = traced_peak(call)
        assert isinstance(raised, FrameError), f"{entry}: {raised!r}"
        assert peak < ALLOCATION_LIMIT, f"{entry} allocated {peak} bytes refusing {name}: {raised}"


def test_the_receiver_checks_the_header_in_a_documented_order():
    """Expectation first (ndim, mode, bits, per-channel), then the metadata length, shape, sizes."""
    meta = raw_meta(mode="fp16", bits=0, compressor="raw", shape=(9, 9), ranges=channel_ranges(1))
    want = {
        "frame has 2 dimensions; the expected shape (32, 14, 14) has 3": (meta, Expected((32, 14, 14))),
        "mode 'fp16' is not accepted": (meta, Expected((9, 9), modes={"dense"})),
        "frame has 4 bits; accepted 6..16": (raw_meta(), Expected((32, 14, 14), min_bits=6)),
        "frame has per-channel ranges; this receiver wants one range":
            (raw_meta(per_channel=True, ranges=channel_ranges(32)), Expected((32, 14, 14), per_channel=False)),
        "frame lacks per-channel ranges": (raw_meta(), Expected((32, 14, 14), per_channel=True)),
        "metadata is 37 bytes; a frame of the expected shape (32, 14, 14) has 285":
            (raw_meta(per_channel=True, ranges=channel_ranges(1)), CUT),
        "frame shape (32, 14, 15) does not match the expected (32, 14, 14)": (raw_meta(shape=(32, 14, 15)), CUT),
        "dense payload of 7 bytes for 6272 values": (raw_meta(payload_nbytes=7), CUT),
        "frame of 3173 bytes exceeds the limit of 3172":
            (raw_meta(payload_nbytes=3136), Expected((32, 14, 14), max_nbytes=3172)),
        "payload is 0 bytes; the frame metadata says 3136": (raw_meta(payload_nbytes=3136), CUT),
    }
    for message, (meta, expected) in want.items():
        with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
            decode_frame(meta, b"", expected)


def test_decode_frame_is_decode_for_valid_frames():
    gen = torch.Generator().manual_seed(5)
    x = torch.relu(torch.randn(16, 7, 7, generator=gen) - 0.3)
    frames = [encode(x, bits=b, mode=m, nonnegative=True, per_channel=pc)
              for m in ("shuffle-lz4", "shuffle-zstd", "dense") for b in (1, 4, 8, 12) for pc in (False, True)]
    frames += [encode(x, bits=None, mode="fp16"), encode(x, bits=None, mode="fp32"),
               encode(torch.rand(3, 16, 24, generator=gen), bits=80, mode="webp")]
    for enc in frames:
        expected = Expected(enc.meta.shape, per_channel=enc.meta.per_channel, max_nbytes=enc.nbytes)
        want = decode(Encoded.from_parts(enc.meta.to_bytes(), enc.payload), expected)
        meta, payload = enc.meta.to_bytes(), enc.payload
        for got in (decode_frame(meta, payload, expected),
                    decode_frame(bytearray(meta), memoryview(payload), expected),
                    decode(Encoded.from_parts(meta, payload, expected=expected), expected),
                    decode(Encoded.from_bytes(enc.to_bytes(), expected=expected), expected)):
            assert got.dtype == np.float32 and got.shape == enc.meta.shape
            assert got.tobytes() == want.tobytes()
        assert FrameMeta.from_bytes(meta, expected=expected) == enc.meta


def test_decode_frame_arguments():
    enc = encode(torch.rand(4, 4), bits=4)
    for meta, payload in ((None, enc.payload), (enc.meta.to_bytes(), 3), ("DY", b""),
                          (memoryview(np.zeros((4, 4), np.uint8)[:, ::2]), b"")):
        with pytest.raises(FrameError):
            decode_frame(meta, payload, Expected((4, 4)))
    with pytest.raises(ConfigError, match="Expected"):
        decode_frame(enc.meta.to_bytes(), enc.payload, (4, 4))


# ------------------------------------------------------------------------------------ finiteness
def float_frame(mode: str, values: np.ndarray) -> tuple[bytes, bytes]:
    dtype = "<f4" if mode == "fp32" else "<f2"
    payload = np.asarray(values, dtype).tobytes()
    return raw_meta(mode=mode, bits=0, compressor="raw", shape=values.shape, ranges=struct.pack("<2f", 0, 0),
                    payload=payload), payload


@pytest.mark.parametrize("mode", ["fp32", "fp16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_payloads_must_be_finite(mode, bad):
    values = np.linspace(-2, 2, 64, dtype=np.float32).reshape(4, 16)
    meta, payload = float_frame(mode, values)
    assert np.array_equal(decode_frame(meta, payload, Expected((4, 16))), values.astype(mode.replace("fp", "float")))
    values[2, 7] = bad
    meta, payload = float_frame(mode, values)
    with pytest.raises(FrameError, match="NaN or infinite"):
        decode_frame(meta, payload, Expected((4, 16)))
    with pytest.raises(FrameError, match="NaN or infinite"):
        decode(Encoded.from_parts(meta, payload), Expected((4, 16)))


def quant_frame(lo: float, hi: float, bits: int, per_channel: bool = False) -> tuple[bytes, bytes]:
    """A dense frame of shape (4, 8) whose codes alternate between the grid's ends (0 and 2**bits - 1)."""
    codes = np.tile(np.array([0, (1 << bits) - 1], np.uint16 if bits > 8 else np.uint8), 16)
    payload = _pack.pack_dense(codes, bits)
    ranges = (np.array([[0.0, 1.0], [lo, hi], [0.0, 1.0], [-1.0, 1.0]], "<f4").tobytes() if per_channel
              else struct.pack("<2f", lo, hi))
    return raw_meta(bits=bits, per_channel=per_channel, shape=(4, 8), ranges=ranges, payload=payload), payload


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize(("lo", "hi", "bits"), [(-3.4e38, 3.4e38, 1), (-3.4e38, 3.4e38, 8), (-2e38, 2e38, 1),
                                                (-F32_MAX, F32_MAX, 8), (-F32_MAX, F32_MAX, 16), (-1e38, 3.4e38, 4)])
def test_quantised_ranges_that_decode_beyond_float32_are_refused(lo, hi, bits, per_channel):
    meta, payload = quant_frame(lo, hi, bits, per_channel)
    with pytest.raises(FrameError, match="beyond float32"):
        decode_frame(meta, payload, Expected((4, 8)))
    with pytest.raises(FrameError, match="beyond float32"):
        decode(Encoded.from_parts(meta, payload), Expected((4, 8)))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize(("lo", "hi", "bits"), [(-1e38, 1e38, 1), (-3.4e38, 3.4e38, 16), (0.0, 3e38, 8),
                                                (-3e38, 0.0, 16), (1e38, 3e38, 5), (-1e-30, 1e-30, 1)])
def test_huge_ranges_that_stay_finite_still_decode(lo, hi, bits, per_channel):
    meta, payload = quant_frame(lo, hi, bits, per_channel)
    out = decode_frame(meta, payload, Expected((4, 8)))
    assert np.isfinite(out).all()
    assert out.tobytes() == decode(Encoded.from_parts(meta, payload), Expected((4, 8))).tobytes()


def test_float_image_ranges_that_decode_beyond_float32_are_refused():
    enc = encode(torch.rand(3, 16, 16), bits=80, mode="jpeg")
    meta = raw_meta(mode="jpeg", bits=80, compressor="jpeg", shape=(3, 16, 16),
                    ranges=struct.pack("<2f", -3.4e38, 3.4e38), payload=enc.payload)
    with pytest.raises(FrameError, match="beyond float32"):
        decode_frame(meta, enc.payload, Expected((3, 16, 16)))


def test_encode_refuses_tensors_whose_grid_overflows_float32():
    x = torch.tensor([[-3.4e38, 3.4e38, 0.0, 1.0]])
    for kwargs in ({"bits": 1}, {"bits": 8, "mode": "dense"}, {"bits": 1, "per_channel": True},
                   {"bits": 90, "mode": "jpeg"}):
        with pytest.raises(ConfigError, match="clip"):
            encode(x if kwargs.get("mode") != "jpeg" else x.reshape(1, 1, 4), **kwargs)
    enc = encode(x, bits=8, clip=(-1e38, 1e38))  # clipping makes it decodable
    assert np.isfinite(decode(enc, Expected((1, 4)))).all()


def test_the_range_check_agrees_with_what_the_kernels_compute():
    """``decodes_finite`` (arithmetic on lo, hi, bits) never passes a grid whose end codes dequantise to
    infinity, per tensor or per channel; it refuses finite grids only within a few ulps of float32's end."""
    from dyno.codec import _quant

    rng = np.random.default_rng(11)
    refused_finite = []
    for _ in range(3000):
        bits = int(rng.integers(1, 17))
        lo, hi = np.sort(rng.choice([-1, 1], 2) * F32_MAX * (1 - rng.random(2) ** rng.integers(1, 30, 2)))
        lo, hi = float(np.float32(lo)), float(np.float32(hi))
        codes = np.array([0, (1 << bits) - 1], np.uint16 if bits > 8 else np.uint8)
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.concatenate([_quant.dequantize(codes.copy(), lo, hi, bits), _quant.dequantize_per_channel(
                np.tile(codes, 2), np.array([0, lo], np.float32), np.array([1, hi], np.float32), bits)])
        verdict = _quant.decodes_finite(lo, hi, bits)
        assert verdict == _quant.channels_decode_finite(np.array([0, lo], np.float32),
                                                        np.array([1, hi], np.float32), bits)
        assert not verdict or np.isfinite(values).all(), (lo, hi, bits, values)
        if not verdict and np.isfinite(values).all():
            refused_finite.append(float(np.abs(values.astype(np.float64)).max()))
    assert all(v > F32_MAX * (1 - 2**-20) for v in refused_finite)
