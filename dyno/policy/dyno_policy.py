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
5. if nothing meets the SLO, pick the least-violating row among those meeting the accuracy and bytes
   constraints (if any does: latency and the throughput floor give way first) and say so (``note``,
   ``meets_slo=False``);
6. with ``mix=True`` (registered as ``dyno-mix``) and throughput as the first objective, a second row
   beside the chosen one (``dyno.policy.mix``): the share of inferences the idle stages can carry goes
   by it, when that raises the predicted throughput by more than ``margin``. Off by default: the
   simulator shows the gain, but on the 2-core VM this was built on the real runtime lost throughput
   with it (fmnist-resnet demo: 407-459/s against device-only's 601-634/s, with seconds at 130/s),
   because an offloaded inference costs the client's one core more than the calibrated overhead says;
7. exploration (``dyno.policy.explore``): after ``probe_every`` device-only decisions in a row and at
   least ``probe_interval_s`` of device time, offload one inference (the best offloading row that
   meets the accuracy/bytes constraints) so the bandwidth estimate, fed only by the device's own
   transfers, cannot go stale forever (only where an offload would win on a link ``probe_hope`` times
   the widest the device has believed in: a probe that cannot change a decision is not sent); after
   as long a streak of offloads at the input cut, which run nothing on the device, run one on the
   device so the device's estimate cannot either.
   ``probe_every=0`` turns this off.

Only each cut's undominated rows are priced (``dyno.policy.front``): the same choice up to exact ties,
from a fraction of the rows. The pure rule (steps 1-3, 5) is remembered for the last estimates it saw,
the mix while they move less than ``MIX_TOLERANCE``: a device whose estimates have not changed since its
last decision (a device-only streak) pays only for steps 4, 6 and 7.

The coder is a dimension of the rows like the cut and the bits: a plan lists each width with every
coder on its bytes/time front, so a slow link picks a stronger coder and a fast one LZ4. ``codecs``
restricts the quantising coders a policy may use (fp32, fp16 and the input's image codecs stay):
``make("dyno", codecs=("shuffle-lz4",))`` is DynO with LZ4 only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dyno.errors import PolicyError
from dyno.monitor import MIN_PROFILED_MS
from dyno.packing import QUANT_CODECS
from dyno.policy.base import OBJECTIVES, SLO, Decision, Estimates, Policy, State
from dyno.policy.explore import PROBE_INTERVAL_S, Explorer
from dyno.policy.floor import FloorResolver
from dyno.policy.front import front_model
from dyno.policy.mix import Mix, Mixer, best_mix
from dyno.policy.model import DevicePower, Evaluation, ModelCache, PerfModel
from dyno.policy.registry import register

__all__ = ["DynoPolicy", "DynoMixPolicy", "MIX_TOLERANCE", "PROBE_HOPE"]

#: A bandwidth probe is sent only if an offload would win on a link this many times the widest the
#: device has believed in (``DynoPolicy._offload_could_win``).
PROBE_HOPE = 2.0
#: Relative change of any estimate (absolute below 0.1 ms or 1 bit/s) that prices the mix again.
MIX_TOLERANCE = 0.05


def _close(a: Estimates | None, b: Estimates) -> bool:
    if a is None:
        return False
    if a.batches != b.batches or [cut for cut, _ in a.server_ms_factors] != [cut for cut, _ in b.server_ms_factors]:
        return False
    figures = lambda e: (*(v for v in vars(e).values() if not isinstance(v, tuple)),   # noqa: E731
                         *(factor for _, factor in e.server_ms_factors))
    for x, y in zip(figures(a), figures(b), strict=True):
        if abs(x - y) > max(MIX_TOLERANCE * max(abs(x), abs(y)), 0.1):
            return False
    return True


@register("dyno")
class DynoPolicy(Policy):
    """DynO: every (cut, bits) priced by the performance model, constrained and ordered by the SLO."""

    def __init__(self, *, margin: float = 0.05, probe_every: int = 20, probe_interval_s: float = PROBE_INTERVAL_S,
                 power: DevicePower = DevicePower(), codecs: tuple[str, ...] | None = None, mix: bool = False,
                 probe_hope: float | None = PROBE_HOPE) -> None:
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
        self.mix = mix
        if probe_hope is not None and not probe_hope > 0:
            raise PolicyError("probe_hope must be > 0 (or None: probe whatever the link)")
        self.probe_hope = probe_hope
        self._allowed: tuple[PerfModel | None, np.ndarray | None] = (None, None)
        self._front: tuple[tuple[PerfModel, float], PerfModel] | None = None
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
        self._mixer = Mixer()
        self._mix_memo: tuple[tuple | None, Estimates | None, Mix | None] = (None, None, None)
        self._widest = 0.0

    def allowed(self, model: PerfModel) -> np.ndarray | None:
        """The rows this policy may choose (None: all): those of its ``codecs``, floats, images, device-only."""
        if self.codecs is None:
            return None
        if self._allowed[0] is not model:
            quant = set(QUANT_CODECS) - set(self.codecs)
            self._allowed = (model, np.array([r.codec not in quant for r in model.rows], dtype=bool))
        return self._allowed[1]

    def _model(self, state: State) -> PerfModel:
        """The rows this policy prices: each cut's undominated ones among those it may choose."""
        whole = self._models.get(state.plan)
        key = (whole, state.slo.confidence)
        held = self._front
        if held is not None and held[0] == key:
            return held[1]
        front = front_model(whole, state.slo.confidence, self.allowed(whole))
        self._front = (key, front)
        return front

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
        model = self._model(state)
        slo = state.slo
        ev = model.evaluate(state.estimates, state.batch, state.in_flight)
        floor = self._floors.floor(state, model, ev)
        static = model.static_mask(slo)   # the front holds only rows this policy may choose
        feasible = model.feasible(ev, slo, floor, static)
        candidates = np.flatnonzero(feasible)
        if len(candidates):
            return model.select(ev, candidates, slo.objectives, slo.tolerance, state.batch), True, model, ev, floor
        v = model.violations(ev, slo, floor)
        if static.any():   # accuracy and bytes hold where any row can hold them: latency and rate give way
            v = np.where(static, v, np.inf)
        candidates = np.flatnonzero(v == v.min())
        return model.select(ev, candidates, slo.objectives, slo.tolerance, state.batch), False, model, ev, floor

    def decide(self, state: State) -> Decision:
        i, note, model, floor, mix = self._pick(state)
        row = model.rows[i]
        predicted = model.prediction(i, state.estimates, state.batch, state.slo, floor, state.in_flight)
        if mix is not None:  # the throughput both rows reach together, not this row's alone
            predicted = dataclasses.replace(predicted, throughput=mix.throughput)
        return Decision(row.cut, row.codec, row.bits, predicted, note)

    def choose_index(self, state: State) -> int:
        """``decide``'s row (in the order of the plan's whole ``PerfModel``) without building its
        ``Prediction`` (the simulator)."""
        i, _, model, _, _ = self._pick(state)
        return int(model.whole_index[i])

    def _pick(self, state: State) -> tuple[int, str, PerfModel, float | None, Mix | None]:
        """(row, note, model, floor, mix): the pure rule, then hysteresis, the mix, exploration."""
        best, ok, model, ev, floor = self.choose(state)
        self._widest = max(self._widest, state.estimates.bandwidth_bps)
        note = "" if ok else "no option meets the SLO; least-violating chosen"
        slo = state.slo
        if model is not self._last_model:  # a new plan: the current row index means nothing there
            self._current, self._last_model = None, model
        current = self._current
        if self.margin > 0 and current is not None and current != best:
            if ok:
                still = bool(model.feasible(ev, slo, floor, model.static_mask(slo))[current])
            else:  # both infeasible: only the violation decides, with the same margin
                v = model.violations(ev, slo, floor)
                still = v[current] <= v[best] * (1.0 + self.margin)
            if still and not self._gain_beats_margin(ev, best, current, slo, state.batch):
                best = current
        self._current = best
        mix = self._mix_of(model, ev, best, state) if ok else None
        if mix is not None:
            congested = state.estimates.queue_ms > float(ev.intrinsic[mix.partner])
            if self._mixer.take(mix.share, congested):
                best, note = mix.partner, f"mix: {self._mixer.share:.0%} of inferences beside the chosen option"
        else:
            self._mixer.share = 0.0
        if model.rows[best].offloaded:
            if model.device_ms[best] >= MIN_PROFILED_MS:
                self._explorer.offloaded()
            elif self._explorer.blind(1000.0 / max(float(ev.throughput[best]), 1e-9)):
                return model.device_only, "probe: one inference on the device to refresh its estimate", model, \
                    floor, None
        elif self._explorer.device_only(float(ev.device[best])) and self._offload_could_win(state):
            probe = self._probe_row(model, ev, slo, state.batch)
            if probe is not None:
                return probe, "probe: one offloaded inference to refresh the bandwidth estimate", model, floor, None
        return best, note, model, floor, mix

    def _mix_of(self, model: PerfModel, ev: Evaluation, chosen: int, state: State) -> Mix | None:
        """The second row beside ``chosen`` (``dyno.policy.mix``) when throughput comes first and the mix
        gains more than ``margin``; remembered while the chosen row stays and the estimates move less than
        ``MIX_TOLERANCE`` (a runtime's estimates move a little with every inference, and pricing every pair
        of rows again each time cost 0.2 ms per decision on a 1.5 ms model)."""
        if not self.mix or not state.slo.objectives or state.slo.objectives[0] != "throughput":
            return None
        key = (id(state.plan), state.slo, state.batch, state.in_flight, chosen)
        held_key, held_est, held = self._mix_memo
        if held_key == key and _close(held_est, state.estimates):
            return held
        static = model.static_mask(state.slo)
        partners = np.flatnonzero(model.feasible(ev, state.slo, None, static))
        mix = best_mix(ev, chosen, partners, state.in_flight)
        if mix is not None and not mix.throughput > float(ev.throughput[chosen]) * (1.0 + self.margin):
            mix = None
        self._mix_memo = (key, state.estimates, mix)
        return mix

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

    def _offload_could_win(self, state: State) -> bool:
        """Would the pure rule offload on a link ``probe_hope`` times the widest this device has believed
        in, to an idle cloud (no queue, batches of one, at least one worker free)? If not, a probe
        cannot change a decision and is not sent (at the high tier every probe was lost: DynO ran at
        0.9999x device-only on every trace of three sets). A busy cloud is no reason to stop probing:
        replies say when it is free."""
        if self.probe_hope is None:
            return True
        est = state.estimates
        hopeful = dataclasses.replace(est, bandwidth_bps=self.probe_hope * self._widest, queue_ms=0.0,
                                      cloud_capacity=max(est.cloud_capacity, 1.0))
        row, _, model, _, _ = self._choose(dataclasses.replace(state, estimates=hopeful, batch=1))
        return bool(model.offloaded[row])

    def _probe_row(self, model: PerfModel, ev, slo: SLO, batch: int) -> int | None:
        candidates = np.flatnonzero(model.static_mask(slo) & (model.offloaded > 0))
        if not len(candidates):
            return None
        return model.select(ev, candidates, ("throughput", "bytes"), 0.0, batch)


@register("dyno-mix")
class DynoMixPolicy(DynoPolicy):
    """DynO with a second row beside the chosen one when throughput comes first (``dyno.policy.mix``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**{"mix": True, **kwargs})
