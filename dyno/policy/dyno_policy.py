"""DynO's scheduler: price every (cut, codec, bits) with the performance model and pick by the SLO.

Per decision (all vectorised over the plan's rows, arrays built once per plan):

1. evaluate latency, pipelined throughput, bytes, accuracy, cloud seconds and energy of every row
   under the current estimates (``dyno.policy.model``); the input cut with JPEG/WebP at the plan's
   qualities is among the rows, so DynO can always do what cloud-only does;
2. keep the rows meeting the SLO's constraints (latency, accuracy drop, bytes, throughput floor; a floor
   relative to a named baseline is that baseline's predicted throughput under the same estimates);
3. order them by the SLO's objectives in priority order with the SLO's relative tolerance;
4. hysteresis: stay on the current choice unless the new one is better by more than ``margin``
   (relative) on the first objective where the two differ beyond the tolerance, and the current one
   still meets the SLO;
5. if nothing meets the SLO, pick the least-violating row and say so (``note``, ``meets_slo=False``);
6. exploration (``dyno.policy.explore``): after ``probe_every`` device-only decisions in a row and at
   least ``probe_interval_s`` of device time, offload one inference (the best offloading row that
   meets the accuracy/bytes constraints) so the bandwidth estimate, fed only by the device's own
   transfers, cannot go stale forever. ``probe_every=0`` turns this off.

The pure rule (steps 1-3, 5) is remembered for the last estimates it saw: a device whose estimates have
not changed since its last decision (a device-only streak) pays only for steps 4 and 6.

The coder is a dimension of the rows like the cut and the bits: a plan lists each width with every
coder on its bytes/time front, so a slow link picks a stronger coder and a fast one LZ4. ``codecs``
restricts the quantising coders a policy may use (fp32, fp16 and the input's image codecs stay):
``make("dyno", codecs=("shuffle-lz4",))`` is DynO with LZ4 only.
"""

from __future__ import annotations

import numpy as np

from dyno.errors import PolicyError
from dyno.packing import QUANT_CODECS
from dyno.policy.base import OBJECTIVES, SLO, Decision, Policy, State
from dyno.policy.explore import PROBE_INTERVAL_S, Explorer
from dyno.policy.floor import FloorResolver
from dyno.policy.model import DevicePower, Evaluation, ModelCache, PerfModel
from dyno.policy.registry import register

__all__ = ["DynoPolicy"]


