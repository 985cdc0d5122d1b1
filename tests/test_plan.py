"""The plan file: round trip, validation of every field, refusal of other models and weights."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from dyno.errors import PlanError
from dyno.plan import VERSION, CutPlan, InputSpec, Option, Plan, options_table


def small_plan(weights_sha256: str = "ab" * 32) -> Plan:
    input_options = (
        Option(codec="fp32", bits=None, bytes=3173.0, accuracy=0.9, agreement=1.0, samples=100),
        Option(codec="shuffle-lz4", bits=4, bytes=420.0, accuracy=0.895, agreement=0.98, samples=100,
               drop_se=0.004, encode_ms=0.1, decode_ms=0.05),
        Option(codec="shuffle-lz4", bits=2, bytes=200.0, accuracy=0.5, measured=False, note="inferred"),
        Option(codec="jpeg", bits=90, bytes=700.0, accuracy=0.9, samples=100),
    )
    middle_options = (
        Option(codec="fp32", bits=None, bytes=8000.0, accuracy=0.9),
        Option(codec="shuffle-lz4", bits=3, bytes=300.0, accuracy=0.893, clip=(0.0, 2.5), samples=40,
               note="stopped early"),
        Option(codec="shuffle-lz4", bits=5, bytes=500.0, accuracy=0.9),
    )
    cuts = (
        CutPlan(id=0, name="x", shape=(1, 28, 28), nonnegative=False, device_ms=0.0, cloud_ms={1: 1.0, 8: 4.0},
                options=input_options),
        CutPlan(id=1, name="relu", shape=(8, 14, 14), nonnegative=True, device_ms=0.4, cloud_ms={1: 0.5, 8: 2.0},
                options=middle_options, clip=(0.0, 2.5), calibration={"method": "percentile", "used": True}),
        CutPlan(id=2, name="fc", shape=(10,), nonnegative=False, device_ms=0.9, cloud_ms={1: 0.0, 8: 0.0}),
    )
    return Plan(model="tiny", weights_sha256=weights_sha256, input_shape=(1, 28, 28), num_classes=10,
                accuracy_fp32=0.9, samples=100, device_profile="device@test (1 thread)",
                cloud_profile="cloud@test (1 thread)", cuts=cuts, data="fashion-mnist",
                input_spec=InputSpec(mean=(0.286,), std=(0.353,), image_mode="L"), notes={"k": [1, 2]})


def test_round_trip_keeps_every_field_and_the_hash(tmp_path):
    plan = small_plan()
    path = plan.save(tmp_path / "plans" / "tiny.json")
    again = Plan.load(path)
    assert again == plan
    assert again.hash == plan.hash
    assert again.cuts[1].options[1].clip == (0.0, 2.5)
    assert again.cuts[0].cloud_ms == {1: 1.0, 8: 4.0}
    assert again.input_spec.image_mode == "L"
    assert not (tmp_path / "plans" / "tiny.json.tmp").exists()


def test_ints_and_floats_give_the_same_hash():
    a = small_plan()
    b = Plan.from_dict(json.loads(json.dumps(a.to_dict()).replace('"bytes": 420.0', '"bytes": 420')))
    assert a.hash == b.hash


def test_min_bits_and_lookups():
    plan = small_plan()
    assert plan.min_bits(0, 0.01).bits == 4
    assert plan.min_bits(1, 0.01).bits == 3          # 0.7 points below fp32
    assert plan.min_bits(1, 0.005).bits == 5
    assert plan.min_bits(1, 0.0).bits == 5
    assert plan.min_bits(0, 0.001) is None
    assert plan.cuts[0].option("jpeg", 90).bytes == 700.0
    assert plan.cuts[1].option("fp16") is None
    assert len(options_table(plan.cuts)) == 7
    assert plan.drop(plan.cuts[1].options[1]) == pytest.approx(0.007)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


def test_plan_for_other_weights_is_refused(tmp_path):
    from dyno.zoo import weights_hash

    torch.manual_seed(0)
    model = Tiny()
    plan = small_plan(weights_hash(model))
    path = plan.save(tmp_path / "p.json")
    assert Plan.load(path, model=model) == plan
    other = Tiny()  # other random weights
    with pytest.raises(PlanError, match="weights"):
        Plan.load(path, model=other)
    with pytest.raises(PlanError, match="dyno analyze"):
        Plan.load(path, weights_sha256="00" * 32)


def _write(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    return path


def _edited(edit):
    data = small_plan().to_dict()
    edit(data)
    return json.dumps(data)


@pytest.mark.parametrize("text,match", [
    (json.dumps(small_plan().to_dict())[:300], "corrupt or truncated"),
    ("", "corrupt or truncated"),
    ("[1, 2]", "not a dyno plan"),
    (_edited(lambda d: d.update(version=VERSION + 1)), "version"),
    (_edited(lambda d: d.pop("format")), "not a dyno plan"),
    (_edited(lambda d: d["cuts"][1].pop("device_ms")), "cut 1: missing field.*device_ms"),
    (_edited(lambda d: d.pop("weights_sha256")), "missing field.*weights_sha256"),
    (_edited(lambda d: d["cuts"][1]["options"][0].update(colour="red")), "unknown field.*colour"),
    (_edited(lambda d: d["cuts"][1]["options"][0].update(accuracy="high")), "accuracy must be a finite number"),
    (_edited(lambda d: d["cuts"][1]["options"][0].update(accuracy=1.5)), "accuracy must be within"),
    (_edited(lambda d: d["cuts"][1]["options"][1].update(bits=17)), "bits must be 1..16"),
    (_edited(lambda d: d["cuts"][1]["options"][1].update(codec="gzip")), "unknown codec"),
    (_edited(lambda d: d["cuts"][1].update(cloud_ms={"one": 1.0})), "keys must be integers"),
    (_edited(lambda d: d["cuts"][1].update(shape="8x14x14")), "shape must be a list"),
    (_edited(lambda d: d["cuts"].pop(1)), "cut ids|input cut|cut 0"),
    (_edited(lambda d: d["cuts"][2]["options"].append(d["cuts"][1]["options"][0])), "device-only"),
    (_edited(lambda d: d["cuts"][1]["options"].append(d["cuts"][0]["options"][3])), "input cut only"),
    (_edited(lambda d: d["cuts"][1]["options"].append(d["cuts"][1]["options"][0])), "duplicate"),
])
def test_corrupt_plans_give_a_clear_plan_error(tmp_path, text, match):
    with pytest.raises(PlanError, match=match):
        Plan.load(_write(tmp_path, text))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(tmp_path, constant):
    text = json.dumps(small_plan().to_dict()).replace('"device_ms": 0.4', f'"device_ms": {constant}')
    assert constant in text
    with pytest.raises(PlanError, match=constant):
        Plan.load(_write(tmp_path, text))


def test_nan_cannot_be_saved_either():
    with pytest.raises(PlanError, match="accuracy"):
        Option(codec="fp32", bits=None, bytes=1.0, accuracy=math.nan)
    with pytest.raises(PlanError, match="device_ms"):
        CutPlan(id=1, name="a", shape=(2,), nonnegative=False, device_ms=math.inf, cloud_ms={1: 1.0})


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(PlanError, match="dyno analyze"):
        Plan.load(tmp_path / "none.json")


# ------------------------------------------------------------------------------------------ coders
def coder_plan() -> Plan:
    """small_plan with every coder at 3 bits on the inner cut (the same codes: the same accuracy)."""
    plan = small_plan()
    coders = tuple(Option(codec=codec, bits=3, bytes=size, accuracy=0.893, clip=(0.0, 2.5), samples=40,
                          encode_ms=enc, decode_ms=dec)
                   for codec, size, enc, dec in (("centre-zstd", 250.0, 0.3, 0.2), ("zstd", 260.0, 0.25, 0.1),
                                                 ("rans", 231.5, 0.9, 1.4)))
    middle = dataclasses.replace(plan.cuts[1], options=plan.cuts[1].options + coders)
    return dataclasses.replace(plan, cuts=(plan.cuts[0], middle, plan.cuts[2]))


def test_coder_rows_round_trip_and_are_listed_per_width(tmp_path):
    plan = coder_plan()
    again = Plan.load(plan.save(tmp_path / "coders.json"))
    assert again == plan and again.hash == plan.hash
    middle = again.cuts[1]
    assert [o.codec for o in middle.coders(3)] == ["rans", "centre-zstd", "zstd", "shuffle-lz4"]
    assert {o.accuracy for o in middle.coders(3)} == {0.893}
    assert middle.option("rans", 3).bytes == 231.5 and middle.coders(5)[0].codec == "shuffle-lz4"
    assert [(c, o.label) for c, o in options_table(again.cuts) if o.codec == "rans"] == [(1, "rans:3")]


def test_restricted_keeps_only_the_named_coders_and_every_float_and_image_option():
    plan = coder_plan()
    lz4 = plan.restricted(("shuffle-lz4",))
    assert [o.label for o in lz4.cuts[1].options] == [o.label for o in small_plan().cuts[1].options]
    assert [o.label for o in lz4.cuts[0].options] == [o.label for o in plan.cuts[0].options]
    assert lz4.notes["codecs"] == ["shuffle-lz4"] and lz4.weights_sha256 == plan.weights_sha256
    both = plan.restricted(("shuffle-lz4", "rans"))
    assert {o.codec for o in both.cuts[1].options} == {"fp32", "shuffle-lz4", "rans"}
    with pytest.raises(PlanError, match="unknown quantising codecs"):
        plan.restricted(("gzip",))


def test_rans_rows_are_at_most_8_bits(tmp_path):
    data = coder_plan().to_dict()
    data["cuts"][1]["options"][-1]["bits"] = 9
    path = tmp_path / "wide.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="bits must be 1..8 for rans"):
        Plan.load(path)


def test_a_plan_written_before_the_coders_still_loads_and_schedules():
    from pathlib import Path

    from dyno.policy import SLO, Estimates, State, make

    plan = Plan.load(Path(__file__).parent / "data" / "tiny-plan-v1.json")  # saved before the coders
    quantised = {o.codec for c in plan.cuts for o in c.options if o.packing.is_quantised}
    assert quantised == {"shuffle-lz4"}
    assert plan.restricted(("shuffle-lz4",)).cuts == plan.cuts
    for policy in (make("dyno"), make("dyno", codecs=("shuffle-lz4",))):
        decision = policy.decide(State(plan, Estimates(bandwidth_bps=1e6), SLO.parse("throughput;drop<=1")))
        assert decision.codec in (None, "fp32", "fp16", "shuffle-lz4", "jpeg", "webp")
