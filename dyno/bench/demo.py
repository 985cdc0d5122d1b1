"""``dyno demo``: the whole system on one machine, measured.

The demo starts a cloud server on localhost (in a child process: its own interpreter, pinned to the
last core, the "cloud"; this process, the device, keeps the others), then runs each compared system in
turn - by default DynO, device-only and cloud-only - as a device client in this process
(``dyno.bench.session``) with:

- an emulated slow device (``dyno.emulate.device``: each head, encoding and fallback tail padded to
  k_d times its measured time, or a cgroup v1 CPU quota with ``device_emulation="cgroup"``), torch
  pinned to one thread here; the tier is absolute (by default ``low``: EfficientNet-Lite0 in 49 ms, a
  Raspberry Pi 4), scaled by the reference model's latency on this machine (``dyno.bench.reference``; a
  tier faster than this machine runs at native speed, and the summary says so). The cloud is this
  machine's CPU, not a GPU, so a device tier faster than it (``mid``, a Pixel 4, on most CPUs) ties:
  offloading to a cloud no faster than the device never pays, and every system runs on the device;
- an emulated uplink (``dyno.emulate.link``: a token bucket under the client's send path) replaying a
  bandwidth pattern, the built-in 8 -> 1 -> 0.3 -> 4 Mbit/s or a trace file.

Every system replays the *same* pattern for the *same* wall time (one pass of the pattern), feeding
labelled inputs as fast as it can take them (cycling through ``n`` distinct inputs), under the same SLO,
so the systems see identical conditions and throughput is a fair comparison. On a machine whose load
moves, one system after another is not: ``rounds=R`` runs every system R times, the order reversed
every other round (A B C, C B A, ...), so a drift in the load falls on every system alike; a system's
summary then counts all its rounds (throughput: all completions over all its seconds; latency
percentiles: the median of its rounds'; evidence: the first round's timeline and every round's choices)
and lists each round's under ``"rounds"``. Before the first system
the client's own cost per inference is measured once (``dyno.bench.calibrate``) and every policy prices
it. Each system's summary carries its ``evidence``: the SLO, the histogram of choices, a per-second
timeline (true and estimated bandwidth, cut, bits, completions), predicted against observed throughput,
and the realised top-1 against the fp32 model with intervals (``dyno.bench.record``). A live display shows the bandwidth
(true and estimated), the chosen cut and bits, throughput and accuracy; at the end a summary table
and a PNG timeline (bandwidth, cut, bits, throughput over time).

    summary = demo(model="fmnist-resnet", tier="low")     # {"systems": {NAME: {...}}, ...}
"""

from __future__ import annotations

import collections
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from dyno.bench.calibrate import client_overheads
from dyno.bench.console import RichProgress, stderr_console, stdout_console
from dyno.bench.demo_plot import plot_timeline
from dyno.bench.ground import alternating, cores_apart
from dyno.bench.record import Recorder, evidence
from dyno.bench.session import SystemRun, Workload, choice_label, labelled, run_system
from dyno.errors import ConfigError
from dyno.policy import DEFAULT_SLO
from dyno.runtime import ClientConfig

__all__ = ["BUILTIN_PATTERN_MBPS", "builtin_trace", "combined", "demo", "prepare", "print_summary", "schedule"]

#: The default uplink pattern, Mbit/s, one step per ``segment_s`` seconds.
BUILTIN_PATTERN_MBPS = (8.0, 1.0, 0.3, 4.0)


def builtin_trace(segment_s: float = 7.5) -> Any:
    """8 -> 1 -> 0.3 -> 4 Mbit/s, ``segment_s`` seconds each, looped."""
    from dyno.emulate.traces import Trace

    if not segment_s > 0:
        raise ConfigError("segment_s must be > 0")
    times = [i * segment_s for i in range(len(BUILTIN_PATTERN_MBPS) + 1)]
    return Trace(times, [r * 1e6 for r in BUILTIN_PATTERN_MBPS], name="builtin 8-1-0.3-4 Mbit/s")


# ------------------------------------------------------------------------------------ display


