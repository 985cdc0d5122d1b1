"""Two rows at once (dyno.policy.mix): the share, its throughput, the deterministic mixer, and the
simulator showing the gain the model predicts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plan_factory import make_plan, tiny_plan

from dyno.emulate.traces import Trace
from dyno.policy import SLO, Estimates, State, make
from dyno.policy.mix import BACKOFF, RAMP, Mixer, best_mix
from dyno.policy.model import PerfModel
from dyno.simulate import SimConfig, simulate_policy
from dyno.wire import on_the_wire, request_envelope

THROUGHPUT = SLO.parse("throughput")
#: The tiny plan's cut 0 (1000 B of JPEG, with its request's envelope and framing: dyno.wire) in 20 ms
BPS = on_the_wire(1000, request_envelope(tiny_plan().model)) * 8 / 0.020


def test_a_device_as_fast_as_its_link_sends_half_and_runs_half():
    # k_d 2: device-only 20 ms; cut 0 (1000 B of JPEG) takes 20 ms at BPS (467 kbit/s), cloud 10 ms
    plan = tiny_plan()
    model = PerfModel(plan)
    ev = model.evaluate(Estimates(bandwidth_bps=BPS, device_slowdown=2.0, rtt_ms=0.0))
    device_only, cut0 = model.device_only, model.index[(0, "jpeg", 90)]
    assert ev.throughput[device_only] == pytest.approx(50.0) and ev.throughput[cut0] == pytest.approx(50.0)
    mix = best_mix(ev, device_only, np.array([cut0]), None)
    # device 20 (1 - q) = link 20 q at q = 1/2: 10 ms per inference
    assert mix is not None and mix.partner == cut0
    assert mix.share == pytest.approx(0.5) and mix.throughput == pytest.approx(100.0)
    # a window of one request: the window's line ((1 - q) 20 + q 30 ms) caps it below either alone
    assert best_mix(ev, device_only, np.array([cut0]), 1) is None


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), bw=st.floats(1e4, 1e8), kd=st.floats(0.2, 40), cap=st.floats(0.05, 2),
       in_flight=st.none() | st.integers(1, 16))
def test_the_share_is_the_best_on_a_fine_grid(seed, bw, kd, cap, in_flight):
    model = PerfModel(make_plan(6, seed=seed))
    ev = model.evaluate(Estimates(bandwidth_bps=bw, device_slowdown=kd, cloud_capacity=cap), 1, in_flight)
    chosen = int(np.argmax(ev.throughput))
    partners = np.arange(len(model.rows))
    stages = [ev.device, ev.link, ev.cloud] + ([ev.latency / in_flight] if in_flight else [])
    q = np.linspace(0.0, 1.0, 2001)
    grid = max(float((1000.0 / np.max([(1 - q) * s[chosen] + q * s[b] for s in stages], axis=0)).max())
               for b in partners)
    mix = best_mix(ev, chosen, partners, in_flight)
    best = mix.throughput if mix is not None else float(ev.throughput[chosen])
    assert best >= grid * (1 - 1e-9)                                  # no share on the grid does better
    assert best >= float(ev.throughput[chosen]) * (1 - 1e-12)          # never below the chosen row alone
    if mix is not None:
        assert 0 < mix.share < 1 and mix.partner != chosen


def test_the_mixer_ramps_keeps_the_share_exactly_and_backs_off():
    mixer = Mixer()
    ramp = int(np.ceil(0.3 / RAMP))
    for _ in range(ramp):
        mixer.take(0.3)
    assert mixer.share == pytest.approx(0.3)
    taken = [mixer.take(0.3) for _ in range(1000)]
    assert sum(taken) == 300 and all(sum(taken[i:i + 10]) == 3 for i in range(0, 1000, 10))
    mixer.take(0.3, congested=True)
    assert mixer.share == pytest.approx(0.3 * BACKOFF)


def test_a_device_saturating_the_cloud_alone_adds_its_own_work_beside_it():
    # k_d 4, the whole cloud this device's: cut 0 is bound by 10 ms of cloud (100/s); a share q at cut 1
    # loads the device 16q ms and the cloud 10 - 5q ms per inference, equal at q = 10/21: 131.25/s
    plan = tiny_plan()
    est = Estimates(bandwidth_bps=1e8, device_slowdown=4.0, rtt_ms=0.0, cloud_capacity=1.0)
    assert make("dyno").decide(State(plan, est, THROUGHPUT)).predicted.throughput == pytest.approx(100.0)
    mixed = make("dyno-mix").decide(State(plan, est, THROUGHPUT))
    assert mixed.cut == 0 and mixed.predicted.throughput == pytest.approx(1000 / (16 * 10 / 21))


def test_only_a_throughput_objective_mixes_and_dyno_never_does():
    plan = tiny_plan(bytes_=(1000.0, 1000.0))   # every single row 50/s; device-only beside cut 0 100/s
    est = Estimates(bandwidth_bps=BPS, device_slowdown=2.0, rtt_ms=0.0)
    policy = make("dyno-mix")
    cuts = [policy.decide(State(plan, est, THROUGHPUT)).cut for _ in range(2000)]
    assert set(cuts) == {0, 2} and cuts[-1000:].count(2) == 500      # half each once the share has ramped up
    for policy, slo in ((make("dyno", probe_every=0), THROUGHPUT),
                        (make("dyno-mix", probe_every=0), SLO.parse("latency;drop<=1"))):
        assert len({policy.decide(State(plan, est, slo)).cut for _ in range(2000)}) == 1


def test_the_simulator_sees_device_and_link_add_up():
    # the case above on a real trace, cut 1 as slow as the rest (8 ms on the device, 20 ms of link):
    # device-only and cloud-only each reach 50/s, DynO both at once
    plan = tiny_plan(bytes_=(1000.0, 1000.0))
    trace = Trace.constant(BPS, 20.0)
    config = SimConfig(slowdown=2.0, duration_s=20.0, rtt_ms=0.0, initial_bandwidth_bps=BPS)
    runs = {name: simulate_policy(make(name), PerfModel(plan), trace, THROUGHPUT, config).throughput
            for name in ("dyno-mix", "dyno", "device-only", "cloud-only", "split-int8")}
    assert runs["device-only"] == pytest.approx(50.0, rel=0.02) and runs["cloud-only"] == pytest.approx(50.0, rel=0.05)
    assert runs["dyno-mix"] > 1.6 * max(runs["dyno"], runs["device-only"], runs["cloud-only"], runs["split-int8"])
