"""Heads and tails of one model for every cut of its plan, built on first use and cached.

Plan cuts are matched to the model's traced cuts by node name and per-sample shape, so a plan made
for another architecture fails loudly here rather than computing nonsense.

    splits = Splits(model, plan)
    head, tail = splits.head(3), splits.tail(3)     # torch.fx GraphModules in eval mode
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from dyno import partition
from dyno.errors import PlanError
from dyno.plan import Plan

__all__ = ["Splits", "warm_codecs"]


class Splits:
    """``head(cut_id)`` / ``tail(cut_id)`` for the plan's cuts; thread-safe, lazily built."""

    def __init__(self, model: nn.Module, plan: Plan):
        self.model = model.eval()
        self.plan = plan
        example = torch.zeros(1, *plan.input_shape)
        traced = {c.name: c for c in partition.cuts(self.model, example)}
        self._cuts: dict[int, partition.Cut] = {}
        for cut in plan.cuts:
            found = traced.get(cut.name)
            if found is None or tuple(found.shape) != tuple(cut.shape):
                raise PlanError(
                    f"plan cut {cut.id} ({cut.name}, shape {tuple(cut.shape)}) does not exist in this "
                    f"{type(model).__name__}; the plan was made for another model, run `dyno analyze`")
            self._cuts[cut.id] = found
        self._parts: dict[int, tuple[torch.fx.GraphModule, torch.fx.GraphModule]] = {}
        self._lock = threading.Lock()

    def cut(self, cut_id: int) -> partition.Cut:
        return self._cuts[cut_id]

    def batchable(self, cut_id: int) -> bool:
        return self._cuts[cut_id].batchable and self.plan.cuts[cut_id].batchable

    def parts(self, cut_id: int) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
        parts = self._parts.get(cut_id)
        if parts is None:
            with self._lock:
                parts = self._parts.get(cut_id)
                if parts is None:
                    head, tail = partition.split(self.model, self._cuts[cut_id])
                    parts = (head.eval(), tail.eval())
                    self._parts[cut_id] = parts
        return parts

    def head(self, cut_id: int) -> torch.fx.GraphModule:
        return self.parts(cut_id)[0]

    def tail(self, cut_id: int) -> torch.fx.GraphModule:
        return self.parts(cut_id)[1]

    def warm(self, cut_ids: list[int] | None = None) -> None:
        """Build the parts of ``cut_ids`` (default: all) now rather than on first use."""
        for cut_id in (self._cuts if cut_ids is None else cut_ids):
            self.parts(cut_id)


def warm_codecs(plan: Plan, *, decode: bool = True) -> None:
    """Encode (and decode) one random tensor with every codec mode the plan uses, so that the first
    real frame does not pay for library initialisation (Pillow's WebP, blosc2: tens of ms)."""
    import numpy as np

    from dyno import codec

    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for cut in plan.cuts:
        for option in cut.options:
            if option.codec in seen:
                continue
            seen.add(option.codec)
            x = rng.random(tuple(cut.shape), dtype=np.float32)
            encoded = codec.encode(x, bits=option.bits, mode=option.codec, nonnegative=True)
            if decode:
                codec.decode(codec.Encoded.from_parts(encoded.meta.to_bytes(), encoded.payload),
                             codec.Expected(shape=tuple(cut.shape)))