class _Live:
    """What rich.live redraws: one row per system, the running one updating."""

    COLUMNS = ("system", "time", "uplink Mb/s", "estimate", "choice", "done", "inf/s", "top-1", "fallback")

    def __init__(self, runs: list[SystemRun], title: str):
        self.runs, self.title = runs, title

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title, header_style="bold", expand=False)
        for column in self.COLUMNS:
            table.add_column(column, justify="left" if column in ("system", "choice") else "right", no_wrap=True)
        for run in self.runs:
            table.add_row(*self._row(run))
        return table

    @staticmethod
    def _row(run: SystemRun) -> list[str]:
        last = run.points[-1] if run.points else None
        done = len(run.points)
        elapsed = run.elapsed if not run.done else (last.t if last else 0.0)
        choice = ""
        if last:
            choice = "device" if last.where == "device" else \
                f"{last.cut}:{choice_label(last.codec, last.bits)}" + (" (fb)" if last.where == "fallback" else "")
        status = "done" if run.done else (f"{elapsed:4.1f}/{run.duration:.0f}s" if run.start else "waiting")
        return [run.name + (f" #{run.round + 1}" if run.round else ""), status,
                f"{run.link.rate_bps() / 1e6:.2f}" if run.link is not None and not run.done else "",
                f"{last.estimate_bps / 1e6:.2f}" if last else "", choice, str(done),
                f"{done / elapsed:.1f}" if elapsed > 0 and done else "",
                f"{sum(p.correct for p in run.points) / done:.1%}" if done else "",
                str(sum(p.where == "fallback" for p in run.points[-2000:])) if done else ""]


def print_summary(systems: dict[str, dict[str, Any]], *, title: str = "summary",
                  baseline: str | None = None) -> None:
    """The summary table; ``baseline`` adds a throughput ratio column against that system."""
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    columns = ["system", "n", "top-1", "inf/s", "bytes/inf", "p50 ms", "p95 ms", "fallback"]
    ratio = baseline is not None and baseline in systems
    if ratio:
        columns.append(f"vs {baseline}")
    for column in columns:
        table.add_column(column, justify="left" if column == "system" else "right", no_wrap=True)

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for name, s in systems.items():
        row = [name, str(s["n"]), fmt(s["accuracy"], ".1%"), fmt(s["throughput"], ".1f"),
               fmt(s["bytes_mean"], ",.0f"), fmt(s["p50_ms"], ".1f"), fmt(s["p95_ms"], ".1f"), str(s["fallbacks"])]
        if ratio:
            base = systems[str(baseline)]["throughput"]
            row.append(fmt(s["throughput"] / base if base and s["throughput"] else None, ".2f"))
        table.add_row(*row)
    stdout_console().print(table)


# ------------------------------------------------------------------------------------ demo


def prepare(model_name: str, data: str | None) -> tuple[Any, Any, Path]:
    """Trained weights (training them on a first run) and the cached plan (analysing on a first run).
    Progress goes to stderr, so stdout stays clean for --json."""
    from dyno import offline, zoo

    entry = zoo.get_model(model_name)
    console = stderr_console()
    with RichProgress() as progress:
        if entry.recipe is not None and entry.pretrained is None and zoo.trained_weights_info(entry) is None:
            console.print(f"dyno demo: first run: training {entry.name} (cached afterwards)", soft_wrap=True)
            zoo.train(entry.name, progress=progress)
        plan_path = offline.default_plan_path(entry.name)
        if not plan_path.exists():
            console.print(f"dyno demo: first run: analysing {entry.name} (cached at {plan_path})", soft_wrap=True)
        plan = offline.ensure_plan(entry.name, data=data, progress=progress, path=plan_path)
    return plan, zoo.load_model(entry.name, weights="trained"), plan_path


