"""The partitioner: every cut of every model splits into head and tail that reproduce the model."""

import pytest
import torch
from torch import nn

import dyno.partition as partition
from dyno.errors import ModelError, PartitionError, TraceError


class Concat(nn.Module):
    """Inception/DenseNet style: two branches joined by a channel concatenation, then a skip."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)
        self.mix = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu(self.stem(x))
        y = torch.cat([x, self.relu(self.a(x)), self.b(x)], dim=1)
        x = self.mix(y) + x
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


class SizeFlatten(nn.Module):
    """Keeps ``n = x.size(0)`` from the very start for its final view, as EfficientNet does."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2)
        self.conv2 = nn.Conv2d(6, 4, 3)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        n = x.size(0)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.reshape(n, -1))


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


@pytest.mark.parametrize("model_cls,shape", [(Concat, (1, 12, 12)), (SizeFlatten, (3, 15, 15))])
@pytest.mark.parametrize("batch", [1, 8])
def test_every_cut_reproduces_the_model(model_cls, shape, batch):
    torch.manual_seed(0)
    model = model_cls().eval()
    x = torch.randn(batch, *shape)
    cuts = partition.cuts(model, x)
    assert cuts[0].shape == shape and cuts[0].device_macs == 0
    assert cuts[-1].cloud_macs == 0
    for cut in cuts:
        head, tail = partition.split(model, cut)
        with torch.no_grad():
            diff = (tail(head(x)) - model(x)).abs().max().item()
        assert diff <= 1e-5, (cut, diff)


def test_concat_and_skip_leave_no_cut_inside_the_block():
    cuts = partition.cuts(Concat().eval(), torch.randn(1, 1, 12, 12))
    # inside the block the skip input stays live beside the branch: no single-tensor cut there
    assert [c.name for c in cuts] == ["x", "stem", "relu", "add", "adaptive_avg_pool2d", "view", "fc"]
    by_name = {c.name: c for c in cuts}
    assert by_name["relu"].nonnegative and by_name["adaptive_avg_pool2d"].shape == (8, 1, 1)
    assert not by_name["add"].nonnegative  # mix has no ReLU
    assert [c.id for c in cuts] == list(range(len(cuts)))


def test_size_side_value_is_recomputed_not_shipped():
    model = SizeFlatten().eval()
    cuts = partition.cuts(model, torch.randn(1, 3, 15, 15))
    middle = [c for c in cuts if c.name == "relu_1"][0]
    assert [s.kind for s in middle.side_values] == ["batch"] and middle.batchable
    head, tail = partition.split(model, middle)
    # the cloud stacks activations from several devices, each computed at batch size one
    xs = torch.randn(5, 3, 15, 15)
    with torch.no_grad():
        stacked = torch.cat([head(xs[i:i + 1]) for i in range(5)])
        assert torch.allclose(tail(stacked), model(xs), atol=1e-5)


def test_macs_add_up_and_grow():
    model = SizeFlatten().eval()
    cuts = partition.cuts(model, torch.randn(1, 3, 15, 15))
    total = 6 * 7 * 7 * 3 * 9 + 4 * 5 * 5 * 6 * 9 + 3 * 100
    assert all(c.device_macs + c.cloud_macs == total for c in cuts)
    assert [c.device_macs for c in cuts] == sorted(c.device_macs for c in cuts)


class ShapeCarrier(nn.Module):
    """Carries a data-dependent number across the cut: it must be shipped and forbid batching."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x):
        k = x.size(2) * 0 + x.size(0) * x.size(0)  # batch-size squared: neither batch nor constant
        y = torch.relu(self.conv(x))
        return y.flatten(1)[:, :1] * k


def test_shipped_side_value_travels_and_forbids_batching():
    model = ShapeCarrier().eval()
    x = torch.randn(1, 1, 4, 4)
    cuts = partition.cuts(model, x)
    shipped = [c for c in cuts if any(s.kind == "shipped" for s in c.side_values)]
    assert shipped and not any(c.batchable for c in shipped)
    head, tail = partition.split(model, shipped[0])
    activation, *side = head(x)
    assert torch.allclose(tail(activation, *side), model(x))


def test_untraceable_model_names_the_construct():
    with pytest.raises(TraceError, match=r"control flow.*test_partition.py:\d+ `if x.sum\(\) > 0:`"):
        partition.cuts(Branchy(), torch.randn(1, 3))


def test_wrong_input_shape_is_a_model_error():
    with pytest.raises(ModelError, match=r"shape \(3, 15, 16\).*Pass an example"):
        partition.cuts(Concat(), torch.randn(1, 3, 15, 16))


def test_cut_from_another_model_is_refused():
    cut = partition.cuts(Concat().eval(), torch.randn(1, 1, 12, 12))[5]
    with pytest.raises(PartitionError, match="does not exist"):
        partition.split(SizeFlatten().eval(), cut)


@pytest.mark.parametrize("name", ["fmnist-resnet", "fmnist-vgg", "efficientnet-lite0"])
def test_every_cut_of_every_zoo_model(name):
    from dyno import zoo

    entry = zoo.get_model(name)
    model = zoo.load_model(name, weights="random" if name.startswith("fmnist") else "trained")
    torch.manual_seed(1)
    cuts = partition.cuts(model, torch.randn(1, *entry.input_shape))
    if name == "efficientnet-lite0":
        # the size() kept for the final view must not collapse the cuts (our count: 81)
        assert len(cuts) == 81
    inputs = [torch.randn(batch, *entry.input_shape) for batch in (1, 8)]
    with torch.no_grad():
        expected = [model(x) for x in inputs]
        for cut in cuts:
            head, tail = partition.split(model, cut)
            for x, y in zip(inputs, expected):
                assert (tail(head(x)) - y).abs().max().item() <= 1e-5, (name, cut.id, len(x))
