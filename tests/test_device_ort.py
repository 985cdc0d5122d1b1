"""The onnxruntime device: a client that imports no torch (run in a subprocess where importing torch
fails) gets the same top-1 as the torch client for every input against a real server, at every cut;
heads that do not belong to the plan are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dyno import export, zoo
from dyno.errors import PlanError
from dyno.offline import nominal_plan
from dyno.policy import Decision, Policy

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'dyno[test]')")
REPO = Path(__file__).resolve().parents[1]

#: A policy that walks the cuts in turn (fp32, so both backends send the same values): every cut is used.
CYCLE = '''
import itertools
from dyno.policy import Decision, Policy

class Cycle(Policy):
    name = "cycle"

    def __init__(self, cuts):
        self._cuts = itertools.cycle(cuts)

    def decide(self, state):
        cut = next(self._cuts)
        last = len(state.plan.cuts) - 1
        return Decision(cut, None, None) if cut == last else Decision(cut, "fp32", None)
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dyno.runtime import ServerThread

    root = tmp_path_factory.mktemp("ort")
    torch.manual_seed(0)
    model = zoo.load_model("fmnist-resnet", weights="random")
    plan = nominal_plan(model, name="fmnist-resnet", options=(("fp32", None), ("shuffle-lz4", 8)))
    plan.save(root / "plan.json")
    export.export_plan(plan, model, root / "heads")
    x = torch.randn(24, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    np.save(root / "x.npy", x.numpy())
    with torch.no_grad():
        expected = model(x).argmax(1).tolist()
    with ServerThread(plan, model) as running:
        yield root, plan, model, x, expected, running.address


def _torch_free(script: str, *args: str) -> dict:
    """Run ``script`` where importing torch fails; it prints one JSON document."""
    code = "import sys\nsys.modules['torch'] = None\n" + textwrap.dedent(script)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


ORT_CLIENT = CYCLE + '''
import json, sys
import numpy as np
from dyno.device import OrtClient, OrtHeads
from dyno.plan import Plan

root, server = sys.argv[1], sys.argv[2]
plan = Plan.load(root + "/plan.json")
heads = OrtHeads(root + "/heads", plan)
x = np.load(root + "/x.npy")
with OrtClient(plan, heads, server=server, policy=Cycle(range(1, len(plan.cuts))), in_flight=4, timeout=10) as c:
    results = list(c.map(x))
try:
    import torch  # noqa: F401
    torch_importable = True
except ImportError:
    torch_importable = False
print(json.dumps({"top1": [r.top1 for r in results], "where": [r.where for r in results],
                  "cuts": [r.cut for r in results], "torch_importable": torch_importable,
                  "torch_loaded": sys.modules.get("torch") is not None}))
'''


def test_the_onnxruntime_client_imports_no_torch_and_agrees_with_the_torch_client(setup):
    from dyno.runtime import Client

    root, plan, model, x, expected, address = setup
    ort = _torch_free(ORT_CLIENT, str(root), address)
    assert ort["torch_importable"] is False and ort["torch_loaded"] is False
    last = len(plan.cuts) - 1
    assert set(ort["cuts"]) == set(range(1, last + 1))                 # every cut was used
    assert all(w == ("device" if c == last else "cloud") for w, c in zip(ort["where"], ort["cuts"]))
    namespace: dict = {}
    exec(CYCLE, namespace)
    with Client(plan, model, server=address, policy=namespace["Cycle"](range(1, last + 1)), in_flight=4,
                timeout=10) as client:
        via_torch = [r.top1 for r in client.map(x)]
    assert ort["top1"] == via_torch == expected


DEVICE_ONLY = '''
import json, sys
import numpy as np
from dyno.device import OrtClient, OrtHeads
from dyno.plan import Plan

root = sys.argv[1]
plan = Plan.load(root + "/plan.json")
with OrtClient(plan, OrtHeads(root + "/heads", plan), server=None, policy="dyno") as client:
    results = list(client.map(np.load(root + "/x.npy")))
print(json.dumps({"top1": [r.top1 for r in results], "where": sorted({r.where for r in results})}))
'''


def test_without_a_cloud_the_onnxruntime_device_runs_the_whole_model(setup):
    root, _, _, _, expected, _ = setup
    out = _torch_free(DEVICE_ONLY, str(root))
    assert out["top1"] == expected and "cloud" not in out["where"]


def test_heads_of_other_weights_are_refused(setup):
    from dyno.device import OrtHeads

    root, *_ = setup
    torch.manual_seed(5)
    other = nominal_plan(zoo.load_model("fmnist-resnet", weights="random"), name="fmnist-resnet")
    with pytest.raises(PlanError, match="weights sha256"):
        OrtHeads(root / "heads", other)


def test_a_decision_for_a_cut_without_a_head_runs_on_the_device(setup, tmp_path):
    from dyno.device import OrtClient, OrtHeads

    root, plan, model, x, expected, address = setup
    export.export_plan(plan, model, tmp_path, only=(3, len(plan.cuts) - 1))

    class Five(Policy):
        name = "five"

        def decide(self, state):  # noqa: ARG002
            return Decision(5, "fp32", None)

    with OrtClient(plan, OrtHeads(tmp_path, plan), server=address, policy=Five()) as client:
        results = list(client.map(x.numpy()[:4]))
    assert [r.top1 for r in results] == expected[:4]
    assert {r.where for r in results} == {"device"} and "no exported head for cut 5" in results[0].note


def test_a_given_back_inference_finishes_by_the_exported_tail(setup, tmp_path):
    from concurrent.futures import Future

    from dyno.device import OrtHeads
    from dyno.device._worker import OrtDeviceWorker
    from dyno.monitor import Monitors
    from dyno.policy import SLO, make
    from dyno.runtime.inflight import Inference, Telemetry

    root, plan, model, x, expected, _ = setup
    last = len(plan.cuts) - 1
    export.export_plan(plan, model, tmp_path, only=(4, last), tails=True)
    heads = OrtHeads(tmp_path, plan)
    assert heads.has_tail(4) and not heads.has_tail(last)
    worker = OrtDeviceWorker(plan, heads, make("device-only"), SLO(), telemetry=Telemetry(Monitors(plan)),
                             deliver=lambda inference, result: inference.future.set_result(result))
    worker.start(None)
    results = []
    try:
        for i, cut in enumerate((4, 4, 4, 3)):  # cut 3 has no exported head or tail: the whole model
            inference = Inference(i, x[i:i + 1].numpy(), Future())  # type: ignore[arg-type]
            inference.decision = Decision(cut, "fp32", None)
            inference.activation = heads.run(4, inference.x) if cut == 4 else None
            worker.fall_back(inference, "no reply in time")
            results.append(inference.future.result(30))
    finally:
        worker.stop()
    assert [r.top1 for r in results] == expected[:4] and {r.where for r in results} == {"fallback"}
    assert [r.note for r in results[:3]] == ["no reply in time"] * 3 and "no tail exported" in results[3].note
    assert (4, True) in heads._sessions  # the tail ran


def test_an_absolute_tier_on_the_torch_free_client_needs_the_reference_latency(monkeypatch):
    import dataclasses

    from nets import tiny_model

    from dyno.device._run import _reference_ms
    from dyno.errors import ConfigError
    from dyno.offline import nominal_plan

    plan = nominal_plan(tiny_model(seed=0))
    monkeypatch.delenv("DYNO_REFERENCE_MS", raising=False)
    with pytest.raises(ConfigError, match="DYNO_REFERENCE_MS"):
        _reference_ms(plan)
    monkeypatch.setenv("DYNO_REFERENCE_MS", "31.5")
    assert _reference_ms(plan) == 31.5
    assert _reference_ms(dataclasses.replace(plan, notes={"reference_ms": 20.0})) == 20.0   # the plan's own first
