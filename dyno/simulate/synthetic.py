"""Synthetic plans: for the decision benchmark (``dyno simulate --bench-decide``) and for tests.

They are shaped like real plans (device time grows and cloud time shrinks along the cuts, activations
shrink, accuracy rises with bits) but every number is made up from a seeded random generator.
"""

from __future__ import annotations

import random

from dyno.packing import IMAGE_CODECS, max_bits
from dyno.plan import CutPlan, Option, Plan

__all__ = ["synthetic_plan", "INPUT_SHAPE", "CODER_SHAPES"]

INPUT_SHAPE = (3, 32, 32)
#: Per coder: (bytes, encode time, decode time) relative to shuffle-lz4's; stronger coders send fewer
#: bytes for more time, roughly as measured on EfficientNet-Lite0 activations.
CODER_SHAPES = {"shuffle-lz4": (1.0, 1.0, 1.0), "shuffle-zstd": (0.95, 1.0, 1.0), "dense": (1.6, 0.8, 0.8),
                "centre-zstd": (0.8, 3.0, 2.0), "zstd": (0.85, 2.5, 1.5), "rans": (0.7, 6.0, 10.0)}


def synthetic_plan(n_cuts: int = 6, *, bits: tuple[int, ...] = (2, 4, 6, 8, 12, 16), seed: int = 0,
              total_device_ms: float = 10.0, total_cloud_ms: float = 10.0, accuracy_fp32: float = 0.9,
              image_qualities: tuple[int, ...] = (50, 75, 90), batchable: bool = True,
                   codecs: tuple[str, ...] = ("shuffle-lz4", "shuffle-zstd")) -> Plan:
    """A plan with ``n_cuts`` cuts (input, n_cuts-2 inner cuts, output), every inner cut offering
    fp32, fp16 and each of ``codecs`` at ``bits`` (those it takes); the input offers fp32 and jpeg/webp.
    The coders differ as ``CODER_SHAPES`` says.

    Device time grows and cloud time shrinks along the cuts; activations shrink; accuracy rises with
    bits and drops more at early cuts. Randomised by ``seed`` but always valid.
    """
    rng = random.Random(seed)
    fractions = sorted(rng.uniform(0.05, 0.95) for _ in range(n_cuts - 2))
    fractions = [0.0] + fractions + [1.0]
    cuts = []
    numel0 = 3 * 32 * 32
    for i, f in enumerate(fractions):
        last = i == n_cuts - 1
        shape = INPUT_SHAPE if i == 0 else ((10,) if last else (rng.choice([8, 16, 32]), 16, 16))
        cloud1 = max(total_cloud_ms * (1 - f), 0.0)
        cloud_ms = {1: cloud1, 8: cloud1 * 8 * 0.5}
        options: list[Option] = []
        numel = 1
        for d in shape:
            numel *= d
        if i == 0:
            options.append(Option(codec="fp32", bits=None, bytes=4.0 * numel0, accuracy=accuracy_fp32))
            for q in image_qualities:
                for codec in IMAGE_CODECS:
                    size = numel0 * (0.05 + q / 400) * (0.9 if codec == "webp" else 1.0)
                    accuracy = max(0.0, accuracy_fp32 - (100 - q) / 2000 - rng.uniform(0, 0.005))
                    options.append(Option(codec=codec, bits=q, bytes=size, accuracy=accuracy, encode_ms=0.3,
                                          decode_ms=0.2))
        elif not last:
            options.append(Option(codec="fp32", bits=None, bytes=4.0 * numel, accuracy=accuracy_fp32))
            options.append(Option(codec="fp16", bits=None, bytes=2.0 * numel, accuracy=accuracy_fp32))
            sparsity = rng.uniform(0.3, 0.8)
            for b in bits:
                for codec in codecs:
                    if b > max_bits(codec):
                        continue
                    shape_bytes, shape_enc, shape_dec = CODER_SHAPES[codec]
                    size = 64 + numel * b / 8 * (1 - sparsity) * shape_bytes
                    loss = (0.5 ** b) * rng.uniform(0.5, 3.0) * (1.5 - f)
                    options.append(Option(codec=codec, bits=b, bytes=size,
                                          accuracy=min(1.0, max(0.0, accuracy_fp32 - loss)),
                                          encode_ms=rng.uniform(0.05, 0.3) * shape_enc,
                                          decode_ms=rng.uniform(0.05, 0.2) * shape_dec))
        cuts.append(CutPlan(id=i, name=f"cut{i}", shape=shape, nonnegative=i > 0, batchable=batchable,
                            device_ms=total_device_ms * f, cloud_ms=cloud_ms, options=tuple(options)))
    return Plan(model="synthetic", weights_sha256="0" * 64, input_shape=INPUT_SHAPE, num_classes=10,
                accuracy_fp32=accuracy_fp32, samples=100, device_profile="test", cloud_profile="test",
                cuts=tuple(cuts))
