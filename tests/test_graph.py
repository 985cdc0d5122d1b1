"""The fx layer: walking a model stop by stop gives exactly its values, segments take what is live and
nothing else, annotations say what the ops do, node timers time every call."""

import pytest
import torch
from test_partition import Concat, SizeFlatten
from torch import nn

from dyno import graph, partition
from dyno.errors import PartitionError


class Scaled(nn.Module):
    """A parameter read in forward (a get_attr node), a zero pad, a pad with ones, a view."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.zero = nn.ZeroPad2d(1)
        self.ones = nn.ConstantPad2d(1, 1.0)
        self.fc = nn.Linear(4 * 10 * 10, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x)) * self.scale
        y = self.ones(self.zero(y))
        return self.fc(y.view(y.size(0), -1))


@pytest.mark.parametrize("model_cls,shape", [(Concat, (1, 12, 12)), (SizeFlatten, (3, 15, 15)), (Scaled, (1, 8, 8))])
def test_a_walk_gives_the_model_values_at_every_stop(model_cls, shape):
    torch.manual_seed(0)
    model = model_cls().eval()
    x = torch.randn(4, *shape)
    cuts = partition.cuts(model, x)
    gm = graph.trace(model)
    values = graph.record(gm, x)
    live = graph.live_across(gm)
    walk = graph.Walk(gm, [c.position for c in cuts])
    stops = list(walk.run(x))
    assert [k for k, _ in stops] == list(range(len(cuts)))
    for (_, got), cut in zip(stops, cuts):
        assert tuple(got) == live[cut.position] and cut.name in got
        for name, value in got.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, values[name]), (cut.name, name)
            else:
                assert value == values[name]
    with torch.no_grad():
        assert torch.equal(stops[-1][1][cuts[-1].name], model(x))
    assert torch.is_grad_enabled()  # the walk's no_grad does not leak into the caller


def test_live_values_carry_the_batch_size_across_the_cuts():
    gm = graph.trace(SizeFlatten().eval())
    nodes = [n.name for n in gm.graph.nodes]
    live = graph.live_across(gm)
    assert nodes[:2] == ["x", "size"] and live[0] == ("x",) and live[1] == ("x", "size")
    assert all("size" in names for names in live[1: nodes.index("reshape")])
    assert "size" not in live[nodes.index("reshape")] and live[-1] == ()


def test_segments_take_only_what_is_live():
    gm = graph.trace(SizeFlatten().eval())
    with pytest.raises(PartitionError, match="use the input x"):
        graph.extract(gm, 2, 3, outputs="relu")
    walk = graph.Walk(gm, [0, 3])
    assert walk.names == [("x",), ("size", "relu")]  # in node order
    assert [n.name for n in walk.nodes[1]] == ["size", "conv1", "relu"]
    x = torch.randn(2, 3, 15, 15)
    size, relu = walk.step(1, x)
    assert size == 2 and torch.equal(relu, torch.relu(gm.conv1(x)))
    for stops in ([], [3, 3], [3, 0], [len(gm.graph.nodes) - 1]):
        with pytest.raises(PartitionError, match="stops"):
            graph.Walk(gm, stops)


def test_annotations_say_what_every_node_is():
    torch.manual_seed(0)
    model = Scaled().eval()
    gm = graph.trace(model)
    graph.annotate(gm, graph.record(gm, torch.randn(2, 1, 8, 8)))
    meta = {n.name: n.meta for n in gm.graph.nodes}
    assert meta["scale"][graph.TENSOR] and not meta["scale"][graph.FROM_INPUT]
    assert meta["size"][graph.FROM_INPUT] and not meta["size"][graph.TENSOR]
    assert meta["conv"][graph.MACS] == 2 * 4 * 6 * 6 * 9 and meta["fc"][graph.MACS] == 2 * 3 * 400
    assert meta["relu"][graph.MACS] == 0
    assert not meta["conv"][graph.NONNEGATIVE] and meta["relu"][graph.NONNEGATIVE]
    # relu * a parameter: the sign of a tensor factor is unknown
    assert not meta["mul"][graph.NONNEGATIVE]


def test_copies_values_knows_pads_and_reshapes():
    gm = graph.trace(Scaled().eval())
    nodes = {n.name: n for n in gm.graph.nodes}
    assert graph.copies_values(gm, nodes["zero"]) and graph.copies_values(gm, nodes["view"])
    assert not graph.copies_values(gm, nodes["ones"])  # pads with ones: new values
    assert not graph.copies_values(gm, nodes["relu"]) and not graph.copies_values(gm, nodes["conv"])


def test_node_times_time_every_call_and_nothing_else():
    gm = graph.trace(Concat().eval())
    nodes = list(gm.graph.nodes)
    times = graph.node_times(gm, torch.randn(2, 1, 12, 12), repeats=3, warmup=1)
    assert times.shape == (3, len(nodes))
    calls = [i for i, n in enumerate(nodes) if n.op in ("call_module", "call_function", "call_method")]
    assert (times[:, calls] > 0).all()
    assert (times[:, [i for i in range(len(nodes)) if i not in calls]] == 0).all()
    assert times.sum(axis=1).max() < 1000  # milliseconds, not nanoseconds
