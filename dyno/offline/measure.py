"""Measuring a profile: per-cut latency and codec cost in this process, for either role.

    device = measure("device", model, cuts, samples)    # samples: (N, C, H, W) real inputs
    cloud = measure("cloud", model, cuts, samples, batch_sizes=(1, 8))
    device.cuts[5].head_ms, cloud.cuts[5].tail_ms[8], device.save("device.json")

Both roles are measured with warm-up, repeats and medians, with ``threads`` torch threads (stated
in the profile), and both record the median wire bytes of each option over real inputs (unless
``codecs=False``: ``dyno analyze`` measures bytes and codec times itself, once for both roles).

How heads and tails are timed
    Timing every head and every tail directly costs one model run per cut and batch size. Instead the
    whole model runs under an fx interpreter that times each node (:func:`dyno.graph.node_times`),
    repeated; a head's time is the cumulative sum of its nodes' times in one repeat and a tail's the
    sum of the rest, and the median over repeats is kept (all cuts from the same runs, so they see
    the same machine load). The result is checked on a few cuts against the real head (tail) module,
    timed alternately with node-timed runs; when any check is off by more than ``tolerance`` (15%, or
    ``ABS_TOLERANCE_MS`` for microsecond heads) even after one retry, every head (tail) is timed
    directly instead. The profile's ``method`` says which, with the checks.
"""

from __future__ import annotations

import datetime
import functools
import socket
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx

from dyno import graph, partition
from dyno.errors import ConfigError
from dyno.offline.codecs import codec_costs, codec_options, cut_activations
from dyno.offline.machine import machine_info, repeats_for, time_call, torch_threads
from dyno.offline.profile import BATCH_SIZES, ROLES, CutProfile, Profile
from dyno.progress import NO_PROGRESS, Progress, Tick

__all__ = ["measure", "ABS_TOLERANCE_MS"]

#: Differences below this many milliseconds pass a check whatever the ratio: a head of a few
#: microseconds is mostly Python call overhead, which node timers leave out.
ABS_TOLERANCE_MS = 0.02
#: Seconds each check of a head spends at least (alternating direct and node-timed runs).
HEAD_CHECK_SECONDS = 0.3
#: Seconds the heads timed directly cut by cut spend at least (each run times every head).
WALK_SECONDS = 2.0



