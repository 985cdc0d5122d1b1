"""The priced rows of a plan and the model's scalar reference (``dyno.policy.model`` states the formulas).

``rows_of`` lists every (cut, option) a policy may choose, ``drop_bounds`` gives each row's one-sided
bound of its accuracy drop, ``predict`` is the scalar form of the model for one row and ``meets`` /
``violation`` check a prediction against an SLO.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import TYPE_CHECKING, Sequence

import numpy as np

from dyno.packing import QUANT_CODECS
from dyno.policy.base import SLO, Estimates, Prediction
from dyno.wire import on_the_wire, request_envelope

if TYPE_CHECKING:
    from dyno.plan import Plan

__all__ = ["DevicePower", "Row", "rows_of", "drop_bounds", "predict", "meets", "violation", "MIN_BANDWIDTH_BPS",
           "cloud_ms", "batch_of", "EPS", "DEFAULT_POWER"]

MIN_BANDWIDTH_BPS = 1.0   # a zero estimate would make every offload infinitely slow; clamp it
EPS = 1e-9


@dataclasses.dataclass(frozen=True, kw_only=True)
class DevicePower:
    """Device power while computing and while transmitting (watts); rough smartphone-class defaults."""

    compute_w: float = 2.5
    radio_w: float = 1.2


DEFAULT_POWER = DevicePower()


@dataclasses.dataclass(frozen=True)
class Row:
    """One priced choice: ``codec``/``bits`` None on the device-only row."""

    cut: int
    codec: str | None
    bits: int | None
    bytes: float
    accuracy: float
    device_ms: float
    encode_ms: float
    decode_ms: float
    measured: bool = True
    drop_se: float | None = None   # standard error of the drop (a fraction), measured rows only
    exact: bool = False            # inferred, but lossless or nearly so (no accuracy bound needed)
    wire_bytes: float = 0.0        # on the link: ``bytes`` with the request's envelope and framing (dyno.wire)

    @property
    def offloaded(self) -> bool:
        return self.codec is not None


def rows_of(plan: "Plan") -> list[Row]:
    """Every (cut, option) of the plan in plan order, inferred fp32 rows added, device-only last.

    A decision names (cut, codec, bits) only, so of options sharing that label the first is priced."""
    rows: list[Row] = []
    for cut in plan.cuts[:-1]:
        seen: set[tuple[str, int | None]] = set()
        for option in cut.options:
            if (option.codec, option.bits) in seen:  # same label, other clip: the first one is used,
                continue                             # as ``CutPlan.option(codec, bits)`` returns it
            seen.add((option.codec, option.bits))
            rows.append(Row(cut.id, option.codec, option.bits, float(option.bytes), float(option.accuracy),
                            float(cut.device_ms), float(option.encode_ms), float(option.decode_ms),
                            option.measured, option.drop_se, option.codec in ("fp32", "fp16")))
        if not any(o.codec == "fp32" for o in cut.options):
            rows.append(Row(cut.id, "fp32", None, float(cut.fp32_bytes), float(plan.accuracy_fp32),
                            float(cut.device_ms), 0.0, 0.0, False, None, True))
        if cut.id == 0 and not any(o.bits == 8 and o.codec in QUANT_CODECS for o in cut.options):
            # the input is an 8-bit image: 8-bit quantisation of it is (near) lossless; priced
            # uncompressed, one byte per value (no compression credit), fp32 accuracy
            rows.append(Row(0, "shuffle-lz4", 8, float(cut.numel) + 64.0, float(plan.accuracy_fp32),
                            float(cut.device_ms), 0.0, 0.0, False, None, True))
    envelope = request_envelope(plan.model)
    rows = [dataclasses.replace(r, wire_bytes=float(on_the_wire(r.bytes, envelope))) for r in rows]
    last = plan.cuts[-1]
    rows.append(Row(last.id, None, None, 0.0, float(plan.accuracy_fp32), float(last.device_ms), 0.0, 0.0,
                    True, None, True))
    return rows


def drop_bounds(rows: Sequence[Row], accuracy_fp32: float, confidence: float) -> np.ndarray:
    """Per row, the one-sided upper confidence bound of its accuracy drop in points (module docstring)."""
    z = statistics.NormalDist().inv_cdf(confidence) if confidence > 0.5 else 0.0
    drop = [(accuracy_fp32 - r.accuracy) * 100.0 for r in rows]
    bound = np.full(len(rows), math.inf)
    measured: dict[int, list[tuple[int, float]]] = {}   # cut -> (bits, bound) of its measured widths
    for i, r in enumerate(rows):
        if r.exact or r.codec is None:
            bound[i] = drop[i]
        elif r.measured:
            bound[i] = drop[i] + z * 100.0 * (r.drop_se or 0.0)
            if r.bits is not None and r.codec in QUANT_CODECS:
                measured.setdefault(r.cut, []).append((r.bits, float(bound[i])))
    for i, r in enumerate(rows):
        if not (r.exact or r.codec is None or r.measured):
            below = [b for bits, b in measured.get(r.cut, ()) if r.bits is not None and bits <= r.bits]
            bound[i] = max(drop[i], min(below)) if below else math.inf
    return bound


def cloud_ms(plan: "Plan", cut: int, batch: int) -> float:
    c = plan.cuts[cut]
    if cut == len(plan.cuts) - 1:
        return 0.0
    return float(c.cloud_ms_per_sample(batch if c.batchable else 1))


def batch_of(plan: "Plan", cut: int, batch: int) -> int:
    return batch if plan.cuts[cut].batchable else 1


def predict(plan: "Plan", row: Row, estimates: Estimates, batch: int = 1, *,
            power: DevicePower = DEFAULT_POWER, slo: SLO | None = None,
            floor: float | None = None, in_flight: int | None = None, bound: float | None = None) -> Prediction:
    """The scalar reference of the model for one row (plain Python floats, same operation order).
    ``bound``: the row's drop bound in points (``drop_bounds``); None checks the point estimate."""
    kd = estimates.device_slowdown
    device = kd * row.device_ms + estimates.codec_slowdown * row.encode_ms + (
        estimates.offload_overhead_ms if row.offloaded else estimates.local_overhead_ms)
    if row.offloaded:
        link = (row.wire_bytes * 8.0) * (1000.0 / max(estimates.bandwidth_bps, MIN_BANDWIDTH_BPS))
        batch = estimates.batch_at(row.cut, batch)
        s = cloud_ms(plan, row.cut, batch) * estimates.server_factor(row.cut)
        cost = row.decode_ms + s + estimates.server_overhead_ms
        cloud = cost / estimates.cloud_capacity
        wait = estimates.rtt_ms + row.decode_ms + batch_of(plan, row.cut, batch) * s
        queue = estimates.queue_ms
        cloud_s = cost / 1000.0
    else:
        link = cloud = cloud_s = wait = queue = 0.0
    intrinsic = device + link + wait
    latency = intrinsic + queue
    stage = max(device, link, cloud)
    throughput = 1000.0 / stage if stage > 0 else math.inf
    if in_flight is not None and intrinsic > 0:
        throughput = min(throughput, (in_flight * 1000.0) / intrinsic)
    energy = (power.compute_w * device + power.radio_w * link) / 1000.0
    cap = 1.0 if in_flight is None or device >= max(link, cloud) else float(in_flight - 1)
    prediction = Prediction(latency, throughput, row.bytes, row.accuracy, cloud_s, energy, True, cap)
    if slo is not None and not meets(prediction, slo, plan.accuracy_fp32, floor, bound):
        prediction = Prediction(latency, throughput, row.bytes, row.accuracy, cloud_s, energy, False, cap)
    return prediction


