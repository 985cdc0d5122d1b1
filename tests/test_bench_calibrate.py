"""The client's own cost per inference (``dyno.bench.calibrate``), measured against the head's time now."""

from __future__ import annotations

import torch

from dyno.bench.calibrate import client_overheads
from dyno.offline import nominal_plan


def test_local_overhead_does_not_depend_on_how_slow_the_profile_was(model):
    # The same model profiled 100x apart (a busy afternoon against a quiet night): the client's own work
    # beside the head is the same, and never swallowed by a profile longer than the head runs now.
    torch.set_num_threads(1)
    xs = torch.rand(64, 1, 28, 28)
    fast, slow = (client_overheads(nominal_plan(model, device_ms_per_mmac=k), model, xs, server=None, seconds=1.0)
                  for k in (0.2, 20.0))
    assert fast["local_ms"] > 0.02 and slow["local_ms"] > 0.02
    assert 0.5 < slow["local_ms"] / fast["local_ms"] < 2.0
    profiled = nominal_plan(model, device_ms_per_mmac=20.0).cuts[-1].device_ms
    assert slow["head_ms"] < 0.1 * profiled
    assert slow["device_factor"] == slow["head_ms"] / profiled      # what a simulator scales the tiers by
