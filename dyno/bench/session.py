"""One system's run through the real runtime: a device client over labelled inputs, timed, summarised.

The demo runs one session per compared system, ``dyno run`` runs one; each feeds labelled inputs
through a ``dyno.runtime.Client`` (its policy, an emulated device and uplink, a real server) as fast
as the client takes them, and records every result for the live display, the summary and the plot.

    xs, ys = labelled("fmnist-resnet", None, 400)
    state = SystemRun("dyno", duration=30.0)
    config = ClientConfig(server="127.0.0.1:50051", policy="dyno", slo=DEFAULT_SLO)
    summary = run_system(state, plan, model, Workload(xs=xs, ys=ys, duration=30.0), config,
                         trace=trace, device=Device(slowdown=2.0))
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from dyno.errors import ConfigError
from dyno.packing import label
from dyno.runtime import Client, ClientConfig
from dyno.runtime.results import Result, summarize

__all__ = ["Workload", "Point", "SystemRun", "labelled", "run_system", "choice_label"]


def labelled(model_name: str, data: str | None, n: int) -> tuple[torch.Tensor, list[int]]:
    """``n`` labelled inputs spread evenly over the model's dataset (or ``data``), deterministic."""
    from dyno import zoo

    entry = zoo.get_model(model_name)
    name = data or entry.default_data
    if name is None:
        raise ConfigError(f"model {model_name} has no default dataset; pass --data")
    if n < 1:
        raise ConfigError("--n must be >= 1")
    dataset = zoo.load_dataset(name, model=entry)
    indices = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int)
    xs, ys = [], []
    for i in indices:
        x, y = dataset[int(i)]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    return torch.stack(xs), ys


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
    """Labelled inputs, cycled, fed for ``duration`` seconds or ``n`` inputs (whichever ends first)."""

    xs: torch.Tensor
    ys: list[int]
    duration: float | None = None
    n: int | None = None

    def __post_init__(self) -> None:
        if len(self.xs) != len(self.ys) or not len(self.ys):
            raise ConfigError(f"a workload needs as many labels as inputs, got {len(self.xs)} and {len(self.ys)}")
        if self.duration is None and self.n is None:
            raise ConfigError("a workload needs a duration or a number of inputs")


@dataclasses.dataclass
class Point:
    """One finished inference as the display and the plot see it."""

    t: float
    cut: int
    codec: str | None
    bits: int | None
    where: str
    correct: bool
    rate_bps: float
    estimate_bps: float
    nbytes: int
    index: int = 0          # which of the workload's inputs


def choice_label(codec: str | None, bits: int | None) -> str:
    return "device" if codec is None else label(codec, bits)


class SystemRun:
    """State of one system's run, read by the live display while it runs."""

    def __init__(self, name: str, duration: float, round: int = 0):
        self.name, self.duration, self.round = name, duration, round
        self.points: list[Point] = []
        self.start = 0.0
        self.done = False
        self.summary: dict[str, Any] | None = None
        self.link: Any = None
        self.client: Any = None
        self.errors: list[str] = []   # why the cloud was unreachable, as the client saw it
        self.stats: dict[str, int] = {}   # the client's counters (replies, timeouts, overloaded, ...)
        self.estimates: Any = None        # the client's estimates when it closed

    @property
    def elapsed(self) -> float:
        return 0.0 if not self.start else time.perf_counter() - self.start

    @property
    def cloud_replies(self) -> int:
        return sum(p.where == "cloud" for p in self.points)


def run_system(state: SystemRun, plan: Any, model: Any, workload: Workload, config: ClientConfig, *,
               trace: Any = None, device: Any = None, splits: Any = None, initial_bandwidth_bps: float | None = None,
               slowdown: float | None = None, ready: Callable[[], None] | None = None,
               overheads_ms: tuple[float, float] = (0.0, 0.0), server_factor: float = 1.0,
               server_overhead_ms: float = 0.0, server_batch: int = 1) -> dict[str, Any]:
    """Run a client configured by ``config`` (its policy is the run's system) over ``workload``, through
    the emulated ``trace`` and ``device`` if given; returns its summary (``SUMMARY_KEYS``).

    ``initial_bandwidth_bps`` and ``slowdown`` seed the monitors (default: the trace's first rate and the
    device's slowdown); ``ready()`` is called once the client is built, just before the clock starts
    (``dyno bench`` starts the kernel link's rate replay there); ``overheads_ms`` (offloaded, device-only)
    are the client's own per-inference costs (``dyno.bench.calibrate``) the policy prices, and
    ``server_factor``, ``server_overhead_ms`` and ``server_batch`` the server's speed against its profile,
    its handling per request and the batches it ran cloud-only's requests in, as calibrated (cloud-only,
    at the input cut), until its replies say."""
    from dyno.emulate.link import Link
    from dyno.monitor import Monitors

    link = Link(trace) if trace is not None else None
    initial = initial_bandwidth_bps or (trace.rate_bps(0.0) if trace is not None else 1e6)
    monitors = Monitors(plan, initial_bandwidth_bps=max(initial, 1e3),
                        initial_slowdown=slowdown if slowdown else float(getattr(device, "slowdown", 1.0)),
                        initial_server_factor=server_factor, overheads_ms=overheads_ms,
                        initial_server_factors={plan.cuts[0].id: server_factor},
                        initial_batches={plan.cuts[0].id: server_batch},
                        initial_server_overhead_ms=server_overhead_ms,
                        codec_slowdown=float(getattr(device, "codec_slowdown", 1.0)))
    results: list[Result] = []
    state.link = link
    client = Client(plan, model, config, link=link, device=device, monitors=monitors, splits=splits,
                    on_result=lambda result: _record(state, workload, result, initial))
    state.client = client
    try:
        if ready is not None:
            ready()
        if link is not None:
            link.start()
        state.start = time.perf_counter()
        results = list(client.map(_feed(workload, state.start)))
        elapsed = max(r.finished for r in results) - state.start if results else 0.0
    finally:
        state.errors = list(client.errors)
        state.estimates = client.estimates()
        client.close()
        state.stats = dict(client.stats)
        state.client = None
    labels = [workload.ys[r.index % len(workload.ys)] for r in results]
    state.summary, state.done = summarize(results, labels, elapsed_s=elapsed), True
    return state.summary


def _feed(workload: Workload, start: float) -> Iterator[torch.Tensor]:
    deadline = start + workload.duration if workload.duration else None
    i = 0
    while (deadline is None or time.perf_counter() < deadline) and (workload.n is None or i < workload.n):
        yield workload.xs[i % len(workload.xs)]
        i += 1


def _record(state: SystemRun, workload: Workload, result: Result, initial_bps: float) -> None:
    client, link = state.client, state.link
    state.points.append(Point(
        t=time.perf_counter() - state.start, cut=result.cut, codec=result.codec, bits=result.bits,
        where=result.where, correct=result.top1 == workload.ys[result.index % len(workload.ys)],
        rate_bps=link.rate_bps() if link is not None else float("nan"),
        estimate_bps=client.estimates().bandwidth_bps if client is not None else initial_bps, nbytes=result.bytes,
        index=result.index % len(workload.ys)))
