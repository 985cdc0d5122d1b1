"""The fleet simulator: N devices, each with its own policy and monitors, sharing one batching cloud. With
one device it is the single-device simulator; it conserves inferences; the cloud batches per cut on the
plan's batch curve; load from other devices moves work to the device; the pressure signal is respected;
and ``dyno simulate --fleet`` prints the documented JSON and a PNG."""

from __future__ import annotations

import json

import pytest
from plan_factory import make_plan, tiny_plan

from dyno.bench.fleet import fleet_experiment, fleet_metrics, fleet_specs
from dyno.cli import main as dyno_main
from dyno.emulate.traces import Trace
from dyno.errors import ConfigError
from dyno.plan import CutPlan, Option, Plan
from dyno.policy import SLO, make
from dyno.policy.model import PerfModel
from dyno.simulate import CloudConfig, DeviceSpec, FleetConfig, SimConfig, run_fleet, simulate_policy
from dyno.simulate.cloud import batch_times
from dyno.simulate.synthetic import INPUT_SHAPE

SLO_T = SLO.parse("throughput")


def _fleet(plan, n: int, policy: str, *, rate=None, slowdown=1.0, trace=None, duration=5.0, **cloud):
    trace = trace or Trace.constant(1e8, 10.0)
    specs = [DeviceSpec(policy=make(policy), slowdown=slowdown, trace=trace, slo=SLO_T, rate=rate, offset_s=0.1 * i)
             for i in range(n)]
    return run_fleet(PerfModel(plan), specs, FleetConfig(duration_s=duration, rtt_ms=2.0, cloud=CloudConfig(**cloud)))


def test_one_device_is_the_single_device_simulator():
    plan = make_plan(8, seed=3, total_device_ms=12, total_cloud_ms=10)
    trace = Trace([0.0, 3.0, 6.0], [6e6, 2e5], name="step")
    for name in ("dyno", "cloud-only", "neurosurgeon", "jalad", "split-int8", "device-only"):
        single = simulate_policy(make(name), PerfModel(plan), trace, SLO_T,
                                 SimConfig(slowdown=3.0, duration_s=6.0, rtt_ms=2.0))
        spec = DeviceSpec(policy=make(name), slowdown=3.0, trace=trace, slo=SLO_T)
        fleet = run_fleet(PerfModel(plan), [spec], FleetConfig(duration_s=6.0, rtt_ms=2.0)).devices[0]
        assert fleet.answered == single.inferences > 0
        assert fleet.latencies_ms == pytest.approx(list(single.latencies_ms))
        assert (fleet.bytes_total, fleet.offloaded, fleet.end) == pytest.approx(
            (single.bytes_total, single.offloaded, single.makespan_s))


def test_the_cloud_batches_per_cut_on_the_plan_s_curve():
    # batches of 1 take 10 ms, of 4 take 20 ms: 3 in between take 16.67 ms (interpolated), 8 take 40 ms
    assert batch_times({1: 10.0, 4: 20.0}, 8, 1.0)[1:] == pytest.approx(
        [0.010, 0.01333, 0.01667, 0.020, 0.025, 0.030, 0.035, 0.040], abs=1e-5)
    cuts = (CutPlan(id=0, name="in", shape=INPUT_SHAPE, nonnegative=True, device_ms=0.0, cloud_ms={1: 10.0, 4: 20.0},
                    options=(Option(codec="jpeg", bits=90, bytes=100.0, accuracy=0.9),)),
            CutPlan(id=1, name="out", shape=(10,), nonnegative=False, device_ms=50.0, cloud_ms={1: 0.0}))
    plan = Plan(model="b", weights_sha256="0" * 64, input_shape=INPUT_SHAPE, num_classes=10, accuracy_fp32=0.9,
                samples=10, device_profile="t", cloud_profile="t", cuts=cuts)
    # four devices, one frame each at t = 0: the first runs alone (the idle worker takes it at once),
    # the other three wait for it and run as one batch of 3
    specs = [DeviceSpec(policy=make("cloud-only"), slowdown=1.0, trace=Trace.constant(8e9, 10.0), slo=SLO_T,
                        rate=0.5, phase_s=0.0) for _ in range(4)]
    result = run_fleet(PerfModel(plan), specs, FleetConfig(duration_s=1.0, rtt_ms=0.0, backlog=4))
    latencies = sorted(lat for d in result.devices for lat in d.latencies_ms)
    assert latencies == pytest.approx([10.0, 26.67, 26.67, 26.67], abs=0.2)
    assert (result.batches, result.served) == (2, 4)
    assert fleet_metrics(result)["mean_batch"] == 2.0


