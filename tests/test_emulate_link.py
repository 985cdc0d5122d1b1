"""The emulated uplink (a FIFO rate limiter replaying a trace) and the emulated device."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from dyno.emulate.device import TIERS, Device
from dyno.emulate.link import Link
from dyno.emulate.traces import Trace
from dyno.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_frame_takes_its_size_over_the_rate():
    clock = FakeClock()
    link = Link(Trace.constant(1e6), clock=clock)
    transfer = link.reserve(125_000)  # 1 Mbit at 1 Mbit/s
    assert (transfer.queued, transfer.start, transfer.end) == (0.0, 0.0, pytest.approx(1.0))
    assert transfer.seconds == pytest.approx(1.0) and transfer.waited == 0.0


def test_frames_queue_first_in_first_out():
    clock = FakeClock()
    link = Link(Trace.constant(8e6), clock=clock)  # 1 MB/s
    a = link.reserve(500_000)
    b = link.reserve(250_000)   # handed over at once: waits for a
    assert b.start == pytest.approx(a.end) and b.end == pytest.approx(0.75)
    assert b.seconds == pytest.approx(0.25) and b.waited == pytest.approx(0.5)
    clock.t += 2.0              # the link is idle again
    c = link.reserve(100_000)
    assert c.start == pytest.approx(2.0) and c.end == pytest.approx(2.1)
    assert link.frames == 3 and link.sent_bytes == 850_000


def test_the_rate_follows_the_trace_within_a_transfer():
    clock = FakeClock()
    trace = Trace([0.0, 1.0, 2.0], [8e6, 1e6])  # 1 MB/s for a second, then 125 kB/s
    link = Link(trace, clock=clock)
    link.start()  # link time 0 (without it, the first frame starts the clock)
    clock.t += 0.5
    transfer = link.reserve(625_000)  # 500 kB in the first 0.5 s, 125 kB in the next 1 s
    assert transfer.start == pytest.approx(0.5) and transfer.end == pytest.approx(2.0)
    assert link.rate_bps(0.2) == 8e6 and link.rate_bps(1.5) == 1e6
    clock.t += 2.0  # the trace loops: at link time 2.5 it is back to 8 Mbit/s
    assert link.rate_bps() == 8e6


def test_latency_is_added_once_per_frame():
    clock = FakeClock()
    link = Link(Trace.constant(1e6), latency_ms=20, clock=clock)
    a, b = link.reserve(12_500), link.reserve(12_500)
    assert a.end == pytest.approx(0.12) and b.start == pytest.approx(0.1) and b.end == pytest.approx(0.22)


def test_send_waits_in_real_time_and_restart_replays_from_zero():
    link = Link(Trace.constant(8e6))  # 1 MB/s
    start = time.monotonic()
    transfer = asyncio.run(link.send(50_000))
    elapsed = time.monotonic() - start
    assert transfer.seconds == pytest.approx(0.05)
    assert 0.045 <= elapsed <= 0.5
    link.start()
    assert link.now() < 0.05
    assert link.send_blocking(10_000).start < 0.01


def test_the_link_is_thread_safe():
    clock = FakeClock()
    link = Link(Trace.constant(8e6), clock=clock)
    out = []
    threads = [threading.Thread(target=lambda: out.extend(link.reserve(1000) for _ in range(100)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ends = sorted(t.end for t in out)
    assert ends[-1] == pytest.approx(400 * 0.001)  # no two frames share the link
    assert all(b - a == pytest.approx(0.001) for a, b in zip(ends, ends[1:]))


def test_link_refuses_bad_arguments():
    with pytest.raises(ConfigError):
        Link(object())
    with pytest.raises(ConfigError):
        Link(Trace.constant(1e6), latency_ms=-1)
    with pytest.raises(ConfigError):
        Link(Trace.constant(1e6)).reserve(-1)


def test_device_pads_each_run_to_k_times_its_time():
    import torch

    def busy(seconds):
        start = time.thread_time()
        while time.thread_time() - start < seconds:
            pass

    device = Device.tier(4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # CPU time of the calling thread is the work
        _, ms = device.run(busy, 0.02)
        assert 75 <= ms <= 400
        _, ms = device.run(time.sleep, 0.05)  # waiting is not work: no padding, but its wall time
        assert 45 <= ms <= 150
        torch.set_num_threads(2)  # wall time is the work
        _, ms = device.run(time.sleep, 0.02)
        assert 75 <= ms <= 200
    finally:
        torch.set_num_threads(threads)
    value, ms = Device(slowdown=1.0).run(lambda: 7)
    assert value == 7 and ms < 5
    assert Device.tier("low").slowdown == TIERS["low"] == 33
    assert "padding" in Device.tier("mid").description


def test_the_device_s_own_time_leaves_out_the_process_s_other_threads():
    import threading

    import torch

    def busy(seconds):
        start = time.thread_time()
        while time.thread_time() - start < seconds:
            pass

    device = Device(1.0)
    threads = torch.get_num_threads()
    stop = threading.Event()
    try:
        torch.set_num_threads(1)
        _, ms, own = device.timed(busy, 0.03)
        assert own >= 0.95 * ms and own >= 30       # nothing else ran here: the wall time is its own
        def spin():
            while not stop.is_set():
                pass

        threading.Thread(target=spin, daemon=True).start()   # a Python thread contends for the GIL meanwhile
        _, ms, own = device.timed(busy, 0.03)
        assert own >= 30 * 0.95 and own < ms        # its CPU time at least, the other thread's time left out
    finally:
        stop.set()
        torch.set_num_threads(threads)


def test_device_refuses_unknown_tiers():
    with pytest.raises(ConfigError, match="unknown device tier"):
        Device.tier("phone")
    with pytest.raises(ConfigError):
        Device(slowdown=0.5)
    with pytest.raises(ConfigError):
        Device(slowdown=2, mode="magic")


@pytest.mark.skipif(not __import__("dyno.emulate.device", fromlist=["x"]).cgroup_available(),
                    reason="no writable cgroup v1 cpu controller")
def test_device_cgroup_quota_slows_cpu_work_and_cleans_up():
    import os

    def busy(seconds):
        start = time.thread_time()
        while time.thread_time() - start < seconds:
            pass

    device = Device(slowdown=6, mode="cgroup")
    try:
        times = [device.run(busy, 0.01)[1] for _ in range(4)]
        group = device._group
        assert group is not None and group.exists()
    finally:
        device.close()
    assert sorted(times)[1] >= 6 * 10 * 0.7  # CPU time, quota-limited to 1/6 of a core
    assert not group.exists()
    assert not [p for p in os.listdir("/sys/fs/cgroup/cpu") if p.startswith(f"dyno-device-{os.getpid()}-")]


def test_a_named_tier_is_absolute_and_a_number_a_slowdown():
    asked = []

    def reference_ms():
        asked.append(1)
        return 24.5

    assert Device.named("low", reference_ms=reference_ms).slowdown == pytest.approx(49 / 24.5)
    assert Device.named("mid", reference_ms=reference_ms).requested == pytest.approx(12 / 24.5)   # native speed
    assert len(asked) == 2
    assert Device.named("4", reference_ms=reference_ms).slowdown == 4.0
    assert Device.named("native", reference_ms=reference_ms).slowdown == 1.0
    assert len(asked) == 2      # a slowdown needs no reference model timed
    with pytest.raises(ConfigError, match="unknown device tier"):
        Device.named("phone", reference_ms=reference_ms)


def test_under_a_process_quota_the_device_s_time_is_its_cpu_time_times_k():
    # the process's quota slows it (dyno bench); a head shorter than a slice of quota runs at full speed,
    # so the device's time is the work's CPU time times k_d, what the quota holds the rate to
    import torch

    def busy(seconds):
        start = time.thread_time()
        while time.thread_time() - start < seconds:
            pass

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        began = time.perf_counter()
        _, ms, own = Device(10.0, mode="quota").timed(busy, 0.02)
        wall = (time.perf_counter() - began) * 1000
    finally:
        torch.set_num_threads(threads)
    assert wall < 0.5 * own                           # not padded (200 ms): the quota does the slowing
    assert own == pytest.approx(200, rel=0.25) and ms >= own
    assert "on the process" in Device(3.0, mode="quota").description
    # the quota slows the encoding as well; padding slows the head runs alone
    assert Device(3.0, mode="quota").codec_slowdown == 3.0 and Device(3.0).codec_slowdown == 1.0
