"""The demo's measuring loop and timeline on a small model: every system sees the same bandwidth
pattern for the same time, the summaries hold the documented keys, and the PNG is written."""

from __future__ import annotations

import os

import pytest
import torch
from nets import tiny_model

from dyno.bench import demo as D
from dyno.bench import session as S
from dyno.bench.demo_plot import plot_timeline
from dyno.emulate.device import Device
from dyno.offline import nominal_plan as tiny_plan
from dyno.policy import DEFAULT_SLO
from dyno.runtime import ClientConfig, ServerThread, Splits
from dyno.runtime.results import SUMMARY_KEYS


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    plan = tiny_plan(model, options=(("fp32", None), ("shuffle-lz4", 8), ("shuffle-lz4", 4)))
    return model, plan, Splits(model, plan)


def test_systems_run_the_same_pattern_and_are_summarised(setup, tmp_path):
    model, plan, splits = setup
    torch.manual_seed(0)
    xs, ys = torch.randn(32, 1, 28, 28), [int(i % 10) for i in range(32)]
    pattern = D.builtin_trace(0.5)
    assert [pattern.rate_bps(t) for t in (0.1, 0.6, 1.1, 1.6, 2.1)] == [8e6, 1e6, 0.3e6, 4e6, 8e6]
    runs = []
    with ServerThread(plan, model, splits=splits) as server:
        for name in ("dyno", "device-only", "cloud-only-raw"):
            run = S.SystemRun(name, 2.0)
            config = ClientConfig(server=server.address, policy=name, slo=DEFAULT_SLO, in_flight=4)
            summary = S.run_system(run, plan, model, S.Workload(xs=xs, ys=ys, duration=2.0), config,
                                   splits=splits, trace=pattern, device=Device(slowdown=4))
            runs.append(run)
            assert tuple(summary) == SUMMARY_KEYS
            assert summary["n"] == len(run.points) > 0 and summary["fallbacks"] == 0
            assert max(p.t for p in run.points) < 2.0 + 1.0  # fed for 2 s, then drained
            assert summary["throughput"] > 0 and 0 <= summary["accuracy"] <= 1
    by_name = {r.name: r for r in runs}
    assert {p.where for p in by_name["device-only"].points} == {"device"}
    assert by_name["device-only"].summary["bytes_mean"] == 0
    assert {p.where for p in by_name["cloud-only-raw"].points} == {"cloud"}
    assert {p.cut for p in by_name["cloud-only-raw"].points} == {0}
    # the link's true rate is recorded, following the pattern
    rates = {round(p.rate_bps) for r in runs for p in r.points if r.link is not None}
    assert rates <= {8_000_000, 1_000_000, 300_000, 4_000_000}
    png = plot_timeline(runs, pattern, 2.0, tmp_path / "timeline.png", "test")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_rounds_alternate_the_order_and_count_every_round():
    runs = D.schedule(["dyno", "device-only", "cloud-only"], 3, 5.0)
    assert [(r.name, r.round) for r in runs] == [
        ("dyno", 0), ("device-only", 0), ("cloud-only", 0), ("cloud-only", 1), ("device-only", 1), ("dyno", 1),
        ("dyno", 2), ("device-only", 2), ("cloud-only", 2)]
    dyno = [r for r in runs if r.name == "dyno"]
    # 1,000 inferences in 5 s (200/s), then 1,500 in 5 s: 250/s over the 10 s, not the mean of the rates
    for run, (n, rate, p50, accuracy) in zip(dyno, ((1000, 200.0, 10.0, 0.9), (1500, 300.0, 30.0, 0.8),
                                                   (500, 100.0, 20.0, 1.0))):
        run.summary = {"n": n, "accuracy": accuracy, "throughput": rate, "bytes_mean": 100.0, "p50_ms": p50,
                       "p95_ms": 2 * p50, "fallbacks": 1, "evidence": {"round": run.round, "choices": {"device": n - 10, "cut 1 jpeg:90": 10}},
                       "stats": {"replies": n}}
    summary = D.combined(dyno)
    assert summary["n"] == 3000 and summary["throughput"] == pytest.approx(3000 / 15.0)
    assert summary["accuracy"] == pytest.approx((900 + 1200 + 500) / 3000)
    assert (summary["p50_ms"], summary["p95_ms"], summary["fallbacks"]) == (20.0, 40.0, 3)
    assert summary["stats"] == {"replies": 3000}
    assert summary["evidence"] == {"round": 0, "choices": {"device": 2970, "cut 1 jpeg:90": 30}}
    assert [s["n"] for s in summary["rounds"]] == [1000, 1500, 500]
    assert D.combined(dyno[:1]) is dyno[0].summary


@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda _: ())(0)) < 2, reason="needs two cores")
def test_the_device_and_the_cloud_run_on_cores_apart():
    from dyno.bench.ground import cores_apart

    before = os.sched_getaffinity(0)
    with cores_apart() as cloud:
        assert cloud == max(before) and cloud not in os.sched_getaffinity(0)
        assert os.sched_getaffinity(0) == before - {cloud}
    assert os.sched_getaffinity(0) == before


def test_the_run_s_predicted_throughput_is_a_mean_over_seconds_as_the_measured_one_is():
    # 1,000 decisions predicting 1,000/s in the first second, 10 predicting 10/s in the second: the run's
    # figure is (1000 + 10) / 2, not the decisions' mean (~990), which the fast second would outvote
    from types import SimpleNamespace

    from dyno.bench.record import evidence
    from dyno.emulate.traces import Trace

    log = [(i / 1000, 0, "jpeg", 90, 1000.0, 8e6, 1.0, 1.0) for i in range(1000)]
    log += [(1 + i / 10, 0, "jpeg", 90, 10.0, 1e5, 1.0, 1.0) for i in range(10)]
    points = [SimpleNamespace(t=e[0], cut=0, codec="jpeg", bits=90, where="cloud", correct=True, nbytes=100)
              for e in log]
    record = evidence(points, log, trace=Trace.constant(8e6), duration=2.0, slo=None)
    assert record["predicted_throughput"] == pytest.approx(505.0)
    assert record["observed_throughput"] == pytest.approx(505.0)
