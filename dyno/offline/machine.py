"""How the offline stage uses this machine: torch threads, timing, the heap, the faster layout.

    with torch_threads(1):
        ms = time_call(lambda: model(x))        # median ms over repeats, after a warm-up
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import platform
import socket
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from dyno.errors import ConfigError

__all__ = ["torch_threads", "time_call", "repeats_for", "machine_info", "heap_allocations", "trim_heap",
           "faster_threads", "faster_channels_last"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` torch intra-op threads (None: leave as is); yields the count."""
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ConfigError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def time_call(fn: Callable[[], Any], *, min_repeats: int = 5, max_repeats: int = 200, min_seconds: float = 0.3,
              warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over at least ``min_repeats`` runs and ``min_seconds``."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - began < min_seconds):
            start = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(times))


def repeats_for(seconds_per_run: float, min_seconds: float, min_repeats: int, max_repeats: int) -> int:
    """Repeats that fill ``min_seconds``, within ``min_repeats..max_repeats``."""
    return int(min(max_repeats, max(min_repeats, math.ceil(min_seconds / max(seconds_per_run, 1e-6)))))


def machine_info(threads_used: int) -> dict[str, Any]:
    """What a profile records about the machine it was measured on."""
    return {"host": socket.gethostname(), "platform": platform.platform(), "processor": platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads_used,
            "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def trim_heap() -> None:
    """Give free heap pages back to the system (glibc), so that the heap holds about one cut."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def heap_allocations() -> Iterator[bool]:
    """With glibc, serve large blocks from the heap instead of a fresh ``mmap`` each time.

    The analysis allocates and frees activation-sized tensors (tens to hundreds of MB) thousands of
    times; by default glibc maps each one afresh and the kernel zero-fills every page on first touch,
    which here cost as much system time as the model's own arithmetic. Restored (and the heap
    trimmed) on exit; yields whether the setting took effect.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield False
        return
    m_trim_threshold, m_mmap_max = -1, -4
    ok = mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    try:
        yield ok
    finally:
        mallopt(m_mmap_max, 65536)
        mallopt(m_trim_threshold, 128 * 1024)
        trim(0)


def _alternating(runs: dict[Any, Callable[[], Any]], rounds: int) -> dict[Any, list[float]]:
    """Seconds of each run per round, after one warm-up of each: the runs alternate and each round
    starts with the other one, so that every contender sees the same moments of a changing load."""
    order = list(runs)
    times: dict[Any, list[float]] = {key: [] for key in order}
    with torch.no_grad():
        for key in order:
            runs[key]()
        for r in range(rounds):
            for key in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                runs[key]()
                times[key].append(time.perf_counter() - start)
    return times


def _ratio(times: dict[Any, list[float]], a: Any, b: Any) -> float:
    """The median over rounds of ``a``'s time over ``b``'s in the same round."""
    return float(np.median([x / max(y, 1e-9) for x, y in zip(times[a], times[b])]))


def faster_threads(model: nn.Module, x: torch.Tensor, batch_size: int, most: int, rounds: int = 3) -> int:
    """1 or ``most`` threads, whichever runs ``model`` over ``x`` faster: ``rounds`` runs of each
    alternating (see :func:`_alternating`), compared by the median of the per-round ratios (one busy
    moment of the machine moves one ratio, not the choice)."""
    if most <= 1:
        return 1

    def run(n: int) -> Callable[[], Any]:
        def go() -> None:
            with torch_threads(n):
                for i in range(0, len(x), batch_size):
                    model(x[i: i + batch_size])
        return go

    times = _alternating({1: run(1), most: run(most)}, rounds)
    return most if _ratio(times, most, 1) < 1.0 else 1


#: Channels-last is chosen when it runs the model in at most this share of the NCHW time. Both
#: formats give the same measurements (the convolutions round differently in the last bits, which
#: moves a percentile clip range by an ulp at most), so the margin only keeps a tie from being decided
#: by noise. EfficientNet-Lite0 on 50 samples on a 2-core VM: 0.80 with 2 threads, 0.69 with 1 (the
#: 0.85 it was left 2 threads 5 points from the line; one --limit 100 run there chose NCHW).
CHANNELS_LAST_GAIN = 0.95


def faster_channels_last(model: nn.Module, x: torch.Tensor, rounds: int = 3) -> bool:
    """Whether the model runs measurably (over 5%) faster in channels-last memory format here: the
    median over ``rounds`` alternating runs of each format of the per-round ratio (as
    :func:`faster_threads`)."""
    if x.dim() != 4 or x.shape[-1] * x.shape[-2] < 32 * 32:
        return False
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    xc = x.contiguous(memory_format=torch.channels_last)
    times = _alternating({"plain": lambda: model(x), "channels_last": lambda: fast(xc)}, rounds)
    return _ratio(times, "channels_last", "plain") < CHANNELS_LAST_GAIN
