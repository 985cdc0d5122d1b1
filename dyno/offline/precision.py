"""Precision analysis: top-1 accuracy of every (cut, bits) on a labelled sample, efficiently.

For every cut, the accuracy and the agreement with the fp32 model's prediction when the activation
there is sent quantised to ``bits`` (1..16, per-sample ISQuant exactly as ``dyno.codec`` does it) or
as fp16; for the input cut also as JPEG and WebP at qualities 30..95.

How it stays fast (a naive sweep of every cut x 16 widths reruns the model hundreds of times):

- **One forward pass for all heads.** Each batch of the sample runs through the model once, segment
  by segment (:class:`dyno.graph.Walk`); all batches advance together from cut to cut, so the
  activations of the whole sample at the current cut are at hand and heads never rerun - except at
  cuts too wide to hold for the whole sample (over ``hold_bytes``), where each use of a batch
  recomputes the few segments from the last cut held (:mod:`dyno.offline.held`).
- **Quantise in batches** (:mod:`dyno.offline.quant`), checked bit-for-bit against the codec on real
  activations at start-up; on any mismatch the analysis falls back to the codec itself.
- **Knee search, not a sweep** (:mod:`dyno.offline.search`), starting from the previous cut's knee:
  neighbouring cuts of a conv -> bn -> activation chain have similar knees, so locating one is
  usually one or two evaluations. Clear failures stop early. Every JPEG/WebP quality is measured on
  the screening subset, and the knees among them confirmed. Other widths are inferred and marked so
  (:mod:`dyno.offline.infer`).
- **Share identical cuts** (:mod:`dyno.offline.share`): a pad or reshape of the previous cut gives the
  tail the very same values; verified on the data, and the tail is then not run again.
- **Clip calibration** (:mod:`dyno.offline.calibrate`) where it lowers the quantisation error enough;
  both variants are measured there and the better kept per width.
- **No page-fault churn, no thread fights.** Large tensors come from the heap rather than fresh
  ``mmap``s during the analysis, and the thread count is whichever of 1 or all cores runs the model
  faster (a machine shared with busy processes makes two threads several times slower than one).

    >>> result = analyze_precision(model, cuts, x, y)
    >>> result.cuts[5].min_bits(0.01), ladder(result.cuts[5], result)[4].accuracy
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from dyno import partition
from dyno.errors import DataError
from dyno.offline.calibrate import calibrate, calibration_batches
from dyno.offline.codecs import cut_walk
from dyno.offline.held import HOLD_BYTES, Held
from dyno.offline.machine import faster_channels_last, faster_threads, heap_allocations, torch_threads, trim_heap
from dyno.offline.quant import Quantize, fake_fp16, fake_quant, fake_quant_reference, self_check
from dyno.offline.search import (
    THRESHOLDS,
    CutPrecision,
    Evaluator,
    Measurement,
    PrecisionResult,
    Search,
    SearchConfig,
    Transform,
)
from dyno.offline.share import SHARED_KINDS, same_values, share, shareable
from dyno.packing import BITS, IMAGE_CODECS
from dyno.progress import NO_PROGRESS, Progress

__all__ = ["analyze_precision"]

Normalize = Callable[[np.ndarray], torch.Tensor]

#: Seconds between two choices of the thread count (other processes come and go): the first
#: re-check comes after ``RETHREAD_FIRST`` seconds (a choice made in a busy moment at the start is not
#: kept for long), and the interval doubles while the choice holds, up to ``RETHREAD_SECONDS``.
RETHREAD_FIRST = 60
RETHREAD_SECONDS = 300
#: Samples a choice of the thread count times the model on (each thread count: a warm-up and three runs,
#: alternating). A choice costs ~8 forward passes of these: 16 keep it a second or two (50-100 cost a quarter of the
#: analysis on a loaded machine), and the ratio of one to two threads does not need more.
THREAD_PROBE = 16


def analyze_precision(model: nn.Module, cuts: Sequence[partition.Cut], x: torch.Tensor, y: torch.Tensor, *,
                      images: Sequence[np.ndarray] | None = None, normalize: Normalize | None = None,
                      config: SearchConfig | None = None, channels_last: bool | None = None,
                      threads: int | None = None, hold_bytes: int = HOLD_BYTES, release_input: bool = False,
                      progress: Progress = NO_PROGRESS) -> PrecisionResult:
    """Measure accuracy per cut and bit width on the labelled sample ``x`` (N, C, H, W), ``y`` (N,).

    ``images`` (one uint8 H x W x C array per sample) and ``normalize`` (a batch of decoded uint8
    images -> model input) enable the JPEG/WebP options of the input cut. A ``precision`` task shows
    the cut at hand and what is evaluated. ``channels_last`` (None: whichever layout runs the model
    faster here) selects the memory format the tails run in; ``threads`` (None: one or all cores,
    whichever runs the model faster right now - on a machine shared with other busy processes one
    thread is often several times faster than two) the torch threads. ``hold_bytes`` bounds the
    activations held for the whole sample at one cut (see :mod:`dyno.offline.held`; the result is
    the same at any bound, only memory and time change). ``release_input``: the caller hands ``x`` over;
    once the batches are made it is emptied (``x.set_()``), so the sample is not held twice.
    """
    config = config or SearchConfig()
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"need a non-empty labelled sample, got {len(x)} inputs and {len(y)} labels")
    with heap_allocations() as heap:  # the threads are chosen as the analysis allocates: from the heap
        chooser = _Threads(model, x, config.batch_size, threads)
        with torch_threads(chooser.count):
            run = _Run(model, cuts, x, y, config, channels_last, hold_bytes, progress)
            if release_input:
                x.set_()  # type: ignore[call-overload]  # the batches hold the sample now (copies or views)
            result = run.analyze(images, normalize, chooser)
    result.notes["threads"] = chooser.count
    if chooser.switches:
        result.notes["thread_switches"] = chooser.switches  # [cut index, threads from then on]
    result.notes["allocator"] = "heap (glibc mmap disabled during the analysis)" if heap else "default"
    return result


class _Threads:
    """The torch thread count: as given, or 1 or all cores, whichever runs the model faster, chosen
    again after ``RETHREAD_FIRST`` seconds, then at doubling intervals up to ``RETHREAD_SECONDS``."""

    def __init__(self, model: nn.Module, x: torch.Tensor, batch: int, threads: int | None) -> None:
        self.most = torch.get_num_threads()
        self.auto = threads is None
        self.probe = min(batch, THREAD_PROBE)
        self.model, self.x, self.batch = model, x[: self.probe].clone(), batch  # not the whole sample
        self.count = faster_threads(model, x[: self.probe], self.probe, self.most) if threads is None else threads
        self.checked = time.perf_counter()
        self.interval = RETHREAD_FIRST
        self.switches: list[list[int]] = []

    def recheck(self, index: int) -> None:
        if not self.auto or time.perf_counter() - self.checked < self.interval:
            return
        best = faster_threads(self.model, self.x[: self.probe], self.probe, self.most)
        if best != torch.get_num_threads():
            torch.set_num_threads(best)
            self.switches.append([index, best])
            self.interval = RETHREAD_FIRST
        else:
            self.interval = min(2 * self.interval, RETHREAD_SECONDS)
        self.checked = time.perf_counter()


class _Run:
    """One analysis: the sample in batches, the fp32 reference, and every batch walking cut by cut."""

    def __init__(self, model: nn.Module, cuts: Sequence[partition.Cut], x: torch.Tensor, y: torch.Tensor,
                 config: SearchConfig, channels_last: bool | None, hold_bytes: int, progress: Progress) -> None:
        began = time.perf_counter()
        self.config, self.cuts = config, cuts
        model = model.eval()
        if channels_last is None:
            channels_last = faster_channels_last(model, x[: config.batch_size]) if x.dim() == 4 else False
        if channels_last:
            model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.channels_last = channels_last
        self.gm = partition.trace(model)
        size = config.batch_size
        batches = [x[i: i + size] for i in range(0, len(x), size)]
        if channels_last:
            batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
        self.labels = [y[i: i + size] for i in range(0, len(y), size)]
        with torch.no_grad():  # the fp32 reference: one plain forward pass
            logits = [self.gm(b) for b in batches]
        self.reference = [out.argmax(1) for out in logits]
        self.num_classes = int(logits[0].shape[1])
        self.accuracy_fp32 = sum(int((r == t).sum()) for r, t in zip(self.reference, self.labels)) / len(x)
        self.total = len(x)
        self.notes: dict[str, Any] = {"channels_last": channels_last,
                                      "reference_seconds": round(time.perf_counter() - began, 2)}
        self.began = began
        self.walk = cut_walk(self.gm, cuts)
        self.held = Held(self.walk, batches, hold_bytes)
        del batches  # the held states keep them until the first cut held
        self.acts: Sequence[torch.Tensor] = []
        self.quantize: Quantize = fake_quant
        self.checked: set[bool] = set()
        self.results: list[CutPrecision] = []
        self.generator = torch.Generator().manual_seed(0)
        self.guess = config.start_bits
        self.tick = progress.task("precision", len(cuts))

    def status(self, index: int, message: str) -> None:
        self.tick(advance=0, status=f"cut {index} ({self.cuts[index].name}): {message}")

    def analyze(self, images: Sequence[np.ndarray] | None, normalize: Normalize | None,
                threads: _Threads) -> PrecisionResult:
        for index, cut in enumerate(self.cuts):
            threads.recheck(index)
            self.tick()
            result = CutPrecision(id=cut.id, name=cut.name, nonnegative=cut.nonnegative)
            previous = self.results[-1] if self.results else None
            trim_heap()  # the previous cut's evaluations freed their batches: give the pages back first
            shared = self._advance(index, previous)
            trim_heap()
            self.results.append(result)
            if index == len(self.cuts) - 1:
                self.status(index, "output (device-only)")
                break
            self._check_quantize(index)
            result.fp16_ok = self.fp16_ok
            if shared and previous is not None:
                share(previous, result)
                self.status(index, f"same as cut {result.shared_with}")
                continue
            self._measure(index, result, images if index == 0 else None, normalize)
            self.status(index, f"knee {result.min_bits(THRESHOLDS[-1])} bits")
        self.held.clear()
        if self.held.recomputed:
            self.notes["recomputed_cuts"] = list(self.held.recomputed)  # over the hold budget: see held.py
        self.notes["seconds"] = round(time.perf_counter() - self.began, 1)
        self.notes["search"] = dataclasses.asdict(self.config)
        return PrecisionResult(accuracy_fp32=self.accuracy_fp32, samples=self.total, num_classes=self.num_classes,
                               cuts=self.results, notes=self.notes)

    def _advance(self, index: int, previous: CutPrecision | None) -> bool:
        """Advance every batch to cut ``index``; whether the previous cut's measurements hold here.

        When this cut only pads or reshapes the previous cut's tensor, check batch by batch (releasing
        the previous activations as we go) that quantising here gives the tail exactly what quantising
        there did."""
        cuts = self.cuts
        share_ = (previous is not None and index < len(cuts) - 1
                  and any(k[0] in SHARED_KINDS for k in previous.measured)
                  and shareable(self.gm, self.walk.nodes[index], cuts[index - 1].name, cuts[index].name))
        self.acts = []  # the previous cut's batches are released one by one below, not all at the end
        self.fp16_ok = True
        for k in range(len(self.labels)):
            before, values = self.held.move(k, index)
            self.fp16_ok = self.fp16_ok and _fits_fp16(values[cuts[index].name])
            if share_ and before is not None and previous is not None:
                share_ = same_values(self.walk, index, before, cuts, values[cuts[index].name], previous,
                                     self.quantize)
            del before, values
            if index > 0:
                trim_heap()  # this cut's tensors rarely fit the previous cut's holes: release them now
        self.acts = self.held.acts(index, cuts[index].name)
        return share_

    def _check_quantize(self, index: int) -> None:
        """Check the batched quantisation against the codec, once signed, once non-negative."""
        nonnegative = self.cuts[index].nonnegative
        if nonnegative in self.checked or self.quantize is not fake_quant:
            return
        self.checked.add(nonnegative)
        if self_check(self.acts[0].contiguous(), nonnegative):
            self.notes["fake_quant"] = "batched, checked bit-for-bit against dyno.codec encode -> decode"
        else:
            self.quantize = fake_quant_reference
            self.notes["fake_quant"] = (f"per-sample codec encode -> decode (the batched version differed "
                                        f"from the codec at cut {index})")

    def _measure(self, index: int, result: CutPrecision, images: Sequence[np.ndarray] | None,
                 normalize: Normalize | None) -> None:
        """The knee search at one cut, its clip calibration, fp16, and the input cut as an image."""
        cut, config = self.cuts[index], self.config
        _, tail = partition.split(self.gm, cut)
        if self.channels_last:
            tail = tail.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        evaluator = Evaluator(tail, self.acts, self.labels, self.reference, config,
                              lambda message: self.status(index, message))
        screen = min(self.total, max(config.min_screen, math.ceil(config.screen * self.total)))
        evaluate = functools.partial(self._evaluate, evaluator, result, cut.nonnegative)
        knee = Search(BITS, functools.partial(evaluate, "q"), screen, self.total).run(self.guess)
        if knee is not None:
            self.guess = knee
            if knee > 1:  # clip calibration where it could lower the knee
                self._clip(result, knee, evaluate, screen)
        fp16_every = max(1, math.ceil((len(self.cuts) - 1) / max(config.fp16_cuts, 1)))
        if result.fp16_ok and (config.fp16 == "all" or (config.fp16 == "auto" and index % fp16_every == 0)):
            result.measured[("fp16",)] = evaluator.run(Measurement(("fp16",)), lambda _k, a: fake_fp16(a))
        if images is not None and normalize is not None:  # the input cut as a real app sends it
            for codec in IMAGE_CODECS:
                def run_image(quality: int, until: int | None, codec: str = codec) -> Measurement:
                    m = result.measured.setdefault((codec, quality), Measurement((codec, quality)))
                    transform = _image_transform(images, codec, quality, normalize, config.batch_size,
                                                 self.channels_last)
                    return evaluator.run(m, transform, until)

                Search(config.image_qualities, run_image, screen, self.total).run(None, screen_all=True)

    def _evaluate(self, evaluator: Evaluator, result: CutPrecision, nonnegative: bool, kind: str, width: int,
                  until: int | None, clip: tuple[float, float] | None = None) -> Measurement:
        m = result.measured.setdefault((kind, width), Measurement((kind, width)))
        quantize = self.quantize
        return evaluator.run(m, lambda _k, a: quantize(a, width, nonnegative=nonnegative, clip=clip), until)

    def _clip(self, result: CutPrecision, knee: int, evaluate: Callable[..., Measurement], screen: int) -> None:
        """Calibrate a clip range below the knee; if it passes there, search the clipped knee."""
        clip, record = calibrate(calibration_batches(self.acts, self.config), knee - 1, result.nonnegative,
                                 self.config, self.generator)
        result.calibration = record
        record["used"] = False
        if clip is None:
            return
        result.clip = clip
        clipped = functools.partial(evaluate, "clip", clip=clip)
        if clipped(knee - 1, screen).passes(THRESHOLDS[-1]):
            found = Search(BITS[: knee - 1], clipped, screen, self.total).run(knee - 1, half=False)
            record["used"] = found is not None


def _fits_fp16(t: torch.Tensor) -> bool:
    """Whether every value is within float16's range (NaN is not): two reductions, no |t| copy."""
    return bool(t.max() <= 65504) and bool(t.min() >= -65504)


def _image_transform(images: Sequence[np.ndarray], codec: str, quality: int, normalize: Normalize,
                     batch_size: int, channels_last: bool) -> Transform:
    """The batch of inputs as the cloud decodes it from images sent with ``codec`` at ``quality``."""
    from dyno.codec import Expected, decode, encode

    def transform(k: int, _act: torch.Tensor) -> torch.Tensor:
        decoded = []
        for image in images[k * batch_size: (k + 1) * batch_size]:
            frame = encode(image, bits=quality, mode=codec)
            decoded.append(decode(frame, Expected(shape=image.shape)))
        batch = normalize(np.stack(decoded))
        return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch

    return transform
