"""Profiles: per-cut latency and codec cost measured in this process.

A *device profile* holds, per cut, the head's time at batch size one and the encode time of every
codec option; a *cloud profile* holds the tail's time per batch at batch sizes 1..32 and the decode
times. Both are measured with warm-up, repeats and medians, with ``threads`` torch threads (stated in
the profile), and both record the median wire bytes of each option over a sample of real inputs.

A device profile can be measured on the real device and combined with a cloud profile measured on
the server (``dyno profile MODEL --role device|cloud --out FILE``; ``dyno analyze`` takes both, or
measures both itself). Profiles are versioned JSON.

How heads and tails are timed
    Timing every head and every tail directly costs one model run per cut and batch size. Instead the
    whole model runs under an fx interpreter that times each node (``perf_counter_ns`` around the
    node's call), repeated; a head's time is the cumulative sum of its nodes' times in one repeat and
    a tail's the sum of the rest, and the median over repeats is kept (all cuts from the same runs, so
    they see the same machine load). The result is checked on a few cuts against the real head (tail)
    module, timed alternately with node-timed runs; when any check is off by more than ``tolerance``
    (15%, or ``ABS_TOLERANCE_MS`` for microsecond heads) even after one retry, every head (tail) is
    timed directly instead. The profile's ``method`` says which, with the checks.

    >>> device = measure_device(model, cuts, samples)       # samples: (N, C, H, W) real inputs
    >>> cloud = measure_cloud(model, cuts, samples)
    >>> device.cuts[5].head_ms, cloud.cuts[5].tail_ms[8], device.save("device.json")
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.fx

from dyno import partition
from dyno.errors import ConfigError, PlanError

__all__ = ["BATCH_SIZES", "IMAGE_QUALITIES", "FORMAT", "VERSION", "CutProfile", "Profile",
           "measure_device", "measure_cloud", "codec_options", "codec_costs", "walk", "node_times",
           "time_call", "torch_threads", "sample_activations", "label"]

FORMAT = "dyno-profile"
VERSION = 1
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
IMAGE_QUALITIES = (30, 40, 50, 60, 70, 80, 90, 95)
QUANT_CODEC = "shuffle-lz4"
ROLES = ("device", "cloud")


# ------------------------------------------------------------------------------------- the file


@dataclasses.dataclass(frozen=True, kw_only=True)
class CutProfile:
    """One cut's measurements. Device profiles fill ``head_ms`` and ``encode_ms``; cloud profiles
    ``tail_ms`` (batch size -> ms per batch) and ``decode_ms``. Codec maps are keyed by option label
    (``"fp32"``, ``"fp16"``, ``"shuffle-lz4:8"``, ``"jpeg:90"``); ``bytes`` is the median wire size."""

    id: int
    name: str
    head_ms: float | None = None
    tail_ms: dict[int, float] | None = None
    encode_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    decode_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    bytes: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Profile:
    """Measurements of one role (``"device"`` or ``"cloud"``) for one model's cuts on one machine."""

    role: str
    name: str
    model: str
    threads: int
    cuts: tuple[CutProfile, ...]
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)
    method: dict[str, Any] = dataclasses.field(default_factory=dict)
    samples: int = 0
    created: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PlanError(f"profile role must be 'device' or 'cloud', not {self.role!r}")
        for cut in self.cuts:
            if self.role == "device":
                ok = cut.head_ms is not None and _finite(cut.head_ms) and cut.head_ms >= 0
            else:
                ok = bool(cut.tail_ms) and all(isinstance(b, int) and b >= 1 and _finite(t) and t >= 0
                                               for b, t in cut.tail_ms.items())
            codec = cut.encode_ms if self.role == "device" else cut.decode_ms
            ok = ok and all(_finite(v) and v >= 0 for v in (*codec.values(), *cut.bytes.values()))
            if not ok:
                raise PlanError(f"profile {self.name!r}: cut {cut.id} ({cut.name}) has missing, negative or "
                                f"non-finite {self.role} times")

    def check_cuts(self, cuts: Sequence[partition.Cut]) -> None:
        """Refuse a profile measured on other cuts (another model or architecture)."""
        if [c.name for c in self.cuts] != [c.name for c in cuts]:
            raise PlanError(f"{self.role} profile {self.name!r} was measured for {self.model} with "
                            f"{len(self.cuts)} cuts that do not match this model's {len(cuts)} cuts; "
                            f"measure it again with `dyno profile MODEL --role {self.role}`")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for cut in data["cuts"]:
            if cut["tail_ms"] is not None:
                cut["tail_ms"] = {str(b): t for b, t in sorted(cut["tail_ms"].items())}
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: Any) -> "Profile":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PlanError("not a dyno profile (the 'format' field is missing or wrong)")
        if data.get("version") != VERSION:
            raise PlanError(f"profile version {data.get('version')!r} is not supported (this dyno reads "
                            f"version {VERSION}); measure it again with `dyno profile`")
        try:
            fields = {k: v for k, v in data.items() if k not in ("format", "version")}
            cuts = []
            for c in fields.pop("cuts"):
                c = dict(c)
                if c.get("tail_ms") is not None:
                    c["tail_ms"] = {int(b): float(t) for b, t in c["tail_ms"].items()}
                cuts.append(CutProfile(**c))
            return cls(**fields, cuts=tuple(cuts))
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PlanError(f"malformed profile: {type(error).__name__}: {error}") from error

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, role: str | None = None) -> "Profile":
        path = Path(path)
        try:
            data = json.loads(path.read_text(), parse_constant=_reject_constant)
        except FileNotFoundError:
            raise PlanError(f"no profile at {path}; measure one with `dyno profile MODEL --role "
                            f"{role or 'device'} --out {path}`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PlanError(f"cannot read profile {path}: {error}") from error
        profile = cls.from_dict(data)
        if role is not None and profile.role != role:
            raise PlanError(f"{path} is a {profile.role} profile, not a {role} profile")
        return profile


def _reject_constant(name: str) -> Any:
    raise PlanError(f"the profile contains {name}, which is not a valid number")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------------------------- fx running


def walk(gm: torch.fx.GraphModule, x: torch.Tensor, cuts: Sequence[partition.Cut]
         ) -> Iterator[tuple[int, torch.Tensor]]:
    """Run ``gm`` on ``x`` once, yielding ``(index into cuts, activation)`` at every cut in order.

    Values are freed as soon as no later node needs them, so a walk suspended at a cut holds about
    that cut's activation only: many suspended walks (one per batch) hold one cut of a whole data set.
    """
    wanted = {cut.name: i for i, cut in enumerate(cuts)}
    interpreter = torch.fx.Interpreter(gm, garbage_collect_values=True)
    interpreter.env = env = {}
    interpreter.args_iter = iter([x])
    last_uses = interpreter.user_to_last_uses
    for node in gm.graph.nodes:
        if node.op == "output":
            return
        with torch.no_grad():  # not around the yield: grad mode must not leak into the caller
            env[node] = interpreter.run_node(node)
        for dead in last_uses.get(node, ()):
            del env[dead]
        index = wanted.get(node.name)
        if index is not None:
            yield index, env[node]  # a cut's tensor is live, so still in env


class _NodeTimer(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.index = {node: i for i, node in enumerate(gm.graph.nodes)}
        self.times = np.zeros(len(self.index))

    def run_node(self, n: torch.fx.Node) -> Any:
        # Only the call itself is timed: fetching arguments from the interpreter's environment is
        # overhead the real (compiled) head and tail do not have.
        if n.op not in ("call_module", "call_function", "call_method"):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.op == "call_module":
            fn = self.fetch_attr(n.target)
        elif n.op == "call_function":
            fn = n.target
        else:
            obj, *args = args
            fn = getattr(obj, n.target)
        start = time.perf_counter_ns()
        value = fn(*args, **kwargs)
        self.times[self.index[n]] += time.perf_counter_ns() - start
        return value


def node_times(gm: torch.fx.GraphModule, x: torch.Tensor, *, repeats: int, warmup: int = 2) -> np.ndarray:
    """Milliseconds per node of ``gm`` on ``x``: an array (repeats, nodes), one row per run."""
    timer = _NodeTimer(gm)
    rows = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            timer.times[:] = 0
            timer.run(x)
            if i >= warmup:
                rows.append(timer.times / 1e6)
    return np.array(rows)


def time_call(fn: Callable[[], Any], *, min_repeats: int = 5, max_repeats: int = 200, min_seconds: float = 0.3,
              warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over at least ``min_repeats`` runs and ``min_seconds``."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        began = time.perf_counter()
        while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - began < min_seconds):
            start = time.perf_counter_ns()
            fn()
            times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(times))


def _repeats_for(seconds_per_run: float, min_seconds: float, min_repeats: int, max_repeats: int) -> int:
    return int(min(max_repeats, max(min_repeats, math.ceil(min_seconds / max(seconds_per_run, 1e-6)))))


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


def _positions(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut]) -> list[int]:
    """Index of each cut's last head node in ``gm``'s node order (the cut's ``position``)."""
    nodes = list(gm.graph.nodes)
    for cut in cuts:
        if cut.position >= len(nodes) or cut.name not in {n.name for n in nodes[: cut.position + 1]}:
            raise PlanError(f"cut {cut.id} ({cut.name}) is not in this model's graph; list the cuts of "
                            "this very model")
    return [cut.position for cut in cuts]


