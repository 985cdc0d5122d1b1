"""Format compatibility: plan and profile files written before the offline package still load, keep
their hash, save back byte for byte, drive ``dyno plan show`` and combine into a new plan."""

import json
import shutil

import pytest
import torch
from conftest import DATA, needs_fmnist
from nets import TinyNet

from dyno import offline, partition, zoo
from dyno.errors import PlanError
from dyno.plan import Plan

PLAN = DATA / "tiny-plan-v1.json"
PLAN_HASH = "1cf6ca0590a688eb0a945f15be471d6cb80ff46e311c92598af97c5e176a67de"
PROFILES = {role: DATA / f"tiny-{role}-profile-v1.json" for role in ("device", "cloud")}


class FlatNet(TinyNet):
    """TinyNet flattened with ``flatten(1)``: the model the saved files were measured on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = torch.relu(self.conv2(x)) + x
        x = self.pool(torch.relu(self.conv3(x)))
        return self.fc(x.flatten(1))


def test_the_saved_plan_loads_keeps_its_hash_and_saves_byte_for_byte(tmp_path):
    plan = Plan.load(PLAN)
    assert plan.hash == PLAN_HASH
    assert (plan.model, len(plan.cuts), plan.samples, plan.num_classes) == ("FlatNet", 10, 120, 10)
    assert plan.cuts[0].option("shuffle-lz4", 1).drop_se == pytest.approx(0.018318048122588696)
    assert plan.save(tmp_path / "again.json").read_bytes() == PLAN.read_bytes()


@pytest.mark.parametrize("role", ["device", "cloud"])
def test_the_saved_profiles_load_and_save_byte_for_byte(role, tmp_path):
    profile = offline.Profile.load(PROFILES[role], role=role)
    assert (profile.role, profile.model, profile.threads, len(profile.cuts)) == (role, "TinyNet", 1, 10)
    assert [c.name for c in profile.cuts] == [c.name for c in Plan.load(PLAN).cuts]
    first = profile.cuts[0]
    if role == "device":
        assert first.head_ms == 0.0 and first.tail_ms is None and first.encode_ms["shuffle-lz4:16"] > 0
        assert profile.method["head"] == "cumulative node timers" and len(profile.method["checks"]) == 3
    else:
        assert first.head_ms is None and list(first.tail_ms) == [1, 4] and first.decode_ms["fp32"] > 0
        assert profile.cuts[-1].tail_ms == {1: 0.0, 4: 0.0}
    assert first.bytes["fp32"] == 3173.0 and profile.to_dict()["format"] == "dyno-profile"
    assert profile.save(tmp_path / "again.json").read_bytes() == PROFILES[role].read_bytes()
    assert offline.Profile.load(tmp_path / "again.json") == profile


def _edited(tmp_path, edit):
    data = json.loads(PROFILES["device"].read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.update(format="dyno-plan"), "not a dyno profile"),
    (lambda d: d.update(speed=1), "unknown field"),
    (lambda d: d.pop("cuts"), "missing field"),
    (lambda d: d.update(role="phone"), "role must be 'device' or 'cloud'"),
    (lambda d: d["cuts"][2].update(head_ms=-1.0), "cut 2 \\(relu\\) has missing, negative or non-finite"),
    (lambda d: d["cuts"][2].update(head_ms=None), "cut 2 \\(relu\\) has missing"),
    (lambda d: d["cuts"][2]["bytes"].update(fp32="big"), "must be a finite number"),
])
def test_a_bad_profile_is_refused_naming_the_problem(tmp_path, edit, message):
    with pytest.raises(PlanError, match=message):
        offline.Profile.load(_edited(tmp_path, edit))


def test_profiles_refuse_the_wrong_role_nan_a_truncated_file_and_a_missing_one(tmp_path):
    with pytest.raises(PlanError, match="is a cloud profile, not a device profile"):
        offline.Profile.load(PROFILES["cloud"], role="device")
    path = tmp_path / "nan.json"
    path.write_text(PROFILES["device"].read_text().replace("0.02895", "NaN"))
    with pytest.raises(PlanError, match="NaN"):
        offline.Profile.load(path)
    path.write_text(PROFILES["device"].read_text()[:-100])
    with pytest.raises(PlanError, match="corrupt or truncated"):
        offline.Profile.load(path)
    with pytest.raises(PlanError, match="measure one with `dyno profile MODEL --role cloud"):
        offline.Profile.load(tmp_path / "none.json", role="cloud")


def test_the_saved_profiles_fit_only_the_model_they_were_measured_on():
    flat = partition.cuts(FlatNet().eval(), torch.zeros(1, 1, 28, 28))
    view = partition.cuts(TinyNet().eval(), torch.zeros(1, 1, 28, 28))
    for path in PROFILES.values():
        profile = offline.Profile.load(path)
        profile.check_cuts(flat)
        with pytest.raises(PlanError, match="do not match"):
            profile.check_cuts(view)


def test_plan_show_reads_the_saved_plan(tmp_path, capsys):
    from dyno.cli import main

    path = shutil.copy(PLAN, tmp_path / "plan.json")
    assert main(["plan", "show", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    plan = Plan.load(PLAN)
    assert data["model"] == "FlatNet" and [c["name"] for c in data["cuts"]] == [c.name for c in plan.cuts]
    one = plan.min_bits(1, 0.01)
    assert data["cuts"][1]["min_bits_1pt"] == one.bits and data["cuts"][1]["bytes_at_min_bits_1pt"] == one.bytes
    third = data["cuts"][3]
    assert (third["device_ms"], third["cloud_ms"]) == (plan.cuts[3].device_ms, plan.cuts[3].cloud_ms[1])
    assert main(["plan", "show", str(path)]) == 0
    assert "FlatNet" in capsys.readouterr().out


@needs_fmnist
def test_the_saved_profiles_make_a_plan_with_their_times():
    torch.manual_seed(0)
    model = FlatNet().eval()
    x, y = zoo.load_dataset("fashion-mnist", split="test").tensors(40)
    device, cloud = (offline.Profile.load(p) for p in PROFILES.values())
    plan = offline.analyze(model, data=(x, y), device_profile=PROFILES["device"], cloud_profile=cloud,
                           config=offline.SearchConfig(batch_size=20, min_samples=20), bytes_samples=2)
    assert (plan.device_profile, plan.cloud_profile) == (device.name, cloud.name)
    for cut, d, c in zip(plan.cuts, device.cuts, cloud.cuts):
        assert cut.device_ms == d.head_ms and cut.cloud_ms == c.tail_ms
        for option in cut.options:
            if option.label in d.encode_ms:  # the profiles' times where they hold the option
                assert option.encode_ms == d.encode_ms[option.label] and option.decode_ms == c.decode_ms[option.label]
            else:  # coders newer than the saved profiles: timed here, on the encodes that give the bytes
                assert option.codec in ("centre-zstd", "zstd", "rans") and option.encode_ms > 0
        assert {o.codec for o in cut.options if o.bits == 4} >= ({"shuffle-lz4"} if cut.options else set())
    assert plan.notes["device_profile"]["method"] == device.method
