"""A device profile measured with onnxruntime, no torch: per cut the exported head's time at batch size
one (median of repeats after a warm-up, ``threads`` intra-op threads) and, per codec option, the median
encode time and wire bytes over real inputs. The file is a ``dyno-profile`` like ``dyno profile --role
device`` writes with torch, so ``dyno analyze MODEL --device-profile FILE`` merges it.

The input cut's image options (jpeg/webp) are left out (``dyno analyze`` measures them on the
workstation); every cut needs an exported head (a cut refused at export has no device time).
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from dyno import codec, packing
from dyno.datafile import atomic_write, dumps
from dyno.device._heads import OrtHeads
from dyno.errors import ConfigError
from dyno.progress import NO_PROGRESS, Progress

__all__ = ["measure_device", "save_profile", "CODERS"]

#: The coders ``dyno analyze`` lists at every width (``dyno.offline.codecs.PLAN_CODECS``).
CODERS = (packing.LZ4, "centre-zstd", "zstd", "rans")


def measure_device(heads: OrtHeads, inputs: np.ndarray, *, name: str | None = None, repeats: int = 20,
                   codec_samples: int = 4, progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """The profile document (see the module docstring) for the cuts of ``heads.manifest``."""
    manifest = heads.manifest
    names = manifest.cut_names
    missing = [i for i in range(1, len(names)) if i not in manifest.cuts]
    if missing:
        why = "; ".join(f"cut {r.cut}: {r.reason}" for r in manifest.refused if r.cut in missing[:3])
        raise ConfigError(f"cuts {missing[:5]} have no exported head ({why or 'not exported'}); a device profile "
                          "needs every cut: export them all (dyno export without --cuts)")
    if inputs.ndim != 4 or inputs.shape[0] < 1:
        raise ConfigError("inputs must be (N, C, H, W) with N >= 1")
    last = len(names) - 1
    tick = progress.task("device profile (onnxruntime)", len(names))
    cuts = []
    for i, cut_name in enumerate(names):
        head_ms = 0.0 if i == 0 else _time(heads, i, inputs[:1], repeats)
        costs = {} if i == last else _codec_costs(heads, i, inputs[:codec_samples])
        cuts.append({"id": i, "name": cut_name, "head_ms": head_ms, "tail_ms": None,
                     "encode_ms": {k: v["encode_ms"] for k, v in costs.items()}, "decode_ms": {},
                     "bytes": {k: v["bytes"] for k, v in costs.items()}})
        tick()
    import onnxruntime

    return {
        "format": "dyno-profile", "version": 1, "role": "device",
        "name": name or f"device@{socket.gethostname()} (onnxruntime, {heads.threads} thread"
                        f"{'s' if heads.threads != 1 else ''})",
        "model": manifest.model, "threads": heads.threads, "cuts": cuts,
        "machine": {"host": socket.gethostname(), "machine": platform.machine(), "processor": platform.processor(),
                    "python": platform.python_version(), "cpus": os.cpu_count(),
                    "onnxruntime": onnxruntime.__version__, "threads": heads.threads},
        "method": {"head": f"onnxruntime {onnxruntime.__version__}: each exported head timed directly, median "
                           f"of {repeats} runs at batch size 1 after 2 warm-up runs",
                   "backend": "onnxruntime", "heads_plan_hash": manifest.plan_hash},
        "samples": int(min(codec_samples, len(inputs))),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def save_profile(document: dict[str, Any], path: str | os.PathLike) -> Path:
    return atomic_write(path, dumps(document))


def _time(heads: OrtHeads, cut: int, x: np.ndarray, repeats: int) -> float:
    x = np.ascontiguousarray(x, dtype=np.float32)
    for _ in range(2):
        heads.run(cut, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        heads.run(cut, x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _codec_costs(heads: OrtHeads, cut: int, inputs: np.ndarray) -> dict[str, dict[str, float]]:
    samples = [np.asarray(heads.run(cut, np.ascontiguousarray(x[None], dtype=np.float32)))[0] for x in inputs]
    nonnegative = cut != 0 and heads.manifest.head(cut).nonnegative
    options: list[tuple[str, int | None]] = [(c, None) for c in packing.FLOAT_CODECS]
    options += [(c, b) for c in CODERS for b in packing.BITS if b <= packing.max_bits(c)]
    out = {}
    for mode, bits in options:
        sizes, times = [], []
        for s in samples:
            start = time.perf_counter_ns()
            encoded = (codec.encode(s, mode=mode) if bits is None else
                       codec.encode(s, mode=mode, bits=bits, nonnegative=nonnegative))
            times.append((time.perf_counter_ns() - start) / 1e6)
            sizes.append(encoded.nbytes)
        out[packing.label(mode, bits)] = {"bytes": float(np.median(sizes)), "encode_ms": float(np.median(times))}
    return out
