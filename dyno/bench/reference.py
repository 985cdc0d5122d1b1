"""The speed of this machine, as tiers are quoted: the reference model's whole-model latency here.

A tier names an absolute latency of the reference model (``dyno.emulate.device.REFERENCE_MODEL``,
EfficientNet-Lite0) on the device and on the cloud (``TIER_MS``, ``CLOUD_MS``). A plan's profiles give
the per-cut shape of a model on the machine that profiled it; to scale them to a tier, divide the tier's
latency by the reference model's latency *on that machine*. Plans do not record it yet (the offline
pipeline should time the reference model beside its profiles and store ``notes["reference_ms"]``), so
``Speeds.for_plan`` uses it when present and otherwise measures this machine and assumes the plan was
profiled here (``assumed`` says so, and a plan whose profile names another host gets a warning).

Measured once per process: one torch thread, a warm-up, then the median of ``REPEATS`` runs of one
224x224 input, each timed as the thread's CPU time: the machine's speed, not its load. Wall time read
the same VM's Lite0 at 24 ms idle and 60-63 ms beside other work, so a demo started on a busy machine
ran the low tier (49 ms) at native speed; the device emulation pads the work's CPU time too
(``dyno.emulate.device``), so the two agree. ``DYNO_REFERENCE_MS`` overrides the measurement (tests, or
a known machine).

    speeds = Speeds.for_plan(plan)                      # Speeds(reference_ms=38.2, source=...)
    speeds.device("low")                                # 49 / 38.2 = 1.28: the plan's device_ms times this
    speeds.cloud("gpu")                                 # 1.5 / 38.2 = 0.039: the plan's cloud_ms times this
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import statistics
import time
from typing import Any, Callable, Iterator

from dyno.emulate.device import CLOUD_MS, REFERENCE_MODEL, TIER_MS, reference_ms_override, slowdown_for
from dyno.errors import ConfigError

__all__ = ["REPEATS", "measure_reference_ms", "cpu_times_ms", "Speeds"]

REPEATS = 15
_MEASURED: dict[str, Any] = {}


def measure_reference_ms(repeats: int = REPEATS) -> dict[str, Any]:
    """The reference model's latency on this machine (cached for the process): ``{"ms", "min_ms",
    "max_ms", "repeats", "threads", "model", "host", "source"}``."""
    if _MEASURED:
        return dict(_MEASURED)
    ms = reference_ms_override()
    if ms is not None:
        _MEASURED.update(ms=ms, min_ms=ms, max_ms=ms, repeats=0, threads=1, model=REFERENCE_MODEL,
                         host=platform.node(), source="$DYNO_REFERENCE_MS")
        return dict(_MEASURED)
    import torch

    from dyno import zoo

    model = zoo.load_model(REFERENCE_MODEL)
    x = torch.zeros(1, *zoo.get_model(REFERENCE_MODEL).input_shape)
    times = cpu_times_ms(lambda _: model(x), repeats)
    _MEASURED.update(ms=statistics.median(times), min_ms=min(times), max_ms=max(times), repeats=repeats,
                     threads=1, model=REFERENCE_MODEL, host=platform.node(), source="measured")
    return dict(_MEASURED)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread in this process, as a device runs it; the thread count as it was afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cpu_times_ms(run: Callable[[int], Any], repeats: int, *, warmup: int = 3) -> list[float]:
    """This thread's CPU milliseconds of each of ``repeats`` calls ``run(i)`` after ``warmup`` untimed
    ones, with one torch thread and no autograd: the work's cost, not the wait for a core."""
    import torch

    with one_torch_thread(), torch.inference_mode():
        for i in range(warmup):
            run(i)
        times = []
        for i in range(warmup, warmup + repeats):
            start = time.thread_time()
            run(i)
            times.append((time.thread_time() - start) * 1000)
    return times