# --------------------------------------------------------------------------------- head / tail


def _check_points(cuts: Sequence[partition.Cut], count: int = 3) -> list[int]:
    """A few cut indices spread over the model's MACs (never the first or the last cut)."""
    inner = list(range(1, len(cuts) - 1))
    if len(inner) <= count:
        return inner
    total = cuts[-1].device_macs or 1
    picks = []
    for share in np.linspace(0.2, 0.8, count):
        best = min(inner, key=lambda i: abs(cuts[i].device_macs / total - share))
        if best not in picks:
            picks.append(best)
    return picks


def _interleaved_check(gm: torch.fx.GraphModule, part: Callable[[], Any], x: torch.Tensor, position: int, *,
                       head: bool, min_seconds: float) -> tuple[float, float]:
    """(direct ms, cumulative ms) of one head (``head=True``) or tail, measured alternately so that
    both see the same machine load: a direct run of ``part``, then a node-timed run of the model."""
    direct, cumulative = [], []
    once = time_call(part, min_repeats=1, min_seconds=0.0, warmup=1) / 1e3
    repeats = _repeats_for(2 * max(once, 1e-4), min_seconds, 5, 60)
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter_ns()
            part()
            direct.append((time.perf_counter_ns() - start) / 1e6)
            row = node_times(gm, x, repeats=1, warmup=0)[0]
            cumulative.append(row[: position + 1].sum() if head else row[position + 1:].sum())
    return float(np.median(direct)), float(np.median(cumulative))


