"""The scheduler: performance model, SLOs, DynO against brute force, constraints, hysteresis, baselines."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_factory import INPUT_SHAPE, make_plan, tiny_plan

from dyno.errors import PolicyError
from dyno.plan import CutPlan, Option, Plan
from dyno.policy import OBJECTIVES, SLO, Decision, Estimates, State, make, names
from dyno.policy.dyno_policy import DynoPolicy
from dyno.policy.front import undominated
from dyno.policy.model import PerfModel, meets, predict, rows_of, violation
from dyno.wire import on_the_wire, request_envelope

EST = Estimates(bandwidth_bps=1e6, rtt_ms=10.0, device_slowdown=2.0)


def row(model: PerfModel, cut: int, codec, bits):
    return model.rows[model.index[(cut, codec, bits)]]


def link_ms(plan: Plan, nbytes: float, bps: float = 1e6) -> float:
    """A frame of ``nbytes`` codec bytes on the link: with its request's envelope and framing (dyno.wire)."""
    return on_the_wire(nbytes, request_envelope(plan.model)) * 8 / bps * 1000


# ------------------------------------------------------------------------------------------ model

def test_model_hand_computed_cases():
    plan = tiny_plan()   # device 0/4/10 ms, cloud 10/5/0 ms, bytes 1000/500, codec times 0
    m = PerfModel(plan)
    p = predict(plan, row(m, 0, "jpeg", 90), EST)
    # device 0; link 1000 bytes and the request's ~170 more at 1 Mbit/s, 9.3 ms; cloud 10 ms; rtt 10
    link = link_ms(plan, 1000)
    assert 9.0 < link < 9.5 and p.latency_ms == pytest.approx(0 + link + 10 + 10)
    assert p.throughput == pytest.approx(100.0)            # cloud stage 10 ms is the bottleneck
    assert p.bytes == 1000 and p.cloud_s == pytest.approx(0.010)   # the codec's bytes, as the plan says
    assert p.energy_j == pytest.approx((2.5 * 0 + 1.2 * link) / 1000)
    p = predict(plan, row(m, 1, "shuffle-lz4", 8), EST)
    # device 2 * 4 = 8 ms; link 500 bytes and the request's, 5.3 ms; cloud 5 ms
    link = link_ms(plan, 500)
    assert p.latency_ms == pytest.approx(8 + link + 5 + 10)
    assert p.throughput == pytest.approx(125.0)
    assert p.cloud_s == pytest.approx(0.005)
    assert p.energy_j == pytest.approx((2.5 * 8 + 1.2 * link) / 1000)
    p = predict(plan, m.rows[m.device_only], EST)
    assert (p.latency_ms, p.throughput, p.bytes, p.cloud_s) == (pytest.approx(20.0), pytest.approx(50.0), 0.0, 0.0)
    assert p.accuracy == plan.accuracy_fp32


def test_model_request_window_bounds_throughput():
    plan = tiny_plan()
    m = PerfModel(plan)
    # cut 1: latency 8 + 5.3 + 5 + 10 ms, slowest stage 8 ms; with 2 requests in flight at most 2 / 28.3 ms
    p = predict(plan, row(m, 1, "shuffle-lz4", 8), EST, in_flight=2)
    assert p.throughput == pytest.approx(2000 / (8 + link_ms(plan, 500) + 5 + 10))
    assert predict(plan, row(m, 1, "shuffle-lz4", 8), EST, in_flight=8).throughput == pytest.approx(125.0)
    # device-only is never bound by the window (its latency is its one stage)
    assert predict(plan, m.rows[m.device_only], EST, in_flight=1).throughput == pytest.approx(50.0)
    d = make("dyno").decide(State(plan, EST, SLO.parse("throughput"), in_flight=1))
    assert d.cut == 2                        # one request at a time: 1000/28.3 < 50/s on the device
    assert make("dyno").decide(State(plan, EST, SLO.parse("throughput"))).cut == 1


def test_model_server_factor_queue_and_capacity():
    plan = tiny_plan()
    m = PerfModel(plan)
    slow = dataclasses.replace(EST, server_ms_factor=2.0)
    p = predict(plan, row(m, 0, "jpeg", 90), slow)
    assert p.throughput == pytest.approx(50.0) and p.cloud_s == pytest.approx(0.020)   # 10 ms x 2
    # waiting at the server lengthens latency, takes no throughput
    waiting = dataclasses.replace(slow, queue_ms=30.0)
    q = predict(plan, row(m, 0, "jpeg", 90), waiting)
    assert q.latency_ms == pytest.approx(p.latency_ms + 30) and q.throughput == p.throughput
    # half a worker left to this device: the cloud stage takes twice as long; cost is compute only
    half = dataclasses.replace(slow, cloud_capacity=0.5)
    h = predict(plan, row(m, 0, "jpeg", 90), half)
    assert h.throughput == pytest.approx(25.0) and h.latency_ms == p.latency_ms and h.cloud_s == p.cloud_s


def test_model_vector_equals_scalar_reference():
    plan = make_plan(12, seed=3)
    m = PerfModel(plan)
    est = Estimates(bandwidth_bps=3.3e5, rtt_ms=17.0, device_slowdown=7.0, server_ms_factor=1.3, queue_ms=9.0,
                    cloud_capacity=0.6)
    per_cut = dataclasses.replace(est, server_ms_factors=((2, 3.5), (5, 0.7)), batches=((2, 4), (3, 1)))
    for e in (est, per_cut, est):   # and back: the model's per-row figures follow the estimates
        ev = m.evaluate(e, batch=8)
        ev4 = m.evaluate(e, batch=8, in_flight=4)
        for i, r in enumerate(m.rows):
            p = predict(plan, r, e, 8)
            assert (ev.latency[i], ev.throughput[i], ev.cloud_s(8)[i], ev.energy()[i]) == (
                p.latency_ms, p.throughput, p.cloud_s, p.energy_j)
            assert ev4.throughput[i] == predict(plan, r, e, 8, in_flight=4).throughput


