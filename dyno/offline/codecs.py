"""The packings a plan lists at each cut, and their real cost: every option encoded for real.

    options = codec_options(first=False, last=False)             # fp32, fp16, shuffle-lz4:1..16
    per_cut = sample_activations(gm, cuts, inputs)               # one activation per input and cut
    costs = codec_costs(per_cut[3], options, nonnegative=True)   # label -> bytes, encode_ms, decode_ms
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.fx

from dyno import graph, packing, partition

__all__ = ["QUANT_CODEC", "codec_options", "codec_costs", "sample_activations", "cut_walk"]

#: The quantising codec the offline analysis measures (bit-shuffle + LZ4).
QUANT_CODEC = packing.QUANT_CODECS[0]

Clip = tuple[float, float]


def codec_options(*, first: bool, last: bool, image: bool = True, codecs: Sequence[str] = (QUANT_CODEC,)
                  ) -> list[tuple[str, int | None]]:
    """The (codec, bits) options a plan lists for a cut: none on the last cut; else fp32, fp16 and each
    quantising codec at bits 1..16; on the ``first`` (the input) also jpeg/webp at ``IMAGE_QUALITIES``
    if ``image`` (an 8-bit image is behind the input)."""
    if last:
        return []
    options: list[tuple[str, int | None]] = [(codec, None) for codec in packing.FLOAT_CODECS]
    options += [(codec, bits) for codec in codecs for bits in packing.BITS]
    if first and image:
        options += [(codec, q) for codec in packing.IMAGE_CODECS for q in packing.IMAGE_QUALITIES]
    return options


def codec_costs(samples: Sequence[np.ndarray], options: Sequence[tuple[str, int | None]], *,
                nonnegative: bool, clip: Mapping[str, Clip | None] | None = None,
                images: Sequence[np.ndarray] | None = None, timing: bool = True
                ) -> dict[str, dict[str, float]]:
    """Encode every sample with every option for real: per option label, the median ``bytes``,
    ``encode_ms`` and ``decode_ms`` over the samples (one activation each, no batch dimension).

    ``clip`` maps an option label to the range it quantises with. Image options (jpeg/webp) encode
    ``images`` (uint8 H x W x C, one per sample) instead of the activations; without ``images`` they
    are left out. ``timing=False`` skips the decodes (``decode_ms`` is then meaningless).
    """
    from dyno import codec as dcodec

    clip = clip or {}
    out: dict[str, dict[str, float]] = {}
    for codec, bits in options:
        key = packing.label(codec, bits)
        data = images if codec in packing.IMAGE_CODECS else samples
        if data is None:
            continue
        kwargs = _encode_kwargs(codec, bits, nonnegative=nonnegative, clip=clip.get(key))
        sizes, enc, dec = [], [], []
        for x in data:
            start = time.perf_counter_ns()
            encoded = dcodec.encode(x, **kwargs)
            middle = time.perf_counter_ns()
            if timing:
                dcodec.decode(encoded, dcodec.Expected(shape=tuple(x.shape)))
            end = time.perf_counter_ns()
            sizes.append(encoded.nbytes)
            enc.append((middle - start) / 1e6)
            dec.append((end - middle) / 1e6)
        out[key] = {"bytes": float(np.median(sizes)), "encode_ms": float(np.median(enc)),
                    "decode_ms": float(np.median(dec))}
    return out


def _encode_kwargs(codec: str, bits: int | None, *, nonnegative: bool, clip: Clip | None) -> dict[str, Any]:
    if codec in packing.IMAGE_CODECS:
        return {"mode": codec, "bits": bits}
    if codec in packing.FLOAT_CODECS:
        return {"mode": codec}
    return {"mode": codec, "bits": bits, "nonnegative": nonnegative, "clip": clip}


def cut_walk(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut]) -> graph.Walk:
    """A walk of ``gm`` that stops at every cut (refusing cuts of another model)."""
    for cut in cuts:
        partition.check(gm, cut)
    return graph.Walk(gm, [cut.position for cut in cuts])


def sample_activations(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], inputs: torch.Tensor
                       ) -> list[list[np.ndarray]]:
    """Per cut, the activation of each input (one sample each) as a float32 numpy array."""
    walk = cut_walk(gm, cuts)
    per_cut: list[list[np.ndarray]] = [[] for _ in cuts]
    for x in inputs:
        for i, live in walk.run(x.unsqueeze(0)):
            value = live[cuts[i].name]
            per_cut[i].append(np.ascontiguousarray(value[0].detach().float().numpy()))
    return per_cut
