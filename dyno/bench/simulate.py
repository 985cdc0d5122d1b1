"""Every policy side by side on the same traces and device tiers, and the closing-note figures.

Tiers are absolute (``dyno.emulate.device``, ``dyno.bench.reference``): ``tiers`` maps a tier's name to
its slowdown k_d against the plan's device profile (the tier's reference-model latency over the
reference model's latency on the machine that profiled the plan), and ``cloud.scale`` does the same for
the cloud (the GPU tier by default, or 1.0: the plan's measured cloud). The cloud batches as the runtime
does (``dyno.simulate.cloud``).

    report = run(plan, traces, tiers={"low": 1.28}, policies=DEFAULT_POLICIES, slo=SLO.parse(DEFAULT_SLO),
                 cloud=CloudConfig(scale=0.039))
    report.aggregate()["low"]["dyno"]["throughput"]
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dyno.emulate.traces import Trace
from dyno.errors import ConfigError
from dyno.plan import Plan
from dyno.policy import ONLOADING_SLO, SLO, Policy, make, names
from dyno.policy.model import PerfModel
from dyno.progress import NO_PROGRESS, Progress, Tick
from dyno.simulate.cloud import DEFAULT_CLOUD, CloudConfig
from dyno.simulate.engine import OracleDyno, SimConfig, SimResult, simulate_policy

__all__ = ["DEFAULT_POLICIES", "Report", "build_policy", "run", "summary", "experiment"]

#: Every compared system, DynO first: the default of ``dyno simulate``.
DEFAULT_POLICIES = ("dyno", "device-only", "cloud-only", "cloud-only-raw", "neurosurgeon", "split-int8", "jalad")


def build_policy(name: str, *, nominal_bandwidth_bps: float | None = None) -> Policy:
    """A registered policy by name, or ``oracle``; JALAD gets the trace set's nominal bandwidth."""
    if name == "oracle":
        return OracleDyno()
    if name == "jalad":
        return make("jalad", nominal_bandwidth_bps=nominal_bandwidth_bps)
    return make(name)


