"""The throughput floor of an SLO: absolute (``throughput>=25``) or relative to a named policy's
predicted throughput under the same estimates (``throughput>=0.9*cloud-only``)."""

from __future__ import annotations

import dataclasses

from dyno.policy.base import SLO, Policy, State
from dyno.policy.model import Evaluation, PerfModel
from dyno.policy.registry import make

__all__ = ["FloorResolver"]


class FloorResolver:
    """The throughput floor of an SLO: absolute, or a named baseline's predicted throughput."""

    def __init__(self) -> None:
        self._baselines: dict[str, Policy] = {}
        self._stripped: dict[SLO, SLO] = {}

    def floor(self, state: State, model: PerfModel, ev: Evaluation) -> float | None:
        slo = state.slo
        floor = slo.min_throughput
        if slo.min_throughput_of is not None:
            baseline = self._baselines.get(slo.min_throughput_of)
            if baseline is None:
                baseline = self._baselines[slo.min_throughput_of] = make(slo.min_throughput_of)
            stripped = self._stripped.get(slo)
            if stripped is None:
                stripped = self._stripped[slo] = dataclasses.replace(slo, min_throughput_of=None,
                                                                     min_throughput=None)
            sub = State(state.plan, state.estimates, stripped, state.batch, state.in_flight)
            row_for = getattr(baseline, "row_for", None)
            if row_for is not None:   # a RowPolicy: the row index, no Prediction built
                whole, i = row_for(sub)[:2]
                key = whole.rows[i].cut, whole.rows[i].codec, whole.rows[i].bits
            else:
                d = baseline.decide(sub)
                key = d.cut, d.codec, d.bits
            j = model.index.get(key)
            if j is not None:
                throughput = float(ev.throughput[j])
            else:   # a row ``model`` leaves out (DynO prices only undominated rows): priced alone
                throughput = model.whole.prediction(model.whole.index[key], state.estimates, state.batch, None,
                                                    None, state.in_flight).throughput
            relative = throughput * slo.min_throughput_ratio
            floor = relative if floor is None else max(floor, relative)
        return floor
