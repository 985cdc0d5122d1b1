"""``dyno bench``: ground truth for the scheduler. Systems x traces x device tiers through a real server
process and real client processes, each beside the simulator on the same configuration.

- **The link**: where the machine allows (root, iproute2), the server and the clients sit in two network
  namespaces joined by a veth pair, and the uplink is the kernel's token bucket filter (tbf) on the
  client side, its rate stepped along the trace with ``tc qdisc change`` (``dyno.emulate.netns``);
  otherwise the in-process token bucket (``dyno.emulate.link``). ``link`` in the report says which.
- **The device**: one client process per run, pinned to CPU 0 with one torch thread, slowed to the tier's
  absolute latency by a cgroup v1 CPU quota on the whole process where the controller is mounted, else by
  padding each head run (``device_emulation`` says which). A tier faster than this machine cannot be
  emulated by slowing down: it runs at native speed and the report keeps both the tier's and the
  emulated slowdown (``k_requested``, ``k_emulated``); the simulator is given the emulated one.
- **The cloud**: one real server process (``dyno.runtime.ServerProcess``), pinned to CPU 1, serving the
  plan; its speed is this machine's, so the simulator runs with the plan's measured cloud profile.
- **The simulator beside it**: the same plan, trace, policy, SLO, window and duration, device slowdown
  ``k_emulated``, round trip ``rtt_ms``, and the speeds measured when the client starts
  (``dyno.bench.calibrate``): the client's own work per inference and the server's time per sample over
  the plan's profile (the cloud's scale) (``dyno.simulate.simulate_policy``).

Every system gets the same SLO (JALAD and split-int8 respect its accuracy bound). Each row holds the
measured and simulated throughput and their ratio, top-1, bytes per inference and p95 latency, and the
run's evidence (``dyno.bench.record``): choices, a per-second timeline, predicted against observed
throughput, realised top-1 against the fp32 model with intervals.

The systems run one after another, and a shared machine's speed drifts over minutes: a system run in a
slow stretch loses to one run in a fast stretch though both choose alike (split-int8 beat DynO 647 to 606
inferences/s where the simulator, given each run's own calibration, predicted the same 0.94 and, given
one calibration, a tie). ``rounds=R`` runs each trace's systems R times, every other round in reverse
order (``alternating``), and keeps for each system its median round (``median_round``).

    document = ground_truth(plan_path, systems=("dyno", "device-only"), traces=[...], tiers=("low",))
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from dyno.bench.record import evidence
from dyno.emulate.traces import Trace
from dyno.errors import ConfigError, RuntimeServiceError
from dyno.progress import NO_PROGRESS, Progress

__all__ = ["BENCH_SYSTEMS", "ground_truth", "alternating", "median_round", "choose_link", "choose_device",
           "fp32_correct", "server_in", "cores_apart"]

BENCH_SYSTEMS = ("dyno", "device-only", "cloud-only", "neurosurgeon", "jalad", "split-int8")
CLIENT_CPU, SERVER_CPU = 0, 1


def choose_link(link: str) -> tuple[str, str]:
    """("tbf" | "token-bucket", why): ``auto`` takes tbf where a kernel-shaped link can be made."""
    from dyno.emulate.netns import available

    why = available()
    if link == "tbf" and why:
        raise ConfigError(f"--link tbf: {why}")
    if link in ("tbf", "auto") and not why:
        return "tbf", "tc tbf on a veth pair between two network namespaces"
    return "token-bucket", f"in-process token bucket ({why or 'asked for'})"


def choose_device(mode: str) -> str:
    """"cgroup" | "pad": ``auto`` takes a cgroup CPU quota where the v1 controller is writable."""
    from dyno.emulate.device import cgroup_available

    if mode == "cgroup" and not cgroup_available():
        raise ConfigError("--device-emulation cgroup: no writable cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
    if mode == "auto":
        return "cgroup" if cgroup_available() else "pad"
    return mode


def server_in(namespace: str | None, cpu: int | None, plan_path: str, weights: str) -> Any:
    """A ``ServerProcess`` builder: enter ``namespace`` and pin to ``cpu`` first (before any thread)."""
    from dyno.runtime import from_plan_file

    if namespace:
        from dyno.emulate.netns import enter

        enter(namespace)
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})
    return from_plan_file(plan_path, weights)


@contextlib.contextmanager
def cores_apart() -> Iterator[int | None]:
    """The cloud's core (the last) and this process, the devices, on the others, as two machines would
    be; processes started inside inherit the devices' cores. With both on every core the server's work
    slowed the device's while DynO offloaded, so the device read itself slower than it is and the
    offloading looked better than it was; and a server that sometimes shared its core with the client
    that had just sent to it computed a request after 100 ms idle in 0.9 ms, sometimes in 1.5. Yields
    the cloud's core (None on one core, or where affinity cannot be set)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < 2:
        yield None
        return
    os.sched_setaffinity(0, set(cores[:-1]))
    try:
        yield cores[-1]
    finally:
        os.sched_setaffinity(0, set(cores))