#: Differences below this many milliseconds pass a check whatever the ratio: a head of a few
#: microseconds is mostly Python call overhead, which node timers leave out.
ABS_TOLERANCE_MS = 0.02


def _check(gm, part, x, position, *, head, min_seconds, tolerance) -> dict[str, Any]:
    for attempt in (1, 2):  # one retry: a check can fail on a burst of load from other processes
        direct, cumulative = _interleaved_check(gm, part, x, position, head=head,
                                                min_seconds=min_seconds * attempt)
        error = cumulative / direct - 1 if direct > 0 else 0.0
        if abs(error) <= tolerance or abs(cumulative - direct) <= ABS_TOLERANCE_MS:
            break
    return {"direct_ms": round(direct, 4), "cumulative_ms": round(cumulative, 4), "error": round(error, 4),
            "attempts": attempt, "ok": abs(error) <= tolerance or abs(cumulative - direct) <= ABS_TOLERANCE_MS}


def _head_times(model, gm, cuts, x, *, repeats, tolerance, direct, progress, min_seconds=0.3
                ) -> tuple[list[float], dict]:
    positions = _positions(gm, cuts)
    method: dict[str, Any] = {}
    if not direct:
        rows = node_times(gm, x, repeats=repeats)
        cumulative = np.cumsum(rows, axis=1)
        estimate = [float(np.median(cumulative[:, p])) for p in positions]
        estimate[0] = 0.0  # the input itself: nothing runs on the device
        checks = []
        for i in _check_points(cuts):
            head, _ = partition.split(gm, cuts[i])
            checks.append({"cut": i, **_check(gm, lambda: head(x), x, positions[i], head=True,
                                               min_seconds=min_seconds, tolerance=tolerance)})
            progress()
        method = {"head": "cumulative node timers", "checks": checks, "tolerance": tolerance}
        if all(c["ok"] for c in checks):
            return estimate, method
        method["head"] = "direct (cumulative node timers failed the check)"
    else:
        method = {"head": "direct"}
    times = [0.0]
    for cut in cuts[1:]:
        head, _ = partition.split(gm, cut)
        times.append(time_call(lambda: head(x)))
        progress()
    return times, method


