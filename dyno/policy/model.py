"""The performance model the scheduler optimises (DESIGN.md, "Performance model").

For cut c, option (codec, bits) with measured codec bytes D (meta and payload) and codec times
T_enc/T_dec, device slowdown k_d, uplink bandwidth B, RTT, the cloud's per-sample time
S = plan.cloud_ms_per_sample(b) * f at the batch size b it runs (f the observed/profiled server
factor), the queueing wait Q and the cloud capacity K this device can use (worker-seconds per second:
its own use plus the server's headroom)::

    device stage   T_d = k_d * T_dev(c) + T_enc + T_o      (T_dev: the plan's device_ms, this process; T_o the
                                                          client's own work per inference, offloaded or not)
    link stage     T_l = 8 * W(D) / B                     (W: D with the request's envelope, gRPC and
                                                          HTTP/2 framing and packet headers: dyno.wire)
    cloud cost     C   = T_dec + S + H                    (cloud CPU per inference; H: the server's handling
                                                          of a request beyond decode and tail, as it reports)
    cloud stage    T_c = C / K                            (capacity: load from others shrinks K)
    intrinsic      L0  = T_d + T_l + RTT + T_dec + b * S  (no waiting: the whole batch's compute)
    latency        L   = L0 + Q                          (waiting at the server)
    throughput     X   = min(1 / max(T_d, T_l, T_c),       (three-stage pipeline)
                             W / L0)                      (W: the client's request window, if bounded)
    energy         E   = P_compute * T_d + P_radio * T_l
    accuracy       A(c, option)  from the plan's precision table
    drop bound     U   = 100 * (A_fp32 - A) + z * 100 * drop_se     (one-sided, z from SLO.confidence)

The accuracy constraint is checked on U, not on the point estimate. A measured option without a standard
error counts at its point estimate; fp32, the device-only row and the near-lossless rows inferred below
(the input at 8 bits, fp16 where not measured) are exact. A quantised width the analysis *inferred*
gets the smallest bound of the widths measured at or below it at the same cut (any coder: the coders of
one width send the same codes), and no less than its own inferred drop: it is never chosen where no
measured width at or below it meets the bound.

Capacity and waiting are kept apart: a queue at the server lengthens latency (Q) but takes no
throughput (the window bound uses L0: a queue is what saturation causes, not a cause of it); only load
from *others* (a smaller headroom, so a smaller K) takes capacity, and a device's own load is in K on
both sides (``dyno.monitor``), so it never reads its own load as lost capacity.

The last cut (device-only) has T_l = T_c = RTT = Q = 0, D = 0, C = 0 and the plan's fp32 accuracy.

Assumptions (stated because the plan is measured on this CPU, not on the paper's GPU server): the cloud
is the native-speed process that produced the plan's ``cloud_ms``; the device is that process slowed by
k_d (the tiers); the codec times ``encode_ms`` are taken as measured times ``codec_slowdown``: 1 (the
formula in DESIGN.md) where the emulation pads the head runs only, k_d where the device is slowed as a
whole (a CPU quota, as in ``dyno bench``; a real device). A cut that is
not ``batchable`` is priced at batch 1. A cut without a measured fp32 option gets one inferred from its
shape (4 bytes per element, fp32 accuracy, zero codec time) so Neurosurgeon can always cut anywhere;
an input cut without an 8-bit quantised option gets ``shuffle-lz4:8`` inferred as one byte per value
(the input is an 8-bit image) at fp32 accuracy, so SPINN-style transfer can send the input too.

``PerfModel`` precomputes numpy arrays once per plan (one row per (cut, option), the device-only row
last) and evaluates all rows at once; ``predict`` is the scalar reference of the same formulas.
"""
from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from dyno.errors import PolicyError
from dyno.policy.base import OBJECTIVES, SLO, Estimates, Prediction
from dyno.policy.rows import (
    DEFAULT_POWER,
    EPS,
    MIN_BANDWIDTH_BPS,
    DevicePower,
    Row,
    batch_of,
    cloud_ms,
    drop_bounds,
    meets,
    predict,
    rows_of,
    violation,
)