def test_model_prices_each_cut_by_its_own_server_factor():
    plan = tiny_plan()
    m = PerfModel(plan)
    dear_cut_1 = dataclasses.replace(EST, server_ms_factor=1.0, server_ms_factors=((1, 4.0),))
    assert predict(plan, row(m, 0, "jpeg", 90), dear_cut_1).cloud_s == pytest.approx(0.010)   # 10 ms x 1
    assert predict(plan, row(m, 1, "shuffle-lz4", 8), dear_cut_1).cloud_s == pytest.approx(0.020)   # 5 ms x 4
    with pytest.raises(PolicyError):
        dataclasses.replace(EST, server_ms_factors=((1, 0.0),))


def test_model_prices_the_encoding_at_the_device_s_codec_slowdown():
    # a CPU quota (dyno bench) slows the encoding with the heads; padding the heads alone does not
    base = tiny_plan()
    jpeg = dataclasses.replace(base.cuts[0].options[0], encode_ms=2.0)
    plan = dataclasses.replace(base, cuts=(dataclasses.replace(base.cuts[0], options=(jpeg,)), *base.cuts[1:]))
    m = PerfModel(plan)
    i = m.index[(0, "jpeg", 90)]
    whole = dataclasses.replace(EST, codec_slowdown=3.0)
    assert m.evaluate(EST).device[i] == pytest.approx(2.0)
    assert m.evaluate(whole).device[i] == pytest.approx(6.0)
    assert (predict(plan, m.rows[i], whole).latency_ms - predict(plan, m.rows[i], EST).latency_ms
            == pytest.approx(4.0))
    assert m.evaluate(whole).device[m.device_only] == m.evaluate(EST).device[m.device_only]   # no encoding
    with pytest.raises(PolicyError):
        dataclasses.replace(EST, codec_slowdown=0.0)


def test_model_prices_each_cut_at_the_batch_its_replies_ran_in():
    plan = make_plan(5, seed=1)   # cloud_ms per batch: 1, 8 measured
    m = PerfModel(plan)
    i0, i1 = m.index[(0, "fp32", None)], m.index[(1, "fp32", None)]
    batched_at_0 = dataclasses.replace(EST, batches=((0, 8),))
    ev = m.evaluate(batched_at_0, batch=1)
    assert ev.cost[i0] == pytest.approx(plan.cuts[0].cloud_ms[8] / 8 + m.decode_ms[i0])
    assert ev.cost[i1] == pytest.approx(plan.cuts[1].cloud_ms[1] + m.decode_ms[i1])   # no word: the batch given
    assert m.evaluate(batched_at_0, batch=8).cost[i1] == pytest.approx(plan.cuts[1].cloud_ms[8] / 8 + m.decode_ms[i1])
    with pytest.raises(PolicyError):
        dataclasses.replace(EST, batches=((0, 0),))


def test_model_batch_uses_per_sample_time_and_unbatchable_cuts_use_one():
    plan = make_plan(5, seed=1)
    m = PerfModel(plan)
    i = m.index[(1, "fp32", None)]
    assert m.cloud_ps(8)[i] == pytest.approx(plan.cuts[1].cloud_ms[8] / 8)
    assert m.cloud_ps(4)[i] == pytest.approx(plan.cuts[1].cloud_ms[1])   # nearest measured batch below
    plan1 = make_plan(5, seed=1, batchable=False)
    assert PerfModel(plan1).cloud_ps(8)[i] == pytest.approx(plan1.cuts[1].cloud_ms[1])


def test_rows_add_inferred_fp32_and_keep_first_duplicate():
    plan = tiny_plan()
    rows = rows_of(plan)
    fp32 = [r for r in rows if r.codec == "fp32"]
    assert [(r.cut, r.bytes, r.measured) for r in fp32] == [(0, 4.0 * 3 * 32 * 32, False), (1, 4.0 * 4 * 8 * 8, False)]
    raw8 = [r for r in rows if r.cut == 0 and r.bits == 8]     # the 8-bit input, priced one byte a value
    assert [(r.codec, r.bytes, r.accuracy, r.measured) for r in raw8] == [("shuffle-lz4", 3 * 32 * 32 + 64.0, 0.9, False)]
    assert rows[-1].codec is None and rows[-1].cut == 2


# ------------------------------------------------------------------------------------------ SLO

def test_slo_parse_and_str_round_trip():
    slo = SLO.parse("throughput,cloud_cost;drop<=1;latency<=200")
    assert slo.objectives == ("throughput", "cloud_cost")
    assert (slo.max_accuracy_drop, slo.max_latency_ms, slo.max_bytes) == (1.0, 200.0, None)
    assert SLO.parse(str(slo)) == slo
    rel = SLO.parse("cloud_cost;throughput>=0.9*cloud-only;bytes<=2e4;tol=0.05")
    assert (rel.min_throughput_of, rel.min_throughput_ratio, rel.max_bytes, rel.tolerance) == (
        "cloud-only", 0.9, 2e4, 0.05)
    assert SLO.parse(str(rel)) == rel
    assert SLO.parse("latency;throughput>=25").min_throughput == 25.0
    assert SLO.parse("drop<=2").objectives == ("throughput", "cloud_cost")


