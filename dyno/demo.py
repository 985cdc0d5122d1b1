"""``dyno demo`` and ``dyno run``: the whole system on one machine, measured.

``demo`` starts a cloud server on localhost (``dyno serve`` in a child process: its own interpreter,
the "cloud" core), then runs each compared system in turn - by default DynO, device-only and
cloud-only - as a device client in this process with:

- an emulated slow device (``dyno.emulate.device``: each head, encoding and fallback tail padded to
  k_d times its measured time, or a cgroup v1 CPU quota with ``device_emulation="cgroup"``), torch
  pinned to one thread here;
- an emulated uplink (``dyno.emulate.link``: a token bucket under the client's send path) replaying a
  bandwidth pattern, the built-in 8 -> 1 -> 0.3 -> 4 Mbit/s or a trace file.

Every system replays the *same* pattern for the *same* wall time (one pass of the pattern), feeding
labelled inputs as fast as it can take them (cycling through ``n`` distinct inputs), so the systems
see identical conditions and throughput is a fair comparison. A live display shows the bandwidth
(true and estimated), the chosen cut and bits, throughput and accuracy; at the end a summary table
and a PNG timeline (bandwidth, cut, bits, throughput over time).

    summary = demo(model="fmnist-resnet", tier="low")     # {"systems": {NAME: {...}}, ...}
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from dyno.errors import ConfigError, RuntimeServiceError
from dyno.runtime.results import Result, summarize

__all__ = ["DEFAULT_SLO", "BUILTIN_PATTERN_MBPS", "builtin_trace", "demo", "run_client", "print_summary", "ServerProcess"]

#: DynO's objective in the demo: the most throughput, losing at most one point of top-1 against the
#: fp32 model (without an accuracy bound any scheduler sends 1-bit noise). The onloading variant,
#: "throughput,cloud_cost;drop<=1", trades up to 2% of *predicted* throughput for less cloud compute.
DEFAULT_SLO = "throughput;drop<=1"

#: The default uplink pattern, Mbit/s, one step per ``segment_s`` seconds.
BUILTIN_PATTERN_MBPS = (8.0, 1.0, 0.3, 4.0)


def builtin_trace(segment_s: float = 7.5) -> Any:
    """8 -> 1 -> 0.3 -> 4 Mbit/s, ``segment_s`` seconds each, looped."""
    from dyno.emulate.traces import Trace

    if not segment_s > 0:
        raise ConfigError("segment_s must be > 0")
    times = [i * segment_s for i in range(len(BUILTIN_PATTERN_MBPS) + 1)]
    return Trace(times, [r * 1e6 for r in BUILTIN_PATTERN_MBPS], name="builtin 8-1-0.3-4 Mbit/s")


# ------------------------------------------------------------------------------------ the server


class ServerProcess:
    """``dyno serve`` as a child process on a free loopback port; stopped with SIGTERM (graceful)."""

    def __init__(self, plan_path: str | Path, *, weights: str = "trained", threads: int = 1,
                 extra: Sequence[str] = (), timeout: float = 120.0):
        self._dir = tempfile.TemporaryDirectory(prefix="dyno-serve-")
        ready = Path(self._dir.name) / "ready.json"
        command = [sys.executable, "-m", "dyno", "serve", "--plan", str(plan_path), "--port", "0",
                   "--weights", weights, "--threads", str(threads), "--ready-file", str(ready), *extra]
        self.log_path = Path(self._dir.name) / "serve.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeServiceError("the demo server did not start:\n" + self.log_path.read_text()[-2000:])
            time.sleep(0.05)
        self.info = json.loads(ready.read_text())
        self.address = self.info["address"]

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


# ------------------------------------------------------------------------------------ data


def _labelled(model_name: str, data: str | None, n: int) -> tuple[torch.Tensor, list[int]]:
    """``n`` labelled inputs spread evenly over the dataset (deterministic)."""
    from dyno import zoo

    entry = zoo.get_model(model_name)
    name = data or entry.default_data
    if name is None:
        raise ConfigError(f"model {model_name} has no default dataset; pass --data")
    dataset = zoo.load_dataset(name, model=entry)
    if n < 1:
        raise ConfigError("--n must be >= 1")
    indices = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int)
    xs, ys = [], []
    for i in indices:
        x, y = dataset[int(i)]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    return torch.stack(xs), ys


# ------------------------------------------------------------------------------------ one system


@dataclasses.dataclass
class _Point:
    t: float
    cut: int
    codec: str | None
    bits: int | None
    where: str
    correct: bool
    rate_bps: float
    estimate_bps: float
    nbytes: int


class _SystemRun:
    """State of one system's run, read by the live display."""

    def __init__(self, name: str, duration: float):
        self.name, self.duration = name, duration
        self.points: list[_Point] = []
        self.start = 0.0
        self.done = False
        self.summary: dict[str, Any] | None = None
        self.link: Any = None
        self.client: Any = None
        self.device_desc = ""

    @property
    def elapsed(self) -> float:
        return 0.0 if not self.start else time.perf_counter() - self.start