def _tail_times(model, gm, cuts, inputs, batch_sizes, *, min_seconds, tolerance, direct, progress
                ) -> tuple[list[dict[int, float]], dict]:
    positions = _positions(gm, cuts)
    tails: list[dict[int, float]] = [{} for _ in cuts]
    method: dict[str, Any] = {"tail": "direct" if direct else "cumulative node timers", "checks": [],
                              "tolerance": tolerance}
    batches = {b: _batch(inputs, b) for b in batch_sizes}
    if not direct:
        for b in batch_sizes:
            x = batches[b]
            once = node_times(gm, x, repeats=1, warmup=1)[0].sum() / 1e3
            rows = node_times(gm, x, repeats=_repeats_for(once, min_seconds, 3, 50), warmup=0)
            total = rows.sum(axis=1, keepdims=True)
            suffix = total - np.cumsum(rows, axis=1)
            for i, p in enumerate(positions):
                tails[i][b] = float(np.median(suffix[:, p]))
            tails[-1][b] = 0.0
            progress()
        checks = []
        for i in _check_points(cuts, 2):
            head, tail = partition.split(gm, cuts[i])
            for b in (batch_sizes[0], batch_sizes[-1]):
                with torch.no_grad():
                    activation = head(batches[b])
                checks.append({"cut": i, "batch": b,
                               **_check(gm, lambda: tail(activation), batches[b], positions[i], head=False,
                                        min_seconds=min_seconds, tolerance=tolerance)})
            progress()
        method["checks"] = checks
        if all(c["ok"] for c in checks):
            return tails, method
        method["tail"] = "direct (cumulative node timers failed the check)"
    for i, cut in enumerate(cuts[:-1]):
        head, tail = partition.split(gm, cut)
        for b in batch_sizes:
            with torch.no_grad():
                activation = head(batches[b])
            tails[i][b] = time_call(lambda: tail(activation), min_repeats=3, min_seconds=min_seconds)
        progress()
    for b in batch_sizes:
        tails[-1][b] = 0.0
    return tails, method


def _batch(inputs: torch.Tensor, b: int) -> torch.Tensor:
    """``b`` real inputs (cycled when fewer are at hand)."""
    index = torch.arange(b) % len(inputs)
    return inputs[index].contiguous()


# --------------------------------------------------------------------------------------- codecs


def codec_options(cut: partition.Cut, *, first: bool, last: bool, image: bool = True,
                  codecs: Sequence[str] = (QUANT_CODEC,)) -> list[tuple[str, int | None]]:
    """The (codec, bits) options a plan lists for ``cut``: none on the last cut; else fp32, fp16 and
    each quantising codec at bits 1..16; on the input cut also jpeg/webp at ``IMAGE_QUALITIES``."""
    if last:
        return []
    options: list[tuple[str, int | None]] = [("fp32", None), ("fp16", None)]
    options += [(codec, bits) for codec in codecs for bits in range(1, 17)]
    if first and image:
        options += [(codec, q) for codec in ("jpeg", "webp") for q in IMAGE_QUALITIES]
    return options


