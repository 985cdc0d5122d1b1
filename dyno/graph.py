"""The torch.fx layer that partition, profile and precision share.

Everything here goes through the public torch.fx API (``symbolic_trace``, ``Graph.node_copy``,
``GraphModule``, ``Interpreter.run_node``); nothing drives an interpreter's internals by hand.

- :func:`trace`: a model as a ``GraphModule``, or a ``TraceError`` naming the construct fx could
  not follow.
- :func:`record`: every node's value on one input (by node name).
- :func:`annotate`: facts about every node, written to ``node.meta`` under these keys:

  ``"dyno_tensor"`` (bool)
      the node's value is a tensor.
  ``"dyno_from_input"`` (bool)
      the value depends on the model's input (a parameter or a constant does not).
  ``"dyno_nonnegative"`` (bool)
      a tensor that is >= 0 for every input: an op that makes it so (ReLU, sigmoid, ...) or one
      that keeps the sign of non-negative tensor arguments (pooling, reshapes, additions, ...).
  ``"dyno_macs"`` (int)
      multiply-accumulates of the node at the recorded batch size (convolutions, linear layers
      and matrix products; element-wise ops count zero).

- Positions are indices into the graph's node order; :func:`live_across` lists the values that
  depend on the input and are live across each position.
- :func:`extract` builds the ``GraphModule`` of a range of positions; :class:`Walk` chains such
  segments to run a model stop by stop (the precision analysis advances every batch of its sample
  from one cut to the next this way), holding only what is live at the current stop.
- :func:`node_times`: milliseconds per node, each node's call timed on its own.

    >>> gm = trace(model)
    >>> walk = Walk(gm, [0, 5, 9])
    >>> for k, live in walk.run(x):
    ...     print(k, {name: type(v).__name__ for name, v in live.items()})
"""

from __future__ import annotations

import operator
import time
import traceback
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch
import torch.fx
from torch import nn

from dyno.errors import PartitionError, TraceError

__all__ = ["TENSOR", "FROM_INPUT", "NONNEGATIVE", "MACS", "trace", "record", "annotate", "copies_values",
           "live_across", "extract", "Walk", "NodeTimer", "node_times"]

TENSOR = "dyno_tensor"
FROM_INPUT = "dyno_from_input"
NONNEGATIVE = "dyno_nonnegative"
MACS = "dyno_macs"


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


def _user_frame(error: BaseException) -> str:
    """The innermost traceback frame outside torch: the construct fx stumbled on."""
    frames: Sequence[traceback.FrameSummary] = traceback.extract_tb(error.__traceback__)
    user = [f for f in frames if "/torch/" not in f.filename and not f.filename.endswith("/dyno/graph.py")]
    if not user:
        return "an unknown place"
    f = user[-1]
    return f"{f.filename}:{f.lineno} `{(f.line or '').strip()}`"


# --------------------------------------------------------------------------------------- values


class _Recorder(torch.fx.Interpreter):
    """Runs the graph and keeps every node's value."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n.name] = value
        return value


def record(gm: torch.fx.GraphModule, *inputs: Any) -> dict[str, Any]:
    """Every node's value (by node name) when ``gm`` runs on ``inputs``, without autograd."""
    recorder = _Recorder(gm)
    with torch.no_grad():
        recorder.run(*inputs)
    return recorder.values


def annotate(gm: torch.fx.GraphModule, values: dict[str, Any]) -> None:
    """Write the facts listed in the module docstring into every node's ``meta`` (``values`` from
    :func:`record`)."""
    for n in gm.graph.nodes:
        value = values[n.name]
        tensor = isinstance(value, torch.Tensor)
        n.meta[TENSOR] = tensor
        n.meta[FROM_INPUT] = n.op == "placeholder" or any(a.meta[FROM_INPUT] for a in n.all_input_nodes)
        n.meta[MACS] = _macs(gm, n, values) if tensor else 0
        tensor_args = [a for a in n.all_input_nodes if a.meta[TENSOR]]
        n.meta[NONNEGATIVE] = tensor and (_makes_nonnegative(gm, n) or (
            _keeps_sign(gm, n) and bool(tensor_args) and all(a.meta[NONNEGATIVE] for a in tensor_args)))


