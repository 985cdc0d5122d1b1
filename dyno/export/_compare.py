"""ONNX heads against torch heads, cut by cut: max |onnxruntime - torch| and the latency of each on one
thread (median and range over repeats, the two runtimes alternating so both see the same load)."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dyno import partition
from dyno.manifest import HeadsManifest
from dyno.progress import NO_PROGRESS, Progress

__all__ = ["CompareRow", "compare"]


@dataclasses.dataclass(frozen=True)
class CompareRow:
    """One cut: the largest |ORT - torch| over the inputs, the largest |torch|, and per runtime the
    head's time at batch size one on one thread (median, min, max over ``repeats``), milliseconds."""

    cut: int
    name: str
    max_abs_diff: float
    max_abs_ref: float
    ort_ms: tuple[float, float, float]
    torch_ms: tuple[float, float, float]

    @property
    def relative(self) -> float:
        return self.max_abs_diff / self.max_abs_ref if self.max_abs_ref > 0 else self.max_abs_diff

    @property
    def ratio(self) -> float:
        """Median ORT time over median torch time (below 1: onnxruntime is faster)."""
        return self.ort_ms[0] / self.torch_ms[0] if self.torch_ms[0] > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"cut": self.cut, "name": self.name, "max_abs_diff": self.max_abs_diff,
                "max_abs_ref": self.max_abs_ref, "relative": self.relative, "ort_ms": list(self.ort_ms),
                "torch_ms": list(self.torch_ms), "ratio": self.ratio}


def compare(manifest: HeadsManifest, directory: str | os.PathLike, model: nn.Module,
            cuts: Sequence[partition.Cut], inputs: torch.Tensor, *, repeats: int = 20,
            progress: Progress = NO_PROGRESS) -> list[CompareRow]:
    """Per exported head: numerical agreement over ``inputs`` (N, C, H, W) and one-thread latency of
    both runtimes on ``inputs[:1]`` (``repeats`` alternating runs after a warm-up; ``repeats=0``: no
    timing, zeros)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    tick = progress.task("ORT vs torch", len(manifest.heads))
    try:
        for entry in manifest.heads:
            data = manifest.verified_file(Path(directory), entry.cut)
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            head, _ = partition.split(model.eval(), cuts[entry.cut])
            rows.append(_row(entry.cut, entry.name, session, head.eval(), inputs, repeats))
            tick()
    finally:
        torch.set_num_threads(threads)
    return rows


def _row(cut: int, name: str, session: Any, head: nn.Module, inputs: torch.Tensor, repeats: int) -> CompareRow:
    x = inputs.numpy().astype(np.float32)
    with torch.inference_mode():
        ref = head(inputs).numpy()
        got = session.run(None, {"input": x})[0]
        diff = float(np.abs(got - ref).max())
        scale = float(np.abs(ref).max())
        one_t, one_n = inputs[:1].contiguous(), np.ascontiguousarray(x[:1])
        ort_times, torch_times = [], []
        for _ in range(2):  # warm-up
            session.run(None, {"input": one_n})
            head(one_t)
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, {"input": one_n})
            ort_times.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            head(one_t)
            torch_times.append((time.perf_counter() - start) * 1000)
    return CompareRow(cut, name, diff, scale, _spread(ort_times), _spread(torch_times))


def _spread(times: list[float]) -> tuple[float, float, float]:
    if not times:
        return (0.0, 0.0, 0.0)
    return (statistics.median(times), min(times), max(times))