@dataclasses.dataclass(frozen=True)
class Speeds:
    """Absolute tiers against one plan: ``device(tier)`` and ``cloud(tier)`` scale its profiles."""

    reference_ms: float
    source: str             # "plan" (recorded), the plan's own profile (a Lite0 plan), "measured", "$DYNO_REFERENCE_MS"
    assumed: str = ""       # the assumption made, if the plan did not record its machine's speed
    warning: str = ""

    @classmethod
    def for_plan(cls, plan: Any) -> "Speeds":
        recorded = plan.notes.get("reference_ms") if isinstance(plan.notes, dict) else None
        if isinstance(recorded, (int, float)) and recorded > 0:
            return cls(float(recorded), "plan")
        if plan.model == REFERENCE_MODEL:   # the plan profiled the reference model itself: its own figure
            return cls(float(plan.cuts[-1].device_ms), "the plan's own device profile")
        here = measure_reference_ms()
        assumed = (f"the plan records no reference latency: assumed profiled on this machine "
                   f"({REFERENCE_MODEL} {here['ms']:.1f} ms here, {here['source']})")
        host = _profiled_on(plan)
        warning = (f"the plan was profiled on {host!r}, not this host {here['host']!r}: tiers scale it by this "
                   "machine's speed" if host and host != here["host"] else "")
        return cls(float(here["ms"]), str(here["source"]), assumed, warning)

    def device(self, tier: str | float) -> float:
        """The device slowdown k_d of a tier (``TIER_MS`` name or ms) against the plan's device_ms."""
        return slowdown_for(tier, self.reference_ms)

    def cloud(self, tier: str | float = "gpu") -> float:
        """The factor on the plan's cloud_ms for a cloud tier (``CLOUD_MS`` name or ms)."""
        ms = CLOUD_MS[tier] if isinstance(tier, str) and tier in CLOUD_MS else tier
        return slowdown_for(ms, self.reference_ms)

    def describe(self, tiers: dict[str, float] | None = None) -> dict[str, Any]:
        """What a report prints: the reference, where it came from, and every tier's absolute figure."""
        out: dict[str, Any] = {"reference_model": REFERENCE_MODEL, "reference_ms": self.reference_ms,
                               "source": self.source, "tier_ms": dict(TIER_MS), "cloud_ms": dict(CLOUD_MS)}
        if tiers:
            out["slowdowns"] = dict(tiers)
        if self.assumed:
            out["assumed"] = self.assumed
        if self.warning:
            out["warning"] = self.warning
        return out


def _profiled_on(plan: Any) -> str | None:
    notes = plan.notes if isinstance(plan.notes, dict) else {}
    machine = (notes.get("device_profile") or {}).get("machine") if isinstance(notes.get("device_profile"), dict) \
        else None
    host = machine.get("host") if isinstance(machine, dict) else None
    return host if isinstance(host, str) else None


def resolve(plan: Any, *, tier: str = "mid", slowdown: float | None = None, cloud: str = "gpu",
            reference_ms: float | None = None) -> tuple[dict[str, float], float, dict[str, Any]]:
    """(tiers as slowdowns, the cloud's scale, what to print) for ``dyno simulate``'s arguments.

    ``tier``: ``low``, ``mid``, ``high``, ``all``, comma-separated names, or a reference-model latency in
    ms; ``slowdown`` (a k_d against the plan's profile) replaces it. ``cloud``: ``gpu`` (the absolute GPU
    tier), ``measured`` (the plan's own cloud profile, as when comparing with ``dyno bench``, whose cloud
    is this machine's server process) or a reference-model latency in ms. ``reference_ms`` overrides the
    plan's machine speed."""
    speeds = Speeds(float(reference_ms), "--reference-ms") if reference_ms else Speeds.for_plan(plan)
    if slowdown is not None:
        tiers = {f"k{slowdown:g}": float(slowdown)}
    else:
        names = list(TIER_MS) if tier == "all" else [t.strip() for t in tier.split(",") if t.strip()]
        if not names:
            raise ConfigError("no tier given; use low, mid, high, all, or a latency in ms")
        tiers = {}
        for name in names:
            label = name if name in TIER_MS else f"{float(name):g}ms" if _number(name) else name
            tiers[label] = speeds.device(name if name in TIER_MS else (float(name) if _number(name) else name))
    if cloud == "measured":
        scale = 1.0
    elif cloud in CLOUD_MS or _number(cloud):
        scale = speeds.cloud(cloud if cloud in CLOUD_MS else float(cloud))
    else:
        raise ConfigError(f"unknown cloud {cloud!r}; use gpu (the {CLOUD_MS['gpu']:g} ms GPU tier), measured "
                          "(the plan's cloud profile) or a reference-model latency in ms")
    described = speeds.describe(tiers)
    described.update(cloud_used=cloud, cloud_scale=scale,
                     device_ms={t: k * speeds.reference_ms for t, k in tiers.items()},
                     cloud_reference_ms=scale * speeds.reference_ms)
    return tiers, scale, described


def _number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True
