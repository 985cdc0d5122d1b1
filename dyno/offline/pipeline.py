"""The offline pipeline: profiles + precision analysis -> the plan file, in one call.

    >>> plan = dyno.offline.analyze("fmnist-resnet", limit=2000, out="plan.json")
    >>> plan = dyno.offline.ensure_plan("fmnist-resnet")   # the cached plan if valid for the weights

``analyze`` measures (or loads) a device and a cloud profile (:func:`dyno.offline.measure`), runs the
precision analysis (:func:`dyno.offline.analyze_precision`), encodes a sample of real activations
with every option (every coder of ``PLAN_CODECS`` at every width) for its bytes and codec times, keeps
per width the coders on the bytes/time Pareto front (``dyno.offline.codecs.pareto``; shuffle-lz4
always), and assembles a ``dyno.plan.Plan``. Codec times come from the profiles when they were
measured elsewhere and hold the option, else from the same real encodes and decodes as the bytes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from dyno import packing, partition
from dyno.errors import DataError, PlanError
from dyno.offline.codecs import codec_costs, codec_options, cut_activations, pareto
from dyno.offline.infer import Entry, ladder
from dyno.offline.measure import measure
from dyno.offline.precision import analyze_precision
from dyno.offline.profile import BATCH_SIZES, Profile
from dyno.offline.sample import Normalize, default_limit, input_images, input_spec, load_sample, resolve, spread
from dyno.offline.search import PrecisionResult, SearchConfig
from dyno.plan import CutPlan, InputSpec, Option, Plan
from dyno.progress import NO_PROGRESS, Progress, Tick

__all__ = ["analyze", "ensure_plan", "default_plan_path"]

ProfileSource = str | os.PathLike | Profile | None


def default_plan_path(model_name: str) -> Path:
    """Where ``dyno analyze`` writes and ``ensure_plan`` looks: ``cache_dir()/plans/NAME.json``."""
    from dyno import zoo

    return zoo.cache_dir() / "plans" / f"{model_name.replace('/', '__')}.json"


@dataclasses.dataclass
class _Subject:
    """The model under analysis, its cuts and the labelled sample."""

    name: str
    module: nn.Module
    data_name: str
    x: torch.Tensor
    y: torch.Tensor
    cuts: list[partition.Cut]
    spec: InputSpec | None
    images: list[np.ndarray] | None
    normalize: Normalize | None
    image_note: str


def analyze(model: str | nn.Module, *, data: Any = None, limit: int | None = None,
            out: str | os.PathLike | None = None, progress: Progress = NO_PROGRESS, weights: str = "trained",
            device_profile: ProfileSource = None, cloud_profile: ProfileSource = None, threads: int = 1,
            batch_sizes: Sequence[int] = BATCH_SIZES, bytes_samples: int = 16, codec_samples: int = 8,
            config: SearchConfig | None = None, channels_last: bool | None = None) -> Plan:
    """Profile and analyse ``model`` (a zoo name or a traceable ``nn.Module``) and return its plan.

    - ``data``: a dataset name or directory (default: the model's own), a torch Dataset, or ``(x, y)``;
      ``limit`` samples spread evenly over it (default per dataset: see ``DEFAULT_LIMITS``).
    - ``device_profile``/``cloud_profile``: profiles (or files) measured elsewhere; missing ones are
      measured here with ``threads`` torch threads (at ``batch_sizes`` for the cloud).
    - ``out``: where to save the plan (not saved when None).
    - ``bytes_samples``: real inputs encoded with every option for the median bytes;
      ``codec_samples``: real inputs the profiles time the codecs on.
    - ``config``, ``channels_last``: the knee search's settings and the tails' memory format (see
      :func:`dyno.offline.analyze_precision`). ``progress`` shows every stage.
    """
    began = time.perf_counter()
    timings: dict[str, float] = {}
    subject = _prepare(model, weights, data, limit, progress, timings)
    cuts, x, images = subject.cuts, subject.x, subject.images
    inputs = x[spread(len(x), min(max(codec_samples, 1), len(x)))]
    samples = [images[i] for i in spread(len(x), min(codec_samples, len(x)))] if images is not None else None

    def measured(role: str) -> Profile:  # codec costs are measured below, once for both roles
        return measure(role, subject.module, cuts, inputs, model_name=subject.name, threads=threads,
                       batch_sizes=batch_sizes, images=samples, codec_samples=codec_samples, codecs=False,
                       progress=progress)

    t = time.perf_counter()
    device = _profile("device", device_profile, cuts, measured)
    timings["device_profile"] = time.perf_counter() - t
    t = time.perf_counter()
    cloud = _profile("cloud", cloud_profile, cuts, measured)
    timings["cloud_profile"] = time.perf_counter() - t
    index = spread(len(x), min(bytes_samples, len(x)))  # the inputs the bytes stage encodes
    costs_x = x[index]
    del x
    t = time.perf_counter()
    result = analyze_precision(subject.module, cuts, subject.x, subject.y, images=images,
                               normalize=subject.normalize, config=config, channels_last=channels_last,
                               release_input=True, progress=progress)  # subject.x is empty from here on
    timings["precision"] = time.perf_counter() - t
    t = time.perf_counter()
    ladders = [ladder(c, result) for c in result.cuts[:-1]]
    costs = _costs(subject, ladders, costs_x, index, bytes_samples, max(1, codec_samples // 2),
                   progress.task("bytes", len(cuts) - 1))
    timings["bytes"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - began
    plan = _assemble(subject, result, ladders, costs, device, cloud, timings)
    if out is not None:
        plan.save(out)
    return plan


def _prepare(model: str | nn.Module, weights: str, data: Any, limit: int | None, progress: Progress,
             timings: dict[str, float]) -> _Subject:
    """Resolve the model and data, load the sample (timed as ``load``), find the cuts and images."""
    name, module, entry, dataset = resolve(model, weights, data)
    if data is None:
        data_name = str(getattr(entry, "default_data", ""))
    else:
        data_name = str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__
    if limit is None:
        limit = default_limit(data if data is not None else getattr(entry, "default_data", None))
    t = time.perf_counter()
    x, y, _ = load_sample(dataset, limit, progress=progress, label=data_name)
    timings["load"] = time.perf_counter() - t
    if entry is not None and tuple(x.shape[1:]) != tuple(entry.input_shape):
        raise DataError(f"{data_name} gives inputs of shape {tuple(x.shape[1:])}, {name} expects "
                        f"{tuple(entry.input_shape)}")
    cuts = partition.cuts(module, x[:1])
    spec = input_spec(entry, dataset)
    images, normalize, image_note = input_images(x, spec)
    return _Subject(name=name, module=module, data_name=data_name, x=x, y=y, cuts=cuts,
                    spec=spec if images is not None else None, images=images, normalize=normalize,
                    image_note=image_note)


def _profile(role: str, given: ProfileSource, cuts: Sequence[partition.Cut],
             measured: Callable[[str], Profile]) -> Profile:
    """The profile of ``role`` given (checked against the cuts), or measured here."""
    if given is None:
        return measured(role)
    loaded = given if isinstance(given, Profile) else Profile.load(given, role=role)
    if loaded.role != role:
        raise PlanError(f"the {role} profile given is a {loaded.role} profile")
    loaded.check_cuts(cuts)
    return loaded


def _costs(subject: _Subject, ladders: list[dict[Any, Entry]], x: torch.Tensor, index: list[int], count: int,
           timed: int, tick: Tick) -> list[dict[str, dict[str, float]]]:
    """Per cut, every option's median wire bytes and encode time over the real inputs ``x`` (samples
    ``index`` of the sample, at most ``count``; the coders beyond LZ4: over ``count // 2``) and decode
    time over the first ``timed``, each option encoded as it is sent (its calibrated clip range); the
    inputs walk the model together, one cut at a time."""
    cuts, images = subject.cuts, subject.images
    out = []
    for i, samples in cut_activations(partition.trace(subject.module), cuts[:-1], x):
        clip = {b: e.clip for b, e in ladders[i].items() if isinstance(b, int) and e.clip is not None}
        options = codec_options(first=i == 0, last=False, image=images is not None)
        out.append(codec_costs(samples, options, nonnegative=cuts[i].nonnegative, clip=clip, timed=timed,
                               coder_samples=max(1, count // 2),
                               images=[images[j] for j in index] if images is not None and i == 0 else None))
        tick(status=f"cut {i}")
    return out


# ---------------------------------------------------------------------------------------- the plan


def _entry(codec: str, bits: int | None, entries: dict[Any, Entry], result: PrecisionResult) -> Entry | None:
    """The accuracy entry of one option (None: not available, e.g. fp16 overflows at this cut)."""
    if codec == "fp32":
        return Entry(result.accuracy_fp32, 1.0, True, result.samples, 0.0, None, "")
    if codec == "fp16":
        return entries.get("fp16")
    if codec in packing.IMAGE_CODECS:
        return entries.get((codec, bits))
    return entries[bits]


def _options(i: int, subject: _Subject, result: PrecisionResult, entries: dict[Any, Entry],
             costs: dict[str, dict[str, float]], device: Profile, cloud: Profile) -> tuple[Option, ...]:
    """The cut's options: every float and image option, and the quantising coders on the Pareto front."""
    options = []
    costs = {label: {**cost, "encode_ms": device.cuts[i].encode_ms.get(label, cost["encode_ms"]),
                     "decode_ms": cloud.cuts[i].decode_ms.get(label, cost["decode_ms"])}
             for label, cost in costs.items()}
    kept = pareto(costs)
    for codec, bits in codec_options(first=i == 0, last=False, image=subject.spec is not None):
        label = packing.label(codec, bits)
        entry = _entry(codec, bits, entries, result) if label in kept else None
        if entry is None:
            continue
        options.append(Option(
            codec=codec, bits=bits, bytes=costs[label]["bytes"], accuracy=entry.accuracy,
            agreement=entry.agreement, measured=entry.measured, samples=entry.samples,
            drop_se=None if entry.drop_se is None or not math.isfinite(entry.drop_se) else entry.drop_se,
            encode_ms=costs[label]["encode_ms"], decode_ms=costs[label]["decode_ms"], clip=entry.clip,
            note=entry.note))
    return tuple(options)


def _assemble(subject: _Subject, result: PrecisionResult, ladders: list[dict[Any, Entry]],
              costs: list[dict[str, dict[str, float]]], device: Profile, cloud: Profile,
              timings: dict[str, float]) -> Plan:
    from dyno import zoo

    fp32 = result.accuracy_fp32
    plan_cuts = []
    for i, cut in enumerate(subject.cuts):
        last = i == len(subject.cuts) - 1
        options = () if last else _options(i, subject, result, ladders[i], costs[i], device, cloud)
        p = result.cuts[i]
        calibration = dict(p.calibration)
        if calibration:
            calibration["accuracy"] = {
                kind: {str(k[1]): round(fp32 - m.drop, 5) for k, m in sorted(p.measured.items()) if k[0] == kind}
                for kind in ("q", "clip")}
        tail_ms = cloud.cuts[i].tail_ms
        plan_cuts.append(CutPlan(
            id=i, name=cut.name, shape=tuple(cut.shape), nonnegative=cut.nonnegative, batchable=cut.batchable,
            device_ms=device.cuts[i].head_ms or 0.0, cloud_ms=dict(tail_ms or {}), device_macs=cut.device_macs,
            cloud_macs=cut.cloud_macs, options=options, clip=p.clip, calibration=calibration))
    return Plan(model=subject.name, weights_sha256=zoo.weights_hash(subject.module),
                input_shape=tuple(subject.cuts[0].shape), num_classes=result.num_classes, accuracy_fp32=fp32,
                samples=result.samples, device_profile=device.name, cloud_profile=cloud.name, cuts=tuple(plan_cuts),
                data=subject.data_name, input_spec=subject.spec,
                notes=_notes(plan_cuts, result, device, cloud, timings, subject.image_note))


def _notes(plan_cuts: list[CutPlan], result: PrecisionResult, device: Profile, cloud: Profile,
           timings: dict[str, float], image_note: str) -> dict[str, Any]:
    notes = {
        "analysis_seconds": {k: round(v, 1) for k, v in timings.items()},
        "precision": result.notes,
        "options_measured": sum(o.measured for c in plan_cuts for o in c.options),
        "options_total": sum(len(c.options) for c in plan_cuts),
        "tail_evaluations": sum(len(c.measured) for c in result.cuts if c.shared_with is None),
        "shared_cuts": {str(c.id): c.shared_with for c in result.cuts if c.shared_with is not None},
        "device_profile": {"threads": device.threads, "method": device.method, "machine": device.machine},
        "cloud_profile": {"threads": cloud.threads, "method": cloud.method, "machine": cloud.machine},
    }
    if image_note:
        notes["input"] = image_note
    return notes


def ensure_plan(model_name: str, *, weights: str = "trained", path: str | os.PathLike | None = None,
                data: Any = None, limit: int | None = None, progress: Progress = NO_PROGRESS,
                **kwargs: Any) -> Plan:
    """The plan at ``path`` (default :func:`default_plan_path`) if it is valid for the current
    weights of ``model_name``; otherwise analyse the model now and save the plan there."""
    from dyno import zoo

    entry = zoo.get_model(model_name)
    path = Path(path) if path is not None else default_plan_path(entry.name)
    model = zoo.load_model(entry, weights=weights)
    try:
        plan = Plan.load(path, model=model)
        if plan.model == entry.name:
            return plan
    except PlanError:
        pass
    return analyze(entry.name, weights=weights, data=data, limit=limit, out=path, progress=progress, **kwargs)
