"""Small real pieces for exercising the runtime without trained models: a Fashion-MNIST-sized CNN
and a plan made for it from its real cuts (latencies are rough figures, not profiles).

    model = tiny_model()
    plan = tiny_plan(model)
    with ServerThread(plan, model) as running, Client(plan, model, server=running.address) as client:
        client.infer(torch.randn(1, 28, 28))
"""

from __future__ import annotations

import torch
from torch import nn

from dyno import partition
from dyno.plan import CutPlan, Option, Plan

__all__ = ["TinyNet", "tiny_model", "tiny_plan"]


class TinyNet(nn.Module):
    """conv-relu-pool, conv-relu-pool, flatten, linear: 28x28x1 -> 10 classes, with a residual add."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = torch.relu(self.conv2(x)) + x
        x = self.pool(torch.relu(self.conv3(x)))
        return self.fc(x.view(x.size(0), -1))


def tiny_model(seed: int = 0, classes: int = 10) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(classes).eval()


def tiny_plan(model: nn.Module, *, name: str = "tiny", input_shape: tuple[int, ...] = (1, 28, 28),
              options: tuple[tuple[str, int | None], ...] = (("fp32", None), ("shuffle-lz4", 8),
                                                              ("shuffle-lz4", 4)),
              device_ms_per_mmac: float = 1.0, cloud_ms: float = 0.2) -> Plan:
    """A plan for ``model`` over all its cuts with the given (codec, bits) options at every cut but
    the last. Bytes are the raw sizes at that bit width; accuracies 1.0 (nothing was measured)."""
    from dyno.zoo import weights_hash

    found = partition.cuts(model, torch.zeros(1, *input_shape))
    classes = found[-1].shape[0]
    cuts = []
    for c in found:
        last = c.id == len(found) - 1
        opts = () if last else tuple(
            Option(codec=codec, bits=bits, bytes=float(c.numel * (4 if bits is None else bits / 8) + 64),
                   accuracy=1.0, measured=False)
            for codec, bits in options)
        cuts.append(CutPlan(id=c.id, name=c.name, shape=tuple(c.shape), nonnegative=c.nonnegative,
                            batchable=c.batchable, device_ms=c.device_macs / 1e6 * device_ms_per_mmac,
                            cloud_ms={1: cloud_ms, 8: cloud_ms * 3, 32: cloud_ms * 8},
                            device_macs=c.device_macs, cloud_macs=c.cloud_macs, options=opts))
    return Plan(model=name, weights_sha256=weights_hash(model), input_shape=tuple(input_shape),
                num_classes=classes, accuracy_fp32=1.0, samples=0, device_profile="test",
                cloud_profile="test", cuts=tuple(cuts))
