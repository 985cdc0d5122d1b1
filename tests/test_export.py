"""ONNX heads: every exported head computes what the torch head computes (onnxruntime, fresh inputs,
batch sizes 1 and 3), on every cut of fmnist-resnet and of a model with a concat, a residual and a
size-based flatten, and on cuts spread over EfficientNet-Lite0; cuts whose side value must travel are
refused with the reason; the manifest's hashes guard the files; `dyno export --plan` from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dyno import export, partition, zoo
from dyno.errors import PlanError
from dyno.manifest import HeadsManifest

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'dyno[test]')")
TESTS = Path(__file__).resolve().parent


def _session(manifest: HeadsManifest, directory: Path, cut: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(manifest.verified_file(directory, cut), options, providers=["CPUExecutionProvider"])


def _assert_heads_match(model: nn.Module, shape: tuple[int, ...], out: Path, only=None, seed: int = 1
                        ) -> HeadsManifest:
    model = model.eval()
    example = torch.zeros(1, *shape)
    cuts = partition.cuts(model, example)
    manifest = export.export_heads(model, cuts, out, model_name="m", only=only)
    x = torch.randn(3, *example.shape[1:], generator=torch.Generator().manual_seed(seed))
    assert manifest.cuts == tuple(c.id for c in cuts if c.id != 0 and (only is None or c.id in only))
    for head_entry in manifest.heads:
        head, _ = partition.split(model, cuts[head_entry.cut])
        session = _session(manifest, out, head_entry.cut)
        for batch in (x[:1], x):  # the batch dimension is dynamic
            with torch.no_grad():
                ref = head(batch).numpy()
            got = session.run(None, {"input": batch.numpy()})[0]
            assert got.shape == ref.shape == (len(batch), *cuts[head_entry.cut].shape)
            assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max())), head_entry
    return manifest


@pytest.mark.parametrize("name", ["fmnist-resnet", "fmnist-vgg"])
def test_every_cut_of_the_fmnist_models(tmp_path, name):
    torch.manual_seed(0)
    model = zoo.load_model(name, weights="trained-or-random")
    manifest = _assert_heads_match(model, (1, 28, 28), tmp_path)
    assert [r.cut for r in manifest.refused] == [0] and "input" in manifest.refused[0].reason
    assert len(manifest.heads) == len(manifest.cut_names) - 1


def test_every_cut_of_a_model_with_concat_residual_and_size_flatten(tmp_path):
    sys.path.insert(0, str(TESTS))
    from mypkg.models import SideNet

    torch.manual_seed(0)
    model = SideNet()
    cuts = partition.cuts(model, torch.zeros(1, 1, 28, 28))
    assert {s.kind for c in cuts for s in c.side_values} == {"batch"}  # n = x.size(0), live across cuts
    assert {"cat", "add", "view"} <= {c.name for c in cuts}
    _assert_heads_match(model, (1, 28, 28), tmp_path)


@pytest.mark.slow
def test_every_cut_of_efficientnet_lite0(tmp_path):
    manifest = _assert_heads_match(zoo.load_model("efficientnet-lite0"), (3, 224, 224), tmp_path)
    assert len(manifest.heads) == len(manifest.cut_names) - 1  # every cut but the input


class Shipped(nn.Module):
    """A side value that is neither the batch size nor a constant: ``2 n`` travels with the activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        twice = x.size(0) * 2
        x = torch.relu(self.conv(x))
        return self.fc(x.reshape(twice // 2, -1))


def test_a_cut_whose_side_value_must_travel_is_refused_with_the_reason(tmp_path):
    model = Shipped().eval()
    cuts = partition.cuts(model, torch.zeros(1, 1, 8, 8))
    unbatchable = [c.id for c in cuts if not c.batchable]
    assert unbatchable
    manifest = export.export_heads(model, cuts, tmp_path, model_name="shipped")
    refused = {r.cut: r.reason for r in manifest.refused}
    assert set(unbatchable) <= set(refused) and all("travel" in refused[c] for c in unbatchable)
    with pytest.raises(PlanError, match="travel"):
        manifest.head(unbatchable[0])


def test_the_manifest_guards_the_files_and_the_plan(tmp_path):
    from dyno.offline import nominal_plan

    torch.manual_seed(0)
    model = zoo.load_model("fmnist-resnet", weights="random")
    plan = nominal_plan(model, name="fmnist-resnet", options=(("fp32", None),))
    manifest = export.export_plan(plan, model, tmp_path, only=(2, 3))
    loaded = HeadsManifest.load(tmp_path)
    assert loaded == manifest and loaded.plan_hash == plan.hash
    loaded.check_plan(plan)
    torch.manual_seed(1)
    other = nominal_plan(zoo.load_model("fmnist-resnet", weights="random"), name="fmnist-resnet",
                         options=(("fp32", None),))
    with pytest.raises(PlanError, match="weights sha256"):
        loaded.check_plan(other)
    path = tmp_path / loaded.head(2).file
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(PlanError, match="changed or damaged"):
        loaded.verified_file(tmp_path, 2)


def test_export_from_the_command_line(tmp_path):
    from dyno.offline import nominal_plan

    torch.manual_seed(0)
    model = zoo.load_model("fmnist-resnet", weights="random")
    weights = zoo.save_weights(model, "fmnist-resnet", {"note": "test"}, path=tmp_path / "w.pt")
    plan = nominal_plan(model, name="fmnist-resnet", options=(("fp32", None),))
    plan_path = plan.save(tmp_path / "plan.json")
    done = subprocess.run([sys.executable, "-m", "dyno", "export", "--plan", str(plan_path), "--weights", str(weights),
                           "--format", "onnx", "--out", str(tmp_path / "heads"), "--cuts", "1,11", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["heads"] == 2 and document["plan_hash"] == plan.hash
    manifest = HeadsManifest.load(tmp_path / "heads")
    assert manifest.cuts == (1, 11) and manifest.opset == export.OPSET
    assert manifest.head(11).output_shape == (10,)
    refused = subprocess.run([sys.executable, "-m", "dyno", "export", "fmnist-resnet", "--plan", str(plan_path),
                              "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "either MODEL or --plan" in refused.stderr


def test_tails_exported_with_the_heads_finish_the_model(tmp_path):
    sys.path.insert(0, str(TESTS))
    from mypkg.models import SideNet

    torch.manual_seed(0)
    model = SideNet().eval()
    cuts = partition.cuts(model, torch.zeros(1, 1, 28, 28))
    manifest = export.export_heads(model, cuts, tmp_path, model_name="sidenet", tails=True)
    last = len(cuts) - 1
    assert all(bool(h.tail_file) == (h.cut != last) for h in manifest.heads)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).numpy()
    for entry in manifest.heads[:-1]:
        head = _session(manifest, tmp_path, entry.cut)
        options = ort.SessionOptions()
        tail = ort.InferenceSession(manifest.verified_file(tmp_path, entry.cut, tail=True), options,
                                    providers=["CPUExecutionProvider"])
        got = tail.run(None, {"input": head.run(None, {"input": x.numpy()})[0]})[0]
        assert np.abs(got - expected).max() <= 1e-5, entry.cut   # the batch size recomputed in the tail
    with pytest.raises(PlanError, match="no exported tail"):
        manifest.verified_file(tmp_path, last, tail=True)
