"""The heads manifest: which exported head file computes which cut, and how to check it (no torch).

``dyno export`` writes one ONNX file per cut a device may use and ``manifest.json`` beside them; the
device (``dyno.device``, onnxruntime only) reads the manifest, checks every file's sha256 before it
loads it, and matches the heads to the plan by model, weights hash and the cuts' names and shapes.

    manifest = HeadsManifest.load("heads/")          # validated; PlanError when wrong
    manifest.head(12).file, manifest.head(12).output_shape
    manifest.check_plan(plan)                        # PlanError if the heads are of another model

- ``heads``: per exported cut its id and node name, the file, the sha256 of the file, the input and
  output shapes per sample (the batch dimension is dynamic), ``max_abs_diff``/``max_abs_ref``: the
  largest |onnxruntime - torch| over the check inputs at export and the largest |torch| value, and
  ``nonnegative`` (the activation is never negative, e.g. after a ReLU: the codec needs no sign);
  ``tail_file``/``tail_sha256`` when the tails were exported too (``dyno export --tails``).
- ``notes``: ``preprocess`` (the zoo model's image preprocessing: mode, resize, crop, mean, std,
  interpolation) and ``data`` (its default dataset), so a device reads and prepares inputs as the zoo does.
- ``refused``: the cuts no head was exported for, each with the reason (a side value that must travel
  with the activation cannot be an ONNX output of a batchable head; cut 0 needs no head).
- ``plan_hash``: the hash of the plan the heads were exported for ("" when exported from a model
  before any plan existed: the device then matches them to a plan by model, weights and cuts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar

from dyno.datafile import DataFile, finite
from dyno.errors import DynoError, PlanError

__all__ = ["FORMAT", "VERSION", "MANIFEST", "Head", "Refused", "HeadsManifest", "sha256_file"]

FORMAT = "dyno-heads"
VERSION = 1
#: The manifest's file name inside an export directory.
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Head:
    """One exported head: the cut it computes and its file (relative to the manifest's directory)."""

    cut: int
    name: str
    file: str
    sha256: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float = 0.0
    max_abs_ref: float = 0.0
    nonnegative: bool = False
    tail_file: str = ""
    tail_sha256: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "output_shape", tuple(self.output_shape))
        ok = (isinstance(self.cut, int) and self.cut >= 0 and isinstance(self.file, str)
              and Path(self.file).name == self.file and self.file.endswith(".onnx")
              and isinstance(self.sha256, str) and len(self.sha256) == 64
              and all(isinstance(d, int) and d > 0 for d in (*self.input_shape, *self.output_shape))
              and finite(self.max_abs_diff) and finite(self.max_abs_ref)
              and (self.tail_file == self.tail_sha256 == "" or (Path(self.tail_file).name == self.tail_file
                                                                 and self.tail_file.endswith(".onnx")
                                                                 and len(self.tail_sha256) == 64)))
        if not ok:
            raise PlanError(f"invalid heads manifest: head of cut {self.cut!r} ({self.file!r}) has a bad id, file "
                            "name (a plain *.onnx name in the directory), sha256, shape or check value")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Refused:
    """A cut without an exported head, and why."""

    cut: int
    name: str
    reason: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadsManifest(DataFile):
    """What ``dyno export`` wrote (see the module docstring)."""

    FORMAT: ClassVar[str] = FORMAT
    VERSION: ClassVar[int] = VERSION
    ERROR: ClassVar[type[DynoError]] = PlanError
    REMAKE: ClassVar[str] = "export the heads again with `dyno export`"

    model: str
    weights_sha256: str
    plan_hash: str
    input_shape: tuple[int, ...]
    opset: int
    exporter: str
    heads: tuple[Head, ...]
    refused: tuple[Refused, ...] = ()
    cut_names: tuple[str, ...] = ()
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "refused", tuple(self.refused))
        object.__setattr__(self, "cut_names", tuple(self.cut_names))
        ids = [h.cut for h in self.heads]
        if len(set(ids)) != len(ids) or not self.heads:
            raise PlanError("invalid heads manifest: no heads, or two heads for one cut")

    def head(self, cut_id: int) -> Head:
        """The head of ``cut_id``; PlanError naming the reason when there is none."""
        for head in self.heads:
            if head.cut == cut_id:
                return head
        why = next((r.reason for r in self.refused if r.cut == cut_id), "it was not exported")
        raise PlanError(f"no exported head for cut {cut_id}: {why}")

    @property
    def cuts(self) -> tuple[int, ...]:
        return tuple(h.cut for h in self.heads)

    def check_plan(self, plan: Any) -> None:
        """Refuse heads of another model, other weights or other cuts than ``plan``'s."""
        if plan.weights_sha256 != self.weights_sha256:
            raise PlanError(f"the heads were exported for {self.model} with weights sha256 {self.weights_sha256}, "
                            f"the plan is for {plan.model} with weights sha256 {plan.weights_sha256}; export "
                            "the heads again with `dyno export --plan PLAN`")
        names = [c.name for c in plan.cuts]
        if self.cut_names and list(self.cut_names) != names:
            raise PlanError(f"the heads were exported for {len(self.cut_names)} cuts that are not the plan's "
                            f"{len(names)} cuts; export them again with `dyno export --plan PLAN`")
        for head in self.heads:
            if head.cut >= len(plan.cuts) or tuple(plan.cuts[head.cut].shape) != head.output_shape:
                raise PlanError(f"the head of cut {head.cut} computes {head.output_shape}, which is not the "
                                "plan's cut; export the heads again with `dyno export --plan PLAN`")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> HeadsManifest:
        """The manifest of an export directory (or the manifest file itself), validated."""
        path = Path(directory)
        path = path / MANIFEST if path.is_dir() else path
        if not path.is_file():
            raise PlanError(f"no heads manifest at {path}; export heads with `dyno export --plan PLAN --out DIR`")
        return cls.read(path)

    def verified_file(self, directory: str | os.PathLike, cut_id: int, *, tail: bool = False) -> bytes:
        """The bytes of the head (``tail``: the tail) file of ``cut_id``, after checking its sha256."""
        entry = self.head(cut_id)
        name, expected = (entry.tail_file, entry.tail_sha256) if tail else (entry.file, entry.sha256)
        if not name:
            raise PlanError(f"no exported tail for cut {cut_id}; export with `dyno export --tails`")
        path = Path(directory) / name
        try:
            data = path.read_bytes()
        except OSError as error:
            raise PlanError(f"cannot read the head of cut {cut_id}: {error}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected:
            raise PlanError(f"{path} has sha256 {digest}, the manifest says {expected}: the file was "
                            "changed or damaged; export the heads again")
        return data


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
