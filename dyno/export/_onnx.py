"""Heads as ONNX files: torch.onnx's TorchScript exporter (``dynamo=False``), a dynamic batch dimension,
every file checked against the torch head with onnxruntime before the manifest is written.

Why the TorchScript exporter: with torch 2.13 it needs no extra package and exports a mid-size
EfficientNet-Lite0 head in about 2.6 s, against 8.5 s for the dynamo exporter, which also needs
onnxscript; both agreed with torch to 3e-5 on the head checked (issue 12's closing note).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dyno import partition
from dyno.datafile import atomic_path
from dyno.errors import ConfigError, PartitionError, PlanError
from dyno.manifest import MANIFEST, Head, HeadsManifest, Refused, sha256_file
from dyno.plan import Plan
from dyno.progress import NO_PROGRESS, Progress

__all__ = ["OPSET", "EXPORTER", "export_heads", "export_plan", "plan_cuts", "device_notes"]

#: The ONNX opset the heads are written in (onnxruntime 1.17 and later run it).
OPSET = 17
EXPORTER = f"torch.onnx (TorchScript, dynamo=False), torch {torch.__version__}"
INPUT, OUTPUT = "input", "activation"


def device_notes(entry: Any) -> dict[str, Any]:
    """What a device needs to prepare inputs for a zoo entry: its preprocessing (when it is a
    ``dyno.zoo.ImagePreprocess``) and its default dataset."""
    import dataclasses

    from dyno.zoo import ImagePreprocess

    notes: dict[str, Any] = {"data": entry.default_data or ""}
    if isinstance(entry.preprocess, ImagePreprocess):
        notes["preprocess"] = dataclasses.asdict(entry.preprocess)
    return notes


def plan_cuts(plan: Plan, model: nn.Module) -> list[partition.Cut]:
    """The model's traced cuts matched to the plan's by node name and shape (PlanError otherwise)."""
    traced = {c.name: c for c in partition.cuts(model.eval(), torch.zeros(1, *plan.input_shape))}
    found = []
    for cut in plan.cuts:
        match = traced.get(cut.name)
        if match is None or tuple(match.shape) != tuple(cut.shape):
            raise PlanError(f"plan cut {cut.id} ({cut.name}, shape {tuple(cut.shape)}) is not a cut of this "
                            f"{type(model).__name__}; the plan was made for another model")
        found.append(match)
    return found


def export_plan(plan: Plan, model: nn.Module, out: str | os.PathLike, *, opset: int = OPSET,
                only: Sequence[int] | None = None, check: torch.Tensor | None = None,
                notes: dict[str, Any] | None = None, tails: bool = False,
                progress: Progress = NO_PROGRESS) -> HeadsManifest:
    """The heads of every cut of ``plan`` (or of ``only``) as ONNX files in ``out``, with the manifest."""
    from dyno.zoo import weights_hash

    if weights_hash(model) != plan.weights_sha256:
        raise PlanError(f"the plan was made for weights sha256 {plan.weights_sha256}, not these "
                        f"({weights_hash(model)}); pass the weights the plan was made with")
    return export_heads(model, plan_cuts(plan, model), out, model_name=plan.model, plan_hash=plan.hash,
                        opset=opset, only=only, check=check, notes=notes, tails=tails, progress=progress)


def export_heads(model: nn.Module, cuts: Sequence[partition.Cut], out: str | os.PathLike, *, model_name: str,
                 plan_hash: str = "", opset: int = OPSET, only: Sequence[int] | None = None,
                 check: torch.Tensor | None = None, notes: dict[str, Any] | None = None, tails: bool = False,
                 progress: Progress = NO_PROGRESS) -> HeadsManifest:
    """Export the head of each cut (all but the input cut; ``only``: those ids) and write the manifest.

    ``check`` (N, C, H, W) inputs the heads are compared on with onnxruntime (default: two seeded
    normal inputs); an ONNX head that differs from the torch head by more than 1e-3 relative to the
    head's largest value is an error. Returns the manifest written to ``out/manifest.json``.
    """
    from dyno.zoo import weights_hash

    model = model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(range(len(cuts))) if only is None else set(only)
    unknown = wanted - set(range(len(cuts)))
    if unknown:
        raise ConfigError(f"no cut {sorted(unknown)[0]}: the model has cuts 0..{len(cuts) - 1}")
    input_shape = tuple(cuts[0].shape)
    if check is None:
        check = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    heads, refused = [], []
    tick = progress.task(f"export {model_name}", len(wanted))
    for cut in cuts:
        if cut.id not in wanted:
            continue
        reason = _refusal(cut, last=cut.id == len(cuts) - 1)
        if reason:
            refused.append(Refused(cut=cut.id, name=cut.name, reason=reason))
        else:
            heads.append(_export_one(model, cut, out, opset, check, tail=tails and cut.id != len(cuts) - 1))
        tick()
    if not heads:
        raise ConfigError("no head to export: " + "; ".join(f"cut {r.cut}: {r.reason}" for r in refused))
    manifest = HeadsManifest(model=model_name, weights_sha256=weights_hash(model), plan_hash=plan_hash,
                             input_shape=input_shape, opset=opset, exporter=EXPORTER, heads=tuple(heads),
                             refused=tuple(refused), cut_names=tuple(c.name for c in cuts),
                             notes={**(notes or {}), "check_inputs": int(check.shape[0])})
    manifest.save(out / MANIFEST)
    kept = {h.file for h in heads}
    kept |= {h.tail_file for h in heads if h.tail_file}
    for stale in [*out.glob("head-*.onnx"), *out.glob("tail-*.onnx")]:  # of an earlier export
        if stale.name not in kept:
            stale.unlink()
    return manifest


def _refusal(cut: partition.Cut, last: bool) -> str:
    if cut.id == 0:
        return "the input cut: the device sends the input itself, there is no head to run"
    if not cut.batchable:
        shipped = ", ".join(s.name for s in cut.side_values if s.kind == "shipped")
        return (f"side value(s) {shipped} must travel with the activation (neither the batch size, a shape "
                "nor a constant), so the cut is not batchable and its head is not exported")
    del last
    return ""


def _export_one(model: nn.Module, cut: partition.Cut, out: Path, opset: int, check: torch.Tensor,
                tail: bool = False) -> Head:
    head, tail_module = partition.split(model, cut)
    path = out / f"head-{cut.id:03d}.onnx"
    with torch.no_grad():
        activation = head.eval()(check)
    if not isinstance(activation, torch.Tensor):
        raise PartitionError(f"the head of cut {cut.id} returns {type(activation).__name__}, not one tensor")
    diff, scale = _write(head, check, path, opset, f"head of cut {cut.id} ({cut.name})")
    extra = {}
    if tail:
        tail_path = out / f"tail-{cut.id:03d}.onnx"
        _write(tail_module.eval(), activation, tail_path, opset, f"tail of cut {cut.id} ({cut.name})")
        extra = {"tail_file": tail_path.name, "tail_sha256": sha256_file(tail_path)}
    return Head(cut=cut.id, name=cut.name, file=path.name, sha256=sha256_file(path),
                input_shape=tuple(check.shape[1:]), output_shape=tuple(cut.shape), max_abs_diff=diff,
                max_abs_ref=scale, nonnegative=bool(cut.nonnegative), **extra)


def _write(module: nn.Module, x: torch.Tensor, path: Path, opset: int, what: str) -> tuple[float, float]:
    """Export ``module`` (one tensor in, one out, dynamic batch) to ``path``; check it with onnxruntime on
    ``x`` and return (max |ORT - torch|, max |torch|)."""
    with torch.no_grad():
        expected = module(x)
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and constant-folding notes
        torch.onnx.export(module, (x[:1],), str(tmp), dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          do_constant_folding=True)
    got = _run_ort(path.read_bytes(), x.numpy())
    ref = expected.numpy()
    diff = float(np.abs(got - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    if got.shape != ref.shape or not diff <= 1e-3 * max(scale, 1.0):
        raise PartitionError(f"the ONNX {what} differs from torch by {diff:.3g} (largest value {scale:.3g}, "
                             f"shapes {got.shape} vs {ref.shape})")
    return diff, scale


def _run_ort(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]
