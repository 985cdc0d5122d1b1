"""The profile file: per-cut latency and codec cost of one role, measured on one machine.

A *device profile* holds, per cut, the head's time at batch size one and the encode time of every
codec option; a *cloud profile* holds the tail's time per batch at batch sizes 1..32 and the decode
times. Both record the median wire bytes of each option over a sample of real inputs, the torch
threads used and how the times were obtained (``method``). Measured by
:func:`dyno.offline.measure`; versioned JSON (``dyno.datafile``):

    device = Profile.load("device.json", role="device")
    device.cuts[5].head_ms, device.cuts[5].encode_ms["shuffle-lz4:4"]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

from dyno import partition
from dyno.datafile import DataFile, finite
from dyno.errors import DynoError, PlanError

__all__ = ["FORMAT", "VERSION", "ROLES", "BATCH_SIZES", "CutProfile", "Profile"]

FORMAT = "dyno-profile"
VERSION = 1
ROLES = ("device", "cloud")
#: Batch sizes a cloud profile times the tails at.
BATCH_SIZES = (1, 2, 4, 8, 16, 32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CutProfile:
    """One cut's measurements. Device profiles fill ``head_ms`` and ``encode_ms``; cloud profiles
    ``tail_ms`` (batch size -> ms per batch) and ``decode_ms``. Codec maps are keyed by option label
    (``"fp32"``, ``"fp16"``, ``"shuffle-lz4:8"``, ``"jpeg:90"``); ``bytes`` is the median wire size."""

    id: int
    name: str
    head_ms: float | None = None
    tail_ms: dict[int, float] | None = None
    encode_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    decode_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    bytes: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tail_ms is not None:  # stored by increasing batch size, as the file lists them
            object.__setattr__(self, "tail_ms", dict(sorted(self.tail_ms.items())))

    def valid(self, role: str) -> bool:
        """Whether the times ``role`` measures are present, finite and non-negative."""
        if role == "device":
            ok = self.head_ms is not None and finite(self.head_ms) and self.head_ms >= 0
        else:
            ok = bool(self.tail_ms) and all(isinstance(b, int) and b >= 1 and finite(t) and t >= 0
                                            for b, t in (self.tail_ms or {}).items())
        codec = self.encode_ms if role == "device" else self.decode_ms
        return ok and all(finite(v) and v >= 0 for v in (*codec.values(), *self.bytes.values()))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Profile(DataFile):
    """Measurements of one role (``"device"`` or ``"cloud"``) for one model's cuts on one machine."""

    FORMAT: ClassVar[str] = FORMAT
    VERSION: ClassVar[int] = VERSION
    ERROR: ClassVar[type[DynoError]] = PlanError
    REMAKE: ClassVar[str] = "measure it again with `dyno profile`"

    role: str
    name: str
    model: str
    threads: int
    cuts: tuple[CutProfile, ...]
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)
    method: dict[str, Any] = dataclasses.field(default_factory=dict)
    samples: int = 0
    created: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PlanError(f"profile role must be 'device' or 'cloud', not {self.role!r}")
        object.__setattr__(self, "cuts", tuple(self.cuts))
        for cut in self.cuts:
            if not cut.valid(self.role):
                raise PlanError(f"profile {self.name!r}: cut {cut.id} ({cut.name}) has missing, negative or "
                                f"non-finite {self.role} times")

    def check_cuts(self, cuts: Sequence[partition.Cut]) -> None:
        """Refuse a profile measured on other cuts (another model or architecture)."""
        if [c.name for c in self.cuts] != [c.name for c in cuts]:
            raise PlanError(f"{self.role} profile {self.name!r} was measured for {self.model} with "
                            f"{len(self.cuts)} cuts that do not match this model's {len(cuts)} cuts; "
                            f"measure it again with `dyno profile MODEL --role {self.role}`")

    @classmethod
    def load(cls, path: str | os.PathLike, *, role: str | None = None) -> Profile:
        """Read and validate a profile; with ``role``, refuse a profile of the other role."""
        path = Path(path)
        if not path.exists():
            raise PlanError(f"no profile at {path}; measure one with `dyno profile MODEL --role "
                            f"{role or 'device'} --out {path}`")
        profile = cls.read(path)
        if role is not None and profile.role != role:
            raise PlanError(f"{path} is a {profile.role} profile, not a {role} profile")
        return profile