def _macs(gm: torch.fx.GraphModule, n: torch.fx.Node, values: dict[str, Any]) -> int:
    out = values[n.name]
    if n.op == "call_module":
        module = gm.get_submodule(str(n.target))
        if isinstance(module, nn.modules.conv._ConvNd):
            return out.numel() * module.weight[0].numel()  # in_channels / groups * prod(kernel)
        if isinstance(module, nn.Linear):
            return out.numel() * module.in_features
    argument = values.get(n.args[1].name) if len(n.args) > 1 and isinstance(n.args[1], torch.fx.Node) else None
    if n.op == "call_function" and n.target in (torch.nn.functional.conv2d, torch.conv2d):
        if isinstance(argument, torch.Tensor):
            return out.numel() * argument[0].numel()
    if n.op == "call_function" and n.target is torch.nn.functional.linear and isinstance(argument, torch.Tensor):
        return out.numel() * argument.shape[1]
    if (n.op == "call_function" and n.target in (torch.matmul, operator.matmul, torch.bmm)) or \
            (n.op == "call_method" and n.target in ("matmul", "bmm")):
        first = n.args[0]
        if isinstance(first, torch.fx.Node):
            return out.numel() * values[first.name].shape[-1]
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
        module = gm.get_submodule(str(n.target))
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
        return isinstance(gm.get_submodule(str(n.target)), _SIGN_MODULES)
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


_COPYING_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ConstantPad1d, nn.ConstantPad3d, nn.Dropout,
                    nn.Identity, nn.Flatten)
_COPYING_FUNCTIONS = {torch.flatten, torch.reshape, torch.nn.functional.pad, torch.nn.functional.dropout}
_COPYING_METHODS = {"view", "reshape", "flatten", "contiguous"}


def copies_values(gm: torch.fx.GraphModule, n: torch.fx.Node) -> bool:
    """Whether the op only moves the values of its first argument, possibly adding zeros: a reshape,
    a zero pad, dropout in eval mode. The op alone is judged; the other arguments are not checked."""
    if n.op == "call_module":
        module = gm.get_submodule(str(n.target))
        if isinstance(module, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)) and module.value != 0:
            return False
        return isinstance(module, _COPYING_MODULES)
    if n.op == "call_function":
        if n.target is torch.nn.functional.pad:
            return n.kwargs.get("value", 0) in (0, None) and n.kwargs.get("mode", "constant") == "constant"
        return n.target in _COPYING_FUNCTIONS
    return n.op == "call_method" and n.target in _COPYING_METHODS


# ------------------------------------------------------------------------------------- segments


def _from_input(nodes: Sequence[torch.fx.Node]) -> dict[torch.fx.Node, bool]:
    out: dict[torch.fx.Node, bool] = {}
    for n in nodes:
        out[n] = n.op == "placeholder" or any(out[a] for a in n.all_input_nodes)
    return out


