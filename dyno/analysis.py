"""Offline analysis: profiles + precision analysis -> the plan file, in one call.

    >>> plan = dyno.analysis.analyze("fmnist-resnet", limit=2000, out="plan.json")
    >>> plan = dyno.analysis.ensure_plan("fmnist-resnet")   # the cached plan if valid for the weights

``analyze`` measures (or loads) a device and a cloud profile (``dyno.profile``), runs the precision
analysis (``dyno.precision``), encodes a sample of real activations with every option for its bytes,
and assembles a ``dyno.plan.Plan``. ``summary`` and ``plot`` are what ``dyno plan show`` prints and
draws.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from dyno import partition, precision, profile
from dyno.errors import ConfigError, DataError, PlanError
from dyno.plan import CutPlan, InputSpec, Option, Plan

__all__ = ["analyze", "ensure_plan", "default_plan_path", "default_limit", "load_sample", "summary",
           "plot", "QUANT_CODEC"]

QUANT_CODEC = "shuffle-lz4"
#: Samples per dataset when ``limit`` is not given: enough for a stable knee, small enough to take
#: minutes on a laptop CPU (all 500 imagenet-samples; 2,000 of Fashion-MNIST's 10,000 test images).
DEFAULT_LIMITS = {"fashion-mnist": 2000, "imagenet-samples": 500}
FALLBACK_LIMIT = 1000


def default_plan_path(model_name: str) -> Path:
    """Where ``dyno analyze`` writes and ``ensure_plan`` looks: ``cache_dir()/plans/NAME.json``."""
    from dyno import zoo

    return zoo.cache_dir() / "plans" / f"{model_name.replace('/', '__')}.json"


def default_limit(data: Any) -> int:
    return DEFAULT_LIMITS.get(str(data), FALLBACK_LIMIT)


# ------------------------------------------------------------------------------------------ data


def load_sample(dataset: Any, limit: int | None, *, tick: Callable[[], None] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``limit`` labelled samples spread evenly over ``dataset`` (all if ``limit`` is None):
    ``(x (N, ...) float32, y (N,) int64, indices)``. ``dataset`` is a torch Dataset of
    ``(tensor, label)`` or a pair of tensors ``(x, y)``."""
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and isinstance(dataset[0], torch.Tensor):
        x_all, y_all = dataset
        n = len(x_all)
        if len(y_all) != n:
            raise DataError(f"{n} inputs but {len(y_all)} labels")
        index = _spread(n, limit)
        return x_all[index].float().contiguous(), torch.as_tensor(y_all)[index].long(), index
    try:
        n = len(dataset)
    except TypeError:
        raise ConfigError(f"data must be a dataset name, a directory, a torch Dataset or (x, y) tensors, "
                          f"not {type(dataset).__name__}") from None
    if n == 0:
        raise DataError("the dataset is empty")
    index = _spread(n, limit)
    xs, ys = [], []
    for i in index:
        item = dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"dataset items must be (tensor, label) pairs, item {i} is {type(item).__name__}")
        xs.append(torch.as_tensor(item[0], dtype=torch.float32))
        ys.append(int(item[1]))
        if tick:
            tick()
    return torch.stack(xs).contiguous(), torch.tensor(ys, dtype=torch.long), index


def _spread(n: int, limit: int | None) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})


def _resolve(model: str | nn.Module, weights: str, data: Any) -> tuple[str, nn.Module, Any, Any]:
    """(name, model, zoo entry or None, dataset)."""
    from dyno import zoo

    if isinstance(model, str):
        entry = zoo.get_model(model)
        module = zoo.load_model(entry, weights=weights)
        name = entry.name
    elif isinstance(model, nn.Module):
        entry, module, name = None, model.eval(), type(model).__name__
    else:
        raise ConfigError(f"model must be a zoo name or an nn.Module, not {type(model).__name__}")
    if data is None:
        if entry is None or entry.default_data is None:
            raise ConfigError(f"{name} has no default dataset; pass data= (a dataset, a directory or (x, y))")
        data = entry.default_data
    if isinstance(data, (str, os.PathLike)):
        dataset = zoo.load_dataset(data, model=entry) if entry is not None else zoo.load_dataset(data)
    else:
        dataset = data
    return name, module, entry, dataset