def _decision_label(codec: str | None, bits: int | None) -> str:
    if codec is None:
        return "device"
    return codec if bits is None else f"{codec}:{bits}"


def _run_system(name: str, *, plan: Any, model: Any, splits: Any, server: str | None, xs: torch.Tensor,
                ys: list[int], slo: Any, trace: Any, duration: float | None, n: int | None, device: Any,
                in_flight: int, state: _SystemRun, timeout: float = 2.0, token: str | None = None,
                tls: Any = None) -> dict[str, Any]:
    """Run one policy until ``duration`` seconds have passed (or ``n`` inputs); return its summary."""
    from dyno.emulate.link import Link
    from dyno.monitor import Monitors
    from dyno.runtime.client import Client

    link = Link(trace) if trace is not None else None
    initial = trace.rate_bps(0.0) if trace is not None else 1e6
    monitors = Monitors(plan, initial_bandwidth_bps=max(initial, 1e3),
                        initial_slowdown=getattr(device, "slowdown", 1.0))
    results: list[Result] = []
    state.link = link
    count = len(xs)

    def record(result: Result) -> None:
        t = time.perf_counter() - state.start
        estimate = client.estimates().bandwidth_bps if state.client is not None else initial
        state.points.append(_Point(
            t=t, cut=result.cut, codec=result.codec, bits=result.bits, where=result.where,
            correct=result.top1 == ys[result.index % count],
            rate_bps=link.rate_bps() if link is not None else float("nan"), estimate_bps=estimate,
            nbytes=result.bytes))

    client = Client(plan, model, server=server, policy=name, slo=slo, in_flight=in_flight, timeout=timeout,
                    link=link, device=device, monitors=monitors, splits=splits, on_result=record,
                    token=token, tls=tls)
    state.client = client
    try:
        if link is not None:
            link.start()
        state.start = time.perf_counter()
        deadline = state.start + duration if duration else None

        def feed() -> Iterator[torch.Tensor]:
            i = 0
            while (deadline is None or time.perf_counter() < deadline) and (n is None or i < n):
                yield xs[i % count]
                i += 1

        for result in client.map(feed()):
            results.append(result)
        elapsed = max(r.finished for r in results) - state.start if results else 0.0
    finally:
        client.close()
        state.client = None
    labels = [ys[r.index % count] for r in results]
    summary = summarize(results, labels, elapsed_s=elapsed)
    state.summary, state.done = summary, True
    return summary


# ------------------------------------------------------------------------------------ display


class _Live:
    """What rich.live redraws: one row per system, the running one updating."""

    def __init__(self, runs: list[_SystemRun], title: str):
        self.runs, self.title = runs, title

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title, header_style="bold", expand=False)
        for column in ("system", "time", "uplink Mb/s", "estimate", "choice", "done", "inf/s", "top-1",
                       "fallback"):
            table.add_column(column, justify="left" if column in ("system", "choice") else "right",
                             no_wrap=True)
        for run in self.runs:
            points = run.points[-2000:]
            last = run.points[-1] if run.points else None
            done = len(run.points)
            elapsed = run.elapsed if not run.done else (run.points[-1].t if run.points else 0.0)
            rate = f"{run.link.rate_bps() / 1e6:.2f}" if run.link is not None and not run.done else ""
            choice = ""
            if last:
                choice = "device" if last.where == "device" else \
                    f"{last.cut}:{_decision_label(last.codec, last.bits)}" + (" (fb)" if last.where == "fallback" else "")
            table.add_row(
                run.name,
                "done" if run.done else (f"{elapsed:4.1f}/{run.duration:.0f}s" if run.start else "waiting"),
                rate,
                f"{last.estimate_bps / 1e6:.2f}" if last else "",
                choice,
                str(done),
                f"{done / elapsed:.1f}" if elapsed > 0 and done else "",
                f"{sum(p.correct for p in run.points) / done:.1%}" if done else "",
                str(sum(p.where == 'fallback' for p in points)) if done else "")
        return table


