"""Fuzzing the decoder: >= 100,000 damaged or hostile frames per coder, and only ever a FrameError.

Every mode contributes valid frames of frame version 3, the compact layout encode writes (the version-1
modes together; each version-2 coder, centre-zstd, zstd and rans, on its own: 100,000 trials each), and
all of them again in the older layouts (versions 1 and 2, another 100,000); each trial damages one (bit
flips, byte changes, truncation, extension, random metadata) and runs a receiver's path
(``decode_frame``, or ``Encoded.from_bytes`` / ``from_parts`` then ``decode``). A tenth of the trials
re-sign the damaged frame with a correct checksum, as a hostile or buggy sender would, so the checks
behind the checksum (blosc2 header, code range, image header) and blosc2/Pillow themselves see garbage
too. Memory stays bounded by the expected tensor, not by what a frame claims, and whatever decodes is
finite (no wall-clock limits: the machine's load must not decide a test). Hostile headers (sizes
declared far beyond the cut: per-channel tables, ndim, shapes, payload sizes) are refused without
allocating anything in proportion to the declaration, and non-finite values (NaN/inf payloads, ranges
whose grid overflows float32) never decode.
"""

from __future__ import annotations

import dataclasses
import random
import resource
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch

from dyno.codec import COMPRESSORS, MAX_BITS, MODES, Encoded, Expected, FrameMeta, decode, decode_frame, encode
from dyno.codec._codec import COMPRESSOR_OF_MODE
from dyno.codec._wire import required_version
from dyno.errors import FrameError

TRIALS = 100_000
F32_MAX = float(np.finfo(np.float32).max)
#: Ranges a sender may put on the wire: ordinary, huge, and at float32's end (whose grids overflow).
EXTREMES = (1.0, 1e3, 1e30, 1e38, 1.5e38, 3e38, 3.4e38, F32_MAX)


#: The coders fuzzed on their own, 100,000 trials each (frame version 2).
NEW_CODERS = ("centre-zstd", "zstd", "rans")


def coder_frames(mode: str) -> list[tuple[Encoded, Expected]]:
    """Frames of one version-2 coder: sparse, signed (peaked around a zero point in the middle) and
    wide tensors at every width it takes, per tensor and per channel; all carry the coder's payload."""
    gen = torch.Generator().manual_seed(1)
    relu = torch.relu(torch.randn(4, 16, 16, generator=gen) - 1.0)
    signed = torch.randn(8, 64, generator=gen) * torch.rand(8, 64, generator=gen) ** 4
    frames = []
    for bits in (1, 2, 3, 5, 8, 12, 16):
        if bits > MAX_BITS.get(mode, 16):
            continue
        for per_channel in (False, True):
            frames.append(encode(relu, bits=bits, mode=mode, nonnegative=True, per_channel=per_channel))
            frames.append(encode(signed, bits=bits, mode=mode, per_channel=per_channel))
    coded = [f for f in frames if f.meta.compressor == COMPRESSOR_OF_MODE[mode]]
    assert len(coded) >= len(frames) // 2, [f.meta.compressor for f in frames]
    return [(f, Expected(f.meta.shape)) for f in coded]


def base_frames() -> list[tuple[Encoded, Expected]]:
    """Frames of every version-1 mode."""
    gen = torch.Generator().manual_seed(0)
    relu = torch.relu(torch.randn(4, 16, 16, generator=gen) - 1.5)  # sparse: blosc2 pays
    signed = torch.randn(6, 10, generator=gen)
    frames = []
    for mode in ("shuffle-lz4", "shuffle-zstd", "dense"):
        for bits in (1, 3, 8, 12, 16):
            for per_channel in (False, True):
                frames.append(encode(relu, bits=bits, mode=mode, nonnegative=True, per_channel=per_channel))
                frames.append(encode(signed, bits=bits, mode=mode, per_channel=per_channel))
    frames += [encode(relu, bits=None, mode="fp16"), encode(signed, bits=None, mode="fp32")]
    yy, xx = np.mgrid[0:16, 0:24]
    image = np.stack([xx * 10, yy * 15, xx + yy], -1).astype(np.uint8)
    for mode in ("jpeg", "webp"):
        frames.append(encode(image, bits=70, mode=mode))
        frames.append(encode(torch.from_numpy(image.transpose(2, 0, 1) / 255.0), bits=70, mode=mode))
    assert {f.meta.compressor for f in frames} == {"raw", "bitpack", "blosc2-lz4", "blosc2-zstd",
                                                   "jpeg", "webp"}
    return [(f, Expected(f.meta.shape)) for f in frames]


