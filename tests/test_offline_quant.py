"""The analysis's fake quantisation is the codec bit for bit under every ATEN_CPU_CAPABILITY (it runs
the codec's own numpy kernels, so torch's kernel dispatch cannot change a code)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import numpy as np, torch
from dyno import offline
from dyno.codec import Expected, decode, encode

gen = torch.Generator().manual_seed(0)
batches = [torch.randn(4, 6, 9, 9, generator=gen) * 3,
           torch.relu(torch.randn(4, 16, 7, 7, generator=gen)).contiguous(memory_format=torch.channels_last),
           torch.randn(3, 40, generator=gen) * 1e-3 + 5.0,     # a range without zero: the offset form
           torch.randn(5, 2, 33, generator=gen) * 1e4]
checked = 0
for x in batches:
    nonnegative = bool((x >= 0).all())
    span = float(x.abs().max())
    for bits in range(1, 17):
        for clip in (None, (0.0 if nonnegative else -0.3 * span, 0.3 * span)):
            got = offline.fake_quant(x, bits, nonnegative=nonnegative, clip=clip)
            assert got.stride() == x.stride(), "memory format kept"
            for i in range(len(x)):
                sample = x[i].contiguous().numpy()
                frame = encode(sample, bits=bits, mode="shuffle-lz4", nonnegative=nonnegative, clip=clip)
                want = decode(frame, Expected(sample.shape))
                assert np.array_equal(got[i].contiguous().numpy(), want), (x.shape, bits, clip, i)
                checked += 1
print(checked)
"""


@pytest.mark.parametrize("capability", ["default", "avx2", None])
def test_fake_quant_is_the_codec_under_every_aten_cpu_capability(capability):
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == 4 * 16 * 2 + 4 * 16 * 2 + 3 * 16 * 2 + 5 * 16 * 2
