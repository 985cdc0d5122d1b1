"""``dyno run``: labelled inputs through a device client against a running server, summarised.

    run = run_client(plan, model, server="127.0.0.1:50051", n=500, policy="dyno", slo=DEFAULT_SLO)
    run.summary, run.cloud_replies, run.errors
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from dyno.bench.session import SystemRun, Workload, labelled, run_system
from dyno.progress import NO_PROGRESS, Progress
from dyno.runtime import ClientConfig

__all__ = ["run_client"]


def run_client(plan: Any, model: Any, *, server: str, data: str | None = None, n: int = 500,
               policy: str = "dyno", slo: str | None = None, in_flight: int = 8, timeout: float = 2.0,
               tier: str | float | None = None, device_emulation: str = "pad", trace: str | None = None,
               token: str | None = None, tls: Any = None, progress: Progress = NO_PROGRESS) -> SystemRun:
    """``dyno run``: ``n`` labelled inputs through a client against ``server``; returns the run (its
    ``summary``, ``errors`` and ``cloud_replies``)."""
    from dyno.bench.reference import Speeds
    from dyno.emulate.device import Device
    from dyno.emulate.traces import load_trace
    from dyno.runtime.splits import Splits

    device = (Device.named(tier, reference_ms=lambda: Speeds.for_plan(plan).reference_ms, mode=device_emulation)
              if tier is not None else None)
    if device is not None:
        torch.set_num_threads(1)
    xs, ys = labelled(plan.model, data, n)
    state = SystemRun(policy, 0.0)
    tick = progress.task(f"{policy} via {server}", len(xs))
    stop = threading.Event()

    def show() -> None:
        shown = 0
        while not stop.wait(0.25):
            tick(len(state.points) - shown)
            shown = len(state.points)

    shower = threading.Thread(target=show, daemon=True)
    shower.start()
    try:
        config = ClientConfig(server=server, policy=policy, slo=slo, in_flight=in_flight, timeout=timeout,
                              token=token, tls=tls)
        run_system(state, plan, model, Workload(xs=xs, ys=ys, n=len(xs)), config,
                   trace=load_trace(trace) if trace else None, device=device, splits=Splits(model, plan))
        return state
    finally:
        stop.set()
        shower.join(2)
        if device is not None:
            device.close()
