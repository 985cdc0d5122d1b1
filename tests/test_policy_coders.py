"""The coder as the scheduler's third dimension: a slow link gets the stronger coder, a fast one LZ4;
a policy restricted to LZ4 never leaves it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dyno.errors import PolicyError
from dyno.plan import CutPlan, Option, Plan
from dyno.policy import SLO, Estimates, State, make
from dyno.policy.front import undominated
from dyno.policy.model import PerfModel
from dyno.simulate import synthetic_plan
from dyno.simulate.synthetic import INPUT_SHAPE
from dyno.wire import on_the_wire, request_envelope

CODERS = ("shuffle-lz4", "centre-zstd", "zstd", "rans")


def coder_plan() -> Plan:
    """Input (fp32 only), one inner cut with LZ4 and rANS at 4 bits (rANS: 30% fewer bytes, 1.3 ms more
    to encode; fp32 4 MB), and a slow device-only end."""
    inner = (Option(codec="fp32", bits=None, bytes=4e6 + 37, accuracy=0.9),
             Option(codec="shuffle-lz4", bits=4, bytes=10_000, accuracy=0.9, encode_ms=0.2, decode_ms=0.1),
             Option(codec="rans", bits=4, bytes=7_000, accuracy=0.9, encode_ms=1.5, decode_ms=2.0))
    cuts = (CutPlan(id=0, name="input", shape=(3, 224, 224), nonnegative=False, device_ms=0.0, cloud_ms={1: 10.0},
                    options=(Option(codec="fp32", bits=None, bytes=602_149, accuracy=0.9),)),
            CutPlan(id=1, name="mid", shape=(1000, 1000), nonnegative=True, device_ms=5.0, cloud_ms={1: 2.0},
                    options=inner),
            CutPlan(id=2, name="out", shape=(10,), nonnegative=True, device_ms=200.0, cloud_ms={1: 0.0}))
    return Plan(model="coders", weights_sha256="0" * 64, input_shape=(3, 224, 224), num_classes=10,
                accuracy_fp32=0.9, samples=100, device_profile="test", cloud_profile="test", cuts=cuts)


def decide(policy, plan: Plan, bandwidth_bps: float, slowdown: float = 1.0):
    estimates = Estimates(bandwidth_bps=bandwidth_bps, rtt_ms=10.0, device_slowdown=slowdown)
    return policy.decide(State(plan, estimates, SLO.parse("throughput;drop<=1")))


def test_a_slow_link_moves_the_policy_to_the_stronger_coder_and_a_fast_one_back_to_lz4():
    plan, policy = coder_plan(), make("dyno")
    seen = []
    for bandwidth in (1e9, 1e8, 1e6, 5e5, 1e6, 1e8, 1e9):
        d = decide(policy, plan, bandwidth)
        assert d.cut == 1 and d.bits == 4
        seen.append(d.codec)
    # fast: the device stage decides (LZ4 encodes 1.3 ms faster); slow: the link (rANS sends 30% less)
    assert seen == ["shuffle-lz4", "shuffle-lz4", "rans", "rans", "rans", "shuffle-lz4", "shuffle-lz4"]
    slow = decide(make("dyno"), plan, 5e5)
    wire = on_the_wire(7_000, request_envelope(plan.model))   # rANS's 7,000 B with the request's (dyno.wire)
    assert slow.predicted.throughput == pytest.approx(1000 / (8 * wire / 5e5 * 1000), rel=1e-9)


def test_a_policy_restricted_to_lz4_never_leaves_it():
    plan = coder_plan()
    lz4 = make("dyno", codecs=("shuffle-lz4",))
    for bandwidth in (1e9, 1e6, 5e5):
        d = decide(lz4, plan, bandwidth)
        assert (d.cut, d.codec, d.bits) == (1, "shuffle-lz4", 4)
    free = decide(make("dyno"), plan, 5e5)
    assert free.predicted.throughput > 1.4 * decide(lz4, plan, 5e5).predicted.throughput  # 10000 / 7000 bytes
    for bad in ("shuffle-lz4", (), ("gzip",), ("fp32",)):
        with pytest.raises(PolicyError, match="codecs must name quantising codecs"):
            make("dyno", codecs=bad)


def test_on_a_plan_with_every_coder_slow_links_choose_stronger_coders():
    plan = synthetic_plan(20, bits=tuple(range(1, 17)), codecs=CODERS, seed=3, image_qualities=())
    # on the fastest link the device's head binds whatever is sent: no quantisation (fp16 ties fp32 on
    # throughput and sends half the bytes, so DynO, pricing only undominated rows, takes it)
    for bandwidth, want in ((1e9, "fp16"), (1e7, "shuffle-lz4"), (3e6, "centre-zstd"), (1e6, "zstd")):
        d = decide(make("dyno", probe_every=0), plan, bandwidth, slowdown=8.0)
        base = decide(make("dyno", codecs=("shuffle-lz4",), probe_every=0), plan, bandwidth, slowdown=8.0)
        assert d.codec == want, (bandwidth, d)
        assert base.codec in ("shuffle-lz4", "fp16")
        assert d.predicted.throughput >= base.predicted.throughput * (1.05 if want in CODERS[1:] else 1.0)


def _one_cut_plan(options: tuple[Option, ...]) -> Plan:
    cuts = (CutPlan(id=0, name="input", shape=INPUT_SHAPE, nonnegative=True, device_ms=0.0, cloud_ms={1: 10.0},
                    options=(Option(codec="jpeg", bits=90, bytes=900.0, accuracy=0.88),)),
            CutPlan(id=1, name="mid", shape=(4, 8, 8), nonnegative=True, device_ms=4.0, cloud_ms={1: 5.0},
                    options=options),
            CutPlan(id=2, name="output", shape=(10,), nonnegative=False, device_ms=10.0, cloud_ms={1: 0.0}))
    return Plan(model="tiny", weights_sha256="0" * 64, input_shape=INPUT_SHAPE, num_classes=10, accuracy_fp32=0.9,
                samples=100, device_profile="test", cloud_profile="test", cuts=cuts)


def test_only_rows_another_row_at_their_cut_beats_on_every_figure_are_left_out():
    lz4 = Option(codec="shuffle-lz4", bits=4, bytes=800.0, accuracy=0.89, encode_ms=0.1, decode_ms=0.1, samples=100,
                 drop_se=0.002)
    plan = _one_cut_plan((
        lz4,
        dataclasses.replace(lz4, codec="zstd", bytes=500.0, encode_ms=0.3),                   # fewer bytes, slower
        dataclasses.replace(lz4, codec="rans", bytes=600.0, encode_ms=0.4, decode_ms=0.5),    # beaten by zstd
        dataclasses.replace(lz4, codec="centre-zstd", bytes=500.0, encode_ms=0.3),            # zstd's exact twin
        dataclasses.replace(lz4, bits=8, bytes=900.0, accuracy=0.9, encode_ms=0.2),           # more accurate
        dataclasses.replace(lz4, bits=6, bytes=850.0, accuracy=0.89, encode_ms=0.15),         # beaten by 4 bits
    ))
    model = PerfModel(plan)
    keep = undominated(model, confidence=0.95)
    kept = {(r.codec, r.bits) for r, k in zip(model.rows, keep) if k and r.cut == 1}
    # fp32 (inferred by the model: 4 bytes a value, no codec time, fp32's accuracy) is beaten by none
    assert kept == {("shuffle-lz4", 4), ("zstd", 4), ("centre-zstd", 4), ("shuffle-lz4", 8), ("fp32", None)}
    # at the input, the 8-bit image the model infers (a byte a value, fp32's accuracy) beats fp32
    assert {(r.codec, r.bits) for r, k in zip(model.rows, keep) if k and r.cut == 0} == {("jpeg", 90),
                                                                                        ("shuffle-lz4", 8)}
    assert keep[model.device_only]
    # only allowed rows count: without the Zstandard coders, nothing left beats rans
    allowed = np.array([r.codec not in ("zstd", "centre-zstd") for r in model.rows])
    keep = undominated(model, 0.95, allowed)
    assert keep[model.index[(1, "rans", 4)]] and not keep[model.index[(1, "zstd", 4)]]


def test_a_subset_model_prices_its_rows_as_the_whole_model_does():
    plan = synthetic_plan(12, bits=(2, 4, 8), codecs=CODERS, seed=5)
    whole = PerfModel(plan)
    keep = undominated(whole, 0.95)
    sub = whole.subset(keep)
    assert len(sub.rows) == int(keep.sum()) < len(whole.rows) and sub.rows[-1] == whole.rows[-1]
    est = Estimates(bandwidth_bps=3e6, rtt_ms=30.0, device_slowdown=4.0)
    a, b = whole.evaluate(est, 4, 8), sub.evaluate(est, 4, 8)
    for i, w in enumerate(sub.whole_index):
        assert sub.rows[i] is whole.rows[w]
        assert (b.throughput[i], b.latency[i]) == (a.throughput[w], a.latency[w])
    # an inferred width's bound reads the measured widths of the whole plan, kept or not
    assert np.array_equal(sub.drop_bound(0.95), whole.drop_bound(0.95)[sub.whole_index])


def test_dyno_policies_on_one_plan_share_one_front():
    # a fleet of a thousand simulated devices prices one set of rows per plan, not one each
    plan = synthetic_plan(12, bits=(2, 4, 8), codecs=CODERS, seed=5)
    state = State(plan, Estimates(bandwidth_bps=3e6, rtt_ms=30.0, device_slowdown=4.0), SLO.parse("throughput;drop<=1"))
    a, b, lz4 = make("dyno"), make("dyno"), make("dyno", codecs=("shuffle-lz4",))
    assert a.choose(state)[2] is b.choose(state)[2]
    assert {r.codec for r in lz4.choose(state)[2].rows} & set(CODERS[1:]) == set()
