"""The scheduler's interface: what a policy sees (``State``) and what it answers (``Decision``).

Every compared system (DynO, device-only, cloud-only, Neurosurgeon, split-int8, JALAD) is a
``Policy``: ``decide(state) -> Decision(cut, codec, bits)``. Policies do no I/O, so the simulator and
the device client run the very same code.

    state = State(plan, Estimates(bandwidth_bps=4e6, device_slowdown=8.0), SLO.parse(DEFAULT_SLO))
    decision = dyno.policy.make("dyno").decide(state)
    decision.cut, decision.codec, decision.bits, decision.predicted.throughput
"""

from __future__ import annotations

import abc
import dataclasses
import math
import re
from typing import TYPE_CHECKING, Any

from dyno.errors import PolicyError
from dyno.monitor import Estimates
from dyno.packing import label

if TYPE_CHECKING:  # the plan module is light, but the policy interface needs only its name
    from dyno.plan import Plan

__all__ = ["OBJECTIVES", "FEEDS", "DEFAULT_SLO", "ONLOADING_SLO", "PRESETS", "Prediction", "Decision", "SLO",
           "State", "Policy"]

#: The SLO of the demo, ``dyno run`` and ``dyno simulate``: the most throughput losing at most one point
#: of top-1 against the fp32 model (without an accuracy bound any scheduler sends 1-bit noise).
DEFAULT_SLO = "throughput;drop<=1"
#: The onloading view (the paper's): the least cloud compute per inference at no less throughput
#: than cloud-only; ``SLO.parse("onload")`` names it, and more constraints may follow it.
ONLOADING_SLO = "cloud_cost,throughput;throughput>=cloud-only;drop<=1"
#: Named SLOs: ``SLO.parse("onload;latency<=200")`` is ONLOADING_SLO with a latency bound.
PRESETS = {"onload": ONLOADING_SLO}

#: What a policy's estimates are fed from, in the simulator as on a device (``Policy.feed``):
#: ``own``: the device's own monitors (every real system, on the runtime and in the simulator alike);
#: ``oracle``: the trace's true future (the hindsight oracle, simulator only).
FEEDS = ("own", "oracle")

#: objective name -> +1 if larger is better, -1 if smaller is better
OBJECTIVES: dict[str, int] = {
    "throughput": +1,   # inferences per second, pipelined over device, link and cloud
    "latency": -1,      # end-to-end milliseconds of one inference
    "accuracy": +1,     # expected top-1 from the plan's precision table
    "bytes": -1,        # wire bytes per inference
    "cloud_cost": -1,   # cloud compute seconds per inference
    "energy": -1,       # device joules per inference
}


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The performance model's figures for one (cut, codec, bits) under given estimates."""

    latency_ms: float
    throughput: float   # inferences/s with the device, link and cloud stages pipelined
    bytes: float        # wire bytes per inference (0 on the device-only cut)
    accuracy: float     # expected top-1 in [0, 1]
    cloud_s: float      # cloud compute seconds per inference (decode + tail; 0 device-only)
    energy_j: float     # device energy per inference
    meets_slo: bool
    queue_cap: float = 1.0   # frames that can wait before the slowest stage (the device's: 1; else the window's)

    def value(self, objective: str) -> float:
        """The figure an objective name refers to (``cloud_cost`` is ``cloud_s``, ``energy`` is ``energy_j``)."""
        return {"throughput": self.throughput, "latency": self.latency_ms, "accuracy": self.accuracy,
                "bytes": self.bytes, "cloud_cost": self.cloud_s, "energy": self.energy_j}[objective]


@dataclasses.dataclass(frozen=True)
class Decision:
    """Where to cut and how to pack. ``codec``/``bits`` are None on the last cut (all on the device).

    For ``jpeg``/``webp`` (cut 0 only) ``bits`` is the image quality.
    """

    cut: int
    codec: str | None
    bits: int | None
    predicted: Prediction | None = None
    note: str = ""

    @property
    def label(self) -> str:
        if self.codec is None:
            return f"cut {self.cut} (device-only)"
        return f"cut {self.cut} {label(self.codec, self.bits)}"