def older(frames: list[tuple[Encoded, Expected]]) -> list[tuple[Encoded, Expected]]:
    """The frames in the oldest layout that carries each (version 1, or 2 for the coders)."""
    out = []
    for enc, expected in frames:
        version = required_version(enc.meta.mode, enc.meta.compressor)
        out.append((Encoded(dataclasses.replace(enc.meta, version=version).with_crc(enc.payload), enc.payload),
                    expected))
    return out


GROUPS = ("version 1",) + NEW_CODERS + ("older layouts",)


def group_frames(group: str) -> list[tuple[Encoded, Expected]]:
    """The valid frames a fuzz group damages: version 3 but for the "older layouts" group."""
    if group == "version 1":
        return base_frames()
    if group == "older layouts":
        return older(base_frames() + [f for mode in NEW_CODERS for f in coder_frames(mode)])
    return coder_frames(group)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A damaged copy of data (never equal to it)."""
    while (damaged := _damage(rng, data)) == data:
        pass
    return damaged


def _damage(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0 and buf:  # bit flips
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1 and buf:  # byte changes
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 2:  # truncation
        del buf[rng.randrange(len(buf) + 1):]
    elif kind == 3:  # extension
        buf += rng.randbytes(rng.randint(1, 64))
    else:  # a run of random bytes somewhere
        start = rng.randrange(len(buf) + 1)
        buf[start:start + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
    return bytes(buf)


def resign(rng: random.Random, enc: Encoded) -> Encoded | None:
    """Damage the payload or one metadata field and give it a valid checksum."""
    meta, payload = enc.meta, enc.payload
    if rng.random() < 0.7:
        payload = mutate(rng, payload)
    try:
        if rng.random() < 0.3:
            field, value = rng.choice([
                ("bits", rng.randint(0, 20)), ("compressor", rng.choice(COMPRESSORS)),
                ("mode", rng.choice(MODES)), ("version", rng.choice([1, 2, 3])),
                ("lo", rng.uniform(-1e3, 1e3)), ("hi", rng.uniform(-1e3, 1e3)),
                ("lo", -rng.choice(EXTREMES)), ("hi", rng.choice(EXTREMES)),
                ("dtype", rng.choice(["float32", "uint8", "float16"])),
            ])
            meta = dataclasses.replace(meta, **{field: value})
        meta = dataclasses.replace(meta, payload_nbytes=len(payload)).with_crc(payload)
    except FrameError:
        return None  # an invalid FrameMeta cannot even be built
    return Encoded(meta, payload)


def one_trial(rng: random.Random, enc: Encoded, wire: tuple[bytes, bytes, bytes, Expected]
              ) -> tuple[float, np.ndarray]:
    """Damage ``enc`` one way and run one receiver's path: (the route taken, the decoded tensor), or
    the FrameError that refused it."""
    whole, meta_bytes, payload, expected = wire
    route = rng.random()
    if route < 0.1:
        forged = resign(rng, enc)
        if forged is None:
            raise FrameError("the forged metadata is not even a FrameMeta")
        return route, decode(forged, expected)
    if route < 0.55:
        return route, decode(Encoded.from_bytes(mutate(rng, whole)), expected)
    if route < 0.9:  # half of these through the receiver's entry point, which checks before parsing
        parts = (mutate(rng, meta_bytes), payload) if route < 0.8 else (meta_bytes, mutate(rng, payload))
        if rng.random() < 0.5:
            return route, decode_frame(*parts, expected)
        return route, decode(Encoded.from_parts(*parts), expected)
    if route < 0.95:  # random metadata, sometimes with a plausible prefix
        head = rng.choice([b"DY\x01", b"DY\x02", b"DY\x03"]) if rng.random() < 0.7 else b""
        return route, decode(Encoded.from_bytes(head + rng.randbytes(rng.randint(0, 80))), expected)
    return route, decode(Encoded.from_parts(rng.randbytes(rng.randint(0, 60)), rng.randbytes(rng.randint(0, 60))),
                         expected)


@pytest.mark.parametrize("group", GROUPS)
def test_fuzzed_frames_raise_frame_error_only(group):
    rng = random.Random(20240601)
    frames = group_frames(group)
    assert {f.meta.to_bytes()[2] for f, _ in frames} == ({1, 2} if group == "older layouts" else {3})
    wires = [(f.to_bytes(), f.meta.to_bytes(), f.payload, expected) for f, expected in frames]
    counts = {"rejected": 0, "decoded": 0}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    for trial in range(TRIALS):
        if trial == 5_000:  # Python-side allocations measured on a sample; RSS for the whole run
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < 8 << 20, f"decoding garbage allocated {peak} bytes"
        index = rng.randrange(len(wires))
        expected = wires[index][3]
        try:
            route, out = one_trial(rng, frames[index][0], wires[index])
        except FrameError:
            counts["rejected"] += 1
        else:
            # only a re-signed frame can get through, and then as a finite tensor of the expected shape
            assert route < 0.1
            assert out.shape == expected.shape and out.dtype == np.float32
            assert np.isfinite(out).all(), f"{frames[index][0]!r}, forged, decoded to non-finite values"
            counts["decoded"] += 1
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert counts["rejected"] + counts["decoded"] == TRIALS
    assert counts["rejected"] > 0.9 * TRIALS and counts["decoded"] > 0  # deep paths were reached
    assert rss_growth_kib < 64 << 10, f"peak RSS grew by {rss_growth_kib} KiB"


def test_every_single_bit_flip_of_every_frame_is_caught():
    """Exhaustive over bit positions: the checksum (or the metadata checks) catch each one."""
    frames = base_frames()[::7] + [f for mode in NEW_CODERS for f in coder_frames(mode)[::9]]
    for enc, expected in frames + older(frames):
        whole = enc.to_bytes()
        for position in range(0, 8 * len(whole), 3):
            buf = bytearray(whole)
            buf[position // 8] ^= 1 << (position % 8)
            try:
                decode(Encoded.from_bytes(bytes(buf)), expected)
            except FrameError:
                continue
            raise AssertionError(f"{enc!r}: flipping bit {position} went unnoticed")


@pytest.mark.parametrize("version", [1, 3])
def test_random_metadata_never_parses_into_garbage(version):
    """What parses is valid, and canonical: it writes back the very bytes it was read from."""
    rng = random.Random(7)
    accepted = 0
    for _ in range(20_000):
        data = b"DY" + bytes([version]) + rng.randbytes(rng.randint(0, 50))
        try:
            meta = FrameMeta.from_bytes(data)
        except FrameError:
            continue
        accepted += 1  # a structurally valid header: its fields must then all be valid
        assert meta.to_bytes() == data
    assert accepted < 200


# ---------------------------------------------------------------------------------- hostile headers
HOSTILE_TRIALS = 20_000
#: Allocation a refusal may make (the exception and its message): far below any hostile declaration.
REFUSAL_BYTES = 64 << 10


def hostile_header(rng: random.Random, expected: Expected) -> tuple[bytes, bytes]:
    """(metadata, payload) with a well-formed 9-byte header that declares sizes far beyond the cut:
    per-channel tables of up to 200,000 ranges (100,000 as declared, 8% of the time), up to 255 axes,
    axes up to 2**32-1, payloads up to 2**32-1 bytes; each field sometimes the cut's own, so later
    checks are reached too."""
    cut = expected.shape
    ndim = len(cut) if rng.random() < 0.7 else rng.choice([0, 1, 8, 9, 255, rng.randrange(256)])
    shape = [rng.choice([cut[i] if i < len(cut) else 1, 0xFFFFFFFF, 900_000, 100_000, rng.randrange(1 << 32),
                         rng.randrange(1, 64)]) if rng.random() < 0.5 else (cut[i] if i < len(cut) else 7)
             for i in range(ndim)]
    per_channel = ndim > 0 and rng.random() < 0.6
    mode = rng.choice(sorted(expected.modes)) if expected.modes and rng.random() < 0.8 else rng.choice(MODES)
    usual = {"fp16": ("raw", 0), "fp32": ("raw", 0), "jpeg": ("jpeg", 80), "webp": ("webp", 80),
             "dense": ("bitpack", 4)}.get(mode, (rng.choice(["bitpack", COMPRESSOR_OF_MODE.get(mode, "raw")]), 8))
    compressor = usual[0] if rng.random() < 0.8 else rng.choice(COMPRESSORS)
    bits = usual[1] if rng.random() < 0.7 else rng.choice([0, 1, 4, 8, 12, 16, 17, 90, 255])
    version = required_version(mode, compressor) if rng.random() < 0.8 else rng.choice([0, 1, 2, 3])
    head = struct.pack("<2sBBBBBBB", b"DY", version, MODES.index(mode), bits, int(per_channel), rng.randrange(5),
                       COMPRESSORS.index(compressor), ndim)
    head += struct.pack(f"<{ndim}I", *shape)
    if per_channel:  # the table as declared (when it is not absurd) or of any other length
        count = shape[0] if shape[0] <= 200_000 and rng.random() < 0.7 else rng.choice([1, 4, 200_000])
        lo = rng.choice([0.0, -1.0, -3.4e38, float("nan")])
        ranges = np.tile(np.array([lo, rng.choice([1.0, 3.4e38, float("inf")])], "<f4"), count).tobytes()
    else:
        ranges = struct.pack("<2f", rng.uniform(-1, 0), rng.uniform(0, 1))
    payload = rng.randbytes(rng.choice([0, 16, 64, 1024]))
    declared = rng.choice([len(payload), 0xFFFFFFFF, rng.randrange(1 << 32), 900_000])
    unsigned = head + ranges + struct.pack("<I", declared)
    crc = zlib.crc32(payload, zlib.crc32(unsigned)) if rng.random() < 0.7 else rng.randrange(1 << 32)
    return unsigned + struct.pack("<I", crc), payload


def receivers(frames: list[tuple[Encoded, Expected]]) -> list[Expected]:
    """Every base frame's expectation, and stricter variants of each (modes, per-channel, size cap)."""
    out = []
    for enc, expected in frames:
        out += [expected, Expected(expected.shape, modes={enc.meta.mode}, per_channel=enc.meta.per_channel),
                Expected(expected.shape, per_channel=False, max_nbytes=enc.nbytes)]
    return out


