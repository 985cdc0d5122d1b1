"""The packings a plan lists at each cut, and their real cost: every option encoded for real.

    options = codec_options(first=False, last=False)              # fp32, fp16, every PLAN_CODECS coder x bits
    for i, samples in cut_activations(gm, cuts, inputs):          # one cut's activations at a time
        costs = codec_costs(samples, options, nonnegative=True)   # label -> bytes, encode_ms, decode_ms

Every option is encoded from each sample by ``dyno.codec.encode`` itself, so the bytes and the encode
time are those of real frames (the encode is timed as it runs: no extra pass). Decoding is timed on the
first ``timed`` samples only: it is the slow part of the strong coders, and a few samples fix a median.
The coders of one width share the codes, hence the accuracy; only bytes and times tell them apart,
and :func:`pareto` keeps per width the coders worth a row in the plan.
"""

from __future__ import annotations

import time
from typing import Any, Generator, Mapping, Sequence

import numpy as np
import torch
import torch.fx

from dyno import graph, packing, partition

__all__ = ["QUANT_CODEC", "PLAN_CODECS", "codec_options", "codec_costs", "sample_activations", "cut_activations",
           "cut_walk", "pareto"]

#: The quantising codec whose accuracy the offline analysis measures (bit-shuffle + LZ4); the other
#: coders send the very same codes.
QUANT_CODEC = packing.LZ4
#: The coders a plan lists (``dyno analyze`` measures each at every width it takes): the fastest,
#: then stronger ones for slower links. ``shuffle-zstd`` and ``dense`` stay codec modes only.
PLAN_CODECS: tuple[str, ...] = (packing.LZ4, "centre-zstd", "zstd", "rans")

Clip = tuple[float, float]


def codec_options(*, first: bool, last: bool, image: bool = True, codecs: Sequence[str] = PLAN_CODECS
                  ) -> list[tuple[str, int | None]]:
    """The (codec, bits) options a plan lists for a cut: none on the last cut; else fp32, fp16 and each
    quantising codec at every width it takes; on the ``first`` (the input) also jpeg/webp at
    ``IMAGE_QUALITIES`` if ``image`` (an 8-bit image is behind the input)."""
    if last:
        return []
    options: list[tuple[str, int | None]] = [(codec, None) for codec in packing.FLOAT_CODECS]
    options += [(codec, bits) for codec in codecs for bits in packing.BITS if bits <= packing.max_bits(codec)]
    if first and image:
        options += [(codec, q) for codec in packing.IMAGE_CODECS for q in packing.IMAGE_QUALITIES]
    return options


def codec_costs(samples: Sequence[np.ndarray], options: Sequence[tuple[str, int | None]], *,
                nonnegative: bool, clip: Mapping[int, Clip | None] | None = None,
                images: Sequence[np.ndarray] | None = None, timed: int | None = None,
                coder_samples: int | None = None) -> dict[str, dict[str, float]]:
    """Encode every sample with every option for real: per option label, the median ``bytes`` and
    ``encode_ms`` over the samples and the median ``decode_ms`` over the first ``timed`` (default all;
    0: no decodes, ``decode_ms`` then 0). The quantising coders other than ``QUANT_CODEC`` encode only
    the first ``coder_samples`` (default all): their sizes follow LZ4's closely, and they are slower.

    The coders of one width send the same codes: each sample is quantised once per width
    (``dyno.codec.quantize_tensor``, its min/max found once per sample) and packed by each coder
    (``encode_codes``: the frames ``encode`` makes, byte for byte); a coder's encode time is the
    quantisation's plus its own packing.

    ``clip`` maps a bit width to the range its quantising options use. Image options (jpeg/webp) encode
    ``images`` (uint8 H x W x C, one per sample) instead of the activations; without ``images`` they
    are left out.
    """
    from dyno import codec as dcodec

    clip = clip or {}
    times: dict[tuple[str, int | None], tuple[list[float], list[float], list[float]]] = {}
    widths: dict[int, list[str]] = {}
    for codec, bits in options:
        if codec in packing.QUANT_CODECS and bits is not None:
            widths.setdefault(bits, []).append(codec)
            continue
        data = images if codec in packing.IMAGE_CODECS else samples
        if data is None:
            continue
        kwargs = _encode_kwargs(codec, bits, nonnegative=nonnegative, clip=clip.get(bits or 0))
        for k, x in enumerate(data):
            start = time.perf_counter_ns()
            encoded = dcodec.encode(x, **kwargs)
            _record(times.setdefault((codec, bits), ([], [], [])), encoded, start, x, timed is None or k < timed)
    spans: dict[int, tuple[float, float]] = {}
    for bits, codecs in widths.items():
        for k, x in enumerate(samples):
            coders = [c for c in codecs if c == QUANT_CODEC or coder_samples is None or k < coder_samples]
            if not coders:
                continue
            start = time.perf_counter_ns()
            codes = dcodec.quantize_tensor(x, bits, nonnegative=nonnegative, clip=clip.get(bits), span=spans.get(k))
            quantised = time.perf_counter_ns() - start
            spans[k] = codes.span
            for codec in coders:
                begin = time.perf_counter_ns()
                encoded = dcodec.encode_codes(codes, codec)
                _record(times.setdefault((codec, bits), ([], [], [])), encoded, begin - quantised, x,
                        timed is None or k < timed)
    out: dict[str, dict[str, float]] = {}
    for codec, bits in options:
        if (codec, bits) in times:
            sizes, enc, dec = times[codec, bits]
            out[packing.label(codec, bits)] = {"bytes": float(np.median(sizes)), "encode_ms": float(np.median(enc)),
                                               "decode_ms": float(np.median(dec)) if dec else 0.0}
    return out