def test_every_inference_started_is_answered_or_counted():
    plan = make_plan(8, seed=5, total_device_ms=20, total_cloud_ms=10)
    trace = Trace([0.0, 2.0, 4.0], [3e6, 1e5])
    for policy in ("dyno", "cloud-only", "device-only"):
        result = _fleet(plan, 32, policy, rate=30.0, slowdown=2.0, trace=trace, duration=4.0, max_queue_ms=100.0)
        for d in result.devices:
            assert d.started == d.answered == len(d.latencies_ms)
            assert d.demanded == d.started + d.dropped and d.met <= d.answered
        m = fleet_metrics(result)
        assert m["inferences"] + m["dropped"] == m["demanded"] and abs(m["demanded"] - 32 * 120) <= 32
        assert 0.0 <= m["slo_attainment"] <= 1.0 and 0 < m["jain"] <= 1.0
    # the overloaded cloud refuses (its queue budget is 100 ms) and the devices finish those themselves
    assert result.refused == 0
    cloud_only = _fleet(plan, 32, "cloud-only", rate=30.0, slowdown=2.0, trace=trace, duration=4.0, max_queue_ms=100.0)
    assert cloud_only.refused > 0 and sum(d.fallbacks for d in cloud_only.devices) >= cloud_only.refused


def test_load_from_other_devices_moves_work_to_the_device():
    plan = tiny_plan()   # kd 1: device-only 10 ms; cut 1: 4 ms on the device + 5 ms of cloud; cut 0: 10 ms of cloud
    alone = fleet_metrics(_fleet(plan, 1, "dyno"))
    crowd = fleet_metrics(_fleet(plan, 16, "dyno"))
    assert alone["offloaded_share"] > 0.9            # alone it uses the cloud: 200/s at cut 1
    assert crowd["offloaded_share"] < 0.5            # sixteen share one worker: most go to the device
    assert crowd["throughput"] / 16 > 90             # ... and each still gets about device-only's 100/s
    run = _fleet(plan, 16, "cloud-only")
    cloud_only = fleet_metrics(run)
    assert run.served / run.end < 101                # one worker, 10 ms a sample: 100/s for the whole fleet
    assert run.refused > 0 and cloud_only["fallbacks"] > 0   # the rest refused, finished on the devices
    assert crowd["cloud_utilisation"] <= 1.0 and cloud_only["cloud_utilisation"] > 0.9


def test_the_pressure_signal_is_respected():
    plan = tiny_plan()
    free = fleet_metrics(_fleet(plan, 4, "dyno"))
    pressed = fleet_metrics(_fleet(plan, 4, "dyno", target_utilisation=0.3))
    assert pressed["offloaded_share"] < free["offloaded_share"]
    assert pressed["cloud_utilisation"] < 0.5 < free["cloud_utilisation"]


