"""The device thread does not time a head's first runs on it into the estimates."""

from __future__ import annotations

import torch

from dyno.monitor import Monitors
from dyno.runtime import Client, ClientConfig
from dyno.runtime.device_thread import WARM_RUNS


class Recording(Monitors):
    def __init__(self, plan):
        super().__init__(plan)
        self.device_calls: list[int] = []

    def record_device(self, cut_id, head_ms, *, at=None):
        self.device_calls.append(cut_id)
        super().record_device(cut_id, head_ms, at=at)


def test_the_first_runs_of_a_head_on_the_thread_are_not_timed(model, plan, splits):
    monitors = Recording(plan)
    config = ClientConfig(server=None, policy="device-only", in_flight=1)
    with Client(plan, model, config, splits=splits, monitors=monitors) as client:
        results = list(client.map(torch.randn(1, 28, 28) for _ in range(WARM_RUNS + 3)))
    assert [r.where for r in results] == ["device"] * (WARM_RUNS + 3)
    assert monitors.device_calls == [len(plan.cuts) - 1] * 3