def fp32_correct(plan: Any, data: str | None, n: int, weights: str) -> list[bool]:
    """Whether the unmodified fp32 model gets each of the workload's ``n`` inputs right."""
    from dyno import zoo
    from dyno.bench.session import labelled

    model = zoo.load_model(plan.model, weights=weights)
    xs, ys = labelled(plan.model, data, n)
    with torch.inference_mode():
        top = torch.cat([model(xs[i:i + 16]).argmax(1) for i in range(0, len(xs), 16)])
    return [int(p) == y for p, y in zip(top.tolist(), ys, strict=True)]


def _measure(spec: dict[str, Any], kernel: Any, trace: Trace, timeout: float) -> dict[str, Any]:
    """One client process through its run (``dyno.bench.ground_client``)."""
    from dyno.bench.ground_client import client_main

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=client_main, args=(spec, child), name="dyno-bench-client", daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise RuntimeServiceError("the bench client did not get ready in time")
        kind, value = parent.recv()
        if kind != "ready":
            raise RuntimeServiceError(f"the bench client failed: {value}")
        replay = kernel.replay(trace) if kernel is not None else contextlib.nullcontext()
        with replay:
            parent.send(("go", None))
            if not parent.poll(spec["duration"] + timeout):
                raise RuntimeServiceError("the bench client did not finish in time")
            kind, value = parent.recv()
        if kind != "done":
            raise RuntimeServiceError(f"the bench client failed: {value}")
        return value
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
        parent.close()


def _simulated(plan: Any, system: str, trace: Trace, *, slo: Any, slowdown: float, duration: float,
               in_flight: int, rtt_ms: float, nominal: float, overheads: dict[str, Any]) -> Any:
    from dyno.bench.simulate import build_policy
    from dyno.policy.model import shared_model
    from dyno.simulate import CloudConfig, SimConfig, simulate_policy

    whole = overheads.get("factor", 1.0) > 1.0          # a CPU quota slows the encoding as well as the heads
    config = SimConfig(slowdown=slowdown * overheads["device_factor"], duration_s=duration, rtt_ms=rtt_ms,
                       codec_slowdown=slowdown * overheads["device_factor"] if whole else 1.0,
                       max_inflight=in_flight,
                       initial_bandwidth_bps=max(trace.rate_bps(0.0), 1e3),
                       cloud=CloudConfig(scale=overheads["server_factor"],
                                         overhead_ms=overheads["server_overhead_ms"]),
                       overhead_ms=overheads["offload_ms"], local_overhead_ms=overheads["local_ms"])
    return simulate_policy(build_policy(system, nominal_bandwidth_bps=nominal), shared_model(plan), trace, slo,
                           config)


def _row(system: str, tier: str, trace: Trace, measured: dict[str, Any], simulated: Any, *, duration: float,
         slo: Any, fp32: list[bool], k: tuple[float, float]) -> dict[str, Any]:
    from types import SimpleNamespace

    points = [SimpleNamespace(**p) for p in measured["points"]]
    s = measured["summary"]
    sim_throughput = simulated.throughput
    record = evidence(points, measured["log"], trace=trace, duration=duration, slo=slo,
                      fp32_correct=[fp32[p.index] for p in points])
    return {"system": system, "tier": tier, "trace": trace.name, "k_requested": k[0], "k_emulated": k[1],
            "measured_throughput": s["throughput"], "simulated_throughput": sim_throughput,
            "ratio": s["throughput"] / sim_throughput if s["throughput"] and sim_throughput else None,
            "accuracy": s["accuracy"], "bytes_mean": s["bytes_mean"], "p95_ms": s["p95_ms"], "p50_ms": s["p50_ms"],
            "simulated_p95_ms": simulated.metrics()["p95_ms"],
            "simulated_bytes_mean": simulated.metrics()["bytes_mean"],
            "fallbacks": s["fallbacks"], "stats": measured.get("stats", {}), "errors": measured.get("errors", []),
            "overheads": measured.get("overheads"), "cpu_ms_per_inference": measured.get("cpu_ms_per_inference"),
            "evidence": record}


def alternating(items: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, item) in the order they run: every item once a round, every other round reversed
    (A B C, C B A, ...), so a drift in the machine's speed falls on every item alike."""
    return [(r, item) for r in range(rounds) for item in (items if r % 2 == 0 else list(reversed(items)))]


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's row over its rounds: the round whose measured throughput is the median (the lower of
    the two middle ones for an even count), so every figure in the row comes from one run, with each
    round's throughputs and ratio under ``rounds``. A single round's row as it is."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda row: row["measured_throughput"] or 0.0)
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["rounds"] = [{key: run[key] for key in ("measured_throughput", "simulated_throughput", "ratio")}
                     for run in runs]
    return row