def test_hostile_headers_are_refused_without_allocating_what_they_declare():
    rng = random.Random(13)
    expectations = receivers(base_frames() + [f for mode in NEW_CODERS for f in coder_frames(mode)])
    refused = 0
    worst = (0, "")
    tracemalloc.start()
    try:
        for _ in range(HOSTILE_TRIALS):
            expected = rng.choice(expectations)
            meta, payload = hostile_header(rng, expected)
            entry = rng.choice([decode_frame, lambda m, _p, e: FrameMeta.from_bytes(m, expected=e),
                                lambda m, p, e: Encoded.from_parts(m, p, expected=e)])
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            try:
                result = entry(meta, payload, expected)
            except FrameError as error:
                refused += 1
                message = str(error)
            else:  # a header that fits the cut after all (random codes are a frame, too)
                shape = result.shape if isinstance(result, (np.ndarray, FrameMeta)) else result.meta.shape
                assert shape == expected.shape
                assert not isinstance(result, np.ndarray) or np.isfinite(result).all()
                message = "accepted"
            _, peak = tracemalloc.get_traced_memory()
            if peak - before > worst[0]:
                worst = (peak - before, f"{len(meta)}-byte header, {message}")
    finally:
        tracemalloc.stop()
    assert refused > 0.99 * HOSTILE_TRIALS
    assert worst[0] < REFUSAL_BYTES, f"refusing a hostile header allocated {worst[0]} bytes ({worst[1]})"