def measure(role: str, model: torch.nn.Module, cuts: Sequence[partition.Cut], inputs: torch.Tensor, *,
            model_name: str = "", name: str | None = None, threads: int | None = 1,
            batch_sizes: Sequence[int] = BATCH_SIZES,
            images: Sequence[np.ndarray] | None = None, codec_samples: int = 8, min_seconds: float = 0.5,
            tolerance: float = 0.15, direct: bool = False, codecs: bool = True,
            progress: Progress = NO_PROGRESS) -> Profile:
    """The profile of ``role`` for ``model`` at ``cuts``, measured on real ``inputs`` here.

    - ``"device"``: the head time per cut at batch size one (median of repeats of one input) and, per
      codec option, the median encode time and bytes over ``codec_samples`` inputs.
    - ``"cloud"``: the tail time per batch at each of ``batch_sizes`` (inputs cycled when fewer) and,
      per codec option, the median decode time and bytes.

    The options are those of :func:`codec_options`; ``images`` (uint8, one per input) are what the
    jpeg/webp options of the input cut encode (none without them). ``direct`` times every head or tail
    directly instead of by node timers; ``codecs=False`` leaves the codec times and bytes out.
    """
    if role not in ROLES:
        raise ConfigError(f"role must be 'device' or 'cloud', not {role!r}")
    if role == "cloud" and (not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes)):
        raise ConfigError(f"batch sizes must be integers >= 1, got {batch_sizes!r}")
    gm = partition.trace(model)
    for cut in cuts:
        partition.check(gm, cut)
    with torch_threads(threads) as used:
        if role == "device":
            heads, method = _head_times(model, gm, cuts, inputs[:1].contiguous(), min_seconds=min_seconds,
                                        tolerance=tolerance, direct=direct, progress=progress)
        else:
            tails, method = _tail_times(gm, cuts, inputs, tuple(sorted(batch_sizes)), min_seconds=min_seconds,
                                        tolerance=tolerance, direct=direct, progress=progress)
        costs = _codec_costs(gm, cuts, inputs[:codec_samples], images, progress, role) if codecs else [{} for _ in cuts]
    if role == "device":
        profile_cuts = tuple(CutProfile(id=i, name=cut.name, head_ms=heads[i], encode_ms=_column(costs[i], "encode_ms"),
                                        bytes=_column(costs[i], "bytes")) for i, cut in enumerate(cuts))
    else:
        profile_cuts = tuple(CutProfile(id=i, name=cut.name, tail_ms=tails[i], decode_ms=_column(costs[i], "decode_ms"),
                                        bytes=_column(costs[i], "bytes")) for i, cut in enumerate(cuts))
    plural = "s" if used != 1 else ""
    return Profile(role=role, name=name or f"{role}@{socket.gethostname()} ({used} thread{plural})",
                   model=model_name, threads=used, cuts=profile_cuts, machine=machine_info(used), method=method,
                   samples=len(inputs[:codec_samples]),
                   created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _codec_costs(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], inputs: torch.Tensor,
                 images: Sequence[np.ndarray] | None, progress: Progress, role: str
                 ) -> list[dict[str, dict[str, float]]]:
    """Per cut, every option's median bytes and codec times over ``inputs`` (one cut held at a time)."""
    tick = progress.task(f"{role} profile: {'encode' if role == 'device' else 'decode'}", len(cuts))
    costs = []
    for i, samples in cut_activations(gm, cuts, inputs):
        options = codec_options(first=i == 0, last=i == len(cuts) - 1, image=images is not None)
        costs.append(codec_costs(samples, options, nonnegative=cuts[i].nonnegative,
                                 timed=None if role == "cloud" else 0,
                                 images=images[:len(inputs)] if images is not None and i == 0 else None))
        tick()
    return costs


def _column(costs: dict[str, dict[str, float]], key: str) -> dict[str, float]:
    return {label: cost[key] for label, cost in costs.items()}


# ------------------------------------------------------------------------------------ checking


def _check_points(cuts: Sequence[partition.Cut], count: int = 3) -> list[int]:
    """A few cut indices spread over the model's MACs (never the first or the last cut)."""
    inner = list(range(1, len(cuts) - 1))
    if len(inner) <= count:
        return inner
    total = cuts[-1].device_macs or 1
    picks: list[int] = []
    for share in np.linspace(0.2, 0.8, count):
        best = min(inner, key=lambda i: abs(cuts[i].device_macs / total - share))
        if best not in picks:
            picks.append(best)
    return picks


def _interleaved(gm: torch.fx.GraphModule, part: Callable[[], Any], x: torch.Tensor, position: int, *,
                 head: bool, min_seconds: float) -> tuple[float, float]:
    """(direct ms, cumulative ms) of one head (``head=True``) or tail, measured alternately so that
    both see the same machine load: a direct run of ``part``, then a node-timed run of the model."""
    direct, cumulative = [], []
    once = time_call(part, min_repeats=1, min_seconds=0.0, warmup=1) / 1e3
    repeats = repeats_for(2 * max(once, 1e-4), min_seconds, 5, 60)
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter_ns()
            part()
            direct.append((time.perf_counter_ns() - start) / 1e6)
            row = graph.node_times(gm, x, repeats=1, warmup=0)[0]
            cumulative.append(row[: position + 1].sum() if head else row[position + 1:].sum())
    return float(np.median(direct)), float(np.median(cumulative))