def _input_spec(entry: Any, dataset: Any) -> InputSpec | None:
    """How the input relates to an 8-bit image, from the model's preprocessing (None if unknown)."""
    from dyno.zoo import ImagePreprocess

    pre = getattr(entry, "preprocess", None)
    if isinstance(pre, ImagePreprocess) and pre.mode in ("L", "RGB"):
        return InputSpec(mean=tuple(pre.mean), std=tuple(pre.std), image_mode=pre.mode)
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    if isinstance(mean, float) and isinstance(std, float):
        return InputSpec(mean=(mean,), std=(std,), image_mode="L")
    return None


def _images(x: torch.Tensor, spec: InputSpec | None) -> tuple[list[np.ndarray] | None, Callable | None, str]:
    """uint8 H x W x C images behind the normalised inputs, and the cloud's normalisation, if exact."""
    if spec is None or x.dim() != 4 or x.shape[1] != len(spec.mean):
        return None, None, "no 8-bit image behind the input (unknown preprocessing): no jpeg/webp options"
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)

    def normalize(pixels: np.ndarray) -> torch.Tensor:  # (B, H, W, C) values 0..255 -> (B, C, H, W)
        array = (np.asarray(pixels, np.float32) / np.float32(255.0) - mean) / std
        return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))

    hwc = x.permute(0, 2, 3, 1).numpy()
    pixels = np.rint((hwc * std + mean) * np.float32(255.0))
    if pixels.min() < 0 or pixels.max() > 255:
        return None, None, "inputs are not normalised 8-bit images: no jpeg/webp options"
    pixels = pixels.astype(np.uint8)
    error = float((normalize(pixels.astype(np.float32)) - x).abs().max())
    if error > 1e-4:
        return None, None, f"inputs are not normalised 8-bit images (error {error:.2g}): no jpeg/webp options"
    images = [p[:, :, 0] if p.shape[2] == 1 else p for p in pixels]
    return [np.ascontiguousarray(i) for i in images], (lambda b: normalize(b if b.ndim == 4 else b[..., None])), ""


# -------------------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress display on stderr (or nothing)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    @contextlib.contextmanager
    def active(self) -> Iterator["_Progress"]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                            console=Console(stderr=True), transient=False)
        with self.bar:
            yield self
        self.bar = None

    def task(self, description: str, total: int) -> Callable[..., None]:
        """A callback advancing a new task by one (``status=`` updates its status text)."""
        if self.bar is None:
            return lambda *args, **kwargs: None
        task = self.bar.add_task(description, total=total, status="")
        bar = self.bar

        def tick(*args: Any, advance: int = 1, status: str | None = None) -> None:
            bar.update(task, advance=advance, **({"status": status} if status is not None else {}))

        return tick


# -------------------------------------------------------------------------------------- analyze