def _record(into: tuple[list[float], list[float], list[float]], encoded: Any, start: int, x: np.ndarray,
            decode: bool) -> None:
    """Add one frame's bytes and encode ms (from ``start``, ns) and, if ``decode``, its decode ms."""
    from dyno import codec as dcodec

    middle = time.perf_counter_ns()
    into[0].append(encoded.nbytes)
    into[1].append((middle - start) / 1e6)
    if decode:
        dcodec.decode(encoded, dcodec.Expected(shape=tuple(x.shape)))
        into[2].append((time.perf_counter_ns() - middle) / 1e6)


def _encode_kwargs(codec: str, bits: int | None, *, nonnegative: bool, clip: Clip | None) -> dict[str, Any]:
    if codec in packing.IMAGE_CODECS:
        return {"mode": codec, "bits": bits}
    if codec in packing.FLOAT_CODECS:
        return {"mode": codec}
    return {"mode": codec, "bits": bits, "nonnegative": nonnegative, "clip": clip}


def pareto(costs: Mapping[str, Mapping[str, float]], keep: Sequence[str] = (QUANT_CODEC,), margin: float = 0.01
           ) -> set[str]:
    """The quantising option labels worth a row: per width, ``keep``'s coders and every coder that no
    other coder of that width beats - no more bytes (within ``margin``, relative) and no slower to
    encode or to decode. Float and image options are never dropped (the set holds every label kept)."""
    kept = set()
    by_bits: dict[int, list[tuple[str, Mapping[str, float]]]] = {}
    for label, cost in costs.items():
        option = packing.Packing.parse(label)
        if not option.is_quantised:
            kept.add(label)
            continue
        by_bits.setdefault(int(option.bits or 0), []).append((label, cost))
    for group in by_bits.values():
        for label, cost in group:
            beaten = any(other is not cost and other["bytes"] <= cost["bytes"] * (1 + margin)
                         and other["encode_ms"] <= cost["encode_ms"] and other["decode_ms"] <= cost["decode_ms"]
                         and (other["bytes"], other["encode_ms"], other["decode_ms"]) !=
                         (cost["bytes"], cost["encode_ms"], cost["decode_ms"])
                         for _, other in group)
            if not beaten or packing.Packing.parse(label).codec in keep:
                kept.add(label)
    return kept


def cut_walk(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut]) -> graph.Walk:
    """A walk of ``gm`` that stops at every cut (refusing cuts of another model)."""
    for cut in cuts:
        partition.check(gm, cut)
    return graph.Walk(gm, [cut.position for cut in cuts])


def cut_activations(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], inputs: torch.Tensor
                    ) -> Generator[tuple[int, list[np.ndarray]], None, None]:
    """Per cut in turn, ``(index, the activation of each input as a float32 numpy array)``: the inputs run
    as one batch, suspended at each cut, so only one cut's activations are held at a time."""
    walk = cut_walk(gm, cuts)
    for i, live in walk.run(inputs):
        value = live[cuts[i].name]
        yield i, [np.ascontiguousarray(value[k].detach().float().numpy()) for k in range(len(inputs))]


def sample_activations(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], inputs: torch.Tensor
                       ) -> list[list[np.ndarray]]:
    """Per cut, the activation of each input (one sample each) as a float32 numpy array (every cut at
    once: :func:`cut_activations` holds one cut at a time)."""
    return [samples for _, samples in cut_activations(gm, cuts, inputs)]