def live_across(gm: torch.fx.GraphModule) -> list[tuple[str, ...]]:
    """Per position ``p``: the names, in node order, of the values that depend on the model's input,
    are computed at or before ``p`` and are used after it."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    last_use = [max((index[u] for u in n.users), default=-1) for n in nodes]
    from_input = _from_input(nodes)
    live: list[int] = []
    out = []
    for p, n in enumerate(nodes):
        if from_input[n]:
            live.append(p)
        live = [i for i in live if last_use[i] > p]
        out.append(tuple(nodes[i].name for i in live))
    return out


def extract(gm: torch.fx.GraphModule, first: int, last: int, *, inputs: Sequence[str] = (),
            outputs: str | Sequence[str] | None = None,
            bind: Callable[[torch.fx.Graph], dict[str, Any]] | None = None,
            class_name: str = "Segment") -> torch.fx.GraphModule:
    """A ``GraphModule`` computing the nodes at positions ``first..last`` of ``gm``.

    Values the range uses from before ``first`` come from placeholders named by ``inputs`` (in that
    order), then from ``bind(graph)`` (a constant, or a node it adds to the new graph); others must
    not depend on the model's input and are recomputed (a ``get_attr``, a constant tensor). The
    module returns ``outputs``: one value for a name, a tuple for a sequence; None copies ``gm``'s
    own output node, which must then be the last in the range. It shares ``gm``'s parameters.
    """
    nodes = list(gm.graph.nodes)
    graph = torch.fx.Graph()
    env: dict[str, Any] = {name: graph.placeholder(name) for name in inputs}
    if bind is not None:
        env.update(bind(graph))

    def lookup(a: torch.fx.Node) -> Any:
        if a.name not in env:
            if a.op == "placeholder":
                raise PartitionError(f"positions {first}..{last} use the input {a.name} without taking it")
            env[a.name] = graph.node_copy(a, lookup)
        return env[a.name]

    for node in nodes[first: last + 1]:
        env[node.name] = graph.node_copy(node, lookup)
    if outputs is not None:
        graph.output(env[outputs] if isinstance(outputs, str) else tuple(env[name] for name in outputs))
    part = torch.fx.GraphModule(gm, graph, class_name=class_name)
    part.graph.eliminate_dead_code()
    part.graph.lint()
    part.delete_all_unused_submodules()
    part.recompile()
    return part


class Walk:
    """A traced model as segments between increasing positions (*stops*), run stop by stop.

    Segment ``k`` takes the values live across stop ``k - 1`` (segment 0: the model's inputs) and
    returns those live across stop ``k`` (:func:`live_across`), in the order of ``names[k]``; so a
    walk suspended at a stop holds only what is live there, and many suspended walks (one per batch)
    hold one cut of a whole data set.
    """

    def __init__(self, gm: torch.fx.GraphModule, stops: Sequence[int]) -> None:
        stops = list(stops)
        nodes = list(gm.graph.nodes)
        if not stops or stops != sorted(set(stops)) or stops[0] < 0 or stops[-1] >= len(nodes) - 1:
            raise PartitionError(f"stops must increase within the graph's {len(nodes) - 1} positions, got {stops}")
        live = live_across(gm)
        self.stops = stops
        self.names = [live[s] for s in stops]
        self.nodes: list[list[torch.fx.Node]] = []
        self.segments: list[torch.fx.GraphModule] = []
        start, inputs = 0, tuple[str, ...]()
        for stop, names in zip(stops, self.names):
            self.nodes.append(nodes[start: stop + 1])
            self.segments.append(extract(gm, start, stop, inputs=inputs, outputs=names, class_name=f"Segment{stop}"))
            start, inputs = stop + 1, names

    def step(self, k: int, *values: Any) -> tuple[Any, ...]:
        """Run segment ``k``: the values live across stop ``k`` from those live across stop ``k - 1``."""
        with torch.no_grad():
            return self.segments[k](*values)

    def run(self, *inputs: Any) -> Generator[tuple[int, dict[str, Any]], None, None]:
        """Yield ``(k, {name: value})`` at every stop in turn, the values live across stop ``k``."""
        values: tuple[Any, ...] = inputs
        for k in range(len(self.segments)):
            values = self.step(k, *values)  # no_grad inside the step only: it must not leak to the caller
            yield k, dict(zip(self.names[k], values))


# --------------------------------------------------------------------------------------- timing


class NodeTimer(torch.fx.Interpreter):
    """Runs the graph and adds each node's call time (ns) to ``times[node position]``.

    Only the call itself is timed: fetching arguments from the interpreter's environment is overhead
    the real (compiled) head and tail do not have.
    """

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.index = {node: i for i, node in enumerate(gm.graph.nodes)}
        self.times = np.zeros(len(self.index))

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op not in ("call_module", "call_function", "call_method"):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.op == "call_module":
            fn = self.fetch_attr(str(n.target))
        elif n.op == "call_function":
            fn = n.target
        else:
            obj, *rest = args
            fn, args = getattr(obj, str(n.target)), tuple(rest)
        start = time.perf_counter_ns()
        value = fn(*args, **kwargs)
        self.times[self.index[n]] += time.perf_counter_ns() - start
        return value


def node_times(gm: torch.fx.GraphModule, x: torch.Tensor, *, repeats: int, warmup: int = 2) -> np.ndarray:
    """Milliseconds per node of ``gm`` on ``x``: an array (repeats, nodes), one row per run."""
    timer = NodeTimer(gm)
    rows = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            timer.times[:] = 0
            timer.run(x)
            if i >= warmup:
                rows.append(timer.times / 1e6)
    return np.array(rows)