@pytest.mark.parametrize("text, fragment", [
    ("speed", "unknown SLO objective"),
    ("throughput;drop>=1", "drop takes <="),
    ("throughput;latency<=fast", "not a number"),
    ("throughput;colour<=3", "cannot read SLO constraint"),
    ("throughput,throughput", "repeat"),
    ("", "empty SLO"),
])
def test_slo_parse_errors(text, fragment):
    with pytest.raises(PolicyError, match=fragment):
        SLO.parse(text)


def test_a_floor_naming_an_unknown_policy_fails_when_resolved():
    slo = SLO.parse("throughput;throughput>=warp-drive")      # the SLO is data; it names a policy
    assert slo.min_throughput_of == "warp-drive"
    with pytest.raises(PolicyError, match="unknown policy 'warp-drive'; known: cloud-only"):
        make("dyno").decide(State(tiny_plan(), EST, slo))


def test_estimates_and_state_validate():
    with pytest.raises(PolicyError):
        Estimates(bandwidth_bps=-1)
    with pytest.raises(PolicyError):
        Estimates(bandwidth_bps=1e6, device_slowdown=0)
    with pytest.raises(PolicyError):
        State(tiny_plan(), EST, SLO(), batch=0)


# ------------------------------------------------------------------------- DynO vs brute force

def brute_force(plan: Plan, est: Estimates, slo: SLO, batch: int, in_flight=None, among=None) -> tuple[int, bool]:
    """The DynO rule in a plain loop over rows with the scalar model: over every row, or the indices
    ``among`` (the result indexes ``rows_of(plan)`` either way)."""
    rows = rows_of(plan)
    pool_all = list(range(len(rows))) if among is None else list(among)
    floor = slo.min_throughput
    if slo.min_throughput_of is not None:
        stripped = dataclasses.replace(slo, min_throughput_of=None, min_throughput=None)
        d = make(slo.min_throughput_of).decide(State(plan, est, stripped, batch, in_flight))
        base = next(r for r in rows if (r.cut, r.codec, r.bits) == (d.cut, d.codec, d.bits))
        relative = predict(plan, base, est, batch, in_flight=in_flight).throughput * slo.min_throughput_ratio
        floor = relative if floor is None else max(floor, relative)
    preds = {i: predict(plan, rows[i], est, batch, in_flight=in_flight) for i in pool_all}
    cand = [i for i, p in preds.items() if meets(p, slo, plan.accuracy_fp32, floor)]
    ok = bool(cand)
    if not ok:   # least violating, among the rows meeting accuracy and bytes if any does
        static = [i for i, p in preds.items() if meets(p, dataclasses.replace(
            slo, max_latency_ms=None, min_throughput=None, min_throughput_of=None), plan.accuracy_fp32, None)]
        pool = static or pool_all
        v = {i: violation(preds[i], slo, plan.accuracy_fp32, floor) for i in pool}
        cand = [i for i in pool if v[i] == min(v.values())]
    for k, objective in enumerate(slo.objectives):
        values = {i: preds[i].value(objective) for i in cand}
        sign = OBJECTIVES[objective]
        best = max(values.values()) if sign > 0 else min(values.values())
        if k == len(slo.objectives) - 1:
            return next(i for i in cand if values[i] == best), ok
        if not math.isfinite(best):
            cand = [i for i in cand if values[i] == best]
        elif sign > 0:
            cand = [i for i in cand if values[i] >= best - slo.tolerance * abs(best)]
        else:
            cand = [i for i in cand if values[i] <= best + slo.tolerance * abs(best)]
        if len(cand) == 1:
            return cand[0], ok
    return cand[0], ok


objective_lists = st.lists(st.sampled_from(sorted(OBJECTIVES)), min_size=1, max_size=4, unique=True)
slos = st.builds(
    lambda objectives, lat, drop, nbytes, floor, of, tol: SLO(
        objectives=tuple(objectives), max_latency_ms=lat, max_accuracy_drop=drop, max_bytes=nbytes,
        min_throughput=floor, min_throughput_of=of, tolerance=tol),
    objective_lists,
    st.none() | st.floats(5, 400),
    st.none() | st.floats(0, 5),
    st.none() | st.floats(100, 20000),
    st.none() | st.floats(1, 200),
    st.none() | st.sampled_from(["cloud-only", "device-only", "cloud-only-raw", "split-int8", "neurosurgeon"]),
    st.sampled_from([0.0, 0.02, 0.1]),
)
estimates = st.builds(
    Estimates,
    bandwidth_bps=st.floats(1e4, 5e7), rtt_ms=st.floats(0, 150), device_slowdown=st.floats(0.5, 40),
    server_ms_factor=st.floats(0.5, 3), queue_ms=st.floats(0, 200), cloud_capacity=st.floats(0.01, 2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_cuts=st.integers(2, 9), est=estimates, slo=slos,
       batch=st.sampled_from([1, 4, 8]), in_flight=st.none() | st.integers(1, 16))
def test_dyno_equals_brute_force(seed, n_cuts, est, slo, batch, in_flight):
    """DynO's row is the plain loop's over each cut's undominated rows, and as good as the loop's over
    every row: the same on the last objective (the one that picks exactly), the SLO met alike."""
    plan = make_plan(n_cuts, seed=seed, bits=(2, 4, 8))
    state = State(plan, est, slo, batch, in_flight)
    policy = DynoPolicy(margin=0.0, probe_every=0)
    front = np.flatnonzero(undominated(PerfModel(plan), slo.confidence))
    expected, ok = brute_force(plan, est, slo, batch, in_flight, among=front)
    d = policy.decide(state)
    r = rows_of(plan)[expected]
    assert (d.cut, d.codec, d.bits) == (r.cut, r.codec, r.bits)
    assert d.predicted.meets_slo == ok
    assert (d.note == "") == ok
    anywhere, ok_anywhere = brute_force(plan, est, slo, batch, in_flight)
    last = slo.objectives[-1]
    value = lambda i: predict(plan, rows_of(plan)[i], est, batch, in_flight=in_flight).value(last)  # noqa: E731
    assert ok_anywhere == ok and value(anywhere) == pytest.approx(value(expected), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), est=estimates, lat=st.floats(20, 300), drop=st.floats(0, 3),
       nbytes=st.floats(300, 20000))
