"""Sharing the measurements of identical cuts, on TinyNet: its forward ends in ``x.view(x.size(0), -1)``,
so the cut after the last pooling is a view that also needs a size computed after that pooling."""

import numpy as np
import pytest
import torch
from conftest import needs_fmnist
from nets import tiny_model
from torch import nn

from dyno import graph, offline, partition, zoo
from dyno.codec import Expected, decode, encode
from dyno.offline.share import shareable

N = 120


def _segment(model, before, after):
    gm = graph.trace(model)
    cuts = {c.name: c for c in partition.cuts(model, torch.zeros(1, 1, 28, 28))}
    walk = graph.Walk(gm, [cuts[before].position, cuts[after].position])
    return gm, walk.nodes[1]


def test_a_view_is_shareable_and_a_pooling_is_not():
    model = tiny_model()
    gm, nodes = _segment(model, "pool_1", "view")
    assert [n.name for n in nodes] == ["size", "view"]  # the size is computed after the pooling cut
    assert shareable(gm, nodes, "pool_1", "view")
    gm, nodes = _segment(model, "relu_2", "pool_1")
    assert not shareable(gm, nodes, "relu_2", "pool_1")


class Padded(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pad = nn.ConstantPad2d(1, value)
        self.fc = nn.Linear(2 * 28 * 28, 10)

    def forward(self, x):
        return self.fc(self.pad(torch.relu(self.conv(x))).flatten(1))


def test_a_pad_shares_only_when_it_pads_with_zeros():
    for value, expected in ((0.0, True), (1.0, False)):
        gm, nodes = _segment(Padded(value).eval(), "relu", "pad")
        assert shareable(gm, nodes, "relu", "pad") is expected


@pytest.fixture(scope="module")
def tiny():
    """TinyNet trained for a few seconds: predictions that quantisation can move."""
    with offline.torch_threads(1):
        model = tiny_model()
        x, y = zoo.load_dataset("fashion-mnist", split="train").tensors(3000)
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(60):
            i = torch.randint(len(x), (64,))
            loss = nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval()


@needs_fmnist
def test_tinynet_analyses_and_its_view_cut_shares_the_pooling_cut(tiny):
    dataset = zoo.load_dataset("fashion-mnist", split="test")
    with offline.torch_threads(1):
        plan = offline.analyze(tiny, data=dataset, limit=N, channels_last=False, bytes_samples=2, codec_samples=2,
                               batch_sizes=(1,), config=offline.SearchConfig(batch_size=40, min_samples=40))
    names = [c.name for c in plan.cuts]
    assert names[-3:] == ["pool_1", "view", "fc"]
    pool, view = plan.cuts[-3], plan.cuts[-2]
    assert plan.notes["shared_cuts"][str(view.id)] == pool.id
    assert plan.accuracy_fp32 > 0.4
    for bits in range(1, 17):
        a, b = pool.option("shuffle-lz4", bits), view.option("shuffle-lz4", bits)
        assert (a.accuracy, a.measured, a.samples) == (b.accuracy, b.measured, b.samples)
        assert a.bytes == pytest.approx(b.bytes, abs=8)  # the same values, in another shape
    # The shared entries are what the view cut really gives: head -> codec -> tail on every sample.
    x, y, _ = offline.load_sample(dataset, N)
    cut = partition.cuts(tiny, x[:1])[view.id]
    head, tail = partition.split(tiny, cut)
    with torch.no_grad():
        reference = tiny(x).argmax(1)
        activations = head(x)
    one = plan.min_bits(view, 0.01)
    for option in (one, view.option("shuffle-lz4", one.bits - 1)):
        if option is None or not option.measured:
            continue
        n = option.samples
        sent = np.stack([decode(encode(a, bits=option.bits, mode="shuffle-lz4", nonnegative=cut.nonnegative,
                                       clip=option.clip), Expected(shape=a.shape)) for a in activations[:n].numpy()])
        with torch.no_grad():
            correct = (tail(torch.from_numpy(sent)).argmax(1) == y[:n]).sum().item()
        fp32_correct = (reference[:n] == y[:n]).sum().item()
        assert plan.accuracy_fp32 - option.accuracy == pytest.approx((fp32_correct - correct) / n, abs=1e-9)
    # The input cut as an image works on this model too (its batches keep plain strides).
    jpeg = [o for o in plan.cuts[0].options if o.codec == "jpeg" and o.measured]
    assert jpeg and all(0 < o.accuracy <= 1 for o in jpeg)
