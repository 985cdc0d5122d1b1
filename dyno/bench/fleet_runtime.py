"""``dyno bench-runtime --what fleet``: the fleet on the real runtime beside the fleet simulator.

One real server (``server="embedded"``: ``dyno serve``'s body in one process, ``ServerProcess``;
``server="ray"``: ``dyno serve --ray``, dyno's gRPC front in one process and the tails on ``replicas``
Ray Serve replicas of one torch thread each, ``dyno.cloud.RayServerProcess``) and N real clients spread
over a few processes (``dyno.bench.fleet_worker``), each client with its own emulated device (padding
each head run to its tier's absolute latency; a tier faster than this machine runs at native speed), its
own uplink (the in-process token bucket replaying its trace from its own offset), its own policy and
monitors. The fleet is the simulator's (``dyno.bench.fleet.fleet_specs``: same tiers, traces, offsets
and frame rate), and the fleet simulator runs the same configuration beside it: one worker, the emulated
slowdowns, and the speeds measured at the start (``dyno.bench.calibrate``: the client's own work per
inference, the device's and the server's time over the plan's profile as the scales of the simulated
devices and cloud, and how much slower the server computes a request that finds it idle: at 10 requests
a second it is cold for each; read again just before each system's run at each size, and the size's
entry keeps each system's as ``warmth``).

Measured per system and N, in the simulator's shape: goodput, SLO attainment, cloud-seconds per
inference (the server's own counter of its compute thread's CPU time over the answered inferences; on
Ray the replicas' own compute time, without the trip from the front), p50/p95 latency, Jain's fairness,
cloud utilisation. Before the fleet, one client sends ``probe`` inferences one at a time, all in the
cloud: the unloaded round trip (``round_trip_ms``), from which the Ray path's overhead over the embedded
server is read; after it, with ``capacity_s``, the cloud-bound case (``dyno.bench.fleet_capacity``:
closed-loop raw streams, all in the cloud). Every client comes from 127.0.0.1, so the server's per-client limits are
raised to its whole-server ones.

With the embedded server and ``apart`` (the default), the server has the last core and the devices (this
process, its calibration and the device processes) the others, as two machines would (``dyno.bench.ground.
cores_apart``): left to the scheduler, the server sometimes shared its core with the client that had just
sent to it and computed a request after 100 ms idle in 0.9 ms, sometimes in 1.5, from one calibration to
the next. The simulator gives every device its own CPU; here they share this machine's others. Each
size's measured entry says how much of it the devices' own work needs at the offered rate (``host``:
``device_cores``, from the calibrated CPU per device-only inference, against their ``cores``, and the load
average after the size): where that nears the cores, the measured figures are the host's, not the cloud's.

    document = fleet_bench("plan.json", sizes=(1, 8), policies=("dyno", "cloud-only"), traces=[...])
    document["measured"]["fleet"][1]["policies"]["dyno"]["goodput"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import time
import urllib.request
from typing import Any, Sequence

from dyno.bench.fleet import DEFAULT_MIX, FLEET_POLICIES, fleet_metrics, fleet_specs
from dyno.bench.reference import one_torch_thread
from dyno.emulate.traces import Trace
from dyno.errors import ConfigError, RuntimeServiceError
from dyno.progress import NO_PROGRESS, Progress
from dyno.simulate.fleet import device_phase

__all__ = ["SERVERS", "fleet_bench", "start_cloud", "run_clients", "client_specs", "round_trip", "server_metrics"]

#: Where the cloud runs: ``embedded`` = one ``dyno serve`` process on this machine; ``ray`` = ``dyno serve
#: --ray``: the front in one process, the tails on Ray Serve replicas (a local Ray, or ``ray_address``).
SERVERS = ("embedded", "ray")


def server_metrics(server: Any) -> dict[tuple[str, tuple], float]:
    """The server's Prometheus metrics now, parsed."""
    from dyno.runtime.metrics import parse_text

    with urllib.request.urlopen(str(server.metrics_url), timeout=5) as response:
        return parse_text(response.read().decode())


