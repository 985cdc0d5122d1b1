"""The compared systems, each a reading of its paper's rule in the one ``Policy`` interface.

- ``device-only``: the whole CNN on the device. Sees nothing.
- ``cloud-only``: the input as JPEG quality 90 (the nearest quality the plan measured), all in the
  cloud. Sees nothing.
- ``cloud-only-raw``: the raw fp32 input tensor, all in the cloud. Sees nothing.
- ``neurosurgeon`` (Kang et al., "Neurosurgeon: Collaborative Intelligence Between the Cloud and
  Mobile Edge", ASPLOS'17, Sec. 5): per inference, the split of minimum predicted latency (or energy)
  from per-layer latency models, the current wireless bandwidth and *the datacenter's load*,
  activations sent as fp32, no compression, no accuracy trade-off. Here: the device's own estimates,
  the server's queueing and capacity included (as on the runtime), and the same exploration as DynO
  (one offloaded inference after ``probe_every`` device-only ones) so that its bandwidth estimate, fed
  by its own transfers like every system's, does not go stale.
- ``split-int8`` (what the SPINN-style baseline was: SPINN's transfer, Laskaridis et al., MobiCom'20,
  *without* its early exits, so not SPINN): the split of most pipelined throughput, activations (and the
  input) at a fixed 8-bit quantisation plus lossless compression; SLO constraints respected.
- ``jalad`` (Li et al., "JALAD: Joint Accuracy- and Latency-Aware Deep Structure Decoupling for
  Edge-Cloud Execution", ICPADS'18): split and bit width of minimum latency (edge time + transfer +
  profiled cloud time; no cloud load) under the accuracy-drop constraint, and, as its "edge-cloud
  structure adaptation" does, decoupled again when the bandwidth estimate moves by more than
  ``rechoose`` (relative) from the one the current choice was made for; fixed in between.

All report their predicted figures under the current estimates in ``Decision.predicted`` (so a fixed
policy's ``meets_slo`` can turn False as the link changes).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dyno.errors import PolicyError
from dyno.policy.base import Decision, Estimates, Policy, State
from dyno.policy.explore import Explorer
from dyno.policy.floor import FloorResolver
from dyno.policy.model import DevicePower, ModelCache, PerfModel
from dyno.policy.registry import register

__all__ = ["RowPolicy", "DeviceOnly", "CloudOnly", "CloudOnlyRaw", "Neurosurgeon", "SplitInt8", "JaladStyle"]


class RowPolicy(Policy):
    """A policy that chooses among an allowed subset of the model's rows by fixed objectives.

    ``apply_slo``: filter by the SLO's constraints (least-violating when none meets them). ``probe_every``
    (> 0): after that many device-only decisions in a row, one offloaded decision (the policy's best
    offloaded row) so that the bandwidth estimate, fed by the device's own transfers, stays fresh."""

    objectives: tuple[str, ...] = ("throughput",)
    apply_slo = False
    pure = True

    def __init__(self, *, power: DevicePower = DevicePower(), probe_every: int = 0) -> None:
        if probe_every < 0:
            raise PolicyError("probe_every must be >= 0")
        self._models = ModelCache(power)
        self._allowed: dict[int, np.ndarray] = {}
        self._single: dict[int, int] = {}
        self._floors = FloorResolver()
        self.probe_every = probe_every
        self._explorer = Explorer(probe_every)
        self._memo: tuple[tuple, tuple[int, str]] | None = None
        if probe_every:
            self.pure = False

    def reset(self) -> None:
        self._explorer.reset()
        self._memo = None

    def desynchronise(self, phase: float) -> None:
        self._explorer = Explorer(self.probe_every, phase=phase)

    def allowed(self, model: PerfModel) -> list[int]:
        raise NotImplementedError

    def _allowed_mask(self, model: PerfModel) -> np.ndarray:
        mask = self._allowed.get(id(model))
        if mask is None:
            rows = self.allowed(model)
            if not rows:
                raise PolicyError(f"policy {self.name!r}: the plan offers none of the options it uses")
            mask = self._allowed[id(model)] = model.mask_of(rows)
            if len(rows) == 1:
                self._single[id(model)] = rows[0]
        return mask

    def choose_row(self, model: PerfModel, state: State, estimates: Estimates) -> tuple[int, str]:
        """The rule's row under ``estimates`` (the same inputs as the last call: the same answer, not
        evaluated again; a device's estimates change only when it observes something)."""
        key = (id(model), estimates, state.estimates, state.slo, state.batch, state.in_flight)
        memo = self._memo
        if memo is not None and memo[0] == key:
            return memo[1]
        chosen = self._choose_row(model, state, estimates)
        self._memo = (key, chosen)
        return chosen

    def _choose_row(self, model: PerfModel, state: State, estimates: Estimates) -> tuple[int, str]:
        allowed = self._allowed_mask(model)
        single = self._single.get(id(model))
        if single is not None:       # a fixed choice: nothing to evaluate
            return single, ""
        priced = self.priced(estimates)
        ev = model.evaluate(priced, state.batch, state.in_flight)
        if not self.apply_slo:
            return model.select(ev, np.flatnonzero(allowed), self.objectives, 0.0, state.batch), ""
        own = ev if priced == state.estimates else model.evaluate(state.estimates, state.batch, state.in_flight)
        floor = self._floors.floor(state, model, own)
        feasible = model.feasible(ev, state.slo, floor, model.static_mask(state.slo, allowed))
        candidates = np.flatnonzero(feasible)
        if len(candidates):
            return model.select(ev, candidates, self.objectives, 0.0, state.batch), ""
        v = np.where(allowed, model.violations(ev, state.slo, floor), np.inf)
        candidates = np.flatnonzero(v == v.min())
        return (model.select(ev, candidates, self.objectives, 0.0, state.batch),
                "no option meets the SLO; least-violating chosen")

    def row_for(self, state: State) -> tuple[PerfModel, int, str]:
        """(model, row index, note) of this policy's choice; rows are in ``PerfModel`` order."""
        model = self._models.get(state.plan)
        row_index, note = self.choose_row(model, state, state.estimates)
        return model, row_index, note

    def decide(self, state: State) -> Decision:
        model, row_index, note = self.row_for(state)
        if self.probe_every:
            row_index, note = self._explore(model, row_index, note, state)
        return self._decision(model, row_index, state, note)

    def choose_index(self, state: State) -> int:
        """``decide``'s row (``PerfModel`` order) without building its ``Prediction`` (the simulator)."""
        model, row_index, note = self.row_for(state)
        if self.probe_every:
            row_index, note = self._explore(model, row_index, note, state)
        return row_index

    def _explore(self, model: PerfModel, i: int, note: str, state: State) -> tuple[int, str]:
        if model.rows[i].offloaded:
            self._explorer.offloaded()
            return i, note
        device_ms = state.estimates.device_slowdown * model.rows[i].device_ms
        offloaded = self._allowed_mask(model) & (model.offloaded > 0)
        if not self._explorer.device_only(device_ms) or not offloaded.any():
            return i, note
        ev = model.evaluate(self.priced(state.estimates), state.batch, state.in_flight)
        return (model.select(ev, np.flatnonzero(offloaded), self.objectives, 0.0, state.batch),
                "probe: one offloaded inference to refresh the bandwidth estimate")

    def priced(self, estimates: Estimates) -> Estimates:
        """The estimates this policy prices options with (all of them, unless a rule says otherwise)."""
        return estimates

    def _decision(self, model: PerfModel, i: int, state: State, note: str = "") -> Decision:
        ev = model.evaluate(state.estimates, state.batch, state.in_flight)
        floor = self._floors.floor(state, model, ev)
        row = model.rows[i]
        return Decision(row.cut, row.codec, row.bits,
                        model.prediction(i, state.estimates, state.batch, state.slo, floor, state.in_flight), note)


