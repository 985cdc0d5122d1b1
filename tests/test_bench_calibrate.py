"""The client's own cost per inference (``dyno.bench.calibrate``), measured against the head's time now."""

from __future__ import annotations

import urllib.request

import pytest
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


def test_each_figure_is_the_median_of_rounds_that_take_turns(model, plan, monkeypatch):
    # one slow stretch of the host (the second round of each kind, 40% dear) moves no figure
    from types import SimpleNamespace

    from dyno.bench import calibrate

    cpu = {"device-only": [0.60e-3, 0.84e-3, 0.61e-3], "cloud-only": [0.35e-3, 0.49e-3, 0.36e-3]}
    factors = iter([1.6, 2.6, 1.7])
    order = []

    def measured(_plan, _model, _xs, config, *, seconds, **_):
        assert seconds == pytest.approx(0.5)            # each round a third of the time
        order.append(config.policy)
        kind = "device-only" if config.server is None else "cloud-only"
        seen = SimpleNamespace(server_ms_factor=next(factors), server_overhead_ms=0.1,
                               batch_at=lambda *_: 2) if config.server else None
        return cpu[kind].pop(0), 100, seen

    monkeypatch.setattr(calibrate, "_cpu_per_inference", measured)
    out = calibrate.client_overheads(plan, model, torch.rand(8, 1, 28, 28), server="127.0.0.1:1", seconds=1.5)
    assert order == ["device-only", calibrate.cloud_only(plan)[0]] * 3
    assert out["rounds"] == 3 and out["local_n"] == out["offload_n"] == 300
    assert out["local_cpu_ms"] == pytest.approx(0.61) and out["offload_cpu_ms"] == pytest.approx(0.36)
    assert out["local_cpu_rounds_ms"] == pytest.approx([0.60, 0.84, 0.61])
    assert out["server_factor"] == 1.7 and out["server_batch"] == 2


def test_the_servers_warmth_is_read_against_its_idle_time_before_each_request(model, plan, splits):
    # a real server, one client sending one request at a time, back to back and then further apart
    from dyno.bench.calibrate import GAPS_MS, ROUNDS, server_warmth
    from dyno.runtime import ServerThread
    from dyno.runtime.metrics import parse_text

    counted = []

    def compute_seconds(running):
        counted.append(1)
        with urllib.request.urlopen(running.metrics_url, timeout=5) as response:
            metrics = parse_text(response.read().decode())
        return sum(v for (name, _), v in metrics.items() if name == "dyno_compute_cpu_seconds_total")

    with ServerThread(plan, model, splits=splits) as running:
        xs = torch.rand(16, 1, 28, 28)
        plain = server_warmth(plan, model, xs, server=running.address)
        by_counter = server_warmth(plan, model, xs, server=running.address, compute=lambda: compute_seconds(running))
    for warmth in (plain, by_counter):
        idle = [p[0] for p in warmth["points"]]
        assert len(idle) == len(GAPS_MS) and idle == sorted(idle)
        assert idle[-1] >= 0.8 * GAPS_MS[-1]                # the last requests found the server idle that long
        assert all(ms > 0 for _, ms in warmth["points"])
        assert [gap for gap, _ in warmth["rounds"]] == list(GAPS_MS)
        assert all(len(each) == ROUNDS for _, each in warmth["rounds"])   # the rounds behind each point
        cold = warmth["cold"]
        assert cold[0][1] == 1.0 and all(a[1] <= b[1] <= 10 for a, b in zip(cold, cold[1:]))
    assert len(counted) == 2 * len(GAPS_MS) * ROUNDS          # read before and after each spacing, each round


def test_the_clouds_scale_is_its_counted_compute_over_the_profile_at_the_batch_it_ran(plan):
    from dyno.bench.calibrate import cloud_only, counted_scale
    from dyno.simulate.cloud import batch_times

    option = cloud_only(plan)[1]
    decode = option.decode_ms if option is not None else 0.0
    per_sample = batch_times(plan.cuts[0].cloud_ms, 4, 1.0)[4] * 1000.0 / 4     # the profile at batch 4
    compute_s = 40 * (2.0 * per_sample + decode) / 1000.0                       # 40 samples, twice as slow
    assert counted_scale(plan, (1.0, 10, 3), (1.0 + compute_s, 50, 13)) == pytest.approx(2.0)
    assert counted_scale(plan, (1.0, 10, 3), (1.0 + compute_s, 15, 4)) is None     # too few to tell
