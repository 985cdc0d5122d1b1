"""A plan from a model's cuts alone, with nominal figures: nothing is measured.

For what needs a valid plan but no analysis: benchmarks of the runtime (whose speed does not depend on
the plan's figures) and tests. Bytes are the raw size at each bit width, accuracies 1.0, latencies
proportional to the MACs on either side of the cut.

    plan = nominal_plan(model, input_shape=(1, 28, 28), options=(("fp32", None), ("shuffle-lz4", 8)))
"""

from __future__ import annotations

import torch
from torch import nn

from dyno import partition
from dyno.plan import CutPlan, Option, Plan

__all__ = ["nominal_plan"]


def nominal_plan(model: nn.Module, *, name: str = "tiny", input_shape: tuple[int, ...] = (1, 28, 28),
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
                num_classes=classes, accuracy_fp32=1.0, samples=0, device_profile="nominal",
                cloud_profile="nominal", cuts=tuple(cuts))
