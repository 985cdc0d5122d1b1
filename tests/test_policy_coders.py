"""The coder as the scheduler's third dimension: a slow link gets the stronger coder, a fast one LZ4;
a policy restricted to LZ4 never leaves it."""

from __future__ import annotations

import pytest

from dyno.errors import PolicyError
from dyno.plan import CutPlan, Option, Plan
from dyno.policy import SLO, Estimates, State, make
from dyno.simulate import synthetic_plan
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
    for bandwidth, want in ((1e9, "fp32"), (1e7, "shuffle-lz4"), (3e6, "centre-zstd"), (1e6, "zstd")):
        d = decide(make("dyno", probe_every=0), plan, bandwidth, slowdown=8.0)
        base = decide(make("dyno", codecs=("shuffle-lz4",), probe_every=0), plan, bandwidth, slowdown=8.0)
        assert d.codec == want, (bandwidth, d)
        assert base.codec in ("shuffle-lz4", "fp32")
        assert d.predicted.throughput >= base.predicted.throughput * (1.05 if want in CODERS[1:] else 1.0)