@register("dyno")
class DynoPolicy(Policy):
    """DynO: every (cut, bits) priced by the performance model, constrained and ordered by the SLO."""

    def __init__(self, *, margin: float = 0.05, probe_every: int = 20, probe_interval_s: float = PROBE_INTERVAL_S,
                 power: DevicePower = DevicePower(), codecs: tuple[str, ...] | None = None) -> None:
        if margin < 0:
            raise PolicyError("hysteresis margin must be >= 0")
        if probe_every < 0:
            raise PolicyError("probe_every must be >= 0")
        if codecs is not None and (isinstance(codecs, str) or not codecs or set(codecs) - set(QUANT_CODECS)):
            raise PolicyError(f"codecs must name quantising codecs ({', '.join(QUANT_CODECS)}), got {codecs!r}")
        self.margin = margin
        self.probe_every = probe_every
        self.probe_interval_s = probe_interval_s
        self.codecs = None if codecs is None else tuple(codecs)
        self._allowed: tuple[PerfModel | None, np.ndarray | None] = (None, None)
        self._models = ModelCache(power)
        self._floors = FloorResolver()
        self._phase = 0.0
        self.reset()

    def desynchronise(self, phase: float) -> None:
        self._explorer = Explorer(self.probe_every, self.probe_interval_s, phase)
        self._phase = phase

    def reset(self) -> None:
        self._current: int | None = None
        self._last_model: PerfModel | None = None
        self._explorer = Explorer(self.probe_every, self.probe_interval_s, self._phase)
        self._memo: tuple[tuple, tuple[int, bool, PerfModel, Evaluation, float | None]] | None = None

    def allowed(self, model: PerfModel) -> np.ndarray | None:
        """The rows this policy may choose (None: all): those of its ``codecs``, floats, images, device-only."""
        if self.codecs is None:
            return None
        if self._allowed[0] is not model:
            quant = set(QUANT_CODECS) - set(self.codecs)
            self._allowed = (model, np.array([r.codec not in quant for r in model.rows], dtype=bool))
        return self._allowed[1]

    def choose(self, state: State) -> tuple[int, bool, PerfModel, Evaluation, float | None]:
        """(row, meets_slo, model, evaluation, floor) without hysteresis or exploration: the pure rule."""
        key = (id(state.plan), state.estimates, state.slo, state.batch, state.in_flight)
        memo = self._memo
        if memo is not None and memo[0] == key:
            return memo[1]
        chosen = self._choose(state)
        self._memo = (key, chosen)
        return chosen

    def _choose(self, state: State) -> tuple[int, bool, PerfModel, Evaluation, float | None]:
        model = self._models.get(state.plan)
        slo = state.slo
        ev = model.evaluate(state.estimates, state.batch, state.in_flight)
        floor = self._floors.floor(state, model, ev)
        allowed = self.allowed(model)
        static = model.static_mask(slo, allowed)
        feasible = model.feasible(ev, slo, floor, static)
        candidates = np.flatnonzero(feasible)
        if len(candidates):
            return model.select(ev, candidates, slo.objectives, slo.tolerance, state.batch), True, model, ev, floor
        v = model.violations(ev, slo, floor)
        if allowed is not None:
            v = np.where(allowed, v, np.inf)
        candidates = np.flatnonzero(v == v.min())
        return model.select(ev, candidates, slo.objectives, slo.tolerance, state.batch), False, model, ev, floor

    def decide(self, state: State) -> Decision:
        i, note, model, floor = self._pick(state)
        row = model.rows[i]
        return Decision(row.cut, row.codec, row.bits,
                        model.prediction(i, state.estimates, state.batch, state.slo, floor, state.in_flight), note)

    def choose_index(self, state: State) -> int:
        """``decide``'s row (``PerfModel`` order) without building its ``Prediction`` (the simulator)."""
        return self._pick(state)[0]

    def _pick(self, state: State) -> tuple[int, str, PerfModel, float | None]:
        """(row, note, model, floor): the pure rule, then hysteresis, then exploration."""
        best, ok, model, ev, floor = self.choose(state)
        note = "" if ok else "no option meets the SLO; least-violating chosen"
        slo = state.slo
        if model is not self._last_model:  # a new plan: the current row index means nothing there
            self._current, self._last_model = None, model
        current = self._current
        if self.margin > 0 and current is not None and current != best:
            if ok:
                still = bool(model.feasible(ev, slo, floor, model.static_mask(slo, self.allowed(model)))[current])
            else:  # both infeasible: only the violation decides, with the same margin
                v = model.violations(ev, slo, floor)
                still = v[current] <= v[best] * (1.0 + self.margin)
            if still and not self._gain_beats_margin(ev, best, current, slo, state.batch):
                best = current
        self._current = best
        if model.rows[best].offloaded:
            self._explorer.offloaded()
        elif self._explorer.device_only(float(ev.device[best])):
            probe = self._probe_row(model, ev, slo, state.batch)
            if probe is not None:
                return probe, "probe: one offloaded inference to refresh the bandwidth estimate", model, floor
        return best, note, model, floor

    def _gain_beats_margin(self, ev, new: int, old: int, slo: SLO, batch: int) -> bool:
        for objective in slo.objectives:
            x = ev.values(objective, batch)
            a, b = float(x[new]), float(x[old])
            scale = max(abs(a), abs(b))
            if abs(a - b) <= slo.tolerance * scale:
                continue
            gain = (a - b) * OBJECTIVES[objective] / (abs(b) if b != 0 else scale)
            return gain > self.margin
        return False

    def _probe_row(self, model: PerfModel, ev, slo: SLO, batch: int) -> int | None:
        candidates = np.flatnonzero(model.static_mask(slo, self.allowed(model)) & (model.offloaded > 0))
        if not len(candidates):
            return None
        return model.select(ev, candidates, ("throughput", "bytes"), 0.0, batch)