def label(codec: str, bits: int | None) -> str:
    return codec if bits is None else f"{codec}:{bits}"


def codec_costs(samples: Sequence[np.ndarray], options: Sequence[tuple[str, int | None]], *,
                nonnegative: bool, clip: dict[str, tuple[float, float] | None] | None = None,
                images: Sequence[np.ndarray] | None = None, timing: bool = True
                ) -> dict[str, dict[str, float]]:
    """Encode every sample with every option for real: per option label, the median ``bytes``,
    ``encode_ms`` and ``decode_ms`` over the samples (one activation each, no batch dimension).

    ``clip`` maps an option label to the range it quantises with. Image options (jpeg/webp) encode
    ``images`` (uint8 H x W x C, one per sample) instead of the activations.
    """
    from dyno import codec as dcodec

    clip = clip or {}
    out: dict[str, dict[str, float]] = {}
    for codec, bits in options:
        key = label(codec, bits)
        if codec in ("jpeg", "webp"):
            if images is None:
                continue
            data = images
        else:
            data = samples
        sizes, enc, dec = [], [], []
        for x in data:
            kwargs = _encode_kwargs(codec, bits, nonnegative=nonnegative, clip=clip.get(key))
            start = time.perf_counter_ns()
            encoded = dcodec.encode(x, **kwargs)
            middle = time.perf_counter_ns()
            if timing:
                dcodec.decode(encoded, dcodec.Expected(shape=tuple(x.shape), **_expected_kwargs(codec)))
            end = time.perf_counter_ns()
            sizes.append(encoded.nbytes)
            enc.append((middle - start) / 1e6)
            dec.append((end - middle) / 1e6)
        out[key] = {"bytes": float(np.median(sizes)), "encode_ms": float(np.median(enc)),
                    "decode_ms": float(np.median(dec))}
    return out


def _encode_kwargs(codec: str, bits: int | None, *, nonnegative: bool, clip) -> dict[str, Any]:
    if codec in ("jpeg", "webp"):
        return {"mode": codec, "bits": bits}
    if codec in ("fp32", "fp16"):
        return {"mode": codec}
    return {"mode": codec, "bits": bits, "nonnegative": nonnegative, "clip": clip}


def _expected_kwargs(codec: str) -> dict[str, Any]:
    return {}


# -------------------------------------------------------------------------------------- measuring