def _compute_in(metrics: dict[tuple[str, tuple], float]) -> float:
    """Tail compute seconds so far: the replicas' own on Ray (wall time), the compute thread's CPU time
    when embedded (the devices' own work shares this machine: wall time would count its waits for a core)."""
    for counter in ("dyno_replica_compute_seconds_total", "dyno_compute_cpu_seconds_total"):
        values = [v for (name, _), v in metrics.items() if name == counter]
        if values:
            return sum(values)
    return sum(v for (name, _), v in metrics.items() if name == "dyno_compute_seconds_sum")


def start_cloud(plan_path: str, weights: str, *, server: str = "embedded", replicas: int = 1,
                autoscale: tuple[int, int] | None = None, ray_address: str | None = None,
                batch_in: str = "front", cpu: int | None = None) -> Any:
    """The server a fleet runs against, started (a context manager with ``address`` and ``metrics_url``):
    one torch thread in the server process and per replica; per-client limits at the whole server's
    (every client comes from 127.0.0.1). ``batch_in``: where Ray batches form (``RayConfig.batch_in``);
    ``cpu``: the embedded server's core (Ray places its own processes)."""
    from dyno.bench.ground import server_in
    from dyno.runtime import ServerConfig, ServerProcess, from_plan_file

    if server not in SERVERS:
        raise ConfigError(f"unknown server placement {server!r}; known: {', '.join(SERVERS)}")
    base = ServerConfig()
    config = ServerConfig(torch_threads=1, metrics_port=0, max_streams_per_client=base.max_streams,
                          max_in_flight_per_client=base.max_queued_requests)
    if server == "embedded":
        return ServerProcess(server_in, None, cpu, plan_path, weights, config=config, threads=1)
    from dyno.cloud import RayConfig, RayServerProcess

    ray = RayConfig(replicas=None if autoscale else replicas, autoscale=autoscale, replica_threads=1,
                    address=ray_address, batch_in=batch_in, downscale_delay_s=15.0 if autoscale else 30.0)
    return RayServerProcess(from_plan_file, plan_path, weights, config=config, ray=ray, threads=1, timeout=300.0)


def round_trip(plan: Any, weights: str, address: str, count: int) -> dict[str, Any]:
    """``count`` inferences one at a time, all in the cloud (the input as fp32): latency p50/p95 in ms."""
    import numpy as np

    from dyno import zoo
    from dyno.bench.session import labelled
    from dyno.runtime import Client, ClientConfig

    xs, _ = labelled(plan.model, None, 32)
    config = ClientConfig(server=address, policy="cloud-only-raw", in_flight=1, timeout=30.0)
    with one_torch_thread(), Client(plan, zoo.load_model(plan.model, weights=weights), config) as client:
        for _ in client.map(xs[i % len(xs)] for i in range(32)):   # warm: connection, codec, batcher
            pass
        latencies = [r.latency_ms for r in client.map(xs[i % len(xs)] for i in range(count))
                     if r.where == "cloud"]
    if not latencies:
        raise RuntimeServiceError("the round-trip probe got no answer from the cloud")
    p50, p95 = np.percentile(latencies, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "n": len(latencies), "policy": "cloud-only-raw"}


