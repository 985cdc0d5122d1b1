"""The offline stage: what dyno learns about a model once, before serving it.

    plan = dyno.offline.analyze("fmnist-resnet", out="plan.json")   # profiles + precision -> the plan
    plan = dyno.offline.ensure_plan("fmnist-resnet")               # the cached plan while the weights hold
    device = dyno.offline.measure("device", model, cuts, inputs)   # a latency profile of one role
    plan = dyno.offline.nominal_plan(model)                        # nominal figures, nothing measured

The modules, from the bottom up: ``machine`` (threads, timing, the heap), ``sample`` (the labelled
sample and the images behind it), ``codecs`` (each cut's options - every coder of ``PLAN_CODECS`` at
every width - their real bytes and times, and the coders on the bytes/time front),
``profile`` (the profile file) and ``measure`` (measuring one), ``quant`` (fake quantisation),
``search`` (measurements and the knee search), ``calibrate`` (clip ranges), ``share`` (identical
cuts), ``infer`` (entries for unmeasured widths), ``precision`` (the analysis driver), ``pipeline``
(the plan), ``report`` (``dyno plan show``), ``nominal`` (a plan without measuring).
"""

from dyno.offline.calibrate import calibrate
from dyno.offline.codecs import (
    PLAN_CODECS,
    QUANT_CODEC,
    codec_costs,
    codec_options,
    cut_activations,
    pareto,
    sample_activations,
)
from dyno.offline.infer import Entry, ladder
from dyno.offline.machine import time_call, torch_threads
from dyno.offline.measure import measure
from dyno.offline.nominal import nominal_plan
from dyno.offline.pipeline import analyze, default_plan_path, ensure_plan
from dyno.offline.precision import analyze_precision
from dyno.offline.profile import BATCH_SIZES, CutProfile, Profile
from dyno.offline.quant import fake_fp16, fake_quant, fake_quant_reference
from dyno.offline.report import plot, summary
from dyno.offline.sample import DEFAULT_LIMITS, default_limit, input_images, input_spec, load_sample
from dyno.offline.search import (
    THRESHOLDS,
    CutPrecision,
    Measurement,
    PrecisionResult,
    Search,
    SearchConfig,
)

__all__ = [
    # the pipeline and its report
    "analyze", "ensure_plan", "default_plan_path", "default_limit", "DEFAULT_LIMITS", "load_sample",
    "input_spec", "input_images", "summary", "plot", "nominal_plan",
    # profiles
    "Profile", "CutProfile", "measure", "BATCH_SIZES", "codec_options", "codec_costs", "sample_activations",
    "cut_activations", "pareto", "QUANT_CODEC", "PLAN_CODECS", "time_call", "torch_threads",
    # precision
    "analyze_precision", "SearchConfig", "Search", "Measurement", "CutPrecision", "PrecisionResult", "THRESHOLDS",
    "ladder", "Entry", "calibrate", "fake_quant", "fake_quant_reference", "fake_fp16",
]