@dataclasses.dataclass
class Report:
    """results[tier][trace name][policy] -> SimResult, plus what was run."""

    plan_model: str
    slo: SLO
    tiers: dict[str, float]
    policies: tuple[str, ...]
    config: dict[str, Any]
    results: dict[str, dict[str, dict[str, SimResult]]]
    seconds: float = 0.0
    cloud: CloudConfig = DEFAULT_CLOUD

    def aggregate(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per tier and policy, pooled over traces: throughput = all inferences / all time; latency
        percentiles over all inferences; bytes, accuracy, cloud seconds per inference; violations summed."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for tier, per_trace in self.results.items():
            out[tier] = {}
            for name in self.policies:
                rs = [r[name] for r in per_trace.values()]
                n = sum(r.inferences for r in rs)
                lat = np.concatenate([r.latencies_ms for r in rs]) if rs else np.zeros(0)
                off = sum(r.offloaded for r in rs)
                out[tier][name] = {
                    "throughput": n / sum(r.makespan_s for r in rs) if rs else 0.0,
                    "throughput_median": statistics.median(r.throughput for r in rs) if rs else 0.0,
                    "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                    "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
                    "bytes_mean": sum(r.bytes_total for r in rs) / max(n, 1),
                    "bytes_per_offloaded": sum(r.bytes_total for r in rs) / off if off else 0.0,
                    "accuracy": sum(r.accuracy_sum for r in rs) / max(n, 1),
                    "cloud_s": sum(r.cloud_s_total for r in rs) / max(n, 1),
                    "violations": sum(r.violations for r in rs),
                    "inferences": n,
                }
        return out

    def per_trace(self) -> list[dict[str, Any]]:
        return [{"trace": trace, "tier": tier, "policies": {p: r.metrics() for p, r in by_policy.items()}}
                for tier, per_trace in self.results.items() for trace, by_policy in per_trace.items()]

    def to_json(self) -> dict[str, Any]:
        agg = self.aggregate()
        first = next(iter(agg.values()), {})
        return {"plan": self.plan_model, "slo": str(self.slo), "tiers": self.tiers, "config": self.config,
                "cloud": dataclasses.asdict(self.cloud), "policies": first, "by_tier": agg,
                "per_trace": self.per_trace(), "seconds": self.seconds}


def run(plan, traces: Sequence[Trace], *, tiers: dict[str, float], policies: Iterable[str],
        slo: SLO, config: dict[str, Any] | None = None, timeline_for: tuple[str, str] | None = None,
        progress: Callable[[str], None] | None = None, cloud: CloudConfig = DEFAULT_CLOUD) -> Report:
    """Simulate every policy on every trace at every tier (same trace, same tier, side by side).

    A tier's device encodes at its slowdown too, as a slower CPU does (``codec_slowdown``, unless
    ``config`` sets it). ``config`` holds ``SimConfig`` fields other than ``slowdown`` and ``cloud``; ``timeline_for`` =
    (tier, trace name) keeps per-inference timelines for that run (for the plot); ``progress(label)`` is
    called per trace.
    """
    policies = tuple(policies)
    known = set(names()) | {"oracle"}
    unknown = [p for p in policies if p not in known]
    if unknown:
        raise ConfigError(f"unknown policy {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if not traces:
        raise ConfigError("no traces to simulate")
    config = dict(config or {})
    model = PerfModel(plan)
    # JALAD's offline nominal bandwidth: the median mean rate of the trace set (the network type)
    nominal = statistics.median(t.mean_bps for t in traces)
    start = time.perf_counter()
    results: dict[str, dict[str, dict[str, SimResult]]] = {}
    for tier, slowdown in tiers.items():
        results[tier] = {}
        built = {name: build_policy(name, nominal_bandwidth_bps=nominal) for name in policies}
        for trace in traces:
            keep = timeline_for is not None and timeline_for == (tier, trace.name)
            cfg = SimConfig(**{"codec_slowdown": slowdown, **config}, slowdown=slowdown, timeline=keep, cloud=cloud)
            results[tier][trace.name] = {
                name: simulate_policy(policy, model, trace, slo, cfg)
                for name, policy in built.items()}
            if progress:
                progress(f"{tier} {trace.name}")
    return Report(plan_model=plan.model, slo=slo, tiers=dict(tiers), policies=policies,
                  config={"nominal_bandwidth_bps": nominal, **config}, results=results,
                  seconds=time.perf_counter() - start, cloud=cloud)


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else {}


def summary(main: Report, onloading: Report | None = None) -> dict[str, Any]:
    """The closing-note figures, per tier.

    - ``speedup[X]``: throughput(DynO) / throughput(X) over traces (median, min, max, the trace with
      the minimum, how many traces are below 1, and the share of X's inferences that broke the SLO);
    - ``bytes_ratio_neurosurgeon``: bytes per offloaded inference, Neurosurgeon / DynO, over traces;
    - ``regret``: 1 - throughput(DynO) / throughput(oracle), over traces (if the oracle ran);
    - ``onloading``: with the onloading SLO, cloud seconds per inference of cloud-only / DynO (pooled),
      and DynO's achieved throughput over cloud-only's (median, min over traces).
    """
    out: dict[str, Any] = {"slo": str(main.slo), "tiers": {}}
    for tier, per_trace in main.results.items():
        entry: dict[str, Any] = {"slowdown": main.tiers[tier], "speedup": {
            other: _speedup(per_trace, other) for other in main.policies
            if other not in ("dyno", "oracle") and any(r[other].throughput > 0 for r in per_trace.values())}}
        if "neurosurgeon" in main.policies:
            entry.update(_bytes_against_neurosurgeon(per_trace, main.aggregate()[tier]))
        if "oracle" in main.policies:
            entry["regret"] = _stats([1.0 - r["dyno"].throughput / r["oracle"].throughput
                                      for r in per_trace.values() if r["oracle"].throughput > 0])
        if onloading is not None and tier in onloading.results:
            entry["onloading"] = _onloading(onloading, tier)
        out["tiers"][tier] = entry
    return out


def _speedup(per_trace: dict[str, dict[str, SimResult]], other: str) -> dict[str, Any]:
    ratios = {name: r["dyno"].throughput / r[other].throughput
              for name, r in per_trace.items() if r[other].throughput > 0}
    n = sum(r[other].inferences for r in per_trace.values())
    return {**_stats(list(ratios.values())), "worst_trace": min(ratios, key=lambda name: ratios[name]),
            "below_1": int(sum(v < 1.0 for v in ratios.values())),
            # the baseline's own SLO violations (e.g. cloud-only's JPEG breaking the accuracy drop):
            # a ratio below 1 against a baseline that breaks the SLO is not a loss
            "baseline_violation_share": sum(r[other].violations for r in per_trace.values()) / max(n, 1)}


def _bytes_against_neurosurgeon(per_trace: dict[str, dict[str, SimResult]], agg: dict[str, dict[str, Any]]
                                ) -> dict[str, Any]:
    ratios = []
    for r in per_trace.values():
        d, n = r["dyno"].metrics(), r["neurosurgeon"].metrics()
        if d["bytes_per_offloaded"] > 0 and n["bytes_per_offloaded"] > 0:
            ratios.append(n["bytes_per_offloaded"] / d["bytes_per_offloaded"])
    return {"bytes_ratio_neurosurgeon": _stats(ratios),
            "bytes_per_offloaded": {"dyno": agg["dyno"]["bytes_per_offloaded"],
                                    "neurosurgeon": agg["neurosurgeon"]["bytes_per_offloaded"]}}


def _onloading(onloading: Report, tier: str) -> dict[str, Any]:
    agg = onloading.aggregate()[tier]
    achieved = [r["dyno"].throughput / r["cloud-only"].throughput for r in onloading.results[tier].values()
                if r["cloud-only"].throughput > 0]
    return {"slo": str(onloading.slo),
            "cloud_s": {"dyno": agg["dyno"]["cloud_s"], "cloud-only": agg["cloud-only"]["cloud_s"]},
            "cloud_s_reduction": (agg["cloud-only"]["cloud_s"] / agg["dyno"]["cloud_s"]
                                  if agg["dyno"]["cloud_s"] > 0 else float("inf")),
            "throughput_vs_cloud_only": _stats(achieved)}


def _status(tick: Tick, label: str, what: str) -> None:
    tick(status=f"{label}: {what}")


def experiment(plan: Plan, traces: Sequence[Trace], *, tiers: dict[str, float], policies: Sequence[str],
               slo: SLO, config: dict[str, Any], closing: bool = False, plot: str | None = None,
               plot_trace: str | None = None, progress: Progress = NO_PROGRESS,
               cloud: CloudConfig = DEFAULT_CLOUD, speeds: dict[str, Any] | None = None) -> dict[str, Any]:
    """``dyno simulate``: every policy on every trace at every tier; returns the JSON document.

    ``closing`` adds DynO and the oracle if missing, the closing-note ``summary`` and an onloading run
    (``ONLOADING_SLO``: DynO against cloud-only); ``plot`` draws ``plot_trace`` (default the first) at
    the first tier to that PNG path.
    """
    if not traces:
        raise ConfigError("no traces to simulate")
    policies = tuple(policies) + tuple(p for p in ("dyno", "oracle") if closing and p not in policies)
    plot_trace = plot_trace or traces[0].name
    if plot and plot_trace not in {t.name for t in traces}:
        raise ConfigError(f"--plot-trace {plot_trace!r} is not among the traces")
    runs = [("main", slo, policies)]
    if closing:
        runs.append(("onloading", SLO.parse(ONLOADING_SLO), ("dyno", "cloud-only")))
    tick = progress.task("simulate", len(traces) * len(tiers) * len(runs))
    reports = {}
    for label, run_slo, run_policies in runs:
        reports[label] = run(plan, traces, tiers=tiers, policies=run_policies, slo=run_slo, config=config,
                             timeline_for=(next(iter(tiers)), plot_trace) if plot and label == "main" else None,
                             progress=functools.partial(_status, tick, label), cloud=cloud)
    document: dict[str, Any] = reports["main"].to_json()
    if speeds is not None:
        document["speeds"] = speeds
    if closing:
        document["summary"] = summary(reports["main"], reports["onloading"])
        document["onloading"] = reports["onloading"].to_json()["by_tier"]
    if plot:
        from dyno.bench.simulate_plot import plot_timeline

        trace = next(t for t in traces if t.name == plot_trace)
        tier = next(iter(tiers))
        title = f"{plan.model}: trace {trace.name}, tier {tier} (slowdown {tiers[tier]:.3g}), SLO {slo}"
        document["plot"] = str(plot_timeline(reports["main"].results[tier][trace.name], trace, plot, title))
    return document
