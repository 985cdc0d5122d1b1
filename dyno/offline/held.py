"""The sample's values at the current cut, batch by batch, within a memory budget.

The precision analysis walks every batch of its sample through the model together, cut by cut
(:class:`dyno.graph.Walk`), so that the activations of the whole sample at the cut at hand are there
for the tail to run on again and again. Held in full, the widest cuts of an image model take gigabytes
(EfficientNet-Lite0's 96 x 113 x 113 cut: 4.9 MB a sample, 2.4 GB for 500 images). Where the values
live across a cut would exceed ``budget`` bytes for the whole sample, they are not kept: every batch
stays at the last cut that fitted (its *checkpoint*) and each use of a batch recomputes the few
segments from there, which costs a fraction of the tail that then runs on it. The values are the same
either way: the same segments run on the same tensors.

    held = Held(walk, batches, budget=HOLD_BYTES)
    for index in range(len(walk.segments)):
        for k in range(len(batches)):
            before, now = held.move(k, index)    # dicts of the values live across index - 1 and index
        acts = held.acts(index, name)            # a sequence: one tensor per batch, built on access
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from dyno import graph

__all__ = ["HOLD_BYTES", "Held"]

#: Bytes the values of the whole sample live across one cut may take before batches are recomputed
#: from a checkpoint instead of held (a batch under evaluation and the tail's own intermediates come
#: on top: about 6 batch-sized tensors at the widest cuts). At 512 MiB EfficientNet-Lite0's 500 images
#: hold its input-side cuts 2-8 and 21-24 (0.77-1.0 GB) no longer; their few segments from the
#: checkpoint (the stem; one expansion) cost a small part of the tail that then runs on them.
HOLD_BYTES = 1 << 29


def _nbytes(values: Sequence[Any]) -> int:
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


class Held:
    """Per batch, the values at the last cut it was moved to, or at its checkpoint (see the module)."""

    def __init__(self, walk: graph.Walk, batches: Sequence[torch.Tensor], budget: int = HOLD_BYTES) -> None:
        self.walk, self.budget = walk, budget
        self.sizes = [len(b) for b in batches]
        self.states: list[tuple[int, tuple[Any, ...]]] = [(-1, (b,)) for b in batches]
        self.recomputed: list[int] = []  # the cuts not held

    def _values(self, k: int, index: int) -> tuple[Any, ...]:
        """Batch ``k``'s values live across stop ``index`` (``-1``: the inputs), from its state."""
        at, values = self.states[k]
        if at > index:
            raise RuntimeError(f"batch {k} is at cut {at}, past {index}")
        for s in range(at + 1, index + 1):
            values = self.walk.step(s, *values)
        return values

    def move(self, k: int, index: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Move batch ``k`` to cut ``index``: the values live across the cut before (None at the first)
        and across this one. The first batch decides whether the cut is held: it is unless the whole
        sample's values there would exceed the budget. A held cut replaces the batch's state; the
        caller drops the returned dicts when done with them."""
        before = self._values(k, index - 1)
        now = self.walk.step(index, *before)
        if k == 0 and _nbytes(now) * sum(self.sizes) > self.budget * self.sizes[0]:
            self.recomputed.append(index)
        if not self.recomputed or self.recomputed[-1] != index:
            self.states[k] = (index, now)
        named = dict(zip(self.walk.names[index - 1], before)) if index > 0 else None
        return named, dict(zip(self.walk.names[index], now))

    def held(self, index: int) -> bool:
        """Whether cut ``index`` (the one the batches were last moved to) is held, not recomputed."""
        return not self.recomputed or self.recomputed[-1] != index

    def acts(self, index: int, name: str) -> Sequence[torch.Tensor]:
        """The value ``name`` at cut ``index`` of every batch: a list when held, else a sequence that
        recomputes a batch on each access."""
        position = self.walk.names[index].index(name)
        if self.held(index):
            return [values[position] for _, values in self.states]
        return _Recomputed(self, index, position)

    def clear(self) -> None:
        self.states = []


class _Recomputed(Sequence[torch.Tensor]):
    """One cut's value of every batch, recomputed from the batch's checkpoint on each access."""

    def __init__(self, held: Held, index: int, position: int) -> None:
        self.held, self.cut, self.position = held, index, position

    def __len__(self) -> int:
        return len(self.held.states)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        return self.held._values(k % len(self), self.cut)[self.position]
