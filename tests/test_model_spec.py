"""A user's own model from the command line: ``module.path:callable`` and the ``dyno.models`` entry-point
group resolve like zoo names; a plan records how to rebuild its model and refuses other weights; and
`dyno analyze mypkg.models:build --weights w.pt` then `dyno serve` and `dyno run` work end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dyno import zoo
from dyno.errors import ConfigError, ModelError, PlanError
from dyno.plan import Plan

TESTS = Path(__file__).resolve().parent
FASHION = Path(os.environ.get("DYNO_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
SPEC = "mypkg.models:build"


def test_a_spec_resolves_to_an_entry_named_by_the_spec():
    entry = zoo.get_model(SPEC)
    assert entry.name == SPEC and entry.input_shape == (1, 28, 28) and entry.num_classes == 10
    torch.manual_seed(0)
    model = zoo.load_model(SPEC, weights="random")
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_callable_returning_a_model_entry_keeps_its_preprocessing_under_the_spec_name():
    entry = zoo.get_model("mypkg.models:entry")
    assert entry.name == "mypkg.models:entry" and entry.default_data == "fashion-mnist"
    assert entry.preprocess is zoo.get_model("fmnist-resnet").preprocess


@pytest.mark.parametrize("spec, message", [
    ("mypkg.models:", "not a model spec"),
    ("no_such_package_xyz.models:build", "cannot import 'no_such_package_xyz'"),
    ("mypkg.models:nothing", "has no attribute 'nothing'"),
    ("mypkg.models:not_a_model", "returned int"),
    ("mypkg.models:shapeless", "input shape is unknown"),
])
def test_bad_specs_are_model_errors_saying_what_is_wrong(spec, message):
    with pytest.raises(ModelError, match=message):
        zoo.get_model(spec)


def test_a_package_registers_a_model_in_the_entry_point_group(tmp_path, monkeypatch):
    info = tmp_path / "mymodels-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mymodels\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[dyno.models]\nside-net = mypkg.models:build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = zoo.get_model("side-net")
    assert entry.name == "side-net" and entry.input_shape == (1, 28, 28)
    with pytest.raises(ModelError, match="side-net"):  # listed among the known names
        zoo.get_model("no-such-model")


def test_weights_from_a_file_and_the_refusal_naming_both_hashes(tmp_path):
    from dyno.offline import nominal_plan

    torch.manual_seed(0)
    model = zoo.load_model(SPEC, weights="random")
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    same = zoo.load_model(SPEC, weights=str(path))
    assert zoo.weights_hash(same) == zoo.weights_hash(model)
    plan = nominal_plan(model, name=SPEC, options=(("fp32", None),))
    plan_path = plan.save(tmp_path / "plan.json")
    torch.manual_seed(1)
    other = zoo.load_model(SPEC, weights="random")
    with pytest.raises(PlanError) as error:
        Plan.load(plan_path, model=other)
    assert zoo.weights_hash(model) in str(error.value) and zoo.weights_hash(other) in str(error.value)


def test_serve_and_run_default_to_the_weights_the_plan_records(tmp_path):
    from dataclasses import replace

    from dyno.cli._model_args import plan_weights, weights_source
    from dyno.offline import nominal_plan

    torch.manual_seed(0)
    model = zoo.load_model(SPEC, weights="random")
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    plan = replace(nominal_plan(model, name=SPEC, options=(("fp32", None),)), weights=weights_source(weights))
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path).weights == str(weights.resolve())
    assert plan_weights(path, None) == str(weights.resolve())
    assert plan_weights(path, "random") == "random"
    weights.unlink()
    with pytest.raises(ConfigError, match="that file is gone"):
        plan_weights(path, None)


def test_plans_made_before_the_weights_were_recorded_still_load():
    plan = Plan.load(TESTS / "data" / "tiny-plan-v1.json")
    assert plan.weights == "" and plan.model == "FlatNet"


def _dyno(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dyno", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=TESTS.parent)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) is not installed")
def test_analyze_serve_and_run_a_user_model_from_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "DYNO_CACHE": str(tmp_path / "cache")}
    torch.manual_seed(0)
    weights, plan_path, ready = tmp_path / "w.pt", tmp_path / "plan.json", tmp_path / "ready.json"
    torch.save(zoo.load_model(SPEC, weights="random").state_dict(), weights)
    analyze = _dyno("analyze", SPEC, "--weights", str(weights), "--data", str(FASHION), "--limit", "40",
                    "--out", str(plan_path), "--quiet", "--json", env=env)
    out, err = analyze.communicate(timeout=300)
    assert analyze.returncode == 0, err
    plan = Plan.load(plan_path)
    assert plan.model == SPEC and plan.weights == str(weights.resolve())
    server = _dyno("serve", "--plan", str(plan_path), "--port", "0", "--threads", "1", "--ready-file", str(ready),
                   "--metrics-port", "-1", env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        address = json.loads(ready.read_text())["address"]
        client = _dyno("run", "--plan", str(plan_path), "--server", address, "--data", "fashion-mnist", "--n", "16",
                       "--policy", "cloud-only-raw", "--json", env=env)
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["cloud_replies"] == 16 and summary["cloud_errors"] == []
        # the same plan with other weights is refused, naming both hashes
        torch.manual_seed(1)
        other = tmp_path / "other.pt"
        torch.save(zoo.load_model(SPEC, weights="random").state_dict(), other)
        refused = _dyno("run", "--plan", str(plan_path), "--weights", str(other), "--server", address, "--n", "4",
                        env=env)
        _, err = refused.communicate(timeout=60)
        assert refused.returncode == 1
        assert plan.weights_sha256 in err and zoo.weights_hash(zoo.read_state_dict(other)) in err
    finally:
        server.terminate()
        server.wait(30)