def test_dyno_respects_constraints_when_it_can(seed, est, lat, drop, nbytes):
    plan = make_plan(7, seed=seed)
    slo = SLO(objectives=("throughput",), max_latency_ms=lat, max_accuracy_drop=drop, max_bytes=nbytes)
    d = DynoPolicy(margin=0.0).decide(State(plan, est, slo))
    p = d.predicted
    feasible_exists = any(meets(predict(plan, r, est), slo, plan.accuracy_fp32, None) for r in rows_of(plan))
    assert p.meets_slo == feasible_exists
    if feasible_exists:
        assert p.latency_ms <= lat and p.bytes <= nbytes
        assert (plan.accuracy_fp32 - p.accuracy) * 100 <= drop + 1e-9


def test_no_feasible_option_is_said_and_least_violating_chosen():
    plan = tiny_plan()
    slo = SLO(objectives=("throughput",), max_latency_ms=1.0)   # nothing finishes in 1 ms
    d = make("dyno").decide(State(plan, EST, slo))
    assert not d.predicted.meets_slo and "no option meets the SLO" in d.note
    assert d.cut == 2   # device-only, 20 ms, is the least over 1 ms (the offloads take 27-28 ms)


def test_dyno_never_loses_to_cloud_only_in_the_model():
    plan = make_plan(10, seed=5)
    slo = SLO.parse("throughput")
    for bw in (1e4, 1e5, 1e6, 1e7, 1e8):
        for kd in (2, 8, 33):
            state = State(plan, Estimates(bandwidth_bps=bw, device_slowdown=kd), slo)
            dyno = make("dyno").decide(state).predicted.throughput
            for other in ("cloud-only", "device-only", "cloud-only-raw", "neurosurgeon", "split-int8", "jalad"):
                assert dyno >= make(other).decide(state).predicted.throughput * (1 - 1e-12)


def test_throughput_floor_relative_to_cloud_only():
    plan = make_plan(10, seed=2)
    est = Estimates(bandwidth_bps=2e6, device_slowdown=2.0)
    slo = SLO.parse("cloud_cost;throughput>=cloud-only")
    d = make("dyno").decide(State(plan, est, slo))
    cloud = make("cloud-only").decide(State(plan, est, SLO())).predicted
    assert d.predicted.meets_slo and d.predicted.throughput >= cloud.throughput * (1 - 1e-9)
    assert d.predicted.cloud_s < cloud.cloud_s       # onloading: less cloud time at the same throughput


def test_hysteresis_keeps_choice_unless_gain_beats_margin():
    plan = tiny_plan(device_ms=(0.0, 4.0, 10.0), cloud_ms=(10.0, 5.0, 0.0))
    slo = SLO(objectives=("throughput",), tolerance=0.0)
    policy = DynoPolicy(margin=0.10, probe_every=0)
    # kd = 2.4: cut 1 device stage 9.6 ms (104/s) beats cloud-only's 10 ms cloud stage (100/s) by 4 %
    first = policy.decide(State(plan, Estimates(bandwidth_bps=1e7, device_slowdown=3.0), slo))
    assert first.cut == 0                      # kd 3: cut 1 at 12 ms, cloud-only 10 ms wins
    second = policy.decide(State(plan, Estimates(bandwidth_bps=1e7, device_slowdown=2.4), slo))
    assert second.cut == 0                     # 4 % gain < 10 % margin: stay
    assert DynoPolicy(margin=0.0).decide(State(plan, Estimates(bandwidth_bps=1e7, device_slowdown=2.4), slo)).cut == 1
    third = policy.decide(State(plan, Estimates(bandwidth_bps=1e7, device_slowdown=2.0), slo))
    assert third.cut == 1                      # 25 % gain: switch
    policy.reset()
    assert policy.decide(State(plan, Estimates(bandwidth_bps=1e7, device_slowdown=2.4), slo)).cut == 1


def test_hysteresis_does_not_hold_an_option_that_broke_the_slo():
    plan = tiny_plan()
    policy = DynoPolicy(margin=0.5, probe_every=0)
    slo = SLO(objectives=("throughput",), max_latency_ms=30.0)
    assert policy.decide(State(plan, Estimates(bandwidth_bps=1e7, device_slowdown=2.0), slo)).cut == 1
    # bandwidth collapses: cut 1 now takes 8 + 400 + 5 + 1 ms > 30 ms; device-only (20 ms) meets it
    d = policy.decide(State(plan, Estimates(bandwidth_bps=1e4, device_slowdown=2.0), slo))
    assert d.cut == 2 and d.predicted.meets_slo