@register("device-only")
class DeviceOnly(RowPolicy):
    """Everything on the device: the last cut, nothing sent."""

    def allowed(self, model: PerfModel) -> list[int]:
        return [model.device_only]


@register("cloud-only")
class CloudOnly(RowPolicy):
    """The input compressed as an image (JPEG quality 90 by default), the whole CNN in the cloud.

    Uses the plan's measured quality nearest to ``quality`` (the higher one on a tie)."""

    def __init__(self, *, codec: str = "jpeg", quality: int = 90, power: DevicePower = DevicePower()) -> None:
        super().__init__(power=power)
        self.codec, self.quality = codec, quality

    def allowed(self, model: PerfModel) -> list[int]:
        rows = [i for i, r in enumerate(model.rows) if r.cut == 0 and r.codec == self.codec]
        if not rows:
            raise PolicyError(f"cloud-only: the plan measured no {self.codec} option at the input cut; "
                              f"use cloud-only-raw or re-run the analysis with image codecs")
        quality = {i: int(model.rows[i].bits or 0) for i in rows}   # image rows carry their quality
        return [min(rows, key=lambda i: (abs(quality[i] - self.quality), -quality[i]))]


@register("cloud-only-raw")
class CloudOnlyRaw(RowPolicy):
    """The raw fp32 input tensor sent, the whole CNN in the cloud."""

    def allowed(self, model: PerfModel) -> list[int]:
        return [model.index[(0, "fp32", None)]]


@register("neurosurgeon")
class Neurosurgeon(RowPolicy):
    """Neurosurgeon (Kang et al., ASPLOS'17): per inference, the split of minimum predicted latency
    (``objective="energy"`` for its energy mode) given the bandwidth and the datacenter's load (here the
    server's queueing, in the latency, and its capacity), activations sent uncompressed in fp32. Decides
    on the device's own estimates, in the simulator as on the runtime; explores like DynO."""

    def __init__(self, *, objective: str = "latency", power: DevicePower = DevicePower(),
                 probe_every: int = 20) -> None:
        if objective not in ("latency", "energy"):
            raise PolicyError("neurosurgeon optimises 'latency' or 'energy'")
        super().__init__(power=power, probe_every=probe_every)
        self.objectives = (objective,)

    def allowed(self, model: PerfModel) -> list[int]:
        return [i for i, r in enumerate(model.rows) if r.codec == "fp32"] + [model.device_only]