if TYPE_CHECKING:
    from dyno.plan import Plan

__all__ = ["DevicePower", "Row", "PerfModel", "ModelCache", "rows_of", "predict", "meets", "violation",
           "MIN_BANDWIDTH_BPS", "drop_bounds", "shared_model", "Evaluation"]

class Evaluation:
    """Every row's figures under one set of estimates (numpy arrays; latency, cloud cost and energy
    computed on first use)."""

    __slots__ = ("model", "device", "link", "cost", "cloud", "wait", "throughput", "est", "in_flight", "_latency",
                 "_energy")

    def __init__(self, model: "PerfModel", device: np.ndarray, link: np.ndarray, cost: np.ndarray,
                 cloud: np.ndarray, wait: np.ndarray, throughput: np.ndarray, est: Estimates) -> None:
        self.model = model
        self.device = device        # device stage, ms
        self.link = link            # link stage, ms
        self.cost = cost            # cloud compute per inference, ms
        self.cloud = cloud          # cloud stage at this device's capacity, ms
        self.wait = wait            # RTT + decode + the batch's compute, ms (latency only; no queueing)
        self.throughput = throughput
        self.est = est
        self.in_flight: int | None = None   # the request window the throughput was bounded by
        self._latency: np.ndarray | None = None
        self._energy: np.ndarray | None = None

    @property
    def intrinsic(self) -> np.ndarray:
        """Latency without waiting at the server, ms."""
        return self.device + self.link + self.wait

    @property
    def latency(self) -> np.ndarray:
        latency = self._latency
        if latency is None:
            latency = self._latency = self.intrinsic + self.model.offloaded * self.est.queue_ms
        return latency

    def cloud_s(self, batch: int) -> np.ndarray:  # noqa: ARG002 (the batch is the evaluation's)
        return self.cost / 1000.0

    def energy(self) -> np.ndarray:
        energy = self._energy
        if energy is None:
            p = self.model.power
            energy = self._energy = (p.compute_w * self.device + p.radio_w * self.link) / 1000.0
        return energy

    def values(self, objective: str, batch: int) -> np.ndarray:
        if objective == "throughput":
            return self.throughput
        if objective == "latency":
            return self.latency
        if objective == "accuracy":
            return self.model.accuracy
        if objective == "bytes":
            return self.model.bytes
        if objective == "cloud_cost":
            return self.cloud_s(batch)
        return self.energy()


