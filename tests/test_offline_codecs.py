"""dyno.offline.codecs: the bytes and codec times every option of a cut gets in the plan."""

from __future__ import annotations

import numpy as np

from dyno import packing
from dyno.codec import encode
from dyno.offline.codecs import QUANT_CODEC, codec_costs, codec_options


def _samples(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [np.maximum(rng.standard_normal((8, 12, 12)) * (1 + k) - 0.3, 0).astype(np.float32) for k in range(n)]


def test_costs_are_the_median_bytes_of_real_frames_the_stronger_coders_on_a_subsample():
    samples = _samples()
    options = codec_options(first=False, last=False)
    clip = {3: (0.0, 1.5), 8: (0.0, 2.5)}
    costs = codec_costs(samples, options, nonnegative=True, clip=clip, timed=2, coder_samples=3)
    assert set(costs) == {packing.label(c, b) for c, b in options}
    for codec, bits in options:
        kwargs = ({"mode": codec} if bits is None else
                  {"mode": codec, "bits": bits, "nonnegative": True, "clip": clip.get(bits)})
        used = samples if codec in packing.FLOAT_CODECS or codec == QUANT_CODEC else samples[:3]
        cost = costs[packing.label(codec, bits)]
        assert cost["bytes"] == float(np.median([encode(x, **kwargs).nbytes for x in used])), (codec, bits)
        assert cost["encode_ms"] > 0 and cost["decode_ms"] > 0


def test_no_decodes_when_none_are_timed():
    costs = codec_costs(_samples(2), [("shuffle-lz4", 4), ("zstd", 4), ("fp16", None)], nonnegative=True, timed=0)
    assert all(c["decode_ms"] == 0.0 and c["encode_ms"] > 0 for c in costs.values())
