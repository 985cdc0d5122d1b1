"""``dyno run --backend onnxruntime``: labelled inputs through the torch-free client, summarised.

    run = run_labelled(plan, heads, server="10.0.0.2:50051", n=500, policy="dyno")
    run["summary"], run["cloud_replies"], run["errors"]
"""

from __future__ import annotations

import time
from typing import Any

from dyno.device._client import OrtClient
from dyno.device._data import load_inputs
from dyno.device._heads import OrtHeads
from dyno.errors import ConfigError
from dyno.progress import NO_PROGRESS, Progress
from dyno.runtime.config import ClientConfig
from dyno.runtime.results import summarize

__all__ = ["run_labelled"]


def run_labelled(plan: Any, heads: OrtHeads, *, server: str, data: str | None = None, n: int = 500,
                 policy: str = "dyno", slo: str | None = None, in_flight: int = 8, timeout: float = 2.0,
                 tier: str | float | None = None, device_emulation: str = "pad", trace: str | None = None,
                 token: str | None = None, tls: Any = None, progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """``n`` labelled inputs of ``data`` (default: the model's, as the export recorded it) through an
    :class:`OrtClient` against ``server``, as ``dyno run`` does with torch; the device emulated at
    ``tier`` and the uplink replaying ``trace`` when given."""
    from dyno.emulate.device import Device
    from dyno.emulate.link import Link
    from dyno.emulate.traces import load_trace
    from dyno.monitor import Monitors

    data = data or heads.manifest.notes.get("data")
    if not data:
        raise ConfigError(f"{plan.model} has no default dataset recorded with its heads; pass --data")
    xs, ys = load_inputs(data, n, preprocess=heads.manifest.notes.get("preprocess"))
    device = (Device.named(tier, reference_ms=lambda: _reference_ms(plan), mode=device_emulation)
              if tier is not None else None)
    loaded = load_trace(trace) if trace else None
    link = Link(loaded) if loaded is not None else None
    initial = loaded.rate_bps(0.0) if loaded is not None else 1e6
    monitors = Monitors(plan, initial_bandwidth_bps=max(initial, 1e3),
                        initial_slowdown=float(getattr(device, "slowdown", 1.0)),
                        codec_slowdown=float(getattr(device, "codec_slowdown", 1.0)))
    config = ClientConfig(server=server, policy=policy, slo=slo, in_flight=in_flight, timeout=timeout, token=token,
                          tls=tls)
    tick = progress.task(f"{policy} via {server} (onnxruntime)", len(xs))
    client = OrtClient(plan, heads, config, link=link, device=device, monitors=monitors,
                       on_result=lambda _: tick())
    try:
        if link is not None:
            link.start()
        start = time.perf_counter()
        results = list(client.map(xs))
        elapsed = max(r.finished for r in results) - start if results else 0.0
    finally:
        client.close()
        if device is not None:
            device.close()
    summary = summarize(results, ys, elapsed_s=elapsed)
    return {"summary": {**summary, "backend": "onnxruntime"}, "cloud_replies": client.stats.get("replies", 0),
            "errors": list(client.errors), "top1": [r.top1 for r in results]}


def _reference_ms(plan: Any) -> float:
    """The reference model's latency on the machine that profiled the plan, for an absolute tier; this
    client has no torch to time it, so the plan or ``$DYNO_REFERENCE_MS`` must say."""
    from dyno.emulate.device import reference_ms_override

    recorded = plan.notes.get("reference_ms") if isinstance(plan.notes, dict) else None
    if isinstance(recorded, (int, float)) and recorded > 0:
        return float(recorded)
    override = reference_ms_override()
    if override is not None:
        return override
    raise ConfigError("an absolute tier (low, mid, high) scales the plan by EfficientNet-Lite0's latency on the "
                      "machine that profiled it; this plan does not record it: set $DYNO_REFERENCE_MS (ms) or "
                      "pass --tier as a slowdown number")
