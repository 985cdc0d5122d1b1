"""The device of one ``dyno bench`` run: a child process ("spawn") with its own interpreter, as a device
is, that runs one system's client over labelled inputs and reports what happened.

In order, before it starts a thread: it enters the client's network namespace (a kernel-shaped link),
joins a cgroup CPU quota of 1/k_d of a CPU (``device_emulation="cgroup"``) and pins itself to a CPU;
then it builds the client (one torch thread), tells the parent it is ready, waits for the word to go
(the parent starts the link's rate replay at the same moment), feeds inputs for ``duration`` seconds,
and sends back the summary, every finished inference, the policy's decision log and the client's
counters.

    spec = {"plan_path": ..., "weights": "trained", "data": None, "n": 400, "system": "dyno",
            "slo": "throughput;drop<=1", "server": "10.200.1.1:41234", "duration": 30.0, "in_flight": 8,
            "slowdown": 1.28, "device_emulation": "cgroup", "netns": "dyno-123-c", "cpu": 0,
            "trace": {"times": [...], "rates": [...], "name": ...}, "link": "tbf", "timeout": 10.0,
            "initial_bandwidth_bps": 8e6, "nominal_bandwidth_bps": 2e6,
            "overheads": None}       # measured here (``dyno.bench.calibrate``) unless given
    process = ctx.Process(target=client_main, args=(spec, child_conn))
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from dyno.bench.child import answer

__all__ = ["client_main"]


def _prepare(spec: dict[str, Any]) -> Any:
    """Namespace, CPU quota and affinity: first, before any thread starts. Returns the quota (or None)."""
    quota = None
    if spec.get("netns"):
        from dyno.emulate.netns import enter

        enter(spec["netns"])
    if spec["device_emulation"] == "cgroup" and spec["slowdown"] > 1.0:
        from dyno.emulate.device import ProcessQuota

        quota = ProcessQuota(spec["slowdown"])
    if spec.get("cpu") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(spec["cpu"])})
    return quota


def _policy(spec: dict[str, Any]) -> Any:
    from dyno.bench.record import Recorder
    from dyno.bench.simulate import build_policy

    return Recorder(build_policy(spec["system"], nominal_bandwidth_bps=spec.get("nominal_bandwidth_bps")))


def _run(spec: dict[str, Any], conn: Any) -> dict[str, Any]:
    import time

    import torch

    from dyno import zoo
    from dyno.bench.session import SystemRun, Workload, labelled, run_system
    from dyno.emulate.device import Device
    from dyno.emulate.traces import Trace
    from dyno.plan import Plan
    from dyno.runtime import ClientConfig, Splits

    torch.set_num_threads(1)
    plan = Plan.load(spec["plan_path"])
    model = zoo.load_model(plan.model, weights=spec["weights"])
    xs, ys = labelled(plan.model, spec["data"], spec["n"])
    t = spec["trace"]
    trace = Trace(t["times"], t["rates"], name=t["name"])
    mode = "pad" if spec["device_emulation"] == "pad" else "quota"    # quota: this process is under one
    device = Device(spec["slowdown"], mode=mode) if spec["slowdown"] > 1 else None
    policy = _policy(spec)
    config = ClientConfig(server=spec["server"], policy=policy, slo=spec["slo"], in_flight=spec["in_flight"],
                          timeout=spec["timeout"], stream_lifetime=max(600.0, 5 * spec["timeout"]))
    run = SystemRun(spec["system"], spec["duration"])
    splits = Splits(model, plan)
    overheads = spec.get("overheads")
    if overheads is None:
        from dyno.bench.calibrate import client_overheads

        overheads = client_overheads(plan, model, xs, server=spec["server"], device=device, splits=splits,
                                     slowdown=spec["slowdown"], whole=spec["device_emulation"] == "cgroup")

    started: list[float] = []

    def ready() -> None:
        conn.send(("ready", None))
        conn.recv()                  # ("go", None): the parent starts the link's replay now
        policy.start(time.perf_counter())
        started.append(time.process_time())

    summary = run_system(run, plan, model, Workload(xs=xs, ys=ys, duration=spec["duration"]), config,
                         trace=trace if spec["link"] == "token-bucket" else None, device=device, splits=splits,
                         initial_bandwidth_bps=spec["initial_bandwidth_bps"], slowdown=spec["slowdown"],
                         ready=ready, overheads_ms=(overheads["offload_ms"], overheads["local_ms"]),
                         server_factor=overheads["server_factor"],
                         server_overhead_ms=overheads["server_overhead_ms"],
                         server_batch=overheads["server_batch"])
    cpu_ms = (time.process_time() - started[0]) * 1000 / max(1, len(run.points))   # as calibrated
    return {"summary": summary, "cpu_ms_per_inference": cpu_ms,
            "points": [dataclasses.asdict(p) for p in run.points], "log": policy.log,
            "errors": run.errors, "stats": run.stats, "overheads": overheads,
            "device": device.description if device else f"k_d={spec['slowdown']:.3g}"}


def _measured(spec: dict[str, Any], conn: Any) -> dict[str, Any]:
    """The run inside the client's namespace and CPU quota; the quota is left before the report is sent."""
    quota = _prepare(spec)
    try:
        return _run(spec, conn)
    finally:
        if quota is not None:
            quota.close()


def client_main(spec: dict[str, Any], conn: Any) -> None:
    """The child's body (module docstring): sends ("ready", None), then ("done", report) or ("error", text)
    (``dyno.bench.child``)."""
    answer(conn, lambda: _measured(spec, conn))
