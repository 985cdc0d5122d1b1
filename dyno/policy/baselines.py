"""The compared systems, each a reading of its paper's rule in the one ``Policy`` interface.

- ``device-only``: the whole CNN on the device. Sees nothing.
- ``cloud-only``: the input as JPEG quality 90 (the nearest quality the plan measured), all in the
  cloud. Sees nothing.
- ``cloud-only-raw``: the raw fp32 input tensor, all in the cloud. Sees nothing.
- ``neurosurgeon`` (Kang et al., ASPLOS'17): the split of minimum predicted latency (or energy),
  activations sent as fp32, no compression, no accuracy trade-off. Sees the estimates it is given:
  a bandwidth *probe* at start and periodically (``feed = "probe"``), the tier's slowdown from
  offline profiling, profiled server times.
- ``spinn`` (SPINN-style transfer, Laskaridis et al., MobiCom'20, without its early exits): the split
  of most pipelined throughput, activations (and the input) at a fixed 8-bit quantisation plus
  lossless compression; SLO constraints respected. Sees the device's own estimates.
- ``jalad`` (JALAD-style, Li et al., ICPADS'18): split and bit width chosen once, offline, for minimum
  latency under the SLO's accuracy-drop constraint at a nominal bandwidth; then fixed. Sees only the
  nominal bandwidth and the slowdown at the first decision.

All report their predicted figures under the current estimates in ``Decision.predicted`` (so a fixed
policy's ``meets_slo`` can turn False as the link changes).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dyno.errors import PolicyError
from dyno.policy.base import Decision, Estimates, Policy, State
from dyno.policy.floor import FloorResolver
from dyno.policy.model import DevicePower, ModelCache, PerfModel
from dyno.policy.registry import register

__all__ = ["RowPolicy", "DeviceOnly", "CloudOnly", "CloudOnlyRaw", "Neurosurgeon", "SpinnStyle", "JaladStyle"]


class RowPolicy(Policy):
    """A policy that chooses among an allowed subset of the model's rows by fixed objectives."""

    objectives: tuple[str, ...] = ("throughput",)
    apply_slo = False
    pure = True    # filter by the SLO's constraints (least-violating when none meets them)

    def __init__(self, *, power: DevicePower = DevicePower()) -> None:
        self._models = ModelCache(power)
        self._allowed: dict[int, np.ndarray] = {}
        self._single: dict[int, int] = {}
        self._floors = FloorResolver()

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
        allowed = self._allowed_mask(model)
        single = self._single.get(id(model))
        if single is not None:       # a fixed choice: nothing to evaluate
            return single, ""
        ev = model.evaluate(estimates, state.batch, state.in_flight)
        if not self.apply_slo:
            return model.select(ev, np.flatnonzero(allowed), self.objectives, 0.0, state.batch), ""
        floor = self._floors.floor(state, model, model.evaluate(state.estimates, state.batch, state.in_flight))
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
        return self._decision(model, row_index, state, note)

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
    """Neurosurgeon: the split of minimum predicted latency (``objective="energy"`` for its energy mode),
    activations sent uncompressed in fp32. It decides on whatever estimates it is given: in the
    simulator a bandwidth probe, not the device's own transfer history."""

    feed = "probe"

    def __init__(self, *, objective: str = "latency", power: DevicePower = DevicePower()) -> None:
        if objective not in ("latency", "energy"):
            raise PolicyError("neurosurgeon optimises 'latency' or 'energy'")
        super().__init__(power=power)
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


@register("spinn")
class SpinnStyle(RowPolicy):
    """SPINN-style transfer (no early exits): the split of maximum pipelined throughput, activations
    quantised to a fixed 8 bits and losslessly compressed (at the input cut too: see ``rows_of``).
    SLO constraints are respected (least-violating otherwise)."""

    objectives = ("throughput", "latency")
    apply_slo = True

    def __init__(self, *, bits: int = 8, codecs: tuple[str, ...] = ("shuffle-lz4", "shuffle-zstd", "dense"),
                 power: DevicePower = DevicePower()) -> None:
        super().__init__(power=power)
        self.bits, self.codecs = bits, tuple(codecs)

    def allowed(self, model: PerfModel) -> list[int]:
        rows = _by_codec_preference(model, self.codecs, self.bits)
        return sorted(rows) + [model.device_only]


@register("jalad")
class JaladStyle(RowPolicy):
    """JALAD-style: (cut, bits) chosen once, offline, for minimum latency subject to the SLO's accuracy
    drop, at ``nominal_bandwidth_bps`` (default: the bandwidth estimate at the first decision) and the
    device slowdown at the first decision; then fixed until ``reset()``. Quantised rows (lossless
    entropy coding after quantisation, zstd preferred), the raw input, and device-only are its space."""

    objectives = ("latency", "throughput")
    apply_slo = True

    def __init__(self, *, nominal_bandwidth_bps: float | None = None,
                 codecs: tuple[str, ...] = ("shuffle-zstd", "shuffle-lz4", "dense"),
                 power: DevicePower = DevicePower()) -> None:
        super().__init__(power=power)
        if nominal_bandwidth_bps is not None and not nominal_bandwidth_bps > 0:
            raise PolicyError("jalad: nominal bandwidth must be > 0")
        self.nominal_bandwidth_bps = nominal_bandwidth_bps
        self.codecs = tuple(codecs)
        self.reset()

    def reset(self) -> None:
        self._fixed: tuple[int, int, str] | None = None   # (model id, row, note)

    def allowed(self, model: PerfModel) -> list[int]:
        return _by_codec_preference(model, self.codecs, None) + [model.index[(0, "fp32", None)],
                                                                  model.device_only]

    def row_for(self, state: State) -> tuple[PerfModel, int, str]:
        model = self._models.get(state.plan)
        if self._fixed is None or self._fixed[0] != id(model):
            est = state.estimates
            nominal = Estimates(bandwidth_bps=self.nominal_bandwidth_bps or est.bandwidth_bps,
                                rtt_ms=est.rtt_ms, device_slowdown=est.device_slowdown)
            # offline: only the accuracy constraint binds (no run-time latency/throughput terms)
            offline = dataclasses.replace(state.slo, max_latency_ms=None, min_throughput=None,
                                          min_throughput_of=None)
            row, note = self.choose_row(model, State(state.plan, nominal, offline, state.batch, state.in_flight),
                                        nominal)
            self._fixed = (id(model), row, note)
        return model, self._fixed[1], self._fixed[2]