def test_probe_after_a_run_of_device_only_decisions():
    # the cadence, on a link so slow that no probe could pay (probe_hope=None probes whatever the link)
    plan = tiny_plan()
    policy = DynoPolicy(probe_every=3, probe_interval_s=0.0, probe_hope=None)
    state = State(plan, Estimates(bandwidth_bps=1e3, device_slowdown=2.0), SLO.parse("throughput"))
    cuts = [policy.decide(state) for _ in range(9)]
    assert [d.cut for d in cuts] == [2, 2, 2, 1, 2, 2, 2, 1, 2]   # cut 1 sends fewest bytes
    assert cuts[3].note.startswith("probe")
    # and after at least probe_interval_s of device time: 20 ms a decision, 90 ms -> every fifth
    policy = DynoPolicy(probe_every=3, probe_interval_s=0.09, probe_hope=None)
    assert [policy.decide(state).cut for _ in range(10)] == [2, 2, 2, 2, 1, 2, 2, 2, 2, 1]
    # a fast device (0.2 ms a decision) probes no more often than every 0.5 s of its time
    fast = State(plan, Estimates(bandwidth_bps=1e3, device_slowdown=0.02), SLO.parse("throughput"))
    policy = DynoPolicy(probe_hope=None)
    probes = [i for i in range(6000) if policy.decide(fast).cut != 2]
    assert probes == [2500, 5001]
    # a device given phase 0.6 starts its first streak 60% of the way through: its first probe comes
    # after 0.2 s of device time instead of 0.5, and the cadence after it is the same; reset keeps it
    policy = DynoPolicy(probe_hope=None)
    policy.desynchronise(0.6)
    policy.reset()
    probes = [i for i in range(6000) if policy.decide(fast).cut != 2]
    assert probes == [1000, 3501]


def test_no_probe_where_no_offload_could_win_on_twice_the_widest_link_believed():
    # k_d 2: device-only 20 ms (50/s); cut 1 (500 B, 8 ms on the device, 5 ms of cloud) wins above
    # 200 kbit/s. At 150 kbit/s it loses, at twice that it would win: the device probes. At 50 kbit/s
    # twice is still too slow: no probe, whatever the cadence says
    plan = tiny_plan()
    hopeful = State(plan, Estimates(bandwidth_bps=1.5e5, device_slowdown=2.0), SLO.parse("throughput"))
    policy = DynoPolicy(probe_every=3, probe_interval_s=0.0)
    assert [policy.decide(hopeful).cut for _ in range(5)] == [2, 2, 2, 1, 2]
    hopeless = State(plan, Estimates(bandwidth_bps=5e4, device_slowdown=2.0), SLO.parse("throughput"))
    policy = DynoPolicy(probe_every=3, probe_interval_s=0.0)
    assert {policy.decide(hopeless).cut for _ in range(50)} == {2}
    # ... unless it once believed in a wider link: then it keeps probing
    policy.decide(State(plan, Estimates(bandwidth_bps=1e6, device_slowdown=2.0), SLO.parse("throughput")))
    assert 1 in {policy.decide(hopeless).cut for _ in range(10)}
    # a busy cloud (no capacity, a long queue) is no reason to stop: only its replies say it is free again
    busy = State(plan, Estimates(bandwidth_bps=1e7, device_slowdown=2.0, cloud_capacity=0.01, queue_ms=500.0),
                 SLO.parse("throughput"))
    policy = DynoPolicy(probe_every=3, probe_interval_s=0.0)
    assert [policy.decide(busy).cut for _ in range(5)] == [2, 2, 2, 1, 2]


def test_a_streak_of_input_offloads_runs_one_inference_on_the_device():
    # k_d 10 on a fast link: cut 0 (10 ms of cloud) beats cut 1 (40 ms on the device) and device-only
    # (100 ms); cut 0 runs no layer on the device, so after a streak one inference goes there to read
    # the device's speed again
    plan = tiny_plan()
    state = State(plan, Estimates(bandwidth_bps=1e7, device_slowdown=10.0), SLO.parse("throughput"))
    policy = DynoPolicy(probe_every=3, probe_interval_s=0.0)
    decisions = [policy.decide(state) for _ in range(9)]
    assert [d.cut for d in decisions] == [0, 0, 0, 2, 0, 0, 0, 2, 0]
    assert decisions[3].note.startswith("probe: one inference on the device")
    # and after at least probe_interval_s of the pipeline's time: 10 ms a decision, 50 ms -> every fifth
    policy = DynoPolicy(probe_every=3, probe_interval_s=0.05)
    assert [policy.decide(state).cut for _ in range(10)] == [0, 0, 0, 0, 2, 0, 0, 0, 0, 2]
    # an offload at cut 1 runs its head on the device: no device probe however long the streak
    slow_cloud = State(plan, Estimates(bandwidth_bps=1e7, device_slowdown=2.0), SLO.parse("throughput"))
    policy = DynoPolicy(probe_every=3, probe_interval_s=0.0)
    assert {policy.decide(slow_cloud).cut for _ in range(50)} == {1}


# ------------------------------------------------------------------------------------------ baselines

def test_registry():
    assert names() == sorted(["dyno", "dyno-mix", "device-only", "cloud-only", "cloud-only-raw", "neurosurgeon",
                              "split-int8", "jalad"])
    with pytest.raises(PolicyError, match="unknown policy 'nope'; known: cloud-only"):
        make("nope")
    with pytest.raises(PolicyError, match="bad arguments"):
        make("dyno", wings=2)
    assert make("jalad", nominal_bandwidth_bps=1e6).name == "jalad"


def test_device_only_and_cloud_only():
    plan = make_plan(6, seed=0, image_qualities=(50, 85, 95))
    state = State(plan, EST, SLO())
    assert make("device-only").decide(state) == Decision(5, None, None, make("device-only").decide(state).predicted)
    d = make("cloud-only").decide(state)
    assert (d.cut, d.codec, d.bits) == (0, "jpeg", 95)      # nearest to 90; ties go to the higher quality
    assert (make("cloud-only", quality=60).decide(state).bits) == 50
    d = make("cloud-only-raw").decide(state)
    assert (d.cut, d.codec, d.bits) == (0, "fp32", None)