class PerfModel:
    """The model over the rows of one plan (every row, or a ``subset``), vectorised. Build once per plan;
    evaluate per decision."""

    def __init__(self, plan: "Plan", *, power: DevicePower = DEFAULT_POWER, rows: Sequence[Row] | None = None
                 ) -> None:
        self.plan = plan
        self.power = power
        self.rows: list[Row] = rows_of(plan) if rows is None else list(rows)
        if len(self.rows) < 1:
            raise PolicyError("the plan has no rows to choose from")
        self.index = {(r.cut, r.codec, r.bits): i for i, r in enumerate(self.rows)}
        self.device_only = len(self.rows) - 1
        f = lambda attr: np.array([getattr(r, attr) for r in self.rows], dtype=np.float64)  # noqa: E731
        self.bytes = f("bytes")
        self.bits8 = f("wire_bytes") * 8.0   # the link carries the envelope and framing too (dyno.wire)
        self.accuracy = f("accuracy")
        self.device_ms = f("device_ms")
        self.encode_ms = f("encode_ms")
        self.decode_ms = f("decode_ms")
        self.offloaded = np.array([r.offloaded for r in self.rows], dtype=np.float64)
        self.drop = (plan.accuracy_fp32 - self.accuracy) * 100.0
        self._bounds: dict[float, np.ndarray] = {}
        self._zero_stage = bool(np.any((self.device_ms == 0) & (self.encode_ms == 0) & (self.bytes == 0)))
        self._cloud_cache: dict[int, np.ndarray] = {}
        self._batch_cache: dict[int, np.ndarray] = {}
        self._static_cache: dict[tuple, np.ndarray] = {}
        self._cut_rows: dict[int, list[int]] = {}
        for i, r in enumerate(self.rows):
            if r.offloaded:
                self._cut_rows.setdefault(r.cut, []).append(i)
        self._factors: tuple[tuple | None, np.ndarray] = (None, np.ones(len(self.rows)))
        self._batched: tuple[tuple | None, tuple[np.ndarray, np.ndarray]] = (None, (self.bytes, self.bytes))
        #: the model of every row of the plan this one is a ``subset`` of, and each row's index there
        self.whole: PerfModel = self
        self.whole_index = np.arange(len(self.rows))
        self.fronts: dict[tuple, PerfModel] = {}   # dyno.policy.front's subsets of this model

    def subset(self, keep: np.ndarray) -> "PerfModel":
        """The model of the rows ``keep`` selects and the device-only row (still last), priced as here."""
        picked = np.flatnonzero(keep | (np.arange(len(self.rows)) == self.device_only))
        sub = PerfModel(self.plan, power=self.power, rows=[self.rows[i] for i in picked])
        sub.whole, sub.whole_index = self.whole, self.whole_index[picked]
        return sub

    def cloud_ps(self, batch: int) -> np.ndarray:
        """Profiled server ms per sample for every row at ``batch`` (0 on the device-only row)."""
        cached = self._cloud_cache.get(batch)
        if cached is None:
            cached = np.array([cloud_ms(self.plan, r.cut, batch) for r in self.rows], dtype=np.float64)
            self._cloud_cache[batch] = cached
        return cached

    def server_factors(self, est: Estimates) -> np.ndarray | float:
        """Per row, the server's observed / profiled time at its cut (``Estimates.server_factor``)."""
        if not est.server_ms_factors:
            return est.server_ms_factor
        key = (est.server_ms_factor, est.server_ms_factors)
        cached_key, factors = self._factors   # one tuple: a policy may be shared by threads
        if key != cached_key:   # the estimates change far less often than decisions are taken
            factors = np.full(len(self.rows), est.server_ms_factor)
            for cut, factor in est.server_ms_factors:
                factors[self._cut_rows.get(cut, [])] = factor
            self._factors = (key, factors)
        return factors

    def batched(self, est: Estimates, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Per row, profiled server ms per sample and the batch it runs in: at ``batch``, or at the batch
        the replies from its cut ran in (``Estimates.batches``)."""
        if not est.batches:
            return self.cloud_ps(batch), self.batch_sizes(batch)
        key = (batch, est.batches)
        cached_key, cached = self._batched   # one tuple: a policy may be shared by threads
        if key != cached_key:
            per_sample, sizes = self.cloud_ps(batch).copy(), self.batch_sizes(batch).copy()
            for cut, size in est.batches:
                rows = self._cut_rows.get(cut, [])
                per_sample[rows] = self.cloud_ps(size)[rows]
                sizes[rows] = self.batch_sizes(size)[rows]
            cached = (per_sample, sizes)
            self._batched = (key, cached)
        return cached

    def batch_sizes(self, batch: int) -> np.ndarray:
        """Per row, the batch size its cut runs at (1 where the cut is not batchable)."""
        cached = self._batch_cache.get(batch)
        if cached is None:
            cached = np.array([batch_of(self.plan, r.cut, batch) for r in self.rows], dtype=np.float64)
            self._batch_cache[batch] = cached
        return cached

    def evaluate(self, est: Estimates, batch: int = 1, in_flight: int | None = None) -> Evaluation:
        device = est.codec_slowdown * self.encode_ms + est.device_slowdown * self.device_ms
        if est.offload_overhead_ms or est.local_overhead_ms:
            device = device + np.where(self.offloaded > 0, est.offload_overhead_ms, est.local_overhead_ms)
        link = self.bits8 * (1000.0 / max(est.bandwidth_bps, MIN_BANDWIDTH_BPS))
        per_sample, sizes = self.batched(est, batch)
        s = per_sample * self.server_factors(est)
        cost = self.decode_ms + s + self.offloaded * est.server_overhead_ms
        cloud = cost / est.cloud_capacity
        wait = self.offloaded * est.rtt_ms + self.decode_ms + sizes * s
        stage = np.maximum(np.maximum(device, link), cloud)
        if self._zero_stage:        # only a degenerate plan has a row with no time at all (inf/s)
            with np.errstate(divide="ignore"):
                throughput = 1000.0 / stage
        else:
            throughput = 1000.0 / stage
        ev = Evaluation(self, device, link, cost, cloud, wait, throughput, est)
        if in_flight is not None:
            ev.in_flight = in_flight
            with np.errstate(divide="ignore"):
                ev.throughput = np.minimum(throughput, (in_flight * 1000.0) / ev.intrinsic)
        return ev

    def drop_bound(self, confidence: float) -> np.ndarray:
        """Per row, the drop's upper confidence bound in points (``drop_bounds``)."""
        bound = self._bounds.get(confidence)
        if bound is None and self.whole is not self:   # an inferred width's bound reads the measured ones
            bound = self._bounds[confidence] = self.whole.drop_bound(confidence)[self.whole_index]
        elif bound is None:
            bound = self._bounds[confidence] = drop_bounds(self.rows, self.plan.accuracy_fp32, confidence)
        return bound

    def static_mask(self, slo: SLO, allowed: np.ndarray | None = None) -> np.ndarray:
        """Rows meeting the constraints that do not depend on estimates (accuracy drop bound, bytes)."""
        key = (slo.max_accuracy_drop, slo.max_bytes, slo.confidence, None if allowed is None else allowed.tobytes())
        mask = self._static_cache.get(key)
        if mask is None:
            mask = np.ones(len(self.rows), dtype=bool) if allowed is None else allowed.copy()
            if slo.max_accuracy_drop is not None:
                mask &= self.drop_bound(slo.confidence) <= slo.max_accuracy_drop + EPS
            if slo.max_bytes is not None:
                mask &= self.bytes <= slo.max_bytes
            self._static_cache[key] = mask
        return mask

    @staticmethod
    def latency_at_rate(ev: Evaluation, slo: SLO) -> np.ndarray:
        """Vector form of ``rows.latency_at_rate``: the latency plus the wait the device's own frames add
        at the SLO's frame rate (``rows.wait_at_rate``; a queue before the device's own stage holds one
        frame, one before the link or the cloud the request window's)."""
        rate = slo.min_throughput
        if not rate:
            return ev.latency
        with np.errstate(divide="ignore", invalid="ignore"):
            per = 1000.0 / ev.throughput
            rho = rate / ev.throughput
            queue = np.where(rho < 1.0, rho / (2.0 * (1.0 - rho)) * per, np.inf)
        cap = np.where((ev.in_flight is None) | (ev.device >= np.maximum(ev.link, ev.cloud)), 1.0,
                       float((ev.in_flight or 1) - 1))
        return ev.latency + np.minimum(queue, cap * per)

    def feasible(self, ev: Evaluation, slo: SLO, floor: float | None, static: np.ndarray) -> np.ndarray:
        mask = static
        if slo.max_latency_ms is not None:
            mask = mask & (self.latency_at_rate(ev, slo) <= slo.max_latency_ms)
        if floor is not None and floor > 0:
            mask = mask & (ev.throughput >= floor * (1.0 - EPS))
        return mask

    def violations(self, ev: Evaluation, slo: SLO, floor: float | None) -> np.ndarray:
        """Vector form of ``violation`` (same formulas)."""
        v = self._static_violations(slo)
        if slo.max_latency_ms is not None:
            m = slo.max_latency_ms
            latency = np.minimum(self.latency_at_rate(ev, slo), 1e9)   # never inf: rows stay comparable
            v = v + np.where(latency > m, latency / m - 1.0 if m > 0 else latency, 0.0)
        if floor is not None and floor > 0:
            v = v + np.where(ev.throughput < floor * (1.0 - EPS), 1.0 - ev.throughput / floor, 0.0)
        return v

    def _static_violations(self, slo: SLO) -> np.ndarray:
        """The part of ``violations`` no estimate moves (accuracy drop and bytes), once per SLO."""
        key = ("violations", slo.max_accuracy_drop, slo.max_bytes, slo.confidence)
        v = self._static_cache.get(key)
        if v is None:
            v = np.zeros(len(self.rows))
            if slo.max_accuracy_drop is not None:
                d = slo.max_accuracy_drop
                bound = np.minimum(self.drop_bound(slo.confidence), 1e6)   # never inf: rows stay comparable
                v += np.where(bound > d + EPS, (bound - d) / max(d, 1.0), 0.0)
            if slo.max_bytes is not None:
                b = slo.max_bytes
                v += np.where(self.bytes > b, (self.bytes - b) / max(b, 1.0), 0.0)
            v.flags.writeable = False   # shared by every decision under this SLO
            self._static_cache[key] = v
        return v

    def select(self, ev: Evaluation, candidates: np.ndarray, objectives: Sequence[str],
               tolerance: float, batch: int) -> int:
        """Lexicographic choice among ``candidates`` (row indices, ascending).

        For every objective but the last, keep the candidates within ``tolerance`` (relative) of the
        best; the last objective picks exactly; ties go to the earliest row (plan order).
        """
        cand = candidates
        last = len(objectives) - 1
        for k, objective in enumerate(objectives):
            x = ev.values(objective, batch)[cand]
            if OBJECTIVES[objective] > 0:
                best = x.max()
                if k == last:
                    return int(cand[int(np.argmax(x))])
                keep = x >= best - tolerance * abs(best) if math.isfinite(best) else x == best
            else:
                best = x.min()
                if k == last:
                    return int(cand[int(np.argmin(x))])
                keep = x <= best + tolerance * abs(best) if math.isfinite(best) else x == best
            cand = cand[keep]
            if len(cand) == 1:
                return int(cand[0])
        return int(cand[0])

    def prediction(self, i: int, est: Estimates, batch: int, slo: SLO | None,
                   floor: float | None, in_flight: int | None = None) -> Prediction:
        bound = None if slo is None else float(self.drop_bound(slo.confidence)[i])
        return predict(self.plan, self.rows[i], est, batch, power=self.power, slo=slo, floor=floor,
                       in_flight=in_flight, bound=bound)

    def mask_of(self, rows: Iterable[int]) -> np.ndarray:
        mask = np.zeros(len(self.rows), dtype=bool)
        mask[list(rows)] = True
        return mask


#: PerfModels shared by every policy instance: (id(plan), power) -> (weak reference to the plan, model).
#: A fleet of a thousand simulated devices holds one model per plan, not one per device.
_SHARED: dict[tuple[int, DevicePower], tuple[weakref.ref, PerfModel]] = {}
_SHARED_MAX = 16


def shared_model(plan: "Plan", power: DevicePower = DEFAULT_POWER) -> PerfModel:
    """The one ``PerfModel`` of ``plan`` (plans are immutable) at ``power``, built on first use."""
    key = (id(plan), power)
    held = _SHARED.get(key)
    if held is not None and held[0]() is plan:
        return held[1]
    model = PerfModel(plan, power=power)
    if len(_SHARED) >= _SHARED_MAX:
        for stale in [k for k, (ref, _) in _SHARED.items() if ref() is None] or list(_SHARED)[:1]:
            del _SHARED[stale]
    _SHARED[key] = (weakref.ref(plan), model)
    return model


class ModelCache:
    """The ``PerfModel`` of the plan a policy last decided on (``shared_model``)."""

    def __init__(self, power: DevicePower) -> None:
        self.power = power
        self._plan = None
        self._model: PerfModel | None = None

    def get(self, plan) -> PerfModel:
        if plan is not self._plan:
            self._model = shared_model(plan, self.power)
            self._plan = plan
        assert self._model is not None
        return self._model