@contextlib.contextmanager
def _cloud(plan_path: str, weights: str, link_kind: str, first_rate_bps: float) -> Iterator[tuple[Any, Any]]:
    """(the kernel-shaped link or None, the server process behind it)."""
    from dyno.runtime import ServerConfig, ServerProcess

    with contextlib.ExitStack() as stack:
        kernel = None
        if link_kind == "tbf":
            from dyno.emulate.netns import KernelLink

            kernel = stack.enter_context(KernelLink.create(first_rate_bps))
        config = ServerConfig(torch_threads=1, max_queue_ms=2000.0)
        address = f"{kernel.server_ip}:0" if kernel else "127.0.0.1:0"
        yield kernel, stack.enter_context(ServerProcess(server_in, kernel.server_ns if kernel else None, SERVER_CPU,
                                                        plan_path, weights, config=config, threads=1,
                                                        address=address, log=os.devnull))


def ground_truth(plan_path: str | Path, *, systems: Sequence[str] = BENCH_SYSTEMS, traces: Sequence[Trace],
                 tiers: Sequence[str] = ("low", "mid", "high"), slo: str = "throughput;drop<=1",
                 duration: float = 30.0, in_flight: int = 8, data: str | None = None, n: int = 400,
                 weights: str = "trained", link: str = "auto", device_emulation: str = "auto",
                 reference_ms: float | None = None, rtt_ms: float = 0.5, timeout: float = 10.0, rounds: int = 1,
                 progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns the ``--json`` document."""
    from dyno.bench.reference import Speeds
    from dyno.plan import Plan
    from dyno.policy import SLO

    if rounds < 1 or len(set(systems)) != len(systems):
        raise ConfigError(f"each system once and rounds >= 1, got {list(systems)} and {rounds}")
    plan = Plan.load(plan_path)
    parsed = SLO.parse(slo)
    speeds = Speeds(float(reference_ms), "--reference-ms") if reference_ms else Speeds.for_plan(plan)
    link_kind, link_why = choose_link(link)
    device_kind = choose_device(device_emulation)
    fp32 = fp32_correct(plan, data, n, weights)
    nominal = sorted(t.mean_bps for t in traces)[len(traces) // 2]
    tick = progress.task("bench", len(systems) * len(traces) * len(tiers) * rounds)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with _cloud(str(plan_path), weights, link_kind, traces[0].rate_bps(0.0)) as (kernel, server):
        common = {"plan_path": str(plan_path), "weights": weights, "data": data, "n": n, "slo": slo,
                  "server": server.address, "duration": duration, "in_flight": in_flight,
                  "device_emulation": device_kind, "cpu": CLIENT_CPU, "netns": kernel.client_ns if kernel else None,
                  "link": link_kind, "timeout": timeout, "nominal_bandwidth_bps": nominal}
        for tier in tiers:
            wanted = speeds.device(tier)
            k = max(1.0, wanted)
            for trace in traces:
                runs: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
                for r, system in alternating(systems, rounds):
                    tick(status=f"{tier} {trace.name} {system}" + (f" #{r + 1}" if rounds > 1 else ""))
                    spec = {**common, "system": system, "slowdown": k,
                            "trace": {"times": trace.times, "rates": trace.rates_bps, "name": trace.name},
                            "initial_bandwidth_bps": max(trace.rate_bps(0.0), 1e3)}
                    if kernel is not None:
                        kernel.set_rate(1e9)          # the client measures its own cost on a fast link
                    measured = _measure(spec, kernel, trace, timeout=120.0)
                    simulated = _simulated(plan, system, trace, slo=parsed, slowdown=k, duration=duration,
                                           in_flight=in_flight, rtt_ms=rtt_ms, nominal=nominal,
                                           overheads=measured["overheads"])
                    runs[system].append(_row(system, tier, trace, measured, simulated, duration=duration, slo=parsed,
                                             fp32=fp32, k=(wanted, k)))
                rows += [median_round(runs[system]) for system in systems]
    return {"plan": plan.model, "plan_hash": plan.hash, "link": link_kind, "link_detail": link_why,
            "device_emulation": device_kind, "slo": str(parsed), "duration_s": duration, "in_flight": in_flight,
            "rounds": rounds,
            "speeds": speeds.describe({t: speeds.device(t) for t in tiers}), "rtt_ms_simulated": rtt_ms,
            "rows": rows, "seconds": time.perf_counter() - started}