def _three_way_plan() -> Plan:
    """Input (fp32 40 kB, 8-bit 30 kB, jpeg 4 kB), cut 1 (fp32 16 kB, 8-bit 2 kB, 2-bit 600 B lossy), output."""
    cuts = (
        CutPlan(id=0, name="input", shape=INPUT_SHAPE, nonnegative=True, device_ms=0.0, cloud_ms={1: 10.0},
                options=(Option(codec="fp32", bits=None, bytes=40_000, accuracy=0.9),
                         Option(codec="shuffle-lz4", bits=8, bytes=30_000, accuracy=0.9),
                         Option(codec="jpeg", bits=90, bytes=4_000, accuracy=0.895))),
        CutPlan(id=1, name="mid", shape=(4, 32, 32), nonnegative=True, device_ms=2.0, cloud_ms={1: 8.0},
                options=(Option(codec="fp32", bits=None, bytes=16_000, accuracy=0.9),
                         Option(codec="shuffle-lz4", bits=8, bytes=2_000, accuracy=0.899),
                         Option(codec="shuffle-lz4", bits=2, bytes=600, accuracy=0.85))),
        CutPlan(id=2, name="out", shape=(10,), nonnegative=False, device_ms=10.0, cloud_ms={1: 0.0}),
    )
    return Plan(model="three", weights_sha256="0" * 64, input_shape=INPUT_SHAPE, num_classes=10,
                accuracy_fp32=0.9, samples=10, device_profile="t", cloud_profile="t", cuts=cuts)


def test_neurosurgeon_is_min_latency_over_fp32_splits():
    plan = _three_way_plan()
    slo = SLO.parse("throughput;drop<=1")
    ns = make("neurosurgeon")
    # fast link: sending the raw input (40 kB at 1 Gbit/s = 0.3 ms + 10 ms cloud) beats cut 1 and device
    d = ns.decide(State(plan, Estimates(bandwidth_bps=1e9, rtt_ms=1, device_slowdown=2), slo))
    assert (d.cut, d.codec) == (0, "fp32")
    # 10 Mbit/s: input 32 + 10 = 42 ms; cut 1: 4 + 12.8 + 8 = 24.8 ms; device 20 ms -> device-only
    d = ns.decide(State(plan, Estimates(bandwidth_bps=1e7, rtt_ms=1, device_slowdown=2), slo))
    assert d.cut == 2
    # slow device (kd 10): device 100 ms; cut 1 20 + 12.8 + 8 + 1; input 43 -> cut 1, still fp32
    d = ns.decide(State(plan, Estimates(bandwidth_bps=1e7, rtt_ms=1, device_slowdown=10), slo))
    assert (d.cut, d.codec) == (1, "fp32")
    assert make("neurosurgeon", objective="energy").objectives == ("energy",)


def test_split_int8_uses_8_bits_and_maximises_throughput():
    plan = _three_way_plan()
    slo = SLO.parse("throughput")
    d = make("split-int8").decide(State(plan, Estimates(bandwidth_bps=1e6, device_slowdown=2), slo))
    # 1 Mbit/s: cut 1 8-bit: stages 4 / 16 + the request's 1.9 / 8 ms -> 56/s; input fp32 320 ms; device
    # 20 ms (50/s)
    assert (d.cut, d.codec, d.bits) == (1, "shuffle-lz4", 8)
    assert d.predicted.throughput == pytest.approx(1000 / link_ms(plan, 2000))
    # DynO may go to 2 bits when the SLO allows the drop; split-int8 stays at 8
    assert make("dyno").decide(State(plan, Estimates(bandwidth_bps=1e6, device_slowdown=2), slo)).bits == 2
    # an accuracy constraint it cannot meet at 8 bits is reported
    strict = SLO.parse("throughput;drop<=0.05")
    d = make("split-int8").decide(State(plan, Estimates(bandwidth_bps=1e6, device_slowdown=2), strict))
    assert d.cut in (0, 2) and d.predicted.meets_slo


def test_jalad_decouples_again_after_a_bandwidth_step():
    plan = _three_way_plan()
    slo = SLO.parse("throughput;drop<=1")
    jalad = make("jalad", nominal_bandwidth_bps=1e6)
    est = Estimates(bandwidth_bps=1e6, device_slowdown=2, rtt_ms=1)
    # at 1 Mbit/s, kd 2: cut 1 8-bit: 4 + 16 + 8 + 1 = 29 ms; 2-bit breaks the drop; device 20 ms
    assert jalad.decide(State(plan, est, slo)).cut == 2
    assert jalad.decide(State(plan, dataclasses.replace(est, bandwidth_bps=1.2e6), slo)).cut == 2
    assert jalad.choices == 1                               # a 20% change is within its 25%: no new choice
    # a step to 100 Mbit/s: cut 1 8-bit = 4 + 0.16 + 8 + 1 = 13.2 ms beats the input (14.2) and the device
    d = jalad.decide(State(plan, dataclasses.replace(est, bandwidth_bps=1e8), slo))
    assert (d.cut, d.codec, d.bits) == (1, "shuffle-lz4", 8) and jalad.choices == 2
    # it stays while the estimate stays near what it chose for, not near the first nominal figure
    assert jalad.decide(State(plan, dataclasses.replace(est, bandwidth_bps=0.9e8), slo)).cut == 1
    # and steps back down with the link
    assert jalad.decide(State(plan, dataclasses.replace(est, bandwidth_bps=1e5), slo)).cut == 2
    assert jalad.choices == 3
    # JALAD prices the cloud from its profile: the server's queue does not move it (Neurosurgeon's does)
    busy = dataclasses.replace(est, bandwidth_bps=1e5, queue_ms=500.0)
    assert make("jalad").decide(State(plan, dataclasses.replace(busy, bandwidth_bps=1e8), slo)).cut == 1
    jalad.reset()
    assert jalad.decide(State(plan, dataclasses.replace(est, bandwidth_bps=1e8), SLO.parse("throughput;drop<=10"))
                        ).bits == 2


