"""What one inference returns (``Result``), top-k from logits, and run summaries."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

__all__ = ["Result", "top_k", "summarize", "SUMMARY_KEYS"]

SUMMARY_KEYS = ("n", "accuracy", "throughput", "bytes_mean", "p50_ms", "p95_ms", "fallbacks")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    """One finished inference.

    ``where`` is ``"cloud"`` (the server finished it), ``"device"`` (the policy chose to run it all on
    the device) or ``"fallback"`` (meant for the cloud, finished on the device because the server was
    unreachable, refused it or did not answer in time). Nothing is ever lost: every input gets a result.
    """

    index: int
    classes: tuple[int, ...]       # top-k class ids, best first
    scores: tuple[float, ...]      # their softmax probabilities
    cut: int                       # the cut the policy chose
    codec: str | None              # None when nothing was sent
    bits: int | None
    where: str
    latency_ms: float              # submission to result
    device_ms: float               # emulated device time (head, encoding, any fallback tail)
    transfer_ms: float = 0.0       # time on the uplink (0 if nothing was sent)
    server_ms: float = 0.0         # server queue + compute, as the reply reports
    bytes: int = 0                 # wire bytes sent
    batch: int = 0                 # server batch size (0 if not served by the cloud)
    logits: np.ndarray | None = None
    note: str = ""
    finished: float = 0.0          # time.perf_counter() when the result was made

    @property
    def top1(self) -> int:
        return self.classes[0]

    @property
    def fallback(self) -> bool:
        return self.where == "fallback"


def top_k(logits: np.ndarray, k: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The k best classes of one logit vector and their softmax probabilities (stable order)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    k = max(1, min(int(k), logits.shape[0]))
    shifted = np.exp(logits - logits.max())
    probs = shifted / shifted.sum()
    top = np.argsort(-probs, kind="stable")[:k]
    return tuple(int(i) for i in top), tuple(float(p) for p in probs[top])


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(results: Sequence[Result], labels: Iterable[int] | None = None,
              elapsed_s: float | None = None) -> dict[str, float | int | None]:
    """The run summary: ``{"n", "accuracy", "throughput", "bytes_mean", "p50_ms", "p95_ms", "fallbacks"}``.

    ``accuracy`` is top-1 against ``labels`` (None without labels); ``throughput`` is results per
    second of ``elapsed_s`` (default: first to last result).
    """
    n = len(results)
    accuracy = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != n:
            raise ValueError(f"{n} results but {len(labels)} labels")
        accuracy = sum(r.top1 == int(y) for r, y in zip(results, labels, strict=True)) / n if n else None
    if elapsed_s is None and n > 1:
        elapsed_s = max(r.finished for r in results) - min(r.finished for r in results)
    throughput = n / elapsed_s if elapsed_s and elapsed_s > 0 else None
    latencies = [r.latency_ms for r in results]
    return {
        "n": n,
        "accuracy": accuracy,
        "throughput": throughput,
        "bytes_mean": sum(r.bytes for r in results) / n if n else None,
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "fallbacks": sum(r.fallback for r in results),
    }
