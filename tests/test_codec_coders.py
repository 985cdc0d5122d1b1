"""The coders of frame version 2 (centre-zstd, zstd, rans; written in version 3 since): lossless over
the codes, near the entropy of the codes, versioned on the wire, and strict about their own payloads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import zstandard

from dyno.codec import MAX_BITS, Encoded, Expected, FrameMeta, _coders, _pack, _quant, decode, encode
from dyno.errors import ConfigError, FrameError

NEW = ("centre-zstd", "zstd", "rans")
ALL = ("shuffle-lz4", "shuffle-zstd", "dense") + NEW


def peaked(shape=(16, 32, 32), seed=0, centre=0.3) -> np.ndarray:
    """A signed, peaked tensor (most values near 0, a few large: an activation after BN or an add)."""
    rng = np.random.default_rng(seed)
    return (rng.laplace(0, 0.3, shape) + centre * rng.standard_normal(shape) ** 3).astype(np.float32)


def sparse(shape=(16, 32, 32), seed=1) -> np.ndarray:
    """A ReLU-like tensor: about 60% exact zeros."""
    return np.maximum(np.random.default_rng(seed).standard_normal(shape) - 0.25, 0).astype(np.float32)


def entropy(x: np.ndarray, bits: int, nonnegative: bool) -> float:
    lo, hi = _quant.tensor_range(x, nonnegative)
    counts = np.bincount(_quant.quantize(x.reshape(-1), lo, hi, bits)).astype(np.float64)
    p = counts[counts > 0] / x.size
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize("mode", NEW)
@pytest.mark.parametrize("per_channel", [False, True])
def test_every_coder_decodes_what_dense_packing_decodes(mode, per_channel):
    """The coders are lossless over the codes: the same values as dense packing, bit for bit."""
    for x, nonnegative in ((peaked(), False), (sparse(), True), (peaked((3, 7)), False), (peaked((0, 4)), False)):
        for bits in range(1, MAX_BITS.get(mode, 16) + 1):
            kwargs = {"bits": bits, "nonnegative": nonnegative, "per_channel": per_channel}
            enc = encode(x, mode=mode, **kwargs)
            wire = Encoded.from_bytes(enc.to_bytes(), expected=Expected(x.shape))
            got = decode(wire, Expected(x.shape, modes={mode}))
            want = decode(encode(x, mode="dense", **kwargs), Expected(x.shape))
            assert np.array_equal(got, want), (mode, bits, x.shape)
            assert enc.meta.version == 3
            assert enc.nbytes <= 37 + 8 * x.shape[0] * per_channel + (x.size * bits + 7) // 8
            v2 = Encoded(dataclasses.replace(enc.meta, version=2).with_crc(enc.payload), enc.payload)
            assert v2.meta.to_bytes()[2] == 2 and v2.nbytes > enc.nbytes  # the older layout, and larger
            assert np.array_equal(decode(Encoded.from_bytes(v2.to_bytes()), Expected(x.shape)), got)


def test_every_mode_writes_version_3_and_the_older_layouts_stay_writable():
    """Encode writes the compact version 3; a frame re-versioned to the oldest version that carries it
    (1 for the version-1 modes, 2 for the coders) writes that layout, and decodes the same."""
    x = sparse()
    for mode in ("shuffle-lz4", "shuffle-zstd", "dense") + NEW:
        enc = encode(x, bits=4, mode=mode)
        assert enc.meta.to_bytes()[2] == 3
        oldest = 2 if mode in NEW else 1
        old = Encoded(dataclasses.replace(enc.meta, version=oldest).with_crc(enc.payload), enc.payload)
        assert old.meta.to_bytes()[2] == oldest and old.meta.nbytes == 37 > enc.meta.nbytes
        assert np.array_equal(decode(Encoded.from_bytes(old.to_bytes()), Expected(x.shape)),
                              decode(enc, Expected(x.shape)))


def test_a_version_1_frame_cannot_name_a_version_2_mode_and_version_2_reads_old_modes():
    enc = encode(peaked(), bits=4, mode="rans")
    enc = Encoded(dataclasses.replace(enc.meta, version=2).with_crc(enc.payload), enc.payload)
    raw = bytearray(enc.meta.to_bytes())
    raw[2] = 1
    with pytest.raises(FrameError, match="version 1 frame cannot carry mode 'rans'"):
        FrameMeta.from_bytes(bytes(raw))
    old = encode(sparse(), bits=4, mode="shuffle-lz4")
    old = Encoded(dataclasses.replace(old.meta, version=1).with_crc(old.payload), old.payload)
    newer = Encoded(dataclasses.replace(old.meta, version=2).with_crc(old.payload), old.payload)
    assert np.array_equal(decode(newer, Expected(old.meta.shape)), decode(old, Expected(old.meta.shape)))
    with pytest.raises(FrameError, match="version 1 is invalid"):
        dataclasses.replace(enc.meta, version=1)


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_rans_is_at_the_entropy_of_the_codes(bits):
    x = peaked((64, 32, 32))
    enc = encode(x, bits=bits, mode="rans")
    h = entropy(x, bits, False)
    payload_bits = 8 * (enc.meta.payload_nbytes - (1 << bits)) / x.size
    assert h <= payload_bits <= h * 1.01 + 0.002, (payload_bits, h)


def test_centring_helps_signed_tensors_and_costs_nothing_on_non_negative_ones():
    x = peaked((64, 32, 32), centre=0.0)
    g = _quant.grid(*_quant.tensor_range(x), 4)
    assert 4 <= g.zero_point <= 11  # a signed tensor: the zero point is inside the code range
    centred = encode(x, bits=4, mode="centre-zstd").nbytes
    assert centred < 0.85 * encode(x, bits=4, mode="shuffle-zstd").nbytes
    assert centred < 1.2 * 64 * 32 * 32 * entropy(x, 4, False) / 8  # i.i.d. noise: rans is the coder for that
    relu = sparse((64, 32, 32))
    a, b = encode(relu, bits=4, mode="centre-zstd"), encode(relu, bits=4, mode="shuffle-zstd")
    assert _quant.grid(a.meta.lo, a.meta.hi, 4).zero_point == 0
    assert np.array_equal(_pack.blosc2_decompress(a.payload, "blosc2-zstd", 4, relu.size),
                          _pack.blosc2_decompress(b.payload, "blosc2-zstd", 4, relu.size))  # no fold at zp 0


def test_fold_is_a_permutation_that_orders_codes_by_distance_from_the_zero_point():
    for bits in (1, 2, 3, 8, 9):
        levels = (1 << bits) - 1
        codes = np.arange(levels + 1, dtype=np.uint8 if bits <= 8 else np.uint16)
        for zp in sorted({0, 1, levels // 2, levels - 1, levels}):
            folded = _coders.fold(codes, zp, bits)
            assert sorted(folded.tolist()) == codes.tolist()
            assert np.array_equal(_coders.unfold(folded, zp, bits), codes)
            distance = np.abs(codes.astype(np.int64) - zp)
            assert np.all(np.diff(distance[np.argsort(folded)]) >= 0)  # nearer codes fold smaller
    assert _coders.fold(np.array([5, 6, 4, 7, 3], np.uint8), 5, 4).tolist() == [0, 1, 2, 3, 4]


def test_zstd_beats_the_order_0_entropy_where_codes_repeat():
    x = np.repeat(peaked((8, 64, 1)), 16, axis=2)  # runs of 16 equal values
    enc = encode(x, bits=8, mode="zstd")
    assert enc.meta.compressor == "zstd"
    assert enc.bits_per_value < 0.5 * entropy(x, 8, False)


def test_rans_takes_at_most_8_bits():
    with pytest.raises(ConfigError, match="out of range 1..8"):
        encode(peaked(), bits=9, mode="rans")
    enc = encode(peaked(), bits=8, mode="rans")
    raw = bytearray(enc.meta.to_bytes())
    raw[5] = 9  # version 3: the bits byte
    with pytest.raises(FrameError, match="out of range 1..8"):
        Expected(enc.meta.shape).check_wire(bytes(raw), enc.meta.payload_nbytes)
    old = dataclasses.replace(enc.meta, version=2).with_crc(enc.payload)
    raw = bytearray(old.to_bytes())
    raw[4] = 9  # versions 1 and 2
    with pytest.raises(FrameError, match="out of range 1..8"):
        Expected(enc.meta.shape).check_wire(bytes(raw), enc.meta.payload_nbytes)


def forge(enc: Encoded, payload: bytes) -> Encoded:
    meta = dataclasses.replace(enc.meta, payload_nbytes=len(payload))
    return Encoded(meta.with_crc(payload), payload)


def test_rans_payloads_are_checked():
    x = peaked((8, 16, 16))
    enc = encode(x, bits=4, mode="rans")
    assert enc.meta.compressor == "rans"
    expected = Expected(x.shape)
    table, words = enc.payload[:16], enc.payload[16:]
    with pytest.raises(FrameError, match="weight 0"):
        decode(forge(enc, bytes(16) + words), expected)
    with pytest.raises(FrameError, match="more than the expected"):
        decode(forge(enc, table + words + words[:4]), expected)
    with pytest.raises(FrameError, match="rANS payload is corrupt"):
        decode(forge(enc, table + words[:-4] + b"\0\0\0\0"), expected)  # ANS data never ends in a zero word
    with pytest.raises(FrameError, match="impossible"):  # not a table and whole words
        dataclasses.replace(enc.meta, payload_nbytes=len(enc.payload) - 1)


def test_zstd_payloads_are_checked_before_decompressing():
    x = peaked((8, 16, 16))
    enc = encode(x, bits=8, mode="zstd")
    assert enc.meta.compressor == "zstd"
    expected = Expected(x.shape)
    codes = _quant.quantize(x.reshape(-1), enc.meta.lo, enc.meta.hi, 8)
    wrong_size = zstandard.ZstdCompressor().compress(codes.tobytes() + b"\0")
    with pytest.raises(FrameError, match="declares 2049 bytes"):
        decode(forge(enc, wrong_size), expected)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(codes.tobytes())
    with pytest.raises(FrameError, match="does not declare its content size"):
        decode(forge(enc, unsized), expected)
    with pytest.raises(FrameError, match="corrupt"):
        decode(forge(enc, enc.payload + enc.payload[:4]), expected)  # data after the frame
    with pytest.raises(FrameError, match="no valid frame header"):
        decode(forge(enc, b"\0" * 8 + enc.payload[8:]), expected)
    wide = encode(x, bits=3, mode="zstd")
    high = zstandard.ZstdCompressor().compress(np.full(x.size, 9, np.uint8).tobytes())
    with pytest.raises(FrameError, match="codes above 7"):
        decode(forge(wide, high), expected)


def test_centred_codes_beyond_the_bit_width_are_refused():
    x = peaked((8, 16, 16))
    enc = encode(x, bits=3, mode="centre-zstd")
    assert enc.meta.compressor == "blosc2-zstd"
    payload = _pack.blosc2_compress(np.full(x.size, 8, np.uint8), "blosc2-zstd")
    with pytest.raises(FrameError, match="codes above 7"):
        decode(forge(enc, payload), Expected(x.shape))


# Saved once from this implementation; tests never rewrite them. They pin the version-2 wire format
# and the rANS stream (a constriction release that coded differently would fail here, not in the field).
GOLDEN_CODES = np.array([0] * 40 + [1] * 12 + [2] * 8 + [3] * 4, np.uint8)
GOLDEN_RANS = ("442820101580c1a99a5485aa9a0ffb60190ab54f499c7c3a9563f502456acb293dd83128a5d3f40abd2cc6a9"
               "42fd03e8a25d52c07efe1300")


def test_golden_rans_payload():
    codes = np.tile(GOLDEN_CODES, 4)
    payload = _coders.rans_encode(codes, 2)
    assert payload.hex() == GOLDEN_RANS
    assert np.array_equal(_coders.rans_decode(bytes.fromhex(GOLDEN_RANS), 2, codes.size), codes)
    assert _coders.weight(np.frombuffer(payload[:4], np.uint8)).tolist() == [160, 48, 32, 16]


def test_skipping_the_clamp_when_the_ends_land_inside_changes_no_code():
    """quantize(..., span) skips the clamp when the min and the max code inside 0..L: the codes are
    those of the clamped kernel, whatever the range form, clip or width."""
    rng = np.random.default_rng(5)
    for trial in range(400):
        x = (rng.standard_normal(257) * 10.0 ** rng.uniform(-3, 3) + rng.choice([0, 1, -1]) * rng.uniform(0, 5))
        x = x.astype(np.float32)
        if trial % 3 == 0:
            x = np.maximum(x, 0)
        bits = int(rng.integers(1, 17))
        span = _quant.minmax(x)
        clip = None if trial % 2 else tuple(sorted(rng.uniform(span[0], span[1], 2).tolist()))
        lo, hi = _quant.span_range(span, bool(trial % 3 == 0), clip)
        assert np.array_equal(_quant.quantize(x, lo, hi, bits, span), _quant.quantize(x, lo, hi, bits))


@pytest.mark.parametrize("bits", [1, 3, 4, 8, 12, 16])
def test_codes_quantised_once_pack_into_the_frames_encode_makes(bits):
    """encode_codes(quantize_tensor(x, b, ...), mode) is encode(x, b, mode, ...) byte for byte, for every
    quantised mode, with the span given or found, clipped or not; refused for other modes."""
    from dyno.codec import encode_codes, quantize_tensor

    for x, nonnegative in ((peaked(), False), (sparse(), True)):
        for clip in (None, (-0.5, 0.75)):
            first = quantize_tensor(x, bits, nonnegative=nonnegative, clip=clip)
            again = quantize_tensor(x, bits, nonnegative=nonnegative, clip=clip, span=first.span)
            assert first.span == (float(x.min()), float(x.max()))
            for mode in ALL:
                if bits > MAX_BITS.get(mode, 16):
                    continue
                want = encode(x, bits, mode, nonnegative=nonnegative, clip=clip).to_bytes()
                assert encode_codes(first, mode).to_bytes() == want
                assert encode_codes(again, mode).to_bytes() == want
    with pytest.raises(ConfigError):
        encode_codes(quantize_tensor(sparse(), bits), "fp16")
    if bits > 8:
        with pytest.raises(ConfigError):
            encode_codes(quantize_tensor(sparse(), bits), "rans")