def test_neurosurgeon_moves_towards_the_device_when_the_server_is_loaded():
    plan = _three_way_plan()
    slo = SLO.parse("throughput;drop<=1")
    idle = Estimates(bandwidth_bps=1e9, rtt_ms=1, device_slowdown=2)
    assert make("neurosurgeon").decide(State(plan, idle, slo)).cut == 0     # 11.3 ms to the cloud, 20 on device
    loaded = dataclasses.replace(idle, queue_ms=30.0, cloud_capacity=0.3)   # requests wait 30 ms there
    d = make("neurosurgeon").decide(State(plan, loaded, slo))
    assert d.cut == 2 and d.predicted.latency_ms == pytest.approx(20.0)


# ------------------------------------------------------------------------------------- the cloud model

def _fed(plan, *, own_per_s: float, headroom: float, cut: int = 0) -> Estimates:
    """Monitors after one second of replies at ``cut``: this device used ``own_per_s`` worker-seconds
    per second of the cloud, and the server reported ``headroom`` left."""
    from dyno.monitor import Monitors

    monitors = Monitors(plan, initial_bandwidth_bps=1e6, initial_rtt_ms=10.0, initial_slowdown=4.0)
    tail_ms = plan.cuts[cut].cloud_ms[1]
    n = round(own_per_s * 1000 / tail_ms)
    for k in range(n):
        monitors.record_reply(cut, tail_ms, 1, 0.0, headroom, at=k / n)
    return monitors.estimates()


def test_a_device_saturating_the_cloud_alone_keeps_its_cut():
    plan = tiny_plan()   # at k_d 4: device-only 40 ms, cut 1 16 ms on the device, cut 0 bound by 10 ms of cloud
    alone = _fed(plan, own_per_s=1.0, headroom=0.0)        # the cloud is busy, all of it with this device
    assert alone.cloud_capacity == pytest.approx(1.0)
    d = make("dyno").decide(State(plan, alone, SLO.parse("throughput")))
    assert d.cut == 0 and d.predicted.throughput == pytest.approx(100.0)


def test_load_from_others_moves_work_to_the_device_only_as_far_as_the_slo_allows():
    plan = tiny_plan()
    crowded = _fed(plan, own_per_s=0.2, headroom=0.0)      # others use the rest of the cloud
    assert crowded.cloud_capacity == pytest.approx(0.2)
    d = make("dyno").decide(State(plan, crowded, SLO.parse("throughput")))
    assert d.cut == 1                                      # 5 ms of cloud a frame at 0.2: 40/s, beats 20 and 25
    # all on the device would be 25/s but take 40 ms; with latency <= 35 ms it must keep offloading
    d = make("dyno").decide(State(plan, crowded, SLO.parse("cloud_cost;latency<=35")))
    assert d.cut != 2 and d.predicted.meets_slo
    d = make("dyno").decide(State(plan, crowded, SLO.parse("cloud_cost")))
    assert d.cut == 2                                      # nothing binds: onload it all


def test_headroom_lets_a_device_grow_into_an_idle_cloud():
    plan = tiny_plan()
    idle = _fed(plan, own_per_s=0.2, headroom=0.8)
    assert idle.cloud_capacity == pytest.approx(1.0)
    assert make("dyno").decide(State(plan, idle, SLO.parse("throughput"))).cut == 0


def test_the_onload_preset_and_more_constraints():
    slo = SLO.parse("onload")
    assert slo == SLO.parse("cloud_cost,throughput;throughput>=cloud-only;drop<=1")
    tight = SLO.parse("onload;latency<=200;drop<=0.5")
    assert (tight.objectives, tight.max_latency_ms, tight.max_accuracy_drop, tight.min_throughput_of) == (
        ("cloud_cost", "throughput"), 200.0, 0.5, "cloud-only")


# ------------------------------------------------------------------------------ the accuracy bound

def _bound_plan(measured: tuple[tuple[int, float, float], ...]) -> Plan:
    """cut 1 offers lz4 at 2..8 bits, 100 bytes a bit; ``measured`` (bits, drop points, se
    points) are measured, the rest inferred lossless. The input sends only a huge fp32 tensor."""
    rows = {b: (0.0, None, False) for b in range(2, 9)}
    for bits, drop, se in measured:
        rows[bits] = (drop, se, True)
    options = tuple(Option(codec="shuffle-lz4", bits=b, bytes=100.0 * b, accuracy=0.9 - drop / 100,
                           measured=m, drop_se=None if se is None else se / 100, samples=500 if m else 0)
                    for b, (drop, se, m) in rows.items())
    cuts = (
        CutPlan(id=0, name="input", shape=INPUT_SHAPE, nonnegative=True, device_ms=0.0, cloud_ms={1: 1.0},
                options=(Option(codec="fp32", bits=None, bytes=1e9, accuracy=0.9),)),
        CutPlan(id=1, name="mid", shape=(16, 16, 16), nonnegative=True, device_ms=1.0, cloud_ms={1: 1.0},
                options=options),
        CutPlan(id=2, name="out", shape=(10,), nonnegative=False, device_ms=1000.0, cloud_ms={1: 0.0}),
    )
    return Plan(model="bound", weights_sha256="0" * 64, input_shape=INPUT_SHAPE, num_classes=10,
                accuracy_fp32=0.9, samples=500, device_profile="t", cloud_profile="t", cuts=cuts)