def _check(gm: torch.fx.GraphModule, part: Callable[[], Any], x: torch.Tensor, position: int, *, head: bool,
           min_seconds: float, tolerance: float) -> dict[str, Any]:
    """Node-timed against direct time of one head or tail, with one retry on failure (a check can fail
    on a burst of load from other processes)."""
    for attempt in (1, 2):
        direct, cumulative = _interleaved(gm, part, x, position, head=head, min_seconds=min_seconds * attempt)
        error = cumulative / direct - 1 if direct > 0 else 0.0
        ok = abs(error) <= tolerance or abs(cumulative - direct) <= ABS_TOLERANCE_MS
        if ok:
            break
    return {"direct_ms": round(direct, 4), "cumulative_ms": round(cumulative, 4), "error": round(error, 4),
            "attempts": attempt, "ok": ok}


# ------------------------------------------------------------------------------- heads and tails


def _head_times(model: torch.nn.Module, gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], x: torch.Tensor,
                *, min_seconds: float, tolerance: float, direct: bool, progress: Progress
                ) -> tuple[list[float], dict[str, Any]]:
    """Head ms per cut at batch size one (cut 0, the input, is 0) and how they were obtained."""
    once = time_call(lambda: model(x), min_repeats=1, min_seconds=0, warmup=1) / 1e3
    repeats = repeats_for(once, min_seconds, 10, 200)
    tick = progress.task("device profile: heads", len(_check_points(cuts)) + (len(cuts) if direct else 0))
    method: dict[str, Any] = {"head": "direct"}
    if not direct:
        cumulative = np.cumsum(graph.node_times(gm, x, repeats=repeats), axis=1)
        estimate = [float(np.median(cumulative[:, cut.position])) for cut in cuts]
        estimate[0] = 0.0  # the input itself: nothing runs on the device
        checks = []
        for i in _check_points(cuts):
            head, _ = partition.split(gm, cuts[i])
            checks.append({"cut": i, **_check(gm, functools.partial(head, x), x, cuts[i].position, head=True,
                                               min_seconds=HEAD_CHECK_SECONDS, tolerance=tolerance)})
            tick()
        method = {"head": "cumulative node timers", "checks": checks, "tolerance": tolerance}
        if all(c["ok"] for c in checks):
            return estimate, {**method, "head_repeats": repeats}
        walked, walk_repeats = _walk_heads(gm, cuts, x, once, WALK_SECONDS)
        method["walk_checks"] = [_walk_check(c, walked[c["cut"]], tolerance) for c in checks]
        if all(c["ok"] for c in method["walk_checks"]):
            method["head"] = "direct, every cut from the same runs (cumulative node timers failed the check)"
            return walked, {**method, "head_repeats": walk_repeats}
        method["head"] = "direct (cumulative node timers and the runs cut by cut failed the check)"
    times = [0.0]
    for cut in cuts[1:]:
        head, _ = partition.split(gm, cut)
        times.append(time_call(functools.partial(head, x)))
        tick()
    return times, {**method, "head_repeats": repeats}


def _walk_heads(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], x: torch.Tensor, once: float,
                min_seconds: float) -> tuple[list[float], int]:
    """Head ms per cut at batch size one, every head timed directly from the same runs: the model runs
    as its compiled segments between the cuts (:class:`dyno.graph.Walk`, the very nodes each head
    runs, in order), and a head's time is the time from the start of the run to the end of its cut,
    median over repeats (filling ``min_seconds``; cut 0, the input, is 0). One run times every head,
    where timing each head alone runs the model's first part once per cut."""
    walk = graph.Walk(gm, [cut.position for cut in cuts])
    repeats = repeats_for(once, min_seconds, 10, 400)
    rows = np.zeros((repeats, len(cuts)))
    with torch.no_grad():
        for r in range(-2, repeats):  # two warm-ups
            values: tuple[Any, ...] = (x,)
            start = time.perf_counter_ns()
            for k in range(len(cuts)):
                values = walk.step(k, *values)
                if r >= 0:
                    rows[r, k] = time.perf_counter_ns() - start
    times = [float(t) for t in np.median(rows, axis=0) / 1e6]
    return [0.0, *times[1:]], repeats