def analyze(model: str | nn.Module, *, data: Any = None, limit: int | None = None,
            out: str | os.PathLike | None = None, progress: bool = True, weights: str = "trained",
            device_profile: str | os.PathLike | profile.Profile | None = None,
            cloud_profile: str | os.PathLike | profile.Profile | None = None, threads: int = 1,
            batch_sizes: Sequence[int] = profile.BATCH_SIZES, bytes_samples: int = 16, codec_samples: int = 8,
            config: precision.SearchConfig | None = None, channels_last: bool | None = None) -> Plan:
    """Profile and analyse ``model`` (a zoo name or a traceable ``nn.Module``) and return its plan.

    - ``data``: a dataset name or directory (default: the model's own), a torch Dataset, or ``(x, y)``;
      ``limit`` samples spread evenly over it (default per dataset: see ``DEFAULT_LIMITS``).
    - ``device_profile``/``cloud_profile``: profiles (or files) measured elsewhere; missing ones are
      measured here with ``threads`` torch threads.
    - ``out``: where to save the plan (not saved when None).
    - ``bytes_samples``: real inputs encoded with every option for the median bytes.
    """
    began = time.perf_counter()
    name, module, entry, dataset = _resolve(model, weights, data)
    if data is None:
        data_name = str(getattr(entry, "default_data", ""))
    else:
        data_name = str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__
    if limit is None:
        limit = default_limit(data if data is not None else getattr(entry, "default_data", None))
    timings: dict[str, float] = {}
    bar = _Progress(progress)
    with bar.active():
        t = time.perf_counter()
        size = len(dataset[0]) if isinstance(dataset, (tuple, list)) else len(dataset)
        x, y, _ = load_sample(dataset, limit, tick=bar.task(f"loading {data_name}", min(limit, size)))
        timings["load"] = time.perf_counter() - t
        if entry is not None and tuple(x.shape[1:]) != tuple(entry.input_shape):
            raise DataError(f"{data_name} gives inputs of shape {tuple(x.shape[1:])}, {name} expects "
                            f"{tuple(entry.input_shape)}")
        cuts = partition.cuts(module, x[:1])
        spec = _input_spec(entry, dataset)
        images, normalize, image_note = _images(x, spec)
        if images is None:
            spec = None
        first_options = lambda cut, i: profile.codec_options(  # noqa: E731
            cut, first=i == 0, last=i == len(cuts) - 1, image=images is not None)

        t = time.perf_counter()
        sample_inputs = x[_spread_index(len(x), max(codec_samples, 1))]
        sample_images = [images[i] for i in _spread_index(len(x), codec_samples)] if images is not None else None
        device = _profile("device", device_profile, cuts, lambda: profile.measure_device(
            module, cuts, sample_inputs, model_name=name, threads=threads, options=first_options,
            images=sample_images, codec_samples=codec_samples, progress=bar.task))
        timings["device_profile"] = time.perf_counter() - t
        t = time.perf_counter()
        cloud = _profile("cloud", cloud_profile, cuts, lambda: profile.measure_cloud(
            module, cuts, sample_inputs, model_name=name, threads=threads, batch_sizes=batch_sizes,
            options=first_options, images=sample_images, codec_samples=codec_samples,
            progress=bar.task))
        timings["cloud_profile"] = time.perf_counter() - t

        t = time.perf_counter()
        tick = bar.task("precision", len(cuts))
        state = {"cut": -1}

        def on_progress(index: int, message: str) -> None:
            if index != state["cut"]:
                tick(advance=index - state["cut"])
                state["cut"] = index
            tick(advance=0, status=f"cut {index} ({cuts[index].name}): {message}")

        result = precision.analyze_precision(module, cuts, x, y, images=images, normalize=normalize,
                                             config=config, channels_last=channels_last, progress=on_progress)
        timings["precision"] = time.perf_counter() - t

        t = time.perf_counter()
        ladders = [precision.ladder(c, result) for c in result.cuts[:-1]]
        costs = _bytes(module, cuts, x, images, ladders, bytes_samples, bar.task("bytes", len(cuts) - 1),
                       first_options)
        timings["bytes"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - began
    plan = _assemble(name, module, cuts, result, ladders, costs, device, cloud, spec, data_name, timings,
                     image_note)
    if out is not None:
        plan.save(out)
    return plan


def _spread_index(n: int, count: int) -> list[int]:
    return _spread(n, min(count, n))


def _profile(role: str, given: Any, cuts: Sequence[partition.Cut], measure: Callable[[], profile.Profile]
             ) -> profile.Profile:
    if given is None:
        return measure()
    loaded = given if isinstance(given, profile.Profile) else profile.Profile.load(given, role=role)
    if loaded.role != role:
        raise PlanError(f"the {role} profile given is a {loaded.role} profile")
    loaded.check_cuts(cuts)
    return loaded


def _bytes(model: nn.Module, cuts: Sequence[partition.Cut], x: torch.Tensor, images, ladders, count: int,
           tick: Callable[..., None], options: Callable) -> list[dict[str, dict[str, float]]]:
    """Median wire bytes per option over ``count`` real inputs, each option encoded as it is sent."""
    index = _spread_index(len(x), count)
    per_cut = profile.sample_activations(partition.trace(model), cuts, x[index])
    out = []
    for i, cut in enumerate(cuts[:-1]):
        clip = {profile.label(QUANT_CODEC, b): e.clip for b, e in ladders[i].items()
                if isinstance(b, int) and e.clip is not None}
        out.append(profile.codec_costs(per_cut[i], options(cut, i), nonnegative=cut.nonnegative, clip=clip,
                                       images=[images[j] for j in index] if images is not None and i == 0 else None,
                                       timing=False))
        tick(status=f"cut {i}")
    return out


def _assemble(name, module, cuts, result, ladders, costs, device, cloud, spec, data_name, timings,
              image_note) -> Plan:
    from dyno import zoo

    fp32 = result.accuracy_fp32
    plan_cuts = []
    for i, cut in enumerate(cuts):
        options = []
        if i < len(cuts) - 1:
            for codec, bits in profile.codec_options(cut, first=i == 0, last=False, image=spec is not None):
                label = profile.label(codec, bits)
                if label not in costs[i]:
                    continue
                if codec == "fp32":
                    entry_ = precision.Entry(fp32, 1.0, True, result.samples, 0.0, None, "")
                elif codec == "fp16":
                    entry_ = ladders[i].get("fp16")
                    if entry_ is None:
                        continue  # values overflow float16 at this cut
                elif codec in ("jpeg", "webp"):
                    entry_ = ladders[i].get((codec, bits))
                    if entry_ is None:
                        continue
                else:
                    entry_ = ladders[i][bits]
                options.append(Option(
                    codec=codec, bits=bits, bytes=costs[i][label]["bytes"], accuracy=entry_.accuracy,
                    agreement=entry_.agreement, measured=entry_.measured, samples=entry_.samples,
                    drop_se=None if entry_.drop_se is None or not math.isfinite(entry_.drop_se) else entry_.drop_se,
                    encode_ms=device.cuts[i].encode_ms.get(label, 0.0),
                    decode_ms=cloud.cuts[i].decode_ms.get(label, 0.0), clip=entry_.clip, note=entry_.note))
        p = result.cuts[i]
        calibration = dict(p.calibration)
        if calibration:
            calibration["accuracy"] = {
                kind: {str(k[1]): round(fp32 - m.drop, 5) for k, m in sorted(p.measured.items()) if k[0] == kind}
                for kind in ("q", "clip")}
        plan_cuts.append(CutPlan(
            id=i, name=cut.name, shape=tuple(cut.shape), nonnegative=cut.nonnegative, batchable=cut.batchable,
            device_ms=device.cuts[i].head_ms, cloud_ms=dict(cloud.cuts[i].tail_ms), device_macs=cut.device_macs,
            cloud_macs=cut.cloud_macs, options=tuple(options), clip=p.clip, calibration=calibration))
    measured = sum(o.measured for c in plan_cuts for o in c.options)
    total = sum(len(c.options) for c in plan_cuts)
    notes = {
        "analysis_seconds": {k: round(v, 1) for k, v in timings.items()},
        "precision": result.notes,
        "options_measured": measured, "options_total": total,
        "tail_evaluations": sum(len(c.measured) for c in result.cuts if c.shared_with is None),
        "shared_cuts": {str(c.id): c.shared_with for c in result.cuts if c.shared_with is not None},
        "device_profile": {"threads": device.threads, "method": device.method, "machine": device.machine},
        "cloud_profile": {"threads": cloud.threads, "method": cloud.method, "machine": cloud.machine},
    }
    if image_note:
        notes["input"] = image_note
    return Plan(model=name, weights_sha256=zoo.weights_hash(module), input_shape=tuple(cuts[0].shape),
                num_classes=result.num_classes, accuracy_fp32=fp32, samples=result.samples,
                device_profile=device.name, cloud_profile=cloud.name, cuts=tuple(plan_cuts), data=data_name,
                input_spec=spec, notes=notes)


def ensure_plan(model_name: str, *, weights: str = "trained", path: str | os.PathLike | None = None,
                data: Any = None, limit: int | None = None, progress: bool = True, **kwargs: Any) -> Plan:
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


# ------------------------------------------------------------------------------------ reporting


def summary(plan: Plan) -> dict[str, Any]:
    """The figures ``dyno plan show --json`` prints: per cut, fp32 bytes, the fewest bits within
    one point (and 0.5), their bytes, device and cloud latency."""
    cuts = []
    for cut in plan.cuts:
        one, half = plan.min_bits(cut, 0.01), plan.min_bits(cut, 0.005)
        fp32 = cut.option("fp32")
        cuts.append({
            "id": cut.id, "name": cut.name, "shape": list(cut.shape),
            "fp32_bytes": fp32.bytes if fp32 else cut.fp32_bytes,
            "min_bits_1pt": one.bits if one else None,
            "bytes_at_min_bits_1pt": one.bytes if one else None,
            "drop_se_1pt": one.drop_se if one else None,
            "min_bits_05pt": half.bits if half else None,
            "bytes_at_min_bits_05pt": half.bytes if half else None,
            "reduction_1pt": (fp32.bytes / one.bytes) if (one and fp32) else None,
            "device_ms": cut.device_ms,
            "cloud_ms": cut.cloud_ms.get(1, cut.cloud_ms[min(cut.cloud_ms)]),
            "cloud_ms_per_batch": {str(b): t for b, t in sorted(cut.cloud_ms.items())},
            "measured": sum(o.measured for o in cut.options), "options": len(cut.options),
        })
    return {"model": plan.model, "accuracy_fp32": plan.accuracy_fp32, "samples": plan.samples,
            "data": plan.data, "device_profile": plan.device_profile, "cloud_profile": plan.cloud_profile,
            "cuts": cuts}


def plot(plan: Plan, path: str | os.PathLike) -> Path:
    """A figure per cut: bytes at the fewest bits within one point next to fp32 bytes, device and
    cloud latency, and the accuracy drop over cut x bits (measured cells dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    info = summary(plan)["cuts"]
    ids = np.array([c["id"] for c in info])
    fig, axes = plt.subplots(3, 1, figsize=(max(8.0, 0.16 * len(ids) + 4), 11.5), sharex=True,
                             gridspec_kw={"height_ratios": [1.1, 1, 1.5], "hspace": 0.28})
    legend = dict(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, frameon=False,
                  borderaxespad=0.2)
    ax = axes[0]
    fp32 = np.array([c["fp32_bytes"] for c in info], float)
    best = np.array([c["bytes_at_min_bits_1pt"] or np.nan for c in info], float)
    width = 0.42
    ax.bar(ids - width / 2, fp32 / 1024, width, color="#bbbbbb", label="fp32")
    ax.bar(ids + width / 2, best / 1024, width, color="#1f77b4", label="fewest bits within 1 point (shuffle-lz4)")
    ax.set_yscale("log")
    ax.set_ylabel("KiB per sample")
    fig.suptitle(f"{plan.model}: top-1 fp32 {100 * plan.accuracy_fp32:.1f}% on {plan.samples} samples of "
                 f"{plan.data}", y=0.955)
    fig.subplots_adjust(top=0.92)
    ax.legend(**legend)
    for c in info:
        if c["min_bits_1pt"] is not None and len(info) <= 40:
            ax.annotate(str(c["min_bits_1pt"]), (c["id"] + width / 2, (c["bytes_at_min_bits_1pt"] or 1) / 1024),
                        ha="center", va="bottom", fontsize=6)
    ax.grid(axis="y", alpha=0.3)

    ax = axes[1]
    ax.plot(ids, [c["device_ms"] for c in info], "o-", ms=3, label=f"device: head ({plan.device_profile})")
    ax.plot(ids, [c["cloud_ms"] for c in info], "s-", ms=3, label=f"cloud: tail, batch 1 ({plan.cloud_profile})")
    big = max(plan.cuts[0].cloud_ms)
    ax.plot(ids, [cut.cloud_ms_per_sample(big) for cut in plan.cuts], "^--", ms=3,
            label=f"cloud: tail per sample at batch {big}")
    ax.set_ylabel("ms")
    ax.legend(**legend)
    ax.grid(alpha=0.3)

    ax = axes[2]
    columns = list(range(1, 17)) + ["fp16"]
    drop = np.full((len(columns), len(ids)), np.nan)
    measured = np.zeros_like(drop, bool)
    for j, cut in enumerate(plan.cuts[:-1]):
        for r, col in enumerate(columns):
            option = cut.option("fp16") if col == "fp16" else cut.option(QUANT_CODEC, col)
            if option is not None:
                drop[r, j] = 100 * (plan.accuracy_fp32 - option.accuracy)
                measured[r, j] = option.measured
    cmap = LinearSegmentedColormap.from_list("drop", ["#1a9850", "#fee08b", "#d73027", "#67001f"])
    shown = np.clip(drop, 0, None)
    image = ax.imshow(np.log10(0.1 + shown), aspect="auto", cmap=cmap, origin="lower", vmin=-1, vmax=2,
                      extent=(ids[0] - 0.5, ids[-1] + 0.5, -0.5, len(columns) - 0.5), interpolation="nearest")
    ys, xs = np.nonzero(measured)
    ax.scatter(ids[xs], ys, s=3, c="black", marker=".", label="measured (others inferred)")
    knees = [(c["id"], c["min_bits_1pt"] - 1) for c in info if c["min_bits_1pt"] is not None]
    if knees:
        ax.plot([k[0] for k in knees], [k[1] for k in knees], "o", ms=7, mfc="none", mec="black", mew=1.2,
                label="fewest bits within 1 point")
    ax.set_yticks(range(len(columns)), [str(c) for c in columns], fontsize=7)
    ax.set_ylabel("bits (top-1 drop)")
    ax.set_xlabel("cut")
    ax.legend(**legend)
    step = 1 if len(ids) <= 30 else 5
    ax.set_xticks(ids[::step])
    bar = fig.colorbar(image, ax=axes, fraction=0.02, pad=0.01)
    ticks = [0, 0.5, 1, 3, 10, 30, 90]
    bar.set_ticks([math.log10(0.1 + t) for t in ticks], labels=[str(t) for t in ticks])
    bar.set_label("top-1 drop (points)")
    ax.set_xlim(ids[0] - 0.5, ids[-1] + 0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
