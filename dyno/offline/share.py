"""Sharing the measurements of identical cuts.

A cut that only pads, reshapes or drops out (eval) the previous cut's tensor gives the tail the very
same values after quantisation when the ranges agree (zero is on every grid that spans it). Then
the previous cut's measurements hold for it, and its tail need not run again. Whether the ops
between the two cuts are of that kind is judged from the graph (:func:`shareable`); that they give
identical values is then verified on the data, batch by batch, for every setting measured at the
previous cut (:func:`same_values`), by running the segment of the model between the two cuts (with
whatever it computes from the tensor, such as ``x.size(0)``) on the quantised previous tensor.

    if shareable(gm, walk.nodes[k], cuts[k - 1].name, cuts[k].name) and all(same_values(...) ...):
        share(previous, result)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch.fx

from dyno import graph, partition
from dyno.offline.quant import Quantize, fake_fp16
from dyno.offline.search import CutPrecision
from dyno.packing import IMAGE_CODECS

__all__ = ["SHARED_KINDS", "shareable", "same_values", "share"]

#: Measurement kinds a later cut can share (images are the input cut's own options).
SHARED_KINDS = ("q", "clip", "fp16")


def shareable(gm: torch.fx.GraphModule, segment: Sequence[torch.fx.Node], previous: str, name: str) -> bool:
    """Whether the ``segment`` of ``gm`` between two cuts maps the previous cut's tensor (``previous``)
    to this cut's (``name``) by ops that only move values (:func:`dyno.graph.copies_values`), each
    taking the one before as its first argument and the previous tensor nowhere else."""
    inside = {n.name: n for n in segment}
    node: Any = inside.get(name)
    while isinstance(node, torch.fx.Node) and node.name in inside:
        if not graph.copies_values(gm, node) or not node.args:
            return False
        uses = [a for a in node.all_input_nodes if a.name == previous]
        first = node.args[0]
        if uses and (len(uses) > 1 or first is not uses[0]):
            return False
        node = first
    return isinstance(node, torch.fx.Node) and node.name == previous


def same_values(walk: graph.Walk, index: int, before: dict[str, Any], cuts: Sequence[partition.Cut],
                b: torch.Tensor, previous: CutPrecision, quantize: Quantize) -> bool:
    """Whether, for every setting measured at the previous cut, quantising ``b`` (this cut's batch)
    equals running the walk's segment ``index`` on the quantised previous batch (``before``: the
    values live at the previous cut)."""
    prior, cut = cuts[index - 1], cuts[index]
    a = before[prior.name]
    for key in previous.measured:
        if key[0] in IMAGE_CODECS:
            continue
        clip = previous.clip if key[0] == "clip" else None
        left = fake_fp16(a) if key[0] == "fp16" else quantize(a, key[1], nonnegative=prior.nonnegative, clip=clip)
        values = walk.step(index, *(left if n == prior.name else before[n] for n in walk.names[index - 1]))
        mapped = values[walk.names[index].index(cut.name)]
        del left, values  # one quantised batch at a time
        right = fake_fp16(b) if key[0] == "fp16" else quantize(b, key[1], nonnegative=cut.nonnegative, clip=clip)
        if mapped.shape != right.shape or not torch.equal(mapped, right):  # any strides: no copies
            return False
    return True


def share(previous: CutPrecision, result: CutPrecision) -> None:
    """Copy the previous cut's measurements (images excepted) into ``result``, noting where from."""
    root = previous.shared_with if previous.shared_with is not None else previous.id
    for key, m in previous.measured.items():
        if key[0] in IMAGE_CODECS:
            continue
        m = dataclasses.replace(m)
        m.note = (m.note + "; " if m.note else "") + f"identical tail inputs to cut {root} (verified)"
        result.measured[key] = m
    result.clip = previous.clip
    result.calibration = dict(previous.calibration, shared_with=root) if previous.calibration else {}
    result.shared_with = root
    result.fp16_ok = previous.fp16_ok and result.fp16_ok
