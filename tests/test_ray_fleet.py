"""The fleet benchmark against the embedded server and against Ray Serve (``dyno bench-runtime --what
fleet [--server ray]``) and the autoscaling benchmark's pieces: small real runs of the command
(fmnist-resnet's cached plan and trained weights, a local Ray started by the server process), and the
stepped load's schedule.

The run is skipped where Ray, Fashion-MNIST, or fmnist-resnet's trained weights and plan are not present
(`dyno train fmnist-resnet` and `dyno demo` cache them)."""

from __future__ import annotations

import os

import pytest
from conftest import dyno_json, needs_fmnist

from dyno.bench.autoscale import active_spans, parse_steps
from dyno.bench.scale_out import _summary, derived
from dyno.errors import ConfigError


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


def _run(trip_p50: float, capacity: float, goodput: float, p50: float) -> dict:
    """A fleet_bench document cut down to what the scale-out summary reads."""
    figures = {"goodput": goodput, "throughput": goodput + 1, "p50_ms": p50, "p95_ms": 2 * p50,
               "slo_attainment": 0.9, "cloud_s": 0.001, "offloaded_share": 1.0}
    return {"round_trip_ms": {"p50": trip_p50, "p95": 2 * trip_p50}, "capacity": {"per_s": capacity, "p50_ms": 1.0},
            "measured": {"fleet": [{"devices": 64, "policies": {"dyno": figures}}]}}


def test_scale_out_takes_medians_over_rounds_then_the_overhead_and_the_scaling():
    summary = {"embedded": _summary([_run(3.0, 900, 100, 10), _run(3.4, 800, 90, 12), _run(9.0, 100, 10, 90)],
                                    ["dyno"]),
               "ray-1": _summary([_run(5.0, 400, 80, 14), _run(6.0, 600, 70, 15)], ["dyno"]),
               "ray-2": _summary([_run(7.0, 1000, 120, 13), _run(7.0, 800, 100, 13)], ["dyno"])}
    assert summary["embedded"]["round_trip_p50"] == 3.4 and summary["embedded"]["capacity_per_s"] == 800
    assert summary["ray-1"]["policies"]["dyno"]["goodput"] == 75          # median of two: their mean
    out = derived(summary, ["dyno"])
    assert out["overhead_ms"]["round_trip_p50"] == pytest.approx(5.5 - 3.4)
    assert out["overhead_ms"]["fleet_p50"]["dyno"] == pytest.approx(14.5 - 12)
    assert out["scaling"]["dyno"]["goodput"] == pytest.approx(110 / 75)
    assert out["scaling"]["dyno"]["throughput"] == pytest.approx(111 / 76)
    assert out["scaling"]["cloud_bound"] == pytest.approx(900 / 500)
    assert derived({"ray-1": summary["ray-1"]}, ["dyno"]) == {}              # nothing to compare with


@needs_fmnist
def test_fleet_bench_on_the_embedded_server_puts_it_on_a_core_of_its_own():
    document = dyno_json("bench-runtime", "--what", "fleet", "--devices", "2", "--duration", "3", "--processes", "1",
                         "--policies", "cloud-only", "--trace", "fast", "--json")
    cores = sorted(os.sched_getaffinity(0))
    assert document["server"] == "embedded"
    assert document["cloud_cpu"] == (cores[-1] if len(cores) > 1 else None)
    assert document["measured"]["fleet"][0]["host"]["cores"] == max(1, len(cores) - 1)   # the devices' own
    figures = document["measured"]["fleet"][0]["policies"]["cloud-only"]
    assert figures["demanded"] == 60 and figures["offloaded_share"] == 1.0
    assert 0 < figures["cloud_s"] < 0.5 and 1.0 <= figures["mean_batch"] <= 2 * 8
    before_run = document["measured"]["fleet"][0]["warmth"]
    assert set(before_run) == {"cloud-only"}                     # read again just before each system's run
    for warmth in (document["calibration"]["warmth"], before_run["cloud-only"]):
        assert warmth["points"] and all(ms > 0 for _, ms in warmth["points"])


@needs_fmnist
def test_fleet_bench_against_two_ray_replicas_says_so_and_counts_the_replicas_compute():
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'dyno[ray]')")
    document = dyno_json("bench-runtime", "--what", "fleet", "--server", "ray", "--replicas", "2", "--devices", "3",
                         "--duration", "3", "--processes", "1", "--policies", "cloud-only", "--trace", "fast", "--json")
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
    assert 1.0 <= figures["mean_batch"] <= 3 * 8            # the server's batches (3 windows of 8 at most)
    host = measured["host"]                                # what the devices' own work asks of this machine
    assert host["cores"] == os.cpu_count()
    assert host["device_cores"] == pytest.approx(3 * 10 * document["calibration"]["local_cpu_ms"] / 1000, abs=1e-3)