def demo(*, model: str = "fmnist-resnet", data: str | None = None, n: int = 400,
         systems: Sequence[str] = ("dyno", "device-only", "cloud-only"), slo: str | None = DEFAULT_SLO,
         tier: str | float = "low", device_emulation: str = "pad", trace: str | None = None,
         segment_s: float = 7.5, duration: float | None = None, in_flight: int = 8, rounds: int = 1,
         plot: str | Path | None = "dyno-demo.png", live: bool = True) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns ``{"systems": {NAME: summary}, ...}``."""
    from dyno import policy as policies
    from dyno.bench.reference import Speeds
    from dyno.emulate.device import Device
    from dyno.emulate.traces import load_trace
    from dyno.runtime.splits import Splits

    unknown = [s for s in systems if s not in policies.names()]
    if unknown or not systems:
        raise ConfigError(f"unknown system(s) {unknown}; known: {', '.join(policies.names())}")
    if len(set(systems)) != len(systems) or rounds < 1:
        raise ConfigError(f"each system once and rounds >= 1, got {list(systems)} and {rounds}")
    # a bad tier fails here, not after minutes of preparation
    Device.named(tier, reference_ms=lambda: 1.0, mode=device_emulation).close()
    pattern = load_trace(trace) if trace else builtin_trace(segment_s)
    plan, net, plan_path = prepare(model, data)
    torch.set_num_threads(1)  # the device: one core; the server child takes the other
    speeds = Speeds.for_plan(plan)
    device = Device.named(tier, reference_ms=lambda: speeds.reference_ms, mode=device_emulation)
    if duration is None:
        duration = min(pattern.period, 60.0) if trace else pattern.period
    xs, ys = labelled(model, data, n)
    splits = Splits(net, plan)
    splits.warm()
    fp32 = _fp32_correct(net, xs, ys)
    runs = schedule(systems, rounds, duration)
    title = (f"dyno demo: {model}, device {device.description}, uplink {pattern.name}, {duration:.0f} s per system"
             + (f" x {rounds} rounds" if rounds > 1 else ""))
    parsed = policies.SLO.parse(slo) if slo else policies.SLO()
    with cores_apart() as cloud_cpu, _server(plan_path, cloud_cpu) as server:
        overheads = client_overheads(plan, net, xs, server=server.address, device=device, splits=splits)
        with _display(live, runs, title):
            for run in runs:
                _run_one(run, plan, net, server.address, parsed, in_flight, Workload(xs=xs, ys=ys, duration=duration),
                         pattern, device, splits, overheads, fp32)
    device.close()
    out: dict[str, Any] = {
        "systems": {name: combined([run for run in runs if run.name == name]) for name in systems},
        "rounds": rounds, "model": model, "plan_hash": plan.hash, "slo": str(parsed),
        "device": device.description, "device_emulation": device_emulation, "uplink": pattern.name,
        "seconds_per_system": duration, "distinct_inputs": len(xs), "overheads": overheads,
        "speeds": {**speeds.describe({str(tier): device.requested}), "emulated_slowdown": device.slowdown,
                   "device_ms": device.slowdown * speeds.reference_ms}}
    if plot:
        out["plot"] = str(plot_timeline([run for run in runs if run.round == 0], pattern, duration, plot, title))
    if live:
        _report(out, runs, model, duration)
    return out


def schedule(systems: Sequence[str], rounds: int, duration: float) -> list[SystemRun]:
    """The runs in the order they run: every system once a round, every other round reversed."""
    return [SystemRun(name, duration, r) for r, name in alternating(systems, rounds)]


def combined(runs: list[SystemRun]) -> dict[str, Any]:
    """One system's summary over its rounds (module docstring); a single round's as it is."""
    summaries = [run.summary for run in runs if run.summary is not None]
    if len(summaries) != len(runs):
        raise ValueError("combined() needs finished runs")
    if len(runs) == 1:
        return summaries[0]
    n = sum(s["n"] for s in summaries)
    seconds = sum(s["n"] / s["throughput"] for s in summaries if s["throughput"])

    def weighted(key: str) -> float | None:
        pairs = [(s[key], s["n"]) for s in summaries if s[key] is not None and s["n"]]
        return sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else None

    def median(key: str) -> float | None:
        values = sorted(s[key] for s in summaries if s[key] is not None)
        return statistics.median(values) if values else None

    return {"n": n, "accuracy": weighted("accuracy"), "throughput": n / seconds if seconds else 0.0,
            "bytes_mean": weighted("bytes_mean"), "p50_ms": median("p50_ms"), "p95_ms": median("p95_ms"),
            "fallbacks": sum(s["fallbacks"] for s in summaries), "evidence": _evidence(summaries),
            "stats": dict(sum((collections.Counter(s["stats"]) for s in summaries), collections.Counter())),
            "rounds": summaries}


def _evidence(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The first round's evidence (its timeline), with the choices of every round counted."""
    first = dict(summaries[0].get("evidence") or {})
    if all("choices" in (s.get("evidence") or {}) for s in summaries):
        counts = sum((collections.Counter(s["evidence"]["choices"]) for s in summaries), collections.Counter())
        first["choices"] = dict(counts.most_common())
    return first


