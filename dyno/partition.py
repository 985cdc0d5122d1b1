"""Cut any torch.fx-traceable CNN into a device head and a cloud tail.

A *cut* is a position in the traced graph's topological order where exactly one tensor is live: the
activation the device sends. Non-tensor values live across the position (``n = x.size(0)``, a shape
tuple) are *side values* and do not block the cut; each gets a recipe for the tail:

- ``batch``: equals the batch size, so the tail recomputes it as ``cut_tensor.size(0)``. The cloud
  stacks requests from many devices into one batch, so a shipped ``n = 1`` would be wrong there.
- ``constant``: the same for every batch size; folded into the tail.
- ``shape``: a tuple mixing the batch size and constants; rebuilt from ``cut_tensor.size(0)``.
- ``shipped``: anything else. It travels with the activation, and the cut only works at batch size
  one (``Cut.batchable`` is False); the head then returns ``(tensor, *shipped)`` and the tail takes
  the same.

Recipes are found by running the graph at two batch sizes and comparing the side values.

    >>> cuts = dyno.partition.cuts(model, torch.randn(1, 3, 224, 224))
    >>> head, tail = dyno.partition.split(model, cuts[10])
    >>> torch.allclose(tail(head(x)), model(x), atol=1e-5)
    True

Cut 0 is the input itself (cloud-only); the last cut is the model's output (device-only).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.fx
from torch import nn

from dyno import graph
from dyno.errors import ModelError, PartitionError
from dyno.graph import trace

__all__ = ["Cut", "SideValue", "cuts", "split", "check", "trace", "verify"]

_BATCHES = (2, 3)  # two batch sizes that no constant in a CNN is likely to equal both of


@dataclasses.dataclass(frozen=True)
class SideValue:
    """A non-tensor value live across a cut, and how the tail obtains it.

    ``kind`` is ``"batch"``, ``"constant"``, ``"shape"`` or ``"shipped"`` (see the module docstring);
    ``value`` holds the constant, or for ``"shape"`` a tuple with ``None`` where the batch size goes.
    """

    name: str
    kind: str
    value: Any = None


@dataclasses.dataclass(frozen=True)
class Cut:
    """One valid split point.

    ``shape`` is per sample (no batch dimension); ``device_macs`` and ``cloud_macs`` are per sample
    and add up to the model's MACs (convolutions and linear layers; element-wise ops count zero).
    """

    id: int
    name: str
    position: int
    shape: tuple[int, ...]
    dtype: str
    numel: int
    nonnegative: bool
    device_macs: int
    cloud_macs: int
    side_values: tuple[SideValue, ...] = ()

    @property
    def batchable(self) -> bool:
        """Whether requests at this cut can be stacked into one batch on the cloud."""
        return all(side.kind != "shipped" for side in self.side_values)

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.numel

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "numel": self.numel,
            "nonnegative": self.nonnegative,
            "device_macs": self.device_macs,
            "cloud_macs": self.cloud_macs,
            "batchable": self.batchable,
            "side_values": [{"name": s.name, "kind": s.kind} for s in self.side_values],
        }


def cuts(model: nn.Module, example: torch.Tensor) -> list[Cut]:
    """Every valid cut of ``model`` for inputs shaped like ``example`` (a batch, N >= 1).

    Positions that carry the same tensor are listed once, at the earliest position.
    """
    return _Analysis(model, example).cuts


def split(model: nn.Module, cut: Cut) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    """Build ``(head, tail)`` for ``cut`` with ``tail(head(x)) == model(x)``.

    ``cut`` must come from :func:`cuts` on the same model (its node name and side-value recipes
    are used). Both modules share the model's parameters and are in eval mode if the model is.
    """
    graph_module = trace(model)
    check(graph_module, cut)
    head = _build_head(graph_module, cut)
    tail = _build_tail(graph_module, cut)
    for part in (head, tail):
        part.train(model.training)
    return head, tail


def check(graph_module: torch.fx.GraphModule, cut: Cut) -> None:
    """Refuse a cut that is not in this graph (a cut of another model): PartitionError."""
    nodes = list(graph_module.graph.nodes)
    if cut.position >= len(nodes) - 1 or cut.name not in {n.name for n in nodes[: cut.position + 1]}:
        raise PartitionError(
            f"cut {cut.id} ({cut.name!r} at position {cut.position}) does not exist in this model's "
            "graph; list the cuts of this very model with dyno.partition.cuts()"
        )


def verify(model: nn.Module, example: torch.Tensor, cut: Cut, atol: float = 1e-5) -> float:
    """Split at ``cut`` and return max |tail(head(x)) - model(x)|; raise PartitionError above atol."""
    head, tail = split(model, cut)
    with torch.no_grad():
        expected = model(example)
        got = tail(head(example))
    diff = float((got - expected).abs().max()) if expected.numel() else 0.0
    if not diff <= atol:
        raise PartitionError(f"cut {cut.id} ({cut.name}) changes the output by {diff:.3g} > {atol}")
    return diff


# --------------------------------------------------------------------------------------------------
# analysis


class _Analysis:
    def __init__(self, model: nn.Module, example: torch.Tensor):
        if not isinstance(example, torch.Tensor) or example.dim() < 1 or example.shape[0] < 1:
            raise ModelError("the example input must be a batch tensor shaped (N, ...), N >= 1")
        self.gm = trace(model)
        self.nodes = list(self.gm.graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ModelError(f"dyno splits models with one input; {type(model).__name__} takes "
                             f"{len(placeholders)} ({', '.join(p.name for p in placeholders)})")
        sample = example[:1]
        runs = [self._run(sample.expand(b, *sample.shape[1:]).contiguous(), model) for b in _BATCHES]
        self.values, self.values_b = runs
        graph.annotate(self.gm, self.values)
        self.cuts = self._find_cuts()

    def _run(self, x: torch.Tensor, model: nn.Module) -> dict[str, Any]:
        try:
            return graph.record(self.gm, x)
        except Exception as error:
            raise ModelError(
                f"{type(model).__name__} fails on an input of shape {tuple(x.shape[1:])} per sample: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}. "
                "Pass an example shaped as the model expects."
            ) from error

    def _find_cuts(self) -> list[Cut]:
        nodes, values = self.nodes, self.values
        by_name = {n.name: n for n in nodes}
        total_macs = sum(n.meta[graph.MACS] for n in nodes)
        found: list[Cut] = []
        seen: set[str] = set()
        device_macs = 0
        for position, (node, live) in enumerate(zip(nodes[:-1], graph.live_across(self.gm))):
            device_macs += node.meta[graph.MACS]
            tensors = [name for name in live if by_name[name].meta[graph.TENSOR]]
            if len(tensors) != 1 or tensors[0] in seen:
                continue
            carried = tensors[0]
            seen.add(carried)
            value = values[carried]
            found.append(Cut(
                id=len(found),
                name=carried,
                position=position,
                shape=tuple(value.shape[1:]),
                dtype=str(value.dtype).removeprefix("torch."),
                numel=int(value[0].numel()),
                nonnegative=by_name[carried].meta[graph.NONNEGATIVE],
                device_macs=device_macs // _BATCHES[0],
                cloud_macs=(total_macs - device_macs) // _BATCHES[0],
                side_values=tuple(self._recipe(name) for name in live if name != carried),
            ))
        if not found or found[-1].name != _single_output(nodes[-1]).name:
            raise PartitionError("the model's output is not a single tensor; dyno needs one output")
        return found

    def _recipe(self, name: str) -> SideValue:
        a, b = self.values[name], self.values_b[name]
        if _is_plain(a) and a == b:
            return SideValue(name, "constant", a)
        if isinstance(a, int) and (a, b) == _BATCHES:
            return SideValue(name, "batch")
        if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
            pattern = []
            for x, y in zip(a, b):
                if _is_plain(x) and x == y:
                    pattern.append(x)
                elif (x, y) == _BATCHES:
                    pattern.append(None)
                else:
                    return SideValue(name, "shipped")
            return SideValue(name, "shape", tuple(pattern))
        return SideValue(name, "shipped")


# --------------------------------------------------------------------------------------------------
# building head and tail


def _build_head(gm: torch.fx.GraphModule, cut: Cut) -> torch.fx.GraphModule:
    shipped = [s.name for s in cut.side_values if s.kind == "shipped"]
    return graph.extract(gm, 0, cut.position, outputs=(cut.name, *shipped) if shipped else cut.name,
                         class_name="Head")


def _build_tail(gm: torch.fx.GraphModule, cut: Cut) -> torch.fx.GraphModule:
    """The nodes after the cut, from the cut's tensor; side values rebuilt by their recipes."""

    def bind(g: torch.fx.Graph) -> dict[str, Any]:
        carried = g.placeholder(cut.name)
        env: dict[str, Any] = {cut.name: carried}
        batch = None
        for side in cut.side_values:
            if side.kind == "constant":
                env[side.name] = side.value
            elif side.kind in ("batch", "shape"):
                if batch is None:
                    batch = g.call_method("size", (carried, 0))
                env[side.name] = batch if side.kind == "batch" else \
                    tuple(batch if v is None else v for v in side.value)
            else:
                env[side.name] = g.placeholder(side.name)
        return env

    return graph.extract(gm, cut.position + 1, len(gm.graph.nodes) - 1, bind=bind, class_name="Tail")


# --------------------------------------------------------------------------------------------------
# helpers


def _is_plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str, type(None), torch.dtype, torch.device)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return False


def _single_output(output_node: torch.fx.Node) -> torch.fx.Node:
    value = output_node.args[0]
    if not isinstance(value, torch.fx.Node):
        raise PartitionError("the model must return a single tensor (not a tuple, list or dict)")
    return value
