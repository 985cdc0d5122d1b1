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
import operator
import traceback
from typing import Any, Sequence

import torch
import torch.fx
from torch import nn

from dyno.errors import ModelError, PartitionError, TraceError

__all__ = ["Cut", "SideValue", "cuts", "split", "trace", "verify"]

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


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Trace ``model`` with torch.fx, or raise TraceError naming the construct fx could not follow."""
    if isinstance(model, torch.fx.GraphModule):
        return model
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types; all mean "not traceable"
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {error} (at {_user_frame(error)}). "
            "Make forward() free of data-dependent Python control flow, or wrap that part in a "
            "function marked with torch.fx.wrap."
        ) from error


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
    nodes = list(graph_module.graph.nodes)
    if cut.position >= len(nodes) - 1 or nodes[cut.position].name != cut.name:
        raise PartitionError(
            f"cut {cut.id} ({cut.name!r} at position {cut.position}) does not exist in this model's "
            "graph; list the cuts of this very model with dyno.partition.cuts()"
        )
    head = _build_head(graph_module, nodes, cut)
    tail = _build_tail(graph_module, nodes, cut)
    for part in (head, tail):
        part.train(model.training)
    return head, tail


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


class _Recorder(torch.fx.Interpreter):
    """Runs the graph and keeps every node's value."""

    def __init__(self, graph_module: torch.fx.GraphModule):
        super().__init__(graph_module)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n.name] = value
        return value


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
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        self.cuts = self._find_cuts()

    def _run(self, x: torch.Tensor, model: nn.Module) -> dict[str, Any]:
        recorder = _Recorder(self.gm)
        try:
            with torch.no_grad():
                recorder.run(x)
        except Exception as error:
            raise ModelError(
                f"{type(model).__name__} fails on an input of shape {tuple(x.shape[1:])} per sample: "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}. "
                "Pass an example shaped as the model expects."
            ) from error
        return recorder.values

    def _find_cuts(self) -> list[Cut]:
        nodes, values = self.nodes, self.values
        last_use = {n.name: max((self.index[u.name] for u in n.users), default=-1) for n in nodes}
        from_input = self._depends_on_input()
        nonneg = self._nonnegative()
        macs = [self._macs(n) for n in nodes]
        total_macs = sum(macs)

        found: list[Cut] = []
        seen: set[str] = set()
        device_macs = 0
        output_node = nodes[-1]
        for position, node in enumerate(nodes[:-1]):
            device_macs += macs[position]
            live = [n for n in nodes[: position + 1] if from_input[n.name] and last_use[n.name] > position]
            tensors = [n for n in live if isinstance(values[n.name], torch.Tensor)]
            if len(tensors) != 1 or tensors[0].name in seen:
                continue
            carried = tensors[0]
            seen.add(carried.name)
            value = values[carried.name]
            found.append(Cut(
                id=len(found),
                name=carried.name,
                position=position,
                shape=tuple(value.shape[1:]),
                dtype=str(value.dtype).removeprefix("torch."),
                numel=int(value[0].numel()),
                nonnegative=nonneg[carried.name],
                device_macs=device_macs // _BATCHES[0],
                cloud_macs=(total_macs - device_macs) // _BATCHES[0],
                side_values=tuple(self._recipe(n) for n in live if n is not carried),
            ))
        if not found or found[-1].name != _single_output(output_node).name:
            raise PartitionError("the model's output is not a single tensor; dyno needs one output")
        return found

    def _depends_on_input(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for n in self.nodes:
            out[n.name] = n.op == "placeholder" or any(out[a.name] for a in n.all_input_nodes)
        return out

    def _recipe(self, node: torch.fx.Node) -> SideValue:
        a, b = self.values[node.name], self.values_b[node.name]
        if _is_plain(a) and a == b:
            return SideValue(node.name, "constant", a)
        if isinstance(a, int) and (a, b) == _BATCHES:
            return SideValue(node.name, "batch")
        if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
            pattern = []
            for x, y in zip(a, b):
                if _is_plain(x) and x == y:
                    pattern.append(x)
                elif (x, y) == _BATCHES:
                    pattern.append(None)
                else:
                    return SideValue(node.name, "shipped")
            return SideValue(node.name, "shape", tuple(pattern))
        return SideValue(node.name, "shipped")

    def _nonnegative(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for n in self.nodes:
            value = self.values[n.name]
            if not isinstance(value, torch.Tensor):
                out[n.name] = False
                continue
            tensor_args = [a for a in n.all_input_nodes if isinstance(self.values[a.name], torch.Tensor)]
            out[n.name] = _makes_nonnegative(self.gm, n) or (
                _keeps_sign(self.gm, n) and bool(tensor_args) and all(out[a.name] for a in tensor_args)
            )
        return out

    def _macs(self, n: torch.fx.Node) -> int:
        out = self.values[n.name]
        if not isinstance(out, torch.Tensor):
            return 0
        if n.op == "call_module":
            module = self.gm.get_submodule(n.target)
            if isinstance(module, nn.modules.conv._ConvNd):
                kernel = module.weight[0].numel()  # in_channels / groups * prod(kernel)
                return out.numel() * kernel
            if isinstance(module, nn.Linear):
                return out.numel() * module.in_features
        if n.op == "call_function" and n.target in (torch.nn.functional.conv2d, torch.conv2d):
            weight = self.values[n.args[1].name] if isinstance(n.args[1], torch.fx.Node) else None
            if isinstance(weight, torch.Tensor):
                return out.numel() * weight[0].numel()
        if n.op == "call_function" and n.target in (torch.nn.functional.linear,):
            weight = self.values[n.args[1].name]
            return out.numel() * weight.shape[1]
        if (n.op == "call_function" and n.target in (torch.matmul, operator.matmul, torch.bmm)) or \
                (n.op == "call_method" and n.target in ("matmul", "bmm")):
            first = self.values[n.args[0].name]
            return out.numel() * first.shape[-1]
        return 0


_NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softmax, nn.Hardsigmoid, nn.Softplus)
_NONNEG_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.sigmoid,
                     torch.nn.functional.sigmoid, torch.softmax, torch.nn.functional.softmax,
                     torch.abs, torch.exp, torch.nn.functional.hardsigmoid, torch.nn.functional.softplus}