def _walk_check(check: dict[str, Any], walked: float, tolerance: float) -> dict[str, Any]:
    """A head timed in the runs cut by cut against the same head timed alone (``check``)."""
    direct = check["direct_ms"]
    error = walked / direct - 1 if direct > 0 else 0.0
    return {"cut": check["cut"], "direct_ms": direct, "walk_ms": round(walked, 4), "error": round(error, 4),
            "ok": abs(error) <= tolerance or abs(walked - direct) <= ABS_TOLERANCE_MS}


def _tail_times(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], inputs: torch.Tensor,
                batch_sizes: tuple[int, ...], *, min_seconds: float, tolerance: float, direct: bool,
                progress: Progress) -> tuple[list[dict[int, float]], dict[str, Any]]:
    """Tail ms per batch at each batch size per cut (the last cut, the output, is 0) and how."""
    checks = len(_check_points(cuts, 2))
    tick = progress.task("cloud profile: tails", len(batch_sizes) + checks + (len(cuts) if direct else 0))
    batches = {b: _batch(inputs, b) for b in batch_sizes}
    method: dict[str, Any] = {"tail": "direct" if direct else "cumulative node timers", "checks": [],
                              "tolerance": tolerance}
    tails: list[dict[int, float]]
    if not direct:
        tails = _tail_estimates(gm, cuts, batches, min_seconds, tick)
        method["checks"] = _tail_checks(gm, cuts, batches, min_seconds, tolerance, tick)
        if all(c["ok"] for c in method["checks"]):
            return tails, method
        method["tail"] = "direct (cumulative node timers failed the check)"
    tails = [{} for _ in cuts]
    for i, cut in enumerate(cuts[:-1]):
        head, tail = partition.split(gm, cut)
        for b, x in batches.items():
            with torch.no_grad():
                activation = head(x)
            tails[i][b] = time_call(functools.partial(tail, activation), min_repeats=3, min_seconds=min_seconds)
        tick()
    tails[-1] = {b: 0.0 for b in batch_sizes}
    return tails, method


def _tail_estimates(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], batches: dict[int, torch.Tensor],
                    min_seconds: float, tick: Tick) -> list[dict[int, float]]:
    """Per cut and batch size, the median sum of the node times after the cut."""
    tails: list[dict[int, float]] = [{} for _ in cuts]
    for b, x in batches.items():
        once = graph.node_times(gm, x, repeats=1, warmup=1)[0].sum() / 1e3
        rows = graph.node_times(gm, x, repeats=repeats_for(once, min_seconds, 3, 50), warmup=0)
        suffix = rows.sum(axis=1, keepdims=True) - np.cumsum(rows, axis=1)
        for i, cut in enumerate(cuts):
            tails[i][b] = float(np.median(suffix[:, cut.position]))
        tails[-1][b] = 0.0
        tick()
    return tails


def _tail_checks(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], batches: dict[int, torch.Tensor],
                 min_seconds: float, tolerance: float, tick: Tick) -> list[dict[str, Any]]:
    """Direct against node-timed tails at two cuts, at the smallest and the largest batch size."""
    checks = []
    sizes = list(batches)
    for i in _check_points(cuts, 2):
        head, tail = partition.split(gm, cuts[i])
        for b in (sizes[0], sizes[-1]):
            with torch.no_grad():
                activation = head(batches[b])
            checks.append({"cut": i, "batch": b,
                           **_check(gm, functools.partial(tail, activation), batches[b], cuts[i].position, head=False,
                                    min_seconds=min_seconds, tolerance=tolerance)})
        tick()
    return checks


def _batch(inputs: torch.Tensor, b: int) -> torch.Tensor:
    """``b`` real inputs (cycled when fewer are at hand)."""
    index = torch.arange(b) % len(inputs)
    return inputs[index].contiguous()
