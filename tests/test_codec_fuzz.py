"""Fuzzing the decoder: >= 100,000 damaged or hostile frames, and only ever a FrameError.

Every mode contributes valid frames; each trial damages one (bit flips, byte changes, truncation,
extension, random metadata) and runs the receiver's path (``Encoded.from_bytes`` or ``from_parts``,
then ``decode``). A tenth of the trials re-sign the damaged frame with a correct checksum, as a
hostile or buggy sender would, so the checks behind the checksum (blosc2 header, code range, image
header) and blosc2/Pillow themselves see garbage too. Each trial runs under a time budget, and
memory stays bounded by the expected tensor, not by what a frame claims.
"""

from __future__ import annotations

import dataclasses
import random
import resource
import time
import tracemalloc

import numpy as np
import torch

from dyno.codec import Encoded, Expected, FrameMeta, decode, encode
from dyno.errors import FrameError

TRIALS = 100_000


def base_frames() -> list[tuple[Encoded, Expected]]:
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
                ("bits", rng.randint(0, 20)), ("compressor", rng.choice(["raw", "bitpack", "blosc2-lz4",
                                                                         "blosc2-zstd", "jpeg", "webp"])),
                ("lo", rng.uniform(-1e3, 1e3)), ("hi", rng.uniform(-1e3, 1e3)),
                ("dtype", rng.choice(["float32", "uint8", "float16"])),
            ])
            meta = dataclasses.replace(meta, **{field: value})
        meta = dataclasses.replace(meta, payload_nbytes=len(payload)).with_crc(payload)
    except FrameError:
        return None  # an invalid FrameMeta cannot even be built
    return Encoded(meta, payload)


def test_fuzzed_frames_raise_frame_error_only():
    rng = random.Random(20240601)
    frames = base_frames()
    wires = [(f.to_bytes(), f.meta.to_bytes(), f.payload, expected) for f, expected in frames]
    counts = {"rejected": 0, "decoded": 0}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    slowest = 0.0
    for trial in range(TRIALS):
        if trial == 5_000:  # Python-side allocations measured on a sample; RSS for the whole run
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < 8 << 20, f"decoding garbage allocated {peak} bytes"
        index = rng.randrange(len(wires))
        whole, meta_bytes, payload, expected = wires[index]
        t0 = time.perf_counter()
        try:
            route = rng.random()
            if route < 0.1:
                enc = resign(rng, frames[index][0])
                if enc is None:
                    counts["rejected"] += 1
                    continue
            elif route < 0.55:
                enc = Encoded.from_bytes(mutate(rng, whole))
            elif route < 0.8:
                enc = Encoded.from_parts(mutate(rng, meta_bytes), payload)
            elif route < 0.9:
                enc = Encoded.from_parts(meta_bytes, mutate(rng, payload))
            elif route < 0.95:  # random metadata, sometimes with a plausible prefix
                head = b"DY\x01" if rng.random() < 0.7 else b""
                enc = Encoded.from_bytes(head + rng.randbytes(rng.randint(0, 80)))
            else:
                enc = Encoded.from_parts(rng.randbytes(rng.randint(0, 60)), rng.randbytes(rng.randint(0, 60)))
            out = decode(enc, expected)
        except FrameError:
            counts["rejected"] += 1
        else:
            # only a re-signed frame can get through, and then as a tensor of the expected shape
            assert route < 0.1
            assert out.shape == expected.shape and out.dtype == np.float32
            counts["decoded"] += 1
        slowest = max(slowest, time.perf_counter() - t0)
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert counts["rejected"] + counts["decoded"] == TRIALS
    assert counts["rejected"] > 0.9 * TRIALS and counts["decoded"] > 0  # deep paths were reached
    assert elapsed < 60, f"{TRIALS} trials took {elapsed:.1f}s"
    assert slowest < 1.0, f"one frame took {slowest:.2f}s to reject"
    assert rss_growth_kib < 64 << 10, f"peak RSS grew by {rss_growth_kib} KiB"


def test_every_single_bit_flip_of_every_frame_is_caught():
    """Exhaustive over bit positions: the checksum (or the metadata checks) catch each one."""
    for enc, expected in base_frames()[::7]:
        whole = enc.to_bytes()
        for position in range(0, 8 * len(whole), 3):
            buf = bytearray(whole)
            buf[position // 8] ^= 1 << (position % 8)
            try:
                decode(Encoded.from_bytes(bytes(buf)), expected)
            except FrameError:
                continue
            raise AssertionError(f"{enc!r}: flipping bit {position} went unnoticed")


def test_random_metadata_never_parses_into_garbage():
    rng = random.Random(7)
    accepted = 0
    for _ in range(20_000):
        data = b"DY\x01" + rng.randbytes(rng.randint(0, 50))
        try:
            meta = FrameMeta.from_bytes(data)
        except FrameError:
            continue
        accepted += 1  # a structurally valid header: its fields must then all be valid
        assert meta.to_bytes() == data
    assert accepted < 200
