"""The fleet benchmark against Ray Serve (``dyno bench-runtime --what fleet --server ray``) and the
autoscaling benchmark's pieces: a small real run of the command (fmnist-resnet's cached plan and trained
weights, a local Ray started by the server process), and the stepped load's schedule.

The run is skipped where Ray, Fashion-MNIST, or fmnist-resnet's trained weights and plan are not present
(`dyno train fmnist-resnet` and `dyno demo` cache them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, needs_fmnist

from dyno.bench.autoscale import active_spans, parse_steps
from dyno.errors import ConfigError


def _cached_fmnist_resnet() -> str | None:
    """The reason to skip, or None when the trained weights and the plan are cached."""
    from dyno import offline, zoo

    if zoo.trained_weights_info(zoo.get_model("fmnist-resnet")) is None:
        return "fmnist-resnet has no trained weights cached (dyno train fmnist-resnet)"
    if not offline.default_plan_path("fmnist-resnet").exists():
        return f"no cached plan at {offline.default_plan_path('fmnist-resnet')} (dyno demo makes it)"
    return None


def test_steps_feed_each_device_only_in_the_steps_that_have_it():
    steps = parse_steps("4:20,64:40,4:60")
    assert steps == [(4, 20.0), (64, 40.0), (4, 60.0)]
    spans = active_spans(steps)
    assert len(spans) == 64
    assert spans[0] == spans[3] == [[0.0, 120.0]]          # in every step: one span, merged
    assert spans[4] == spans[63] == [[20.0, 60.0]]         # only in the middle step
    assert active_spans([(2, 5), (1, 5), (2, 5)])[1] == [[0.0, 5.0], [10.0, 15.0]]
    for bad in ("4", "4:x", "0:10", "4:-1", "4:20,,8:1"):
        with pytest.raises(ConfigError):
            parse_steps(bad)


@needs_fmnist
def test_fleet_bench_against_two_ray_replicas_says_so_and_counts_the_replicas_compute():
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'dyno[ray]')")
    reason = _cached_fmnist_resnet()
    if reason:
        pytest.skip(reason)
    out = subprocess.run(
        [sys.executable, "-m", "dyno", "bench-runtime", "--what", "fleet", "--server", "ray", "--replicas", "2",
         "--devices", "3", "--duration", "3", "--processes", "1", "--policies", "cloud-only", "--trace", "fast",
         "--json"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    document = json.loads(out.stdout)
    assert document["server"] == "ray" and document["replicas"] == 2
    trip = document["round_trip_ms"]
    assert trip["n"] == 200 and 0 < trip["p50"] <= trip["p95"]
    measured = document["measured"]["fleet"][0]
    assert measured["devices"] == 3
    figures = measured["policies"]["cloud-only"]
    assert figures["demanded"] == 90                       # 3 devices x 3 s x 10 frames/s
    assert figures["inferences"] + figures["dropped"] == figures["demanded"]
    assert figures["offloaded_share"] == 1.0 and figures["inferences"] > 0
    assert 0 < figures["cloud_s"] < 0.5                    # the replicas' compute reached the front's counter
