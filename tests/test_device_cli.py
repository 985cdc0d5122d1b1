"""The device workflow from the command line: export the heads, profile them on a "device" where torch
cannot be imported, merge that profile with `dyno analyze --device-profile`, then `dyno serve` and
`dyno run --backend onnxruntime` (torch blocked) against it; the device reads the same inputs as the
torch backend (same top-1 accuracy device-only)."""

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
from dyno.plan import Plan

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'dyno[test]')")
TESTS = Path(__file__).resolve().parent
FASHION = Path(os.environ.get("DYNO_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
SPEC = "mypkg.models:build"
needs_fmnist = pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) is not installed")


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(TESTS), "DYNO_CACHE": str(tmp_path / "cache")}


def _dyno(args: list[str], env: dict, *, torch_free: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    if torch_free:
        code = "import sys; sys.modules['torch'] = None; from dyno.cli import main; sys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", code, *args]
    else:
        command = [sys.executable, "-m", "dyno", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=TESTS.parent)


@pytest.mark.slow
@needs_fmnist
def test_profile_on_the_device_then_analyze_with_that_profile(tmp_path):
    env = _env(tmp_path)
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(zoo.load_model(SPEC, weights="random").state_dict(), weights)
    done = _dyno(["export", SPEC, "--weights", str(weights), "--out", str(tmp_path / "heads"), "--quiet"], env)
    assert done.returncode == 0, done.stderr
    done = _dyno(["profile", "--role", "device", "--backend", "onnxruntime", "--heads", str(tmp_path / "heads"),
                  "--data", "fashion-mnist", "--out", str(tmp_path / "device.json"), "--quiet", "--codec-samples", "2"],
                 env, torch_free=True)
    assert done.returncode == 0, done.stderr
    profile = json.loads((tmp_path / "device.json").read_text())
    assert profile["method"]["backend"] == "onnxruntime" and profile["model"] == SPEC
    assert all(c["head_ms"] > 0 for c in profile["cuts"][1:]) and "shuffle-lz4:4" in profile["cuts"][3]["encode_ms"]
    done = _dyno(["analyze", SPEC, "--weights", str(weights), "--data", "fashion-mnist", "--limit", "40",
                  "--device-profile", str(tmp_path / "device.json"), "--out", str(tmp_path / "plan.json"), "--quiet",
                  "--json"], env)
    assert done.returncode == 0, done.stderr
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.device_profile == profile["name"]
    assert [c.device_ms for c in plan.cuts] == pytest.approx([c["head_ms"] for c in profile["cuts"]])
    option = plan.cuts[3].option("shuffle-lz4", 4)
    assert option is not None and option.encode_ms == pytest.approx(profile["cuts"][3]["encode_ms"]["shuffle-lz4:4"])


@pytest.mark.slow
@needs_fmnist
def test_serve_and_run_with_the_onnxruntime_backend(tmp_path):
    from dyno.offline import nominal_plan

    env = _env(tmp_path)
    torch.manual_seed(0)
    model = zoo.load_model("fmnist-resnet", weights="random")
    weights = zoo.save_weights(model, "fmnist-resnet", {"note": "test"}, path=tmp_path / "w.pt")
    plan_path = nominal_plan(model, name="fmnist-resnet", options=(("fp32", None), ("shuffle-lz4", 8))).save(
        tmp_path / "plan.json")
    done = _dyno(["export", "--plan", str(plan_path), "--weights", str(weights), "--out", str(tmp_path / "heads"),
                  "--quiet"], env)
    assert done.returncode == 0, done.stderr
    ready = tmp_path / "ready.json"
    server = subprocess.Popen([sys.executable, "-m", "dyno", "serve", "--plan", str(plan_path), "--weights",
                               str(weights), "--port", "0", "--threads", "1", "--metrics-port", "-1", "--ready-file",
                               str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        address = json.loads(ready.read_text())["address"]
        summaries = {}
        runs = (("onnxruntime", "cloud-only-raw"), ("onnxruntime", "device-only"), ("torch", "device-only"))
        for backend, policy in runs:
            extra = ["--heads", str(tmp_path / "heads")] if backend == "onnxruntime" else ["--weights", str(weights)]
            done = _dyno(["run", "--plan", str(plan_path), "--server", address, "--data", "fashion-mnist", "--n", "20",
                          "--policy", policy, "--backend", backend, "--json", *extra], env,
                         torch_free=backend == "onnxruntime")
            assert done.returncode == 0, done.stderr
            summaries[backend, policy] = json.loads(done.stdout.strip().splitlines()[-1])
        offloaded = summaries["onnxruntime", "cloud-only-raw"]
        assert offloaded["n"] == 20 and offloaded["cloud_replies"] == 20 and offloaded["cloud_errors"] == []
        assert summaries["onnxruntime", "device-only"]["accuracy"] == summaries["torch", "device-only"]["accuracy"]
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.parametrize("args, message", [
    (["profile", "--role", "cloud", "--backend", "onnxruntime", "--heads", "h"], "measures the device role"),
    (["profile", "--role", "device", "--backend", "onnxruntime"], "needs --heads DIR"),
    (["profile", "fmnist-resnet", "--role", "device", "--heads", "h"], "--heads goes with --backend onnxruntime"),
    (["profile", "--role", "device"], "name the model to profile"),
])
def test_profile_backend_flags_are_checked(args, message, tmp_path, capsys):
    from dyno.cli import main

    assert main([*args, "--out", str(tmp_path / "p.json")]) == 1
    assert message in capsys.readouterr().err
