"""The plan file: everything offline analysis learned about one model, and nothing else.

A plan is versioned JSON (never pickle). It names the model and the sha256 of its weights, the input
spec, and per cut: its shape, the device and cloud latencies from the profiles, the calibrated clip
range, and the *options* for sending the activation there, each a (codec, bits) pair with its
measured bytes, accuracy and codec times.

- Cut 0 (the input) lists raw options and image codecs (``jpeg``/``webp``, ``bits`` = quality), so
  cloud-only is a priced option like any other; ``Plan.input_spec`` says how the device turns the
  input tensor into an 8-bit image and how the cloud turns it back.
- The last cut (the output) is device-only: it has no options, nothing is sent.
- Every other cut has ``fp32``, ``fp16`` and, at every width, ``shuffle-lz4`` and the stronger coders
  (``centre-zstd``, ``zstd``, ``rans``) that are on the bytes/time front there (``dyno analyze``). The
  coders of one width send the same codes, so they carry the same accuracy and differ in bytes and
  codec times: the coder is the scheduler's third dimension beside the cut and the bits.
- ``Option.measured`` is False for entries inferred rather than evaluated; ``Option.samples`` is how
  many samples a measured accuracy comes from (fewer than ``Plan.samples`` when the evaluation was
  stopped early because the width clearly failed); ``Option.note`` says how an entry was obtained.
- ``Option.clip`` is the calibrated range an option quantises with (None: each tensor's own min/max).

Loading validates the whole schema (missing or unknown fields, NaN, wrong types) and refuses a plan
for another model or other weights. The file format is unchanged by the coders (still version 1): a plan
written before them (LZ4 rows only) loads as it is, and a dyno that predates a coder refuses a plan
naming it ("unknown codec"). ::

    plan = Plan.load("plan.json", model=model)   # PlanError if the weights differ
    plan.cuts[3].options[0].bytes
    plan.min_bits(plan.cuts[3], max_drop=0.01)   # the cheapest shuffle-lz4 option within 1 point
    plan.restricted(("shuffle-lz4",))            # the same plan with LZ4 as its only coder
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, ClassVar, Iterable

from dyno import packing
from dyno.datafile import DataFile
from dyno.datafile import finite as _finite
from dyno.errors import DynoError, PlanError

__all__ = ["FORMAT", "VERSION", "CODECS", "InputSpec", "Option", "CutPlan", "Plan", "options_table"]

FORMAT = "dyno-plan"
VERSION = 1
CODECS = packing.CODECS
IMAGE_CODECS = packing.IMAGE_CODECS


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputSpec:
    """How the model's input tensor relates to an 8-bit image (for ``jpeg``/``webp`` at cut 0).

    The device turns a normalised input ``x`` (C, H, W) into pixels ``u = round((x * std + mean) * 255)``
    (uint8, H x W x C; ``image_mode`` ``"L"`` for one channel, ``"RGB"`` for three); the cloud decodes
    the image and normalises it back: ``x = (u / 255 - mean) / std`` per channel, in float32.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_mode: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) if _finite(v) else v for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) if _finite(v) else v for v in self.std))
        _check(self.image_mode in ("L", "RGB"), "input_spec.image_mode must be 'L' or 'RGB'")
        channels = 1 if self.image_mode == "L" else 3
        _check(len(self.mean) == channels and len(self.std) == channels
               and all(_finite(v) for v in (*self.mean, *self.std)) and all(s > 0 for s in self.std),
               f"input_spec needs {channels} finite mean and positive std values")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Option:
    """One way to send the activation at a cut: a codec at a bit width (or image quality)."""

    codec: str
    bits: int | None
    bytes: float           # median wire bytes per sample (metadata included), from real encodes
    accuracy: float        # top-1 on the analysis sample when this option is used
    agreement: float | None = None  # share of samples whose top-1 equals the fp32 model's
    measured: bool = True
    encode_ms: float = 0.0
    decode_ms: float = 0.0
    clip: tuple[float, float] | None = None  # calibrated range this option quantises with
    samples: int = 0       # samples the accuracy was measured on (0: inferred)
    drop_se: float | None = None  # standard error of (fp32 accuracy - accuracy), paired per sample
    note: str = ""         # how the entry was obtained when not a plain measurement

    def __post_init__(self) -> None:
        _floats(self, "bytes", "accuracy", "agreement", "encode_ms", "decode_ms", "drop_se")
        if self.clip is not None:
            object.__setattr__(self, "clip", tuple(float(v) if _finite(v) else v for v in self.clip))
        wrong = packing.problem(self.codec, self.bits)
        _check(wrong is None, str(wrong))
        _check(_finite(self.bytes) and self.bytes > 0, f"{self.label}: option bytes must be positive")
        _check(_finite(self.accuracy) and 0 <= self.accuracy <= 1,
               f"{self.label}: accuracy must be within [0, 1]")
        _check(self.agreement is None or (_finite(self.agreement) and 0 <= self.agreement <= 1),
               f"{self.label}: agreement must be within [0, 1]")
        _check(isinstance(self.measured, bool), f"{self.label}: measured must be true or false")
        _check(_finite(self.encode_ms) and _finite(self.decode_ms) and self.encode_ms >= 0
               and self.decode_ms >= 0, f"{self.label}: codec times must be finite and >= 0")
        _check(_int(self.samples) and self.samples >= 0, f"{self.label}: samples must be an int >= 0")
        _check(self.drop_se is None or (_finite(self.drop_se) and self.drop_se >= 0),
               f"{self.label}: drop_se must be finite and >= 0")
        _check(isinstance(self.note, str), f"{self.label}: note must be a string")
        if self.clip is not None:
            _check(len(self.clip) == 2 and all(_finite(v) for v in self.clip)
                   and self.clip[0] <= self.clip[1], "clip must be a finite (lo, hi) with lo <= hi")

    @property
    def packing(self) -> packing.Packing:
        return packing.Packing(self.codec, self.bits)

    @property
    def label(self) -> str:
        return packing.label(self.codec, self.bits)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CutPlan:
    """What the plan knows about one cut. ``cloud_ms`` maps batch size to the tail's time per batch.

    ``clip`` is the range calibrated for this cut (None if none was); ``calibration`` records how it
    was chosen and the accuracies measured with and without it (``dyno.offline.precision``).
    """

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
    clip: tuple[float, float] | None = None
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _floats(self, "device_ms")
        object.__setattr__(self, "shape", tuple(self.shape))
        if isinstance(self.cloud_ms, dict):
            object.__setattr__(self, "cloud_ms", {b: float(t) if _finite(t) else t
                                                  for b, t in sorted(self.cloud_ms.items())})
        if self.clip is not None:
            object.__setattr__(self, "clip", tuple(float(v) if _finite(v) else v for v in self.clip))
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "calibration", _json_data(self.calibration, f"cut {self.id} calibration"))
        _check(_int(self.id) and self.id >= 0 and all(_int(d) and d >= 0 for d in self.shape),
               f"cut {self.id}: bad id or shape")
        _check(isinstance(self.name, str) and isinstance(self.nonnegative, bool)
               and isinstance(self.batchable, bool), f"cut {self.id}: bad name, nonnegative or batchable")
        _check(_finite(self.device_ms) and self.device_ms >= 0, f"cut {self.id}: bad device_ms")
        _check(bool(self.cloud_ms) and all(_int(b) and b >= 1 and _finite(t) and t >= 0
                                           for b, t in self.cloud_ms.items()),
               f"cut {self.id}: cloud_ms must map batch sizes >= 1 to times >= 0")
        _check(all(isinstance(o, Option) for o in self.options), f"cut {self.id}: options must be Options")
        labels = [(o.label, o.clip) for o in self.options]
        _check(len(set(labels)) == len(labels), f"cut {self.id}: duplicate options")
        if self.clip is not None:
            _check(len(self.clip) == 2 and all(_finite(v) for v in self.clip) and self.clip[0] <= self.clip[1],
                   f"cut {self.id}: clip must be a finite (lo, hi) with lo <= hi")
        _check(isinstance(self.calibration, dict), f"cut {self.id}: calibration must be an object")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.numel

    def option(self, codec: str, bits: int | None = None) -> Option | None:
        """The option for ``codec`` at ``bits`` (quality for jpeg/webp), or None if the plan has none."""
        return next((o for o in self.options if o.codec == codec and o.bits == bits), None)

    def coders(self, bits: int) -> tuple[Option, ...]:
        """The quantising options at ``bits``: one per coder the plan lists there, fewest bytes first."""
        return tuple(sorted((o for o in self.options if o.bits == bits and o.packing.is_quantised),
                            key=lambda o: o.bytes))

    def cloud_ms_per_sample(self, batch: int = 1) -> float:
        """Tail time per sample at ``batch`` (nearest measured batch size at or below it)."""
        sizes = sorted(self.cloud_ms)
        usable = [b for b in sizes if b <= batch] or sizes[:1]
        b = usable[-1]
        return self.cloud_ms[b] / b


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan(DataFile):
    """Everything offline analysis learned about one model with one set of weights.

    ``accuracy_fp32`` is the unmodified model's top-1 on the ``samples`` analysis samples of ``data``;
    ``device_profile``/``cloud_profile`` name the profiles the latencies come from.

    How to rebuild the model: ``model`` is what ``dyno.zoo.get_model`` resolves (a zoo name, a
    ``module.path:callable`` spec, an entry point of ``dyno.models``); ``weights`` where its weights came
    from (``trained``, ``random``, or the absolute path of a state_dict file; empty in plans made before
    it was recorded); ``weights_sha256`` what they must hash to.
    """

    FORMAT: ClassVar[str] = FORMAT
    VERSION: ClassVar[int] = VERSION
    ERROR: ClassVar[type[DynoError]] = PlanError
    REMAKE: ClassVar[str] = "make one with `dyno analyze MODEL --out PLAN`"

    model: str
    weights_sha256: str
    input_shape: tuple[int, ...]
    num_classes: int
    accuracy_fp32: float
    samples: int
    device_profile: str
    cloud_profile: str
    cuts: tuple[CutPlan, ...]
    data: str = ""
    input_spec: InputSpec | None = None
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: str = ""

    def __post_init__(self) -> None:
        _floats(self, "accuracy_fp32")
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "cuts", tuple(self.cuts))
        object.__setattr__(self, "notes", _json_data(self.notes, "notes"))
        _check(isinstance(self.model, str) and isinstance(self.weights_sha256, str)
               and isinstance(self.weights, str), "model, weights and weights_sha256 must be strings")
        _check(len(self.cuts) >= 2, "a plan needs at least the input and the output cut")
        _check([c.id for c in self.cuts] == list(range(len(self.cuts))), "cut ids must be 0, 1, 2, ...")
        _check(tuple(self.cuts[0].shape) == tuple(self.input_shape), "cut 0 must be the input")
        _check(not self.cuts[-1].options, "the last cut is device-only and sends nothing")
        _check(_finite(self.accuracy_fp32) and 0 <= self.accuracy_fp32 <= 1 and _int(self.samples)
               and self.samples >= 0, "bad accuracy_fp32 or samples")
        _check(_int(self.num_classes) and self.num_classes >= 1, "num_classes must be >= 1")
        image = [o.label for c in self.cuts[1:] for o in c.options if o.codec in IMAGE_CODECS]
        _check(not image, f"image codecs are for the input cut only, found {', '.join(image[:3])}")

    def to_dict(self) -> dict[str, Any]:
        """The file's document; ``weights`` only when recorded, so that a plan made before it existed
        saves byte for byte and keeps its hash."""
        data = super().to_dict()
        if not self.weights:
            data.pop("weights", None)
        return data

    @property
    def device_only(self) -> CutPlan:
        return self.cuts[-1]

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON: client and server check they hold the same plan."""
        return hashlib.sha256(_canonical(self.to_dict()).encode()).hexdigest()

    def drop(self, option: Option) -> float:
        """Accuracy drop of ``option`` below the fp32 model, as a fraction (0.01 = one point)."""
        return self.accuracy_fp32 - option.accuracy

    def min_bits(self, cut: CutPlan | int, max_drop: float = 0.01, codec: str = "shuffle-lz4"
                 ) -> Option | None:
        """The option of ``codec`` with the fewest bits whose drop is at most ``max_drop`` (a
        fraction: 0.01 is one point), or None if no width keeps the drop that small."""
        cut = self.cuts[cut] if isinstance(cut, int) else cut
        ok = [o for o in cut.options if o.codec == codec and o.bits is not None
              and self.drop(o) <= max_drop + 1e-12]
        return min(ok, key=lambda o: (o.bits, o.bytes)) if ok else None

    def restricted(self, codecs: Iterable[str]) -> "Plan":
        """This plan with only ``codecs`` among its quantising coders (float and image options stay):
        ``plan.restricted(("shuffle-lz4",))`` is the plan as it was before the stronger coders."""
        keep = set(codecs)
        unknown = keep - set(packing.QUANT_CODECS)
        _check(not unknown, f"restricted to unknown quantising codecs {sorted(unknown)}")
        cuts = tuple(dataclasses.replace(c, options=tuple(o for o in c.options if not o.packing.is_quantised
                                                          or o.codec in keep)) for c in self.cuts)
        return dataclasses.replace(self, cuts=cuts, notes={**self.notes, "codecs": sorted(keep)})

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: Any = None, weights_sha256: str | None = None) -> "Plan":
        """Read and validate a plan; with ``model`` (or its hash) refuse a plan for other weights."""
        plan = cls.read(path)
        if model is not None:
            from dyno.zoo import weights_hash  # the zoo owns how weights are hashed

            weights_sha256 = weights_hash(model)
        if weights_sha256 is not None and weights_sha256 != plan.weights_sha256:
            made = f" ({plan.weights})" if plan.weights else ""
            raise PlanError(f"{path} was made for {plan.model} with weights sha256 {plan.weights_sha256}{made}, "
                            f"not these weights (sha256 {weights_sha256}); pass the weights the plan was made "
                            "with, or run `dyno analyze` for these")
        return plan


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _json_data(value: Any, where: str) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), or PlanError if it is not JSON data."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise PlanError(f"invalid plan: {where} must be finite JSON data ({error})") from None


def _floats(obj: Any, *names: str) -> None:
    """Store int values of float fields as floats, so that equal plans serialise identically."""
    for name in names:
        value = getattr(obj, name)
        if _finite(value):
            object.__setattr__(obj, name, float(value))


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise PlanError(f"invalid plan: {message}")


def options_table(cuts: Iterable[CutPlan]) -> list[tuple[int, Option]]:
    """Every (cut id, option) pair, the scheduler's search space in plan order."""
    return [(cut.id, option) for cut in cuts for option in cut.options]