def test_the_drop_is_bounded_with_its_standard_error():
    est = Estimates(bandwidth_bps=1e5, device_slowdown=1.0)   # the link binds: fewest bits win
    plan = _bound_plan(((3, 0.5, 0.4), (4, 0.2, 0.1)))
    # 3 bits: 0.5 + 1.645 * 0.4 = 1.16 > 1 point at 95%; 4 bits: 0.2 + 0.16 meets it
    assert make("dyno").decide(State(plan, est, SLO.parse("throughput;drop<=1"))).bits == 4
    # at 50% confidence the point estimate decides, as before: 3 bits
    assert make("dyno").decide(State(plan, est, SLO.parse("throughput;drop<=1;conf=0.5"))).bits == 3
    assert SLO.parse("throughput;drop<=1;conf=0.9").confidence == 0.9
    assert str(SLO.parse("throughput;conf=0.9")) == "throughput;conf=0.9"
    with pytest.raises(PolicyError, match="confidence"):
        SLO.parse("throughput;conf=1.5")


def test_an_inferred_width_needs_a_measured_width_at_or_below_it_that_meets_the_bound():
    est = Estimates(bandwidth_bps=1e5, device_slowdown=1.0)
    slo = SLO.parse("throughput;drop<=1")
    # only 6 bits is measured, and its bound fails: 2..5 (below it) and 7, 8 (no measured width at or
    # below them meets it) are all out; the input at 8 bits (lossless for an 8-bit image) is chosen
    plan = _bound_plan(((6, 0.9, 0.5),))
    model = PerfModel(plan)
    d = make("dyno").decide(State(plan, est, slo))
    assert (d.cut, d.codec, d.bits) == (0, "shuffle-lz4", 8)
    bounds = {model.rows[i].bits: model.drop_bound(0.95)[i] for i in range(len(model.rows)) if model.rows[i].cut == 1}
    assert all(math.isinf(bounds[b]) for b in (2, 3, 4, 5)) and bounds[6] == pytest.approx(0.9 + 1.645 * 0.5, 1e-3)
    assert bounds[7] == bounds[8] == bounds[6]
    # a measured 5-bit that meets the bound makes 5 and every inferred width above it usable
    plan = _bound_plan(((5, 0.3, 0.1), (6, 0.9, 0.5)))
    d = make("dyno").decide(State(plan, est, slo))
    assert (d.cut, d.bits) == (1, 5)
    bounds = {r.bits: b for r, b in zip(PerfModel(plan).rows, PerfModel(plan).drop_bound(0.95)) if r.cut == 1}
    assert bounds[7] == pytest.approx(0.3 + 1.645 * 0.1, 1e-3) and math.isinf(bounds[4])


def test_the_latency_bound_counts_the_wait_of_frames_arriving_at_the_slo_s_rate():
    from dyno.policy.rows import wait_at_rate

    # a pipeline of 100/s fed at 50/s: M/D/1, rho 0.5, wait 0.5 / (2 * 0.5) * 10 ms = 5 ms
    assert wait_at_rate(50.0, 100.0, cap=7) == pytest.approx(5.0)
    # fed at 150/s it saturates: the 7 frames the window holds wait a service time each, the rest dropped
    assert wait_at_rate(150.0, 100.0, cap=7) == pytest.approx(70.0)
    assert wait_at_rate(None, 100.0, cap=7) == 0.0
    # tiny plan, k_d 4: device-only 40 ms (25/s); cut 1 16 ms on the device and 500 B (with the request's
    # envelope and framing, dyno.wire) in 31.25 ms on the link: 32/s, just above 30 frames/s, so its frames wait 0.94 / (2 x 0.06) x 31.25
    # = 244 ms and it breaks latency <= 200 though its own latency is 52 ms. Nothing meets the SLO;
    # device-only (frames wait one service time: 80 ms) misses only the rate and is the least violating
    plan = tiny_plan()
    slo = SLO.parse("throughput;latency<=200;throughput>=30")
    est = Estimates(bandwidth_bps=link_ms(plan, 500) / 31.25 * 1e6, device_slowdown=4.0, rtt_ms=0.0)
    d = DynoPolicy(probe_every=0).decide(State(plan, est, slo, 1, 8))
    assert d.cut == 2 and not d.predicted.meets_slo
    # without the frame rate in the SLO the offload's own 52 ms are what counts, and it is chosen
    d = DynoPolicy(probe_every=0).decide(State(plan, est, SLO.parse("throughput;latency<=200"), 1, 8))
    assert d.cut == 1 and d.predicted.latency_ms == pytest.approx(16 + 31.25 + 5)


def test_when_nothing_meets_the_slo_accuracy_holds_and_latency_and_rate_give_way():
    # k_d 10 at 100 kbit/s, 30/s asked: device-only 10/s, cut 1 in fp32 12.2/s (1,024 B), cut 1 at 8 bits
    # 25/s (500 B) but 1.05 points below fp32. Counting violations alone the 8-bit row is nearest (0.17
    # for the rate + 0.05 for the accuracy); the accuracy holds where any row holds it: cut 1 in fp32
    plan = tiny_plan(accuracy=(0.80, 0.8895), accuracy_fp32=0.9)
    slo = SLO.parse("throughput;drop<=1;throughput>=30")
    d = DynoPolicy(probe_every=0).decide(State(plan, Estimates(bandwidth_bps=1e5, device_slowdown=10.0), slo))
    assert (d.cut, d.codec) == (1, "fp32") and not d.predicted.meets_slo and "least-violating" in d.note