_NONNEG_METHODS = {"relu", "relu_", "sigmoid", "softmax", "abs", "exp"}
_SIGN_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
                 nn.Dropout, nn.Identity, nn.Upsample, nn.MaxPool1d, nn.AvgPool1d)
_SIGN_FUNCTIONS = {torch.flatten, torch.cat, torch.concat, torch.reshape, operator.add, operator.mul,
                   torch.add, torch.mul, operator.getitem, torch.nn.functional.max_pool2d,
                   torch.nn.functional.avg_pool2d, torch.nn.functional.adaptive_avg_pool2d,
                   torch.nn.functional.dropout, torch.mean, torch.nn.functional.interpolate}
_SIGN_METHODS = {"view", "reshape", "flatten", "contiguous", "mean", "permute", "transpose",
                 "squeeze", "unsqueeze", "add", "mul", "clone", "float"}


def _makes_nonnegative(gm: torch.fx.GraphModule, n: torch.fx.Node) -> bool:
    if n.op == "call_module":
        module = gm.get_submodule(n.target)
        if isinstance(module, nn.Hardtanh):  # ReLU6 is one; so is any clamp at min >= 0
            return module.min_val >= 0
        return isinstance(module, _NONNEG_MODULES)
    if n.op == "call_function":
        return n.target in _NONNEG_FUNCTIONS
    if n.op == "call_method":
        return n.target in _NONNEG_METHODS
    return False


def _keeps_sign(gm: torch.fx.GraphModule, n: torch.fx.Node) -> bool:
    """Whether the op maps non-negative tensor inputs to a non-negative output."""
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), _SIGN_MODULES)
    if n.target in (operator.add, operator.mul, torch.add, torch.mul, "add", "mul"):
        # x + c and x * c keep the sign only for a non-negative number c
        numbers = [a for a in n.args if isinstance(a, (int, float))]
        if any(c < 0 for c in numbers):
            return False
    if n.op == "call_function":
        return n.target in _SIGN_FUNCTIONS
    if n.op == "call_method":
        return n.target in _SIGN_METHODS
    return False


# --------------------------------------------------------------------------------------------------
# building head and tail


def _build_head(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node], cut: Cut) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}
    for node in nodes[: cut.position + 1]:
        env[node.name] = graph.node_copy(node, lambda a: env[a.name])
    shipped = [env[s.name] for s in cut.side_values if s.kind == "shipped"]
    graph.output((env[cut.name], *shipped) if shipped else env[cut.name])
    return _finish(gm, graph, "Head")


def _build_tail(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node], cut: Cut) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    env: dict[str, Any] = {}
    carried = graph.placeholder(cut.name)
    env[cut.name] = carried
    batch = None
    for side in cut.side_values:
        if side.kind == "constant":
            env[side.name] = side.value
        elif side.kind in ("batch", "shape"):
            if batch is None:
                batch = graph.call_method("size", (carried, 0))
            env[side.name] = batch if side.kind == "batch" else \
                tuple(batch if v is None else v for v in side.value)
        else:
            env[side.name] = graph.placeholder(side.name)
    if env.get(cut.name) is not carried:
        raise PartitionError(f"cut {cut.name} carries a side value of the same name")

    def lookup(a: torch.fx.Node) -> Any:
        if a.name not in env:
            # Something before the cut that does not depend on the input (a get_attr, a constant):
            # recompute it in the tail.
            env[a.name] = graph.node_copy(a, lookup)
        return env[a.name]

    for node in nodes[cut.position + 1:]:
        if node.op == "placeholder":
            raise PartitionError(f"input {node.name} follows cut {cut.name}")
        if node.op == "output":
            graph.output(torch.fx.node.map_arg(node.args[0], lookup))
        else:
            env[node.name] = graph.node_copy(node, lookup)
    return _finish(gm, graph, "Tail")


def _finish(gm: torch.fx.GraphModule, graph: torch.fx.Graph, kind: str) -> torch.fx.GraphModule:
    part = torch.fx.GraphModule(gm, graph, class_name=kind)
    part.graph.eliminate_dead_code()
    part.graph.lint()
    part.delete_all_unused_submodules()
    part.recompile()
    return part


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


def _user_frame(error: BaseException) -> str:
    """The innermost traceback frame outside torch: the construct fx stumbled on."""
    frames: Sequence[traceback.FrameSummary] = traceback.extract_tb(error.__traceback__)
    user = [f for f in frames if "/torch/" not in f.filename and "/dyno/partition" not in f.filename]
    if not user:
        return "an unknown place"
    f = user[-1]
    return f"{f.filename}:{f.lineno} `{(f.line or '').strip()}`"
