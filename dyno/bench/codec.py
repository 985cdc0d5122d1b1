"""``dyno codec-bench``: the codec on real activations of a zoo model, against its baselines, in one run.

For a few input images the model's head is run to each of several cuts spread over the network; every
activation is encoded at each bit width in each mode (and by each baseline), decoded, and timed on one
thread (torch and blosc2). Per (cut, bits, mode) the figures are medians over the images: bytes on the
wire (metadata included), bits per value (of the frame, and ``payload_bits_per_value`` of its payload
alone: the compact metadata of frame version 3 takes 6 bytes, a varint per axis, 4 or 8 of range, a
varint of payload size and a 4-byte checksum, 15-25 bytes whatever the coder), encode and decode
throughput in GB/s of the fp32 tensor (each itself the median of ``repeats`` timed runs after a
warm-up), the relative L2 error, and the order-0 entropy of the codes (``entropy_bits_per_value``: what
a memoryless coder of the codes cannot beat; LZ-style coders can, where codes repeat). ``rans`` takes
at most 8 bits; wider rows leave it out.

Baselines, in the same run: ``fp32`` and ``fp16`` (raw values), ``int8-zlib`` (8-bit codes + zlib, as
JALAD/SPINN-style systems send them), ``dense-8`` (dense 8-bit packing) and ``memcpy`` of the fp32
tensor; at the input cut also ``jpeg-90`` and ``webp-90``.

Data: ``efficientnet-lite0`` on ``imagenet-samples`` when that folder exists (``$DYNO_IMAGENET_SAMPLES``,
else ``../shared/imagenet-samples`` beside the checkout), else ``fmnist-resnet`` on Fashion-MNIST, else
(neither available) synthetic ReLU-like tensors, labelled as such in the result.

The int8+zlib baseline quantises with the codec's own quantiser (``dyno.codec._quant``) so that only
the lossless stage differs from ours.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import warnings
import zlib
from typing import Any, Callable

import numpy as np
import torch

from dyno import partition, zoo
from dyno.bench.reference import one_torch_thread
from dyno.codec import MAX_BITS, Expected, _pack, _quant, decode, encode
from dyno.errors import ConfigError, DynoError
from dyno.packing import IMAGE_CODECS
from dyno.progress import NO_PROGRESS, Progress, Tick

__all__ = ["run", "BITS", "MODES", "GOALS", "default_model"]

BITS = (1, 2, 3, 4, 6, 8, 12, 16)
MODES = ("shuffle-lz4", "shuffle-zstd", "centre-zstd", "zstd", "rans", "dense")
#: Throughput goals (GB/s of fp32 tensor, one thread) for tensors >= 256 KiB at b <= 8: shuffle-lz4's
#: encode and decode, and the best coder's (fewest bytes) encode; the best coder's bits per value
#: within ``entropy_margin`` of the codes' order-0 entropy (or below it).
GOALS = {"encode_gbps": 2.0, "decode_gbps": 3.0, "min_fp32_bytes": 256 << 10, "max_bits": 8,
         "best_encode_gbps": 0.5, "entropy_margin": 0.10}
SYNTHETIC = "synthetic"


def default_model() -> str:
    """efficientnet-lite0 when the ImageNet samples are at hand, else fmnist-resnet."""
    return "efficientnet-lite0" if (zoo.imagenet_samples_root() / "labels.tsv").is_file() else "fmnist-resnet"


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(median seconds over ``repeats`` runs after one warm-up run, the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _rel_l2(y: np.ndarray, x: np.ndarray) -> float:
    norm = float(np.linalg.norm(x.astype(np.float64)))
    diff = float(np.linalg.norm(y.astype(np.float64) - x.astype(np.float64)))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


# ------------------------------------------------------------------------------ activations
def _activations(model_name: str | None, samples: int, n_cuts: int, data: str | None
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(source description, [{"id", "name", "shape", "nonnegative", "tensors": [per-sample arrays]}])."""
    if model_name == SYNTHETIC:
        return _synthetic(samples)
    name = model_name or default_model()
    entry = zoo.get_model(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = zoo.load_model(name, weights="trained-or-random")
    weights = "random" if any("random weights" in str(w.message) for w in caught) else "trained"
    if data is not None:
        dataset = zoo.load_dataset(data, model=name)
        data_name = data
    elif entry.default_data == "imagenet-samples":
        dataset = zoo.load_dataset("imagenet-samples", root=zoo.imagenet_samples_root(), model=name)
        data_name = "imagenet-samples"
    else:
        dataset = zoo.load_dataset(entry.default_data or "fashion-mnist", split="test", model=name)
        data_name = entry.default_data or "fashion-mnist"
    count = min(samples, len(dataset))
    step = max(1, len(dataset) // count)
    batch = torch.stack([dataset[i * step][0] for i in range(count)])
    all_cuts = partition.cuts(model, batch[:1])
    chosen = _spread(all_cuts, n_cuts)
    cuts = []
    with torch.inference_mode():
        for cut in chosen:
            head, _tail = partition.split(model, cut)
            out = head(batch)
            out = out[0] if isinstance(out, tuple) else out
            cuts.append({"id": cut.id, "name": cut.name, "shape": tuple(cut.shape),
                         "nonnegative": bool(cut.nonnegative),
                         "tensors": [out[i].contiguous().float().numpy().copy() for i in range(count)]})
    source = {"model": name, "weights": weights, "data": data_name, "samples": count,
              "synthetic": False}
    return source, cuts


def _spread(all_cuts: list[Any], n_cuts: int) -> list[Any]:
    """The input cut, then ``n_cuts - 1`` cuts evenly spaced by position over the rest, the last of
    them just before the logits (so every kind of tensor shows up: stage outputs, expanded ReLU6
    activations, depthwise inputs, pooled features)."""
    inner = all_cuts[1:-1]
    if not inner:
        return [all_cuts[0]]
    steps = max(n_cuts - 1, 1)
    picks = sorted({round(i * (len(inner) - 1) / steps) for i in range(1, n_cuts)})
    return [all_cuts[0]] + [inner[i] for i in picks]


def _synthetic(samples: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(32, 112, 112), (96, 56, 56), (24, 56, 56), (144, 28, 28), (480, 14, 14), (1280, 7, 7)]
    cuts = []
    for i, shape in enumerate(shapes):
        tensors = []
        for _ in range(samples):  # ReLU6 of smooth-ish positive-skewed data: ~50-70% zeros
            x = torch.randn(shape, generator=gen) * 1.5 - 0.5 * (i % 3)
            tensors.append(torch.clamp(x, 0, 6).numpy())
        cuts.append({"id": i + 1, "name": f"synthetic-{i + 1}", "shape": shape, "nonnegative": True,
                     "tensors": tensors})
    source = {"model": SYNTHETIC, "weights": None, "data": "synthetic ReLU-like tensors (no zoo model)",
              "samples": samples, "synthetic": True}
    return source, cuts


# ------------------------------------------------------------------------------ measuring
def _measure_codec(tensors: list[np.ndarray], repeats: int, **kwargs: Any) -> dict[str, float]:
    shape = tensors[0].shape
    expected = Expected(shape=shape)
    sizes, payloads, enc_t, dec_t, errors = [], [], [], [], []
    for x in tensors:
        t_enc, enc = _timed(functools.partial(encode, x, nthreads=1, **kwargs), repeats)
        t_dec, y = _timed(functools.partial(decode, enc, expected, nthreads=1), repeats)
        sizes.append(enc.nbytes)
        payloads.append(len(enc.payload))
        enc_t.append(t_enc)
        dec_t.append(t_dec)
        errors.append(_rel_l2(y, x))
    return {**_summary(tensors[0].nbytes, sizes, enc_t, dec_t, errors),
            "payload_bytes": int(statistics.median(payloads))}


def _summary(fp32_bytes: int, sizes: list[int], enc_t: list[float], dec_t: list[float],
             errors: list[float]) -> dict[str, float]:
    return {"bytes": int(statistics.median(sizes)),
            "encode_gbps": fp32_bytes / statistics.median(enc_t) / 1e9,
            "decode_gbps": fp32_bytes / statistics.median(dec_t) / 1e9,
            "rel_l2": float(statistics.median(errors))}


def _measure_int8_zlib(tensors: list[np.ndarray], repeats: int, nonnegative: bool) -> dict[str, float]:
    """8-bit ISQuant codes + zlib level 6: the JALAD/SPINN-style transfer (range in 8 bytes)."""
    sizes, enc_t, dec_t, errors = [], [], [], []

    def enc(t: np.ndarray) -> tuple[bytes, float, float]:
        lo, hi = _quant.tensor_range(t, nonnegative)
        return zlib.compress(_quant.quantize(t.reshape(-1), lo, hi, 8).data, 6), lo, hi

    def dec(frame: tuple[bytes, float, float], shape: tuple[int, ...]) -> np.ndarray:
        payload, lo, hi = frame
        codes = np.frombuffer(zlib.decompress(payload), np.uint8).copy()
        return _quant.dequantize(codes, lo, hi, 8).reshape(shape)

    for x in tensors:
        t_enc, frame = _timed(functools.partial(enc, x), repeats)
        t_dec, y = _timed(functools.partial(dec, frame, x.shape), repeats)
        sizes.append(len(frame[0]) + 8)
        enc_t.append(t_enc)
        dec_t.append(t_dec)
        errors.append(_rel_l2(y, x))
    return _summary(tensors[0].nbytes, sizes, enc_t, dec_t, errors)


def _measure_memcpy(tensors: list[np.ndarray], repeats: int) -> dict[str, float]:
    times = []
    for x in tensors:
        t, _ = _timed(functools.partial(np.copyto, np.empty_like(x), x), repeats)
        times.append(t)
    gbps = tensors[0].nbytes / statistics.median(times) / 1e9
    return {"bytes": tensors[0].nbytes, "encode_gbps": gbps, "decode_gbps": gbps, "rel_l2": 0.0}


def run(model: str | None = None, *, samples: int = 8, repeats: int = 5, cuts: int = 8,
        bits: tuple[int, ...] = BITS, modes: tuple[str, ...] = MODES, data: str | None = None,
        progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Run the benchmark; returns ``{"rows", "baselines", "memcpy_gbps", ...}`` (see the module doc).

    ``model``: a zoo name, ``"synthetic"``, or None for ``default_model()`` (falling back to synthetic
    tensors if the model or its data cannot be loaded).
    """
    if repeats < 1 or samples < 1 or cuts < 2:
        raise ConfigError("need repeats >= 1, samples >= 1 and cuts >= 2")
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        raise ConfigError(f"codec-bench modes are {', '.join(MODES)}; unknown: {sorted(unknown)}")
    if not bits or any(not 1 <= b <= 16 for b in bits):
        raise ConfigError(f"codec-bench bits must be in 1..16, got {list(bits)}")
    try:
        source, cut_data = _activations(model, samples, cuts, data)
    except DynoError as error:
        if model is not None:
            raise
        source, cut_data = _synthetic(samples)
        source["note"] = f"no zoo model/data available ({error}); using synthetic tensors"
    tick = progress.task("codec-bench", len(cut_data) * (len(bits) * len(modes) + 5) + 2)
    rows: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    with one_torch_thread():
        for cut in cut_data:
            rows += _codec_rows(cut, bits, modes, repeats, tick)
            baselines += _baseline_rows(cut, repeats, tick, image=cut is cut_data[0] and not source["synthetic"])
    return {
        "rows": rows,
        "baselines": baselines,
        "memcpy_gbps": float(statistics.median(b["encode_gbps"] for b in baselines if b["name"] == "memcpy")),
        "source": source,
        "cuts": [{"id": c["id"], "name": c["name"], "shape": list(c["shape"]),
                  "nonnegative": c["nonnegative"], "fp32_bytes": c["tensors"][0].nbytes} for c in cut_data],
        "settings": {"repeats": repeats, "torch_threads": 1, "blosc2_threads": 1, "clevels": _pack.CLEVELS,
                     "goals": GOALS},
        "goals": goal_summary(rows),
    }


def entropy_bits(x: np.ndarray, bits: int, nonnegative: bool) -> float:
    """Order-0 entropy (bits per value) of the codes the codec makes of ``x`` at ``bits`` (per tensor)."""
    lo, hi = _quant.tensor_range(x, nonnegative)
    counts = np.bincount(_quant.quantize(x.reshape(-1), lo, hi, bits)).astype(np.float64)
    p = counts[counts > 0] / max(x.size, 1)
    return float(-(p * np.log2(p)).sum()) + 0.0


def _codec_rows(cut: dict[str, Any], bits: tuple[int, ...], modes: tuple[str, ...], repeats: int,
                tick: Tick) -> list[dict[str, Any]]:
    tensors = cut["tensors"]
    rows = []
    for b in bits:
        entropy = statistics.median(entropy_bits(x, b, cut["nonnegative"]) for x in tensors)
        for mode in modes:
            if b > MAX_BITS.get(mode, 16):
                tick(status=f"cut {cut['id']} {mode} {b} bits: not a width of {mode}")
                continue
            m = _measure_codec(tensors, repeats, bits=b, mode=mode, nonnegative=cut["nonnegative"])
            rows.append({"cut": cut["id"], "fp32_bytes": tensors[0].nbytes, "bits": b, "mode": mode,
                         "bytes": m["bytes"], "bits_per_value": 8 * m["bytes"] / tensors[0].size,
                         "payload_bits_per_value": 8 * m["payload_bytes"] / tensors[0].size,
                         "entropy_bits_per_value": entropy, "encode_gbps": m["encode_gbps"],
                         "decode_gbps": m["decode_gbps"], "rel_l2": m["rel_l2"]})
            tick(status=f"cut {cut['id']} {mode} {b} bits")
    return rows


def _baseline_rows(cut: dict[str, Any], repeats: int, tick: Tick, *, image: bool) -> list[dict[str, Any]]:
    tensors, nonneg = cut["tensors"], cut["nonnegative"]
    measured = {
        "fp32": _measure_codec(tensors, repeats, bits=None, mode="fp32"),
        "fp16": _measure_codec(tensors, repeats, bits=None, mode="fp16"),
        "int8-zlib": _measure_int8_zlib(tensors, repeats, nonneg),
        "dense-8": _measure_codec(tensors, repeats, bits=8, mode="dense", nonnegative=nonneg),
        "memcpy": _measure_memcpy(tensors, repeats),
    }
    if image and len(cut["shape"]) == 3 and cut["shape"][0] in (1, 3):  # the input: what cloud-only sends
        for fmt in IMAGE_CODECS:
            measured[f"{fmt}-90"] = _measure_codec(tensors, repeats, bits=90, mode=fmt)
    out = []
    for name, m in measured.items():
        out.append({"name": name, "cut": cut["id"], **m})
        tick(status=f"cut {cut['id']} {name}")
    return out


def goal_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Against GOALS: shuffle-lz4's worst and median throughput at b <= 8 on tensors >= 256 KiB, and
    per (cut, bits <= 8) the best coder (fewest bytes) of the modes measured: its bits per value against
    the codes' entropy and its encode speed."""
    sel = [r for r in rows if r["mode"] == "shuffle-lz4" and r["bits"] <= GOALS["max_bits"]
           and r["fp32_bytes"] >= GOALS["min_fp32_bytes"]]
    out: dict[str, Any] = {"rows": len(sel)}
    for key in ("encode_gbps", "decode_gbps") if sel else ():
        values = [r[key] for r in sel]
        out[key] = {"min": min(values), "median": statistics.median(values), "goal": GOALS[key],
                    "met_by_median": statistics.median(values) >= GOALS[key],
                    "rows_below_goal": sum(v < GOALS[key] for v in values)}
    out["best"] = best_coders(rows)
    return out


def best_coders(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (cut, bits <= 8): the row of fewest bytes among the entropy coders (not ``dense``), with its
    ratio to the entropy (of the whole frame: the goal; and of its payload alone, where the fixed
    metadata outweighs a near-empty tensor's codes) and whether it meets the entropy and encode-speed
    goals."""
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for r in rows:
        if r["mode"] == "dense" or r["bits"] > GOALS["max_bits"]:
            continue
        key = (r["cut"], r["bits"])
        if key not in best or r["bytes"] < best[key]["bytes"]:
            best[key] = r
    out = []
    for (cut, b), r in sorted(best.items()):
        entropy = r["entropy_bits_per_value"]
        ratio = r["bits_per_value"] / entropy if entropy > 0 else math.inf
        large = r["fp32_bytes"] >= GOALS["min_fp32_bytes"]
        out.append({"cut": cut, "bits": b, "mode": r["mode"], "bits_per_value": r["bits_per_value"],
                    "entropy_bits_per_value": entropy, "ratio_to_entropy": ratio, "bytes": r["bytes"],
                    "payload_ratio_to_entropy": (r["payload_bits_per_value"] / entropy if entropy > 0
                                                 else math.inf),
                    "within_entropy_goal": ratio <= 1 + GOALS["entropy_margin"],
                    "encode_gbps": r["encode_gbps"], "decode_gbps": r["decode_gbps"], "large": large,
                    "encode_goal_met": (r["encode_gbps"] >= GOALS["best_encode_gbps"]) if large else None})
    return out