def print_summary(systems: dict[str, dict[str, Any]], *, title: str = "summary",
                  baseline: str | None = None) -> None:
    """The summary table; ``baseline`` adds a throughput ratio column against that system."""
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    columns = ["system", "n", "top-1", "inf/s", "bytes/inf", "p50 ms", "p95 ms", "fallback"]
    if baseline and baseline in systems:
        columns.append(f"vs {baseline}")
    for column in columns:
        table.add_column(column, justify="left" if column == "system" else "right", no_wrap=True)

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for name, s in systems.items():
        row = [name, str(s["n"]), fmt(s["accuracy"], ".1%"), fmt(s["throughput"], ".1f"),
               fmt(s["bytes_mean"], ",.0f"), fmt(s["p50_ms"], ".1f"), fmt(s["p95_ms"], ".1f"),
               str(s["fallbacks"])]
        if baseline and baseline in systems:
            base = systems[baseline]["throughput"]
            row.append(fmt(s["throughput"] / base if base and s["throughput"] else None, ".2f"))
        table.add_row(*row)
    from dyno.cli._console import stdout_console

    stdout_console().print(table)


# ------------------------------------------------------------------------------------ plot


def _plot(runs: list[_SystemRun], trace: Any, duration: float, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    ts = np.linspace(0, duration, 600)
    axes[0].step(ts, [trace.rate_bps(t) / 1e6 for t in ts], where="post", color="black", label="uplink (trace)")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, run in enumerate(runs):
        if not run.points:
            continue
        color = colors[k % len(colors)]
        t = np.array([p.t for p in run.points])
        if run.name == "dyno":
            axes[0].plot(t, [p.estimate_bps / 1e6 for p in run.points], ".", ms=3, color=color,
                         label="DynO's estimate")
        axes[1].plot(t, [p.cut for p in run.points], ".", ms=3, color=color, label=run.name)
        bits = np.array([32 if p.codec == "fp32" else 16 if p.codec == "fp16" else p.bits
                         if p.codec and p.codec not in ("jpeg", "webp") else np.nan for p in run.points],
                        dtype=float)
        image = np.array([p.codec in ("jpeg", "webp") for p in run.points])
        axes[2].plot(t[~image], bits[~image], ".", ms=3, color=color, label=run.name)
        if image.any():  # an image codec sends 8-bit pixels at a quality, not a bit width
            axes[2].plot(t[image], np.full(image.sum(), 8.0), "x", ms=3, color=color,
                         label=f"{run.name}: jpeg/webp (8-bit pixels)")
        edges = np.arange(0, max(duration, t.max()) + 1.0, 1.0)
        counts, _ = np.histogram(t, bins=edges)
        axes[3].step(edges[:-1], counts, where="post", color=color, label=run.name)
    axes[0].set_ylabel("Mbit/s")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("cut (0 = input)")
    axes[2].set_ylabel("bits per value")
    axes[3].set_ylabel("inferences / s")
    axes[3].set_xlabel("seconds into the bandwidth pattern")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[0].set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ prepare


def _prepare(model_name: str, data: str | None, progress: bool) -> tuple[Any, Any, Path]:
    """Trained weights (training them on a first run) and the cached plan (analysing on a first run).
    Progress goes to stderr, so stdout stays clean for --json."""
    from dyno import analysis, zoo

    entry = zoo.get_model(model_name)
    if entry.recipe is not None and entry.pretrained is None and zoo.trained_weights_info(entry) is None:
        if progress:
            print(f"dyno demo: first run: training {entry.name} (cached afterwards)", file=sys.stderr,
                  flush=True)
        zoo.train(entry.name, progress=progress)
    plan_path = analysis.default_plan_path(entry.name)
    if progress and not plan_path.exists():
        print(f"dyno demo: first run: analysing {entry.name} (cached at {plan_path})", file=sys.stderr,
              flush=True)
    plan = analysis.ensure_plan(entry.name, data=data, progress=progress, path=plan_path)
    model = zoo.load_model(entry.name, weights="trained")
    return plan, model, plan_path


# ------------------------------------------------------------------------------------ demo


def demo(*, model: str = "fmnist-resnet", data: str | None = None, n: int = 400,
         systems: Sequence[str] = ("dyno", "device-only", "cloud-only"), slo: str | None = DEFAULT_SLO,
         tier: str | float = "mid", device_emulation: str = "pad", trace: str | None = None,
         segment_s: float = 7.5, duration: float | None = None, in_flight: int = 8,
         plot: str | Path | None = "dyno-demo.png", live: bool = True) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns ``{"systems": {NAME: summary}, ...}``."""
    from dyno import policy as policies
    from dyno.emulate.device import Device
    from dyno.emulate.traces import load_trace
    from dyno.runtime.splits import Splits

    unknown = [s for s in systems if s not in policies.names()]
    if unknown or not systems:
        raise ConfigError(f"unknown system(s) {unknown}; known: {', '.join(policies.names())}")
    plan, net, plan_path = _prepare(model, data, progress=True)
    torch.set_num_threads(1)  # the device: one core; the server child takes the other
    pattern = load_trace(trace) if trace else builtin_trace(segment_s)
    if duration is None:
        duration = min(pattern.period, 60.0) if trace else pattern.period
    xs, ys = _labelled(model, data, n)
    splits = Splits(net, plan)
    splits.warm()
    device = Device.tier(tier, mode=device_emulation)
    runs = [_SystemRun(name, duration) for name in systems]
    title = (f"dyno demo: {model}, device {device.description}, uplink {pattern.name}, "
             f"{duration:.0f} s per system")
    with ServerProcess(plan_path) as server:
        display = contextlib.nullcontext()
        if live:
            from rich.live import Live

            from dyno.cli._console import stderr_console

            display = Live(_Live(runs, title), refresh_per_second=4, console=stderr_console())
        with display:
            for run in runs:
                _run_system(run.name, plan=plan, model=net, splits=splits, server=server.address, xs=xs,
                            ys=ys, slo=slo if run.name == "dyno" else None, trace=pattern, duration=duration,
                            n=None, device=device, in_flight=in_flight, state=run)
    device.close()
    summaries = {run.name: run.summary for run in runs}
    out: dict[str, Any] = {
        "systems": summaries, "model": model, "plan_hash": plan.hash, "device": device.description,
        "device_emulation": device_emulation, "uplink": pattern.name, "seconds_per_system": duration,
        "distinct_inputs": len(xs),
    }
    if plot:
        out["plot"] = str(_plot(runs, pattern, duration, plot, title))
    if live:
        baseline = "device-only" if "device-only" in summaries else None
        print_summary(summaries, title=f"{model}: same bandwidth pattern, same {duration:.0f} s for each system",
                      baseline=baseline)
        dyno_counts = {}
        for run in runs:
            if run.name == "dyno" and run.points:
                for p in run.points:
                    label = f"cut {p.cut} {_decision_label(p.codec, p.bits)}"
                    dyno_counts[label] = dyno_counts.get(label, 0) + 1
        if dyno_counts:
            top = sorted(dyno_counts.items(), key=lambda kv: -kv[1])[:6]
            print("DynO's choices: " + ", ".join(f"{label} x{count}" for label, count in top))
        if plot:
            print(f"timeline: {out['plot']}")
    return out


# ------------------------------------------------------------------------------------ run


def run_client(plan: Any, model: Any, *, server: str, data: str | None = None, n: int = 500,
               policy: str = "dyno", slo: str | None = None, in_flight: int = 8, timeout: float = 2.0,
               tier: str | float | None = None, device_emulation: str = "pad", trace: str | None = None,
               token: str | None = None, tls: Any = None, progress: bool = True) -> dict[str, Any]:
    """``dyno run``: ``n`` labelled inputs through a client against ``server``; returns the summary."""
    from dyno.emulate.device import Device
    from dyno.emulate.traces import load_trace
    from dyno.runtime.splits import Splits

    device = Device.tier(tier, mode=device_emulation) if tier is not None else None
    if device is not None:
        torch.set_num_threads(1)
    pattern = load_trace(trace) if trace else None
    xs, ys = _labelled(plan.model, data, n)
    splits = Splits(model, plan)
    state = _SystemRun(policy, 0.0)
    stop = threading.Event()

    def show() -> None:
        from rich.progress import Progress

        from dyno.cli._console import stderr_console

        with Progress(transient=True, console=stderr_console()) as bar:
            task = bar.add_task(f"{policy} via {server}", total=len(xs))
            while not stop.wait(0.25):
                bar.update(task, completed=len(state.points))

    shower = threading.Thread(target=show, daemon=True) if progress else None
    if shower:
        shower.start()
    try:
        summary = _run_system(policy, plan=plan, model=model, splits=splits, server=server, xs=xs, ys=ys,
                              slo=slo, trace=pattern, duration=None, n=len(xs), device=device,
                              in_flight=in_flight, state=state, timeout=timeout, token=token, tls=tls)
    finally:
        stop.set()
        if shower:
            shower.join(2)
        if device is not None:
            device.close()
    return summary