_CONSTRAINT = re.compile(r"^\s*(latency|drop|bytes|throughput)\s*(<=|>=)\s*(.+?)\s*$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SLO:
    """Constraints plus objectives in priority order.

    Constraints (None = unconstrained): ``max_latency_ms``; ``max_accuracy_drop`` in points of top-1
    below the plan's fp32 accuracy; ``max_bytes`` per inference; a throughput floor, either absolute
    (``min_throughput``, inferences/s) or relative to a named baseline policy evaluated under the same
    estimates (``min_throughput_of="cloud-only"``, times ``min_throughput_ratio``).

    Objectives are compared in order; options within ``tolerance`` (relative) of the best on one
    objective are all kept for the next, and the last objective picks exactly (ties: plan order).
    The SLO is data: a floor naming a policy that is not registered fails when a policy resolves it.

    The accuracy drop is checked on a one-sided upper confidence bound at ``confidence`` (``conf=0.9``;
    default 0.95): drop + z * drop_se, with the plan's standard error of each measured drop; a width the
    analysis inferred rather than measured counts only where a measured width at or below it meets the
    bound (``dyno.policy.model``).

        SLO.parse("throughput,cloud_cost;drop<=1;latency<=200")
        SLO.parse("cloud_cost;throughput>=cloud-only")      # the onloading view
        SLO.parse("cloud_cost;throughput>=0.9*cloud-only;bytes<=20000")
    """

    max_latency_ms: float | None = None
    max_accuracy_drop: float | None = None
    max_bytes: float | None = None
    min_throughput: float | None = None
    min_throughput_of: str | None = None
    min_throughput_ratio: float = 1.0
    objectives: tuple[str, ...] = ("throughput", "cloud_cost")
    tolerance: float = 0.02
    confidence: float = 0.95

    def __post_init__(self) -> None:
        objectives = tuple(self.objectives)
        object.__setattr__(self, "objectives", objectives)
        if not objectives:
            raise PolicyError("an SLO needs at least one objective; known: " + ", ".join(OBJECTIVES))
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown:
            raise PolicyError(f"unknown SLO objective(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(OBJECTIVES)}")
        if len(set(objectives)) != len(objectives):
            raise PolicyError(f"SLO objectives repeat: {objectives}")
        for name in ("max_latency_ms", "max_accuracy_drop", "max_bytes", "min_throughput"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)
                                      or value < 0):
                raise PolicyError(f"SLO.{name} must be a finite number >= 0 or None, got {value!r}")
        if not (isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 1):
            raise PolicyError(f"SLO.tolerance must be in [0, 1), got {self.tolerance!r}")
        if not (isinstance(self.confidence, (int, float)) and 0.5 <= self.confidence < 1):
            raise PolicyError(f"SLO.confidence must be in [0.5, 1), got {self.confidence!r}")
        if not (math.isfinite(self.min_throughput_ratio) and self.min_throughput_ratio > 0):
            raise PolicyError("SLO.min_throughput_ratio must be > 0")
        if self.min_throughput_of is not None and not (isinstance(self.min_throughput_of, str)
                                                       and self.min_throughput_of.strip()):
            raise PolicyError("SLO throughput floor needs a policy name, e.g. throughput>=cloud-only")

    @property
    def constrained(self) -> bool:
        return any(v is not None for v in (self.max_latency_ms, self.max_accuracy_drop, self.max_bytes,
                                           self.min_throughput, self.min_throughput_of))

    @classmethod
    def parse(cls, text: str) -> "SLO":
        """``"OBJ[,OBJ...][;CONSTRAINT...]"``; constraints ``latency<=MS``, ``drop<=POINTS``,
        ``bytes<=N``, ``throughput>=N`` (inferences/s), ``throughput>=[R*]POLICY``, ``tol=0.05``,
        ``conf=0.9`` (the confidence of the accuracy bound); or a
        preset (``onload``) followed by more constraints. A later constraint of a kind replaces one
        given earlier."""
        parts = [p.strip() for p in text.split(";") if p.strip()]
        if parts and parts[0] in PRESETS:
            parts = [p.strip() for p in PRESETS[parts[0]].split(";")] + parts[1:]
        if not parts:
            raise PolicyError("empty SLO; e.g. 'throughput,cloud_cost;drop<=1;latency<=200'")
        kwargs: dict = {}
        first = parts[0]
        objectives: tuple[str, ...]
        if _CONSTRAINT.match(first) or first.startswith(("tol", "conf")):
            objectives = ("throughput", "cloud_cost")
        else:
            objectives = tuple(o.strip() for o in first.split(",") if o.strip())
            parts = parts[1:]
        kwargs["objectives"] = objectives
        for part in parts:
            kwargs.update(_constraint(part))
        return cls(**kwargs)

    def __str__(self) -> str:
        parts = [",".join(self.objectives)]
        if self.max_accuracy_drop is not None:
            parts.append(f"drop<={self.max_accuracy_drop:g}")
        if self.max_latency_ms is not None:
            parts.append(f"latency<={self.max_latency_ms:g}")
        if self.max_bytes is not None:
            parts.append(f"bytes<={self.max_bytes:g}")
        if self.min_throughput is not None:
            parts.append(f"throughput>={self.min_throughput:g}")
        if self.min_throughput_of is not None:
            ratio = "" if self.min_throughput_ratio == 1 else f"{self.min_throughput_ratio:g}*"
            parts.append(f"throughput>={ratio}{self.min_throughput_of}")
        if self.tolerance != 0.02:
            parts.append(f"tol={self.tolerance:g}")
        if self.confidence != 0.95:
            parts.append(f"conf={self.confidence:g}")
        return ";".join(parts)