def _fp32_correct(net: Any, xs: torch.Tensor, ys: list[int]) -> list[bool]:
    with torch.inference_mode():
        top = torch.cat([net(xs[i:i + 32]).argmax(1) for i in range(0, len(xs), 32)])
    return [int(p) == y for p, y in zip(top.tolist(), ys, strict=True)]


def _run_one(run: SystemRun, plan: Any, net: Any, address: str, slo: Any, in_flight: int, workload: Workload,
             pattern: Any, device: Any, splits: Any, overheads: dict[str, Any], fp32: list[bool]) -> None:
    """One system through the runtime, with the record a reader needs to check it (``dyno.bench.record``)."""
    from dyno.policy import make

    recorder = Recorder(make(run.name))
    config = ClientConfig(server=address, policy=recorder, slo=slo, in_flight=in_flight)
    run_system(run, plan, net, workload, config, trace=pattern, device=device, splits=splits,
               ready=lambda: recorder.start(time.perf_counter()),
               overheads_ms=(overheads["offload_ms"], overheads["local_ms"]),
               server_factor=overheads["server_factor"],
               server_overhead_ms=overheads["server_overhead_ms"],
               server_batch=overheads["server_batch"])
    assert run.summary is not None
    run.summary["evidence"] = evidence(run.points, recorder.log, trace=pattern, duration=run.duration, slo=slo,
                                       fp32_correct=[fp32[p.index] for p in run.points])
    run.summary["stats"] = run.stats


def _server(plan_path: Path, cpu: int | None) -> Any:
    from dyno.bench.ground import server_in
    from dyno.runtime import ServerConfig, ServerProcess

    return ServerProcess(server_in, None, cpu, str(plan_path), "trained", config=ServerConfig(torch_threads=1),
                         threads=1, log=os.devnull)


def _display(live: bool, runs: list[SystemRun], title: str) -> Any:
    if not live:
        return contextlib.nullcontext()
    from rich.live import Live

    return Live(_Live(runs, title), refresh_per_second=4, console=stderr_console())


def _report(out: dict[str, Any], runs: list[SystemRun], model: str, duration: float) -> None:
    summaries = out["systems"]
    sp = out["speeds"]
    print(f"absolute figures: {sp['reference_model']} {sp['reference_ms']:.1f} ms on this machine ({sp['source']}); "
          f"device {out['device']} = {sp['device_ms']:.1f} ms for {sp['reference_model']}; the cloud is this "
          f"machine's server process; client overheads {out['overheads']['offload_ms']:.2f} ms offloaded, "
          f"{out['overheads']['local_ms']:.2f} ms on the device; SLO {out['slo']}")
    print_summary(summaries, title=f"{model}: same bandwidth pattern, same {duration:.0f} s for each system",
                  baseline="device-only" if "device-only" in summaries else None)
    counts = collections.Counter(f"cut {p.cut} {choice_label(p.codec, p.bits)}"
                                 for run in runs if run.name == "dyno" for p in run.points)
    if counts:
        print("DynO's choices: " + ", ".join(f"{label} x{count}" for label, count in counts.most_common(6)))
    if "plot" in out:
        print(f"timeline: {out['plot']}")