def test_fleet_experiment_document_and_command(tmp_path, capsys):
    plan = make_plan(8, seed=4, total_device_ms=15, total_cloud_ms=15)
    traces = [Trace([0.0, 5.0, 10.0], [5e6, 3e5], name="a"), Trace.constant(2e6, 10.0, name="b")]
    specs = fleet_specs(traces, 10, "dyno", mix={"low": 0.5, "high": 0.5}, tiers={"low": 3.0, "high": 0.5},
                        slo=SLO_T, rate=10.0)
    assert sorted(s.tier for s in specs) == ["high"] * 5 + ["low"] * 5
    assert [(s.tier, s.trace.name, s.offset_s) for s in specs] == [
        (s.tier, s.trace.name, s.offset_s) for s in fleet_specs(traces, 10, "cloud-only", mix={"low": 0.5, "high": 0.5},
                                                                 tiers={"low": 3.0, "high": 0.5}, slo=SLO_T, rate=10.0)]
    doc = fleet_experiment(plan, traces, sizes=(1, 4), policies=("dyno", "cloud-only"), mix={"low": 1.0},
                           tiers={"low": 3.0}, slo=SLO_T, rate=10.0, config=FleetConfig(duration_s=5.0), price=0.001)
    assert [e["devices"] for e in doc["fleet"]] == [1, 4]
    keys = {"goodput", "slo_attainment", "cloud_s", "p50_ms", "p95_ms", "jain", "cloud_utilisation", "price_per_million"}
    assert keys <= set(doc["fleet"][1]["policies"]["dyno"])
    plan_path = plan.save(tmp_path / "plan.json")
    png = tmp_path / "fleet.png"
    code = dyno_main(["simulate", "--plan", str(plan_path), "--trace", "synthetic:step", "--fleet", "1,4",
                      "--duration", "3", "--policies", "dyno,cloud-only,device-only", "--reference-ms", "20",
                      "--cloud-price", "0.0006", "--json", "--plot", str(png)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert [e["devices"] for e in doc["fleet"]] == [1, 4] and set(doc["fleet"][0]["policies"]) == {
        "dyno", "cloud-only", "device-only"}
    assert doc["speeds"]["reference_ms"] == 20 and doc["cloud"]["scale"] == pytest.approx(1.5 / 20)
    assert doc["tiers"] == {"low": 49 / 20, "mid": 12 / 20, "high": 3 / 20}
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_fleet_started_together_does_not_probe_all_at_once():
    """64 identical devices, all on the device, start together at the same frame rate; each probes the
    link now and then. Their probes are spread over the probe interval, not sent in one burst."""
    plan = tiny_plan()
    slow_link = Trace.constant(2e3, 10.0)    # offloading never pays: every offload is a probe
    specs = [DeviceSpec(policy=make("dyno", probe_hope=None), slowdown=1.0, trace=slow_link, slo=SLO_T, rate=50.0)
             for _ in range(64)]
    result = run_fleet(PerfModel(plan), specs, FleetConfig(duration_s=4.0, rtt_ms=2.0, timeline=True))
    probes = [t for d in result.devices for t, codec in zip(d.timeline["t"], d.timeline["codec"], strict=True)
              if codec is not None and t >= 0.5]    # (before: the first decisions, on the initial estimate)
    assert len(probes) >= 64                        # every device probed at least once
    per_50ms: dict[int, int] = {}
    for t in probes:
        per_50ms[int(t / 0.05)] = per_50ms.get(int(t / 0.05), 0) + 1
    assert max(per_50ms.values()) <= 16             # (all at phase 0: 64 in one slot)


def test_the_fleet_bench_spreads_frames_and_probes_as_the_simulator_does():
    from dyno.bench.fleet_runtime import client_specs
    from dyno.simulate.fleet import device_phase

    specs = [DeviceSpec(policy=make("dyno"), slowdown=1.0, trace=Trace.constant(1e6, 10.0), slo=SLO_T)
             for _ in range(16)]
    clients = client_specs(specs, "dyno", rate=20.0)
    phases = [c["probe_phase"] for c in clients]
    assert phases == [device_phase(i) for i in range(16)] and phases[0] == 0.0
    assert len(set(round(p, 6) for p in phases)) == 16 and all(0 <= p < 1 for p in phases)
    # 16 phases spread over [0, 1): no two closer than a fortieth of the period
    ordered = sorted(phases)
    assert min(b - a for a, b in zip(ordered, ordered[1:])) > 1 / 40
    assert [c["phase"] for c in clients] == pytest.approx([p / 20.0 for p in phases])


def test_a_cold_worker_computes_its_next_batch_slower_by_the_idle_time_before_it():
    from dyno.simulate.cloud import DONE, Request, SimCloud

    cold = CloudConfig(cold=((1.0, 1.0), (101.0, 2.0)), overhead_ms=0.5)
    assert [cold.warmth(s) for s in (0.0, 0.001, 0.051, 0.101, 10.0)] == pytest.approx([1.0, 1.0, 1.5, 2.0, 2.0])
    events = []
    cloud = SimCloud([{1: 1.0}], cold, lambda t, kind, a, b: events.append((t, kind, a, b)), half_rtt=0.0)

    def batch_at(t):
        cloud.arrive(Request(0, 0, t, 0, 0.0), t)
        t_done, kind, worker, batch = next(e for e in events if e[1] == DONE)
        events.clear()
        cloud.done(worker, t_done, batch)
        reply = events[-1][3]
        events.clear()
        return (t_done - t) * 1000, reply

    ms, reply = batch_at(0.0)                  # never ran: as cold as the last point
    assert ms == pytest.approx(2.0 + 0.5)      # compute 1 ms x 2, handling 0.5 ms
    assert reply.compute_ms == pytest.approx(2.0) and reply.cloud_s == pytest.approx(0.002)  # handling is not compute
    assert batch_at(0.0025)[0] == pytest.approx(1.0 + 0.5)        # back to back: warm
    assert batch_at(0.004 + 0.051)[0] == pytest.approx(1.5 + 0.5)  # 51 ms idle: half way
    plain = CloudConfig()
    assert plain.warmth(100.0) == 1.0
    for bad in (((0.0, 0.5),), ((5.0, 1.0), (1.0, 2.0)), ((0.0, 11.0),)):
        with pytest.raises(ConfigError, match="cold"):
            CloudConfig(cold=bad)


def test_the_goals_compare_cloud_seconds_where_both_attain_the_slo_and_count_full_onloading():
    from dyno.bench.fleet import goals

    def entry(n, dyno, cloud):      # (goodput, attainment, cloud_s) per system
        return {"devices": n, "policies": {name: {"goodput": g, "slo_attainment": a, "cloud_s": c}
                                           for name, (g, a, c) in (("dyno", dyno), ("cloud-only", cloud))}}

    fleet = [entry(1, (10, 1.0, 0.0), (10, 0.95, 0.002)), entry(4, (40, 0.99, 0.0005), (39, 0.92, 0.002)),
             entry(16, (160, 0.97, 0.0004), (90, 0.5, 0.002))]
    out = goals(fleet, ["dyno", "cloud-only"])
    share = out["dyno_cloud_s_share_at_equal_attainment"]
    assert share["devices"] == [1, 4]               # N = 16: cloud-only below 90%, not compared
    assert share["median"] == pytest.approx(0.125) and share["max"] == pytest.approx(0.25)
    assert out["cloud_only_below_90"] == {"devices": 16, "cloud_only": 0.5, "dyno": 0.97}
    assert out["goodput_vs_best_baseline"]["16"] == {"best": "cloud-only", "ratio": pytest.approx(160 / 90)}