def _constraint(part: str) -> dict[str, Any]:
    """The SLO fields one constraint text sets."""
    if part.replace(" ", "").startswith("tol="):
        return {"tolerance": _number(part.split("=", 1)[1], part)}
    if part.replace(" ", "").startswith("conf="):
        return {"confidence": _number(part.split("=", 1)[1], part)}
    match = _CONSTRAINT.match(part)
    if not match:
        raise PolicyError(f"cannot read SLO constraint {part!r}; use latency<=MS, drop<=POINTS, "
                          f"bytes<=N, throughput>=N, throughput>=[R*]POLICY, tol=X or conf=X")
    what, op, value = match.groups()
    want = ">=" if what == "throughput" else "<="
    if op != want:
        raise PolicyError(f"SLO constraint {part!r}: {what} takes {want}")
    if what != "throughput":
        field = {"latency": "max_latency_ms", "drop": "max_accuracy_drop", "bytes": "max_bytes"}[what]
        return {field: _number(value, part)}
    try:
        return {"min_throughput": float(value)}
    except ValueError:
        ratio, _, name = value.rpartition("*")
        return {"min_throughput_of": name.strip(), "min_throughput_ratio": _number(ratio, part) if ratio else 1.0}


def _number(text: str, part: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PolicyError(f"SLO constraint {part!r}: {text.strip()!r} is not a number") from None
    return value


@dataclasses.dataclass(frozen=True)
class State:
    """What a policy decides on: the plan, current estimates, the SLO and the expected cloud batch.

    ``in_flight`` is the client's request window (inferences started and not yet answered), None if
    unbounded: a pipelined client cannot exceed ``in_flight / latency`` inferences per second, which
    binds when the round trip is long compared with the pipeline's slowest stage.
    """

    plan: "Plan"
    estimates: Estimates
    slo: SLO
    batch: int = 1
    in_flight: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.batch, int) or self.batch < 1:
            raise PolicyError(f"State.batch must be an int >= 1, got {self.batch!r}")
        if self.in_flight is not None and (not isinstance(self.in_flight, int) or self.in_flight < 1):
            raise PolicyError(f"State.in_flight must be an int >= 1 or None, got {self.in_flight!r}")


class Policy(abc.ABC):
    """A scheduler: maps a ``State`` to a ``Decision``.

    Stateful policies (hysteresis, JALAD's fixed choice) keep their state on ``self``; ``reset()``
    forgets it (a new stream, a new plan).
    """

    name: str = "policy"
    #: Where the estimates this policy decides on come from (one of ``FEEDS``).
    feed: str = "own"
    #: True when ``decide`` is a pure function of the state (no hysteresis or memory beyond a fixed
    #: first choice): a caller may then reuse a decision while the state is unchanged.
    pure: bool = False

    @abc.abstractmethod
    def decide(self, state: State) -> Decision:
        """Choose a cut and packing for the next inference."""

    def reset(self) -> None:  # noqa: B027 (a hook: stateless policies have nothing to forget)
        """Forget any state kept between decisions."""

    def desynchronise(self, phase: float) -> None:  # noqa: B027 (a hook: policies that never probe)
        """Start exploring ``phase`` (in [0, 1)) of the way through the first probe streak, so that many
        devices started together do not all probe at once (``dyno.policy.explore``); kept across
        ``reset``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