def wait_at_rate(rate: float | None, throughput: float, cap: float) -> float:
    """The wait, ms, a device's own frames add when they arrive at ``rate`` per second at a pipeline of
    ``throughput`` per second: below saturation the M/D/1 mean wait ``rho / (2 mu (1 - rho))``; at or
    above it the ``cap`` frames that fit wait a service time each and the rest are dropped (a throughput
    floor counts those, not the latency). No rate (a closed loop): 0."""
    if not rate or not throughput > 0:
        return 0.0
    per = 1000.0 / throughput
    rho = rate / throughput
    queue = rho / (2.0 * (1.0 - rho)) * per if rho < 1.0 else math.inf
    return min(queue, cap * per)


def latency_at_rate(p: Prediction, slo: SLO) -> float:
    """The latency the SLO's latency bound is checked on: with the wait at the SLO's frame rate (its
    numeric throughput floor) when it has one (``wait_at_rate``)."""
    return p.latency_ms + wait_at_rate(slo.min_throughput, p.throughput, p.queue_cap)


def meets(p: Prediction, slo: SLO, accuracy_fp32: float, floor: float | None, bound: float | None = None) -> bool:
    """Whether a prediction meets every constraint of ``slo`` (and the throughput ``floor``); the drop
    is checked on ``bound`` when given (points), else on the point estimate."""
    drop = (accuracy_fp32 - p.accuracy) * 100.0 if bound is None else bound
    return not ((slo.max_latency_ms is not None and latency_at_rate(p, slo) > slo.max_latency_ms)
                or (slo.max_accuracy_drop is not None and drop > slo.max_accuracy_drop + EPS)
                or (slo.max_bytes is not None and p.bytes > slo.max_bytes)
                or (floor is not None and floor > 0 and p.throughput < floor * (1.0 - EPS)))


def violation(p: Prediction, slo: SLO, accuracy_fp32: float, floor: float | None) -> float:
    """0 when the prediction meets every constraint, else the sum of relative violations."""
    v = 0.0
    latency = min(latency_at_rate(p, slo), 1e9) if slo.max_latency_ms is not None else 0.0
    if slo.max_latency_ms is not None and latency > slo.max_latency_ms:
        v += latency / slo.max_latency_ms - 1.0 if slo.max_latency_ms > 0 else latency
    if slo.max_accuracy_drop is not None:
        drop = (accuracy_fp32 - p.accuracy) * 100.0
        if drop > slo.max_accuracy_drop + EPS:
            v += (drop - slo.max_accuracy_drop) / max(slo.max_accuracy_drop, 1.0)
    if slo.max_bytes is not None and p.bytes > slo.max_bytes:
        v += (p.bytes - slo.max_bytes) / max(slo.max_bytes, 1.0)
    if floor is not None and floor > 0 and p.throughput < floor * (1.0 - EPS):
        v += 1.0 - p.throughput / floor
    return v