def _launch(spec: dict[str, Any], groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run the client groups in their processes at once; the per-client reports."""
    from dyno.bench.fleet_worker import worker_main

    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for group in groups:
        parent, child = context.Pipe()
        process = context.Process(target=worker_main, args=({**spec, "clients": group}, child), daemon=True)
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)
    try:
        for parent in pipes:
            if not parent.poll(300):
                raise RuntimeServiceError("a fleet worker did not get ready in time")
            kind, value = parent.recv()
            if kind != "ready":
                raise RuntimeServiceError(f"a fleet worker failed: {value}")
        for parent in pipes:
            parent.send(("go", None))
        reports = []
        for parent in pipes:
            if not parent.poll(spec["duration"] + 300):
                raise RuntimeServiceError("a fleet worker did not finish in time")
            kind, value = parent.recv()
            if kind != "done":
                raise RuntimeServiceError(f"a fleet worker failed: {value}")
            reports += value
        return reports
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()


def _measured(plan: Any, specs: list[Any], reports: list[dict[str, Any]], *, duration: float, slo: Any,
              served: tuple[float, float, float], price: float | None) -> dict[str, Any]:
    """The fleet's metrics from the clients' reports and what the server ``served`` meanwhile (compute
    seconds, samples, batches: its counters' growth), in the simulator's shape."""
    from dyno.policy.model import shared_model
    from dyno.simulate.fleet import DeviceTally, FleetResult, met_rows

    model = shared_model(plan)
    met_ok = met_rows(model, slo)
    tallies, end = [], duration
    for spec, report in zip(specs, reports, strict=True):
        tally = DeviceTally(spec.tier, spec.trace.name, demanded=report["demanded"], dropped=report["dropped"])
        for latency, cut, codec, bits, where, finished, _correct, nbytes in report["answers"]:
            row = model.index.get((cut, codec, bits), model.device_only)
            ok = met_ok[row] if where != "fallback" else True
            tally.answered += 1
            tally.started += 1
            tally.latencies_ms.append(latency)
            tally.met += ok and (slo.max_latency_ms is None or latency <= slo.max_latency_ms)
            tally.fallbacks += where == "fallback"
            tally.offloaded += where == "cloud"
            tally.bytes_total += nbytes
            tally.accuracy_sum += model.rows[row].accuracy
            end = max(end, finished - report["start"])
        tallies.append(tally)
    compute_s, samples, batches = served
    result = FleetResult(tallies, duration, compute_s, 1, int(batches), int(samples), 0, end)
    metrics = fleet_metrics(result, price=price)
    answered = max(metrics["inferences"], 1)
    metrics["cloud_s"] = compute_s / answered
    if price is not None:
        metrics["price_per_million"] = metrics["cloud_s"] * price * 1e6
    return metrics


def _calibrate(plan: Any, weights: str, n: int, cloud: Any) -> tuple[dict[str, Any], tuple[Any, Any]]:
    """The client's own work per inference, the server's speed now and how much slower it computes
    after idling (``dyno.bench.calibrate``); and the (model, inputs) it sent, for ``_warmth`` later."""
    from dyno import zoo
    from dyno.bench.calibrate import client_overheads, counted_scale
    from dyno.bench.session import labelled

    xs, _ = labelled(plan.model, None, min(n, 64))
    model = zoo.load_model(plan.model, weights=weights)
    with one_torch_thread():
        before = _served(cloud)
        calibration = client_overheads(plan, model, xs, server=cloud.address)
        calibration["server_factor_wall"] = calibration["server_factor"]
        calibration["server_factor"] = counted_scale(plan, before, _served(cloud)) or calibration["server_factor"]
    calibration["warmth"] = _warmth(plan, (model, xs), cloud)
    return calibration, (model, xs)


def _warmth(plan: Any, sender: tuple[Any, Any], cloud: Any) -> dict[str, Any]:
    """How much slower the server computes a request after idling, now (``calibrate.server_warmth`` on its
    compute counter). Read again just before each run: here it drifts within a minute or two (after 100 ms
    idle, 1.18 ms a request and 1.48 a minute later), as a shared host's do; eight clients cost the server
    what one does at the same spacing (0.90-1.36 against 0.97-1.22 ms at 12.5 ms, six rounds taking turns)."""
    from dyno.bench.calibrate import server_warmth

    with one_torch_thread():
        return server_warmth(plan, *sender, server=cloud.address, compute=lambda: _served(cloud)[0])


def _served(cloud: Any) -> tuple[float, float, float]:
    """(compute seconds, samples, batches) the server has run so far."""
    metrics = server_metrics(cloud)
    samples = sum(v for (name, _), v in metrics.items() if name == "dyno_batch_size_sum")
    batches = sum(v for (name, _), v in metrics.items() if name == "dyno_batch_size_count")
    return _compute_in(metrics), samples, batches


def client_specs(specs: list[Any], system: str, rate: float) -> list[dict[str, Any]]:
    """The worker's description of each device in ``specs`` (``dyno.bench.fleet_worker``): frames and
    probes spread over each device's period as the fleet simulator spreads them."""
    return [{"system": system, "slowdown": s.slowdown, "offset": s.offset_s,
             "phase": device_phase(i) / rate, "probe_phase": device_phase(i),
             "trace": {"times": s.trace.times, "rates": s.trace.rates_bps, "name": s.trace.name}}
            for i, s in enumerate(specs)]


def run_clients(cloud: Any, clients: list[dict[str, Any]], spec: dict[str, Any],
                processes: int) -> list[dict[str, Any]]:
    """``clients`` over ``processes`` worker processes against ``cloud``: the reports in client order."""
    size = len(clients)
    groups = [clients[k::min(processes, size)] for k in range(min(processes, size))]
    reports = _launch({**spec, "server": cloud.address}, groups)
    order = [c for k in range(len(groups)) for c in range(k, size, len(groups))]
    by_client = dict(zip(order, reports, strict=True))
    return [by_client[i] for i in range(size)]


def _one_size(cloud: Any, plan: Any, size: int, setup: dict[str, Any], tick: Any) -> tuple[dict, dict]:
    """One fleet size, every policy: (measured entry, simulated entry)."""
    from dyno.policy.model import shared_model
    from dyno.simulate import run_fleet

    m_entry: dict[str, Any] = {"devices": size, "policies": {}, "warmth": {}}
    s_entry: dict[str, Any] = {"devices": size, "policies": {}}
    for name in setup["policies"]:
        tick(status=f"{size} x {name}")
        warmth = m_entry["warmth"][name] = _warmth(plan, setup["sender"], cloud)
        sim_config = dataclasses.replace(setup["sim_config"], cloud=dataclasses.replace(
            setup["sim_config"].cloud, cold=tuple(map(tuple, warmth["cold"]))))
        specs = fleet_specs(setup["traces"], size, name, mix=setup["mix"], tiers=setup["tiers"], slo=setup["slo"],
                            rate=setup["rate"], seed=setup["seed"])
        clients = client_specs(specs, name, setup["rate"])
        before = _served(cloud)
        reports = run_clients(cloud, clients, setup["worker"], setup["processes"])
        after = _served(cloud)
        served = (after[0] - before[0], after[1] - before[1], after[2] - before[2])
        m_entry["policies"][name] = _measured(plan, specs, reports, duration=setup["duration"], slo=setup["slo"],
                                              served=served, price=setup["price"])
        now = [dataclasses.replace(spec, slowdown=spec.slowdown * setup["device_factor"]) for spec in specs]
        sim = run_fleet(shared_model(plan), now, sim_config)
        s_entry["policies"][name] = fleet_metrics(sim, price=setup["price"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    m_entry["host"] = {"cores": cores, "load_1min": round(os.getloadavg()[0], 2),        # the devices' cores
                       "device_cores": round(size * setup["rate"] * setup["device_cpu_ms"] / 1000.0, 3)}
    return m_entry, s_entry


def fleet_bench(plan_path: str, *, sizes: Sequence[int] = (1, 8, 32, 64), policies: Sequence[str] = FLEET_POLICIES,
                traces: Sequence[Trace], mix: dict[str, float] = DEFAULT_MIX, rate: float = 10.0,
                duration: float = 20.0, slo: str | None = None, window: int = 8, processes: int = 4,
                server: str = "embedded", replicas: int = 1, ray_address: str | None = None, probe: int = 200,
                capacity_s: float = 0.0, batch_in: str = "front",
                seed: int = 0, price: float | None = None, n: int = 200, weights: str = "trained",
                reference_ms: float | None = None, apart: bool = True,
                progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Measure the fleet on the real runtime and simulate it beside (module docstring). ``apart``: the
    embedded server and the devices on cores apart; False leaves both on every core (as Ray's replicas)."""
    from dyno.bench.fleet import fleet_slo
    from dyno.bench.fleet_capacity import capacity
    from dyno.bench.ground import cores_apart
    from dyno.bench.reference import Speeds
    from dyno.plan import Plan
    from dyno.policy import SLO
    from dyno.simulate import CloudConfig, FleetConfig

    plan = Plan.load(plan_path)
    parsed = SLO.parse(slo or fleet_slo(rate))
    speeds = Speeds(float(reference_ms), "--reference-ms") if reference_ms else Speeds.for_plan(plan)
    wanted = {t: speeds.device(t) for t in mix}
    tiers = {t: max(1.0, k) for t, k in wanted.items()}
    measured, simulated = [], []
    tick = progress.task("fleet bench", len(sizes) * len(policies))
    started = time.perf_counter()
    placed = cores_apart() if apart and server == "embedded" else contextlib.nullcontext(None)
    with placed as cloud_cpu, start_cloud(str(plan_path), weights, server=server, replicas=replicas,
                                          ray_address=ray_address, batch_in=batch_in, cpu=cloud_cpu) as cloud:
        calibration, sender = _calibrate(plan, weights, n, cloud)
        trip = round_trip(plan, weights, cloud.address, probe) if probe else None
        sim_config = FleetConfig(duration_s=duration, rtt_ms=0.5, window=window,
                                 cloud=CloudConfig(scale=calibration["server_factor"],
                                                   overhead_ms=calibration["server_overhead_ms"],
                                                   cold=tuple(map(tuple, calibration["warmth"]["cold"]))),
                                 overhead_ms=calibration["offload_ms"], local_overhead_ms=calibration["local_ms"])
        setup = {"policies": policies, "traces": traces, "mix": mix, "tiers": tiers, "slo": parsed, "rate": rate,
                 "sender": sender,
                 "seed": seed, "duration": duration, "processes": processes, "price": price, "sim_config": sim_config,
                 "device_cpu_ms": calibration["local_cpu_ms"], "device_factor": calibration["device_factor"],
                 "worker": {"plan_path": str(plan_path), "weights": weights, "slo": str(parsed), "rate": rate,
                            "duration": duration, "window": window, "n": n}}
        for size in sizes:
            m_entry, s_entry = _one_size(cloud, plan, size, setup, tick)
            measured.append(m_entry)
            simulated.append(s_entry)
        cloud_bound = capacity(plan, cloud.address, seconds=capacity_s) if capacity_s > 0 else None
    return {"plan": plan.model, "server": server, "replicas": replicas if server == "ray" else None,
            "batch_in": batch_in if server == "ray" else None, "cloud_cpu": cloud_cpu,
            "round_trip_ms": trip, "capacity": cloud_bound,
            "slo": str(parsed), "rate": rate, "duration_s": duration,
            "mix": dict(mix), "tiers": tiers, "tiers_requested": wanted, "window": window, "processes": processes,
            "device_emulation": "pad", "link": "token-bucket", "cloud_price_per_s": price,
            "speeds": speeds.describe(wanted),
            "cloud": {"scale": sim_config.cloud.scale, "workers": 1, "cold": sim_config.cloud.cold},
            "calibration": calibration,
            "measured": {"fleet": measured}, "simulated": {"fleet": simulated},
            "seconds": time.perf_counter() - started}