def _by_codec_preference(model: PerfModel, codecs: tuple[str, ...], bits: int | None) -> list[int]:
    """Per (cut, bits), the row of the first preferred codec the plan has."""
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for i, r in enumerate(model.rows):
        if r.codec in codecs and r.bits is not None and (bits is None or r.bits == bits):
            rank = codecs.index(r.codec)
            key = (r.cut, r.bits)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, i)
    return sorted(i for _, i in best.values())


@register("split-int8")
class SplitInt8(RowPolicy):
    """An 8-bit split (SPINN's transfer, Laskaridis et al., MobiCom'20, without SPINN's early exits, so
    not SPINN): the split of maximum pipelined throughput, activations quantised to a fixed 8 bits and
    losslessly compressed (at the input cut too: see ``rows_of``). SLO constraints are respected
    (least-violating otherwise); explores like DynO when it runs everything on the device."""

    objectives = ("throughput", "latency")
    apply_slo = True

    def __init__(self, *, bits: int = 8, codecs: tuple[str, ...] = ("shuffle-lz4", "shuffle-zstd", "dense"),
                 power: DevicePower = DevicePower(), probe_every: int = 20) -> None:
        super().__init__(power=power, probe_every=probe_every)
        self.bits, self.codecs = bits, tuple(codecs)

    def allowed(self, model: PerfModel) -> list[int]:
        rows = _by_codec_preference(model, self.codecs, self.bits)
        return sorted(rows) + [model.device_only]


@register("jalad")
class JaladStyle(RowPolicy):
    """JALAD (Li et al., ICPADS'18): (cut, bits) of minimum latency - edge time, transfer, profiled cloud
    time (no cloud load: queueing and capacity are not in its model) - subject to the SLO's accuracy
    drop, the bandwidth taken from ``nominal_bandwidth_bps`` at first (default: the estimate), then
    decoupled again whenever the bandwidth estimate differs from the one the current choice was made for
    by more than ``rechoose`` (relative; JALAD's edge-cloud structure adaptation); fixed in between.
    Quantised rows (lossless entropy coding after quantisation, zstd preferred), the raw input, and
    device-only are its space. Explores like DynO when it runs everything on the device."""

    objectives = ("latency", "throughput")
    apply_slo = True

    def __init__(self, *, nominal_bandwidth_bps: float | None = None, rechoose: float = 0.25,
                 codecs: tuple[str, ...] = ("shuffle-zstd", "shuffle-lz4", "dense"),
                 power: DevicePower = DevicePower(), probe_every: int = 20) -> None:
        super().__init__(power=power, probe_every=probe_every)
        if nominal_bandwidth_bps is not None and not nominal_bandwidth_bps > 0:
            raise PolicyError("jalad: nominal bandwidth must be > 0")
        if not rechoose > 0:
            raise PolicyError("jalad: rechoose must be > 0")
        self.nominal_bandwidth_bps = nominal_bandwidth_bps
        self.rechoose = rechoose
        self.codecs = tuple(codecs)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._fixed: tuple[int, int, str, float] | None = None   # (model id, row, note, bandwidth it was for)
        self.choices = 0                                        # how many times it has (re)decoupled

    def allowed(self, model: PerfModel) -> list[int]:
        return _by_codec_preference(model, self.codecs, None) + [model.index[(0, "fp32", None)],
                                                                  model.device_only]

    def priced(self, estimates: Estimates) -> Estimates:
        return dataclasses.replace(estimates, queue_ms=0.0, cloud_capacity=1.0)

    def row_for(self, state: State) -> tuple[PerfModel, int, str]:
        model = self._models.get(state.plan)
        est = state.estimates
        fixed = self._fixed
        if fixed is None or fixed[0] != id(model):
            basis = self.nominal_bandwidth_bps or est.bandwidth_bps
        elif abs(est.bandwidth_bps / fixed[3] - 1.0) > self.rechoose:
            basis = est.bandwidth_bps
        else:
            return model, fixed[1], fixed[2]
        at = dataclasses.replace(est, bandwidth_bps=basis)
        # latency/throughput terms are priced at the chosen bandwidth; only the accuracy constraint binds
        offline = dataclasses.replace(state.slo, max_latency_ms=None, min_throughput=None, min_throughput_of=None)
        row, note = self.choose_row(model, State(state.plan, at, offline, state.batch, state.in_flight), at)
        self._fixed = (id(model), row, note, basis)
        self.choices += 1
        return model, row, note