def test_non_finite_values_never_decode():
    """fp16/fp32 payloads with NaN or infinity, and quantised or float-image frames with ranges up to
    float32's end, re-signed: each is refused or decodes to finite values of the expected shape."""
    rng = random.Random(29)
    frames = base_frames() + [f for mode in NEW_CODERS for f in coder_frames(mode)]
    counts = {"refused": 0, "decoded": 0}
    specials = {"<f4": [np.nan, np.inf, -np.inf], "<f2": [np.nan, np.inf, -np.inf]}
    for _ in range(5_000):
        enc, expected = rng.choice(frames)
        meta, payload = enc.meta, enc.payload
        if meta.mode in ("fp16", "fp32"):
            dtype = "<f4" if meta.mode == "fp32" else "<f2"
            values = np.frombuffer(payload, dtype).copy()
            for _ in range(rng.randint(1, 3)):
                values[rng.randrange(values.size)] = rng.choice(specials[dtype])
            payload = values.tobytes()
        elif meta.per_channel:
            table = [(-rng.choice(EXTREMES) * rng.random(), rng.choice(EXTREMES)) for _ in meta.channel_ranges]
            meta = dataclasses.replace(meta, channel_ranges=tuple(table))
        elif meta.dtype != "uint8":
            meta = dataclasses.replace(meta, lo=-rng.choice(EXTREMES) * rng.choice([0, 0.5, 1]),
                                       hi=rng.choice(EXTREMES))
        else:
            continue
        meta = meta.with_crc(payload)
        try:
            out = decode_frame(meta.to_bytes(), payload, expected)
        except FrameError:
            counts["refused"] += 1
        else:
            assert out.shape == expected.shape and np.isfinite(out).all(), f"{meta} decoded to non-finite values"
            counts["decoded"] += 1
    assert counts["refused"] > 1_000 and counts["decoded"] > 1_000, counts