def _machine(threads_used: int) -> dict[str, Any]:
    return {"host": socket.gethostname(), "platform": platform.platform(), "processor": platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads_used,
            "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def _default_name(role: str, threads_used: int) -> str:
    return f"{role}@{socket.gethostname()} ({threads_used} thread{'s' if threads_used != 1 else ''})"


def sample_activations(gm: torch.fx.GraphModule, cuts: Sequence[partition.Cut], inputs: torch.Tensor
                       ) -> list[list[np.ndarray]]:
    """Per cut, the activation of each input (one sample each) as a float32 numpy array."""
    per_cut: list[list[np.ndarray]] = [[] for _ in cuts]
    with torch.no_grad():
        for x in inputs:
            for i, value in walk(gm, x.unsqueeze(0), cuts):
                per_cut[i].append(np.ascontiguousarray(value[0].detach().float().numpy()))
    return per_cut


def measure_device(model: torch.nn.Module, cuts: Sequence[partition.Cut], inputs: torch.Tensor, *,
                   model_name: str = "", name: str | None = None, threads: int | None = 1,
                   options: Callable[[partition.Cut, int], list[tuple[str, int | None]]] | None = None,
                   images: Sequence[np.ndarray] | None = None, codec_samples: int = 8,
                   min_seconds: float = 0.5, tolerance: float = 0.15, direct: bool = False,
                   progress: Callable[[str, int], Callable[[], None]] | None = None) -> Profile:
    """The device profile: head time per cut at batch size one (median of repeats of one real input)
    and, per codec option, the median encode time and bytes over ``codec_samples`` real inputs.

    ``options(cut, index)`` lists the options of a cut (default :func:`codec_options`).
    """
    gm = partition.trace(model)
    options = options or _default_options(cuts)
    progress = progress or _no_progress
    with torch_threads(threads) as used:
        x = inputs[:1].contiguous()
        once = time_call(lambda: model(x), min_repeats=1, min_seconds=0, warmup=1) / 1e3
        repeats = _repeats_for(once, min_seconds, 10, 200)
        tick = progress("device profile: heads", len(_check_points(cuts)) + (len(cuts) if direct else 0))
        heads, method = _head_times(model, gm, cuts, x, repeats=repeats, tolerance=tolerance, direct=direct,
                                    progress=tick)
        per_cut = sample_activations(gm, cuts, inputs[:codec_samples])
        tick = progress("device profile: encode", len(cuts))
        costs = []
        for i, cut in enumerate(cuts):
            costs.append(codec_costs(per_cut[i], options(cut, i), nonnegative=cut.nonnegative,
                                     images=images[:codec_samples] if images is not None and i == 0 else None))
            tick()
    method["head_repeats"] = repeats
    profile_cuts = tuple(CutProfile(id=i, name=cut.name, head_ms=heads[i],
                                    encode_ms={k: v["encode_ms"] for k, v in costs[i].items()},
                                    bytes={k: v["bytes"] for k, v in costs[i].items()})
                         for i, cut in enumerate(cuts))
    return Profile(role="device", name=name or _default_name("device", used), model=model_name, threads=used,
                   cuts=profile_cuts, machine=_machine(used), method=method, samples=len(inputs[:codec_samples]),
                   created=_now())


def measure_cloud(model: torch.nn.Module, cuts: Sequence[partition.Cut], inputs: torch.Tensor, *,
                  model_name: str = "", name: str | None = None, threads: int | None = 1,
                  batch_sizes: Sequence[int] = BATCH_SIZES,
                  options: Callable[[partition.Cut, int], list[tuple[str, int | None]]] | None = None,
                  images: Sequence[np.ndarray] | None = None, codec_samples: int = 8,
                  min_seconds: float = 0.5, tolerance: float = 0.15, direct: bool = False,
                  progress: Callable[[str, int], Callable[[], None]] | None = None) -> Profile:
    """The cloud profile: tail time per batch at each of ``batch_sizes`` (real inputs, cycled if
    fewer) and, per codec option, the median decode time over ``codec_samples`` real inputs."""
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be integers >= 1, got {batch_sizes!r}")
    gm = partition.trace(model)
    options = options or _default_options(cuts)
    progress = progress or _no_progress
    with torch_threads(threads) as used:
        checks = len(_check_points(cuts, 2))
        tick = progress("cloud profile: tails", len(batch_sizes) + checks + (len(cuts) if direct else 0))
        tails, method = _tail_times(model, gm, cuts, inputs, tuple(sorted(batch_sizes)), min_seconds=min_seconds,
                                    tolerance=tolerance, direct=direct, progress=tick)
        per_cut = sample_activations(gm, cuts, inputs[:codec_samples])
        tick = progress("cloud profile: decode", len(cuts))
        costs = []
        for i, cut in enumerate(cuts):
            costs.append(codec_costs(per_cut[i], options(cut, i), nonnegative=cut.nonnegative,
                                     images=images[:codec_samples] if images is not None and i == 0 else None))
            tick()
    profile_cuts = tuple(CutProfile(id=i, name=cut.name, tail_ms=tails[i],
                                    decode_ms={k: v["decode_ms"] for k, v in costs[i].items()},
                                    bytes={k: v["bytes"] for k, v in costs[i].items()})
                         for i, cut in enumerate(cuts))
    return Profile(role="cloud", name=name or _default_name("cloud", used), model=model_name, threads=used,
                   cuts=profile_cuts, machine=_machine(used), method=method, samples=len(inputs[:codec_samples]),
                   created=_now())


def _default_options(cuts: Sequence[partition.Cut]):
    return lambda cut, i: codec_options(cut, first=i == 0, last=i == len(cuts) - 1)


def _no_progress(description: str, total: int) -> Callable[[], None]:
    return lambda: None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
