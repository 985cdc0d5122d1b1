"""The plan file: everything offline analysis learned about one model, and nothing else.

A plan is versioned JSON (never pickle). It names the model and the sha256 of its weights, the input
spec, and per cut: its shape, the device and cloud latencies from the profiles, and the *options*
for sending the activation there, each a (codec, bits) pair with its measured bytes and accuracy.

- Cut 0 (the input) lists raw options and image codecs (``jpeg``/``webp``, ``bits`` = quality), so
  cloud-only is a priced option like any other.
- The last cut (the output) is device-only: it has no options, nothing is sent.
- ``Option.measured`` is False for entries inferred rather than evaluated (see ``dyno.precision``).

Loading validates the whole schema and refuses a plan for another model or other weights::

    plan = Plan.load("plan.json", model=model)   # PlanError if the weights differ
    plan.cuts[3].options[0].bytes
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

from dyno.errors import PlanError

__all__ = ["FORMAT", "VERSION", "Option", "CutPlan", "Plan"]

FORMAT = "dyno-plan"
VERSION = 1
CODECS = ("fp32", "fp16", "shuffle-lz4", "shuffle-zstd", "dense", "jpeg", "webp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Option:
    """One way to send the activation at a cut: a codec at a bit width (or image quality)."""

    codec: str
    bits: int | None
    bytes: float           # median wire bytes per sample (metadata included)
    accuracy: float        # top-1 on the analysis sample when this option is used
    agreement: float | None = None  # share of samples whose top-1 equals the fp32 model's
    measured: bool = True
    encode_ms: float = 0.0
    decode_ms: float = 0.0
    clip: tuple[float, float] | None = None  # calibrated range this option quantises with

    def __post_init__(self) -> None:
        _check(self.codec in CODECS, f"unknown codec {self.codec!r}; known: {', '.join(CODECS)}")
        if self.codec in ("fp32", "fp16"):
            _check(self.bits is None, f"{self.codec} takes no bits")
        elif self.codec in ("jpeg", "webp"):
            _check(isinstance(self.bits, int) and 1 <= self.bits <= 100, "image quality must be 1..100")
        else:
            _check(isinstance(self.bits, int) and 1 <= self.bits <= 16, "bits must be 1..16")
        _check(_finite(self.bytes) and self.bytes > 0, "option bytes must be positive")
        _check(_finite(self.accuracy) and 0 <= self.accuracy <= 1, "accuracy must be within [0, 1]")
        _check(_finite(self.encode_ms) and _finite(self.decode_ms), "codec times must be finite")
        if self.clip is not None:
            _check(len(self.clip) == 2 and all(_finite(v) for v in self.clip)
                   and self.clip[0] <= self.clip[1], "clip must be a finite (lo, hi) with lo <= hi")

    @property
    def label(self) -> str:
        return self.codec if self.bits is None else f"{self.codec}:{self.bits}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CutPlan:
    """What the plan knows about one cut. ``cloud_ms`` maps batch size to the tail's time per batch."""

    id: int
    name: str
    shape: tuple[int, ...]
    nonnegative: bool
    batchable: bool = True
    device_ms: float
    cloud_ms: dict[int, float]
    device_macs: int = 0
    cloud_macs: int = 0
    options: tuple[Option, ...] = ()

    def __post_init__(self) -> None:
        _check(self.id >= 0 and all(isinstance(d, int) and d >= 0 for d in self.shape),
               f"cut {self.id}: bad id or shape")
        _check(_finite(self.device_ms) and self.device_ms >= 0, f"cut {self.id}: bad device_ms")
        _check(bool(self.cloud_ms) and all(isinstance(b, int) and b >= 1 and _finite(t) and t >= 0
                                           for b, t in self.cloud_ms.items()),
               f"cut {self.id}: cloud_ms must map batch sizes >= 1 to times >= 0")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.numel

    def cloud_ms_per_sample(self, batch: int = 1) -> float:
        """Tail time per sample at ``batch`` (nearest measured batch size at or below it)."""
        sizes = sorted(self.cloud_ms)
        usable = [b for b in sizes if b <= batch] or sizes[:1]
        b = usable[-1]
        return self.cloud_ms[b] / b


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    model: str
    weights_sha256: str
    input_shape: tuple[int, ...]
    num_classes: int
    accuracy_fp32: float
    samples: int
    device_profile: str
    cloud_profile: str
    cuts: tuple[CutPlan, ...]
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(len(self.cuts) >= 2, "a plan needs at least the input and the output cut")
        _check([c.id for c in self.cuts] == list(range(len(self.cuts))), "cut ids must be 0, 1, 2, ...")
        _check(tuple(self.cuts[0].shape) == tuple(self.input_shape), "cut 0 must be the input")
        _check(not self.cuts[-1].options, "the last cut is device-only and sends nothing")
        _check(0 <= self.accuracy_fp32 <= 1 and self.samples >= 0, "bad accuracy_fp32 or samples")

    @property
    def device_only(self) -> CutPlan:
        return self.cuts[-1]

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON: client and server check they hold the same plan."""
        return hashlib.sha256(_canonical(self.to_dict()).encode()).hexdigest()

    # ---------------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for cut in data["cuts"]:
            cut["shape"] = list(cut["shape"])
            cut["cloud_ms"] = {str(b): t for b, t in sorted(cut["cloud_ms"].items())}
        data["input_shape"] = list(self.input_shape)
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: Any) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PlanError("not a dyno plan (the 'format' field is missing or wrong)")
        if data.get("version") != VERSION:
            raise PlanError(f"plan version {data.get('version')!r} is not supported (this dyno reads "
                            f"version {VERSION}); run `dyno analyze` again")
        try:
            cuts = tuple(
                CutPlan(**{**c, "shape": tuple(c["shape"]),
                           "cloud_ms": {int(b): float(t) for b, t in c["cloud_ms"].items()},
                           "options": tuple(Option(**{**o, "clip": None if o.get("clip") is None
                                                      else tuple(o["clip"])}) for o in c["options"])})
                for c in data["cuts"])
            fields = {k: v for k, v in data.items() if k not in ("format", "version", "cuts")}
            return cls(**{**fields, "input_shape": tuple(fields["input_shape"]), "cuts": cuts})
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PlanError(f"malformed plan: {type(error).__name__}: {error}") from error

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)  # never leave a half-written plan behind
        return path

    @classmethod
    def load(cls, path: str | Path, *, model: Any = None, weights_sha256: str | None = None) -> "Plan":
        """Read and validate a plan; with ``model`` (or its hash) refuse a plan for other weights."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise PlanError(f"no plan at {path}; make one with `dyno analyze MODEL --out {path}`") from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PlanError(f"cannot read plan {path}: {error}") from error
        plan = cls.from_dict(data)
        if model is not None:
            from dyno.zoo import weights_hash  # the zoo owns how weights are hashed

            weights_sha256 = weights_hash(model)
        if weights_sha256 is not None and weights_sha256 != plan.weights_sha256:
            raise PlanError(f"{path} was made for {plan.model} with weights {plan.weights_sha256[:12]}…, "
                            f"not these weights ({weights_sha256[:12]}…); run `dyno analyze` for them")
        return plan


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise PlanError(f"invalid plan: {message}")


def options_table(cuts: Iterable[CutPlan]) -> list[tuple[int, Option]]:
    """Every (cut id, option) pair, the scheduler's search space in plan order."""
    return [(cut.id, option) for cut in cuts for option in cut.options]
