"""Bandwidth traces: both file formats, looping, exact transfer times, and malformed files."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TRACES as SHARED
from conftest import needs_traces
from hypothesis import given, settings
from hypothesis import strategies as st

from dyno.emulate.traces import Trace, load_trace, load_traces
from dyno.errors import TraceFileError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_two_column_trace(tmp_path):
    # 1 Mbit/s for 2 s, 0 for 1 s (a tunnel), 4 Mbit/s for 1 s (the last sample holds one interval)
    t = load_trace(write(tmp_path, "a.tsv", "0.0\t1.0\n2.0\t0\n3.0\t4.0\n"))
    assert t.name == "a" and t.period == 4.0 and len(t) == 3
    assert [t.rate_bps(x) for x in (0, 1.99, 2.5, 3.0, 3.99, 4.0, 6.5)] == [1e6, 1e6, 0, 4e6, 4e6, 1e6, 0]
    assert t.mean_bps == pytest.approx((2e6 + 4e6) / 4)
    assert t.transfer_time(125_000, 0.0) == pytest.approx(1.0)          # 1 Mbit at 1 Mbit/s
    # 1.5 Mbit from t=1: 1 Mbit by t=2, the tunnel, then 0.5 Mbit at 4 Mbit/s -> ends at 3.125
    assert t.transfer_time(187_500, 1.0) == pytest.approx(2.125)
    # starting in the tunnel waits for it to end
    assert t.transfer_time(500_000, 2.5) == pytest.approx(0.5 + 1.0)
    # more than a period: 6 Mbit per loop; 7 Mbit from 0 -> one loop, then 1 Mbit more at 1 Mbit/s
    assert t.transfer_time(7e6 / 8, 0.0) == pytest.approx(4.0 + 1.0)
    assert t.transfer_time(0, 1.0) == 0.0


def test_times_not_starting_at_zero_are_shifted(tmp_path):
    t = load_trace(write(tmp_path, "b.tsv", "10\t2\n11\t4\n"))
    assert t.times == [0.0, 1.0, 2.0] and t.rates_bps == [2e6, 4e6]


@settings(max_examples=200, deadline=None)
@given(rates=st.lists(st.sampled_from([0.0, 0.3, 1.0, 2.5, 8.0]), min_size=1, max_size=12),
       gaps=st.lists(st.floats(0.01, 3.0), min_size=12, max_size=12),
       nbytes=st.floats(1, 5e6), start=st.floats(0, 100))
def test_transfer_time_integrates_the_rate_exactly(rates, gaps, nbytes, start):
    if not any(rates):
        rates = rates + [1.0]
    times = [0.0]
    for g in gaps[: len(rates)]:
        times.append(times[-1] + g)
    t = Trace(times, [r * 1e6 for r in rates])
    d = t.transfer_time(nbytes, start)
    assert d > 0
    carried = t.bits_until(start + d) - t.bits_until(start)
    # exact up to float rounding of the cumulative bit count (absolute ~1e-16 of it)
    assert carried == pytest.approx(8 * nbytes, rel=1e-9, abs=1e-13 * t.bits_until(start + d))
    # and it is the earliest such time: a bit less time carries less
    assert t.bits_until(start + d * (1 - 1e-6)) - t.bits_until(start) < 8 * nbytes


def test_resample_keeps_the_bits(tmp_path):
    t = load_trace(write(tmp_path, "c.tsv", "0\t1\n0.3\t5\n0.9\t0\n1.7\t2\n"))
    r = t.resample(0.5)
    assert r.period == pytest.approx(t.period)
    for x in (0.5, 1.0, 1.5, t.period):
        assert r.bits_until(x) == pytest.approx(t.bits_until(x))
    assert r.rate_bps(0.2) == pytest.approx((0.3 * 1e6 + 0.2 * 5e6) / 0.5)


def test_mahimahi(tmp_path):
    # ms 0: two 1500-byte opportunities, ms 1: one, ms 3: one; period 4 ms (the last timestamp is 4)
    t = load_trace(write(tmp_path, "m.trace", "0\n0\n1\n3\n4\n"))
    per_ms = 1500 * 8 * 1000
    assert t.period == pytest.approx(0.004)
    assert [t.rate_bps(x / 1000 + 0.0005) for x in range(4)] == [3 * per_ms, per_ms, 0, per_ms]
    # the opportunity at 4 ms wraps to ms 0 of the next loop (hence 3 at ms 0)
    assert t.bits_until(0.004) == pytest.approx(5 * 1500 * 8)
    # 4 opportunities' worth: 3 in ms 0, the 4th takes all of ms 1
    assert t.transfer_time(1500 * 4, 0.0) == pytest.approx(0.002)
    assert t.mean_bps == pytest.approx(5 * 1500 * 8 / 0.004)


def test_mahimahi_uniform_rate(tmp_path):
    # 12 Mbit/s = one opportunity per ms, 1000 ms period
    t = load_trace(write(tmp_path, "u.trace", "".join(f"{ms}\n" for ms in range(1, 1001))))
    assert t.mean_bps == pytest.approx(12e6)
    assert t.transfer_time(1500 * 500, 0.0) == pytest.approx(0.5)


@pytest.mark.parametrize("text, fragment", [
    ("", "empty trace file"),
    ("0\t1\n1\tfast\n", ":2: not a number"),
    ("0\t1\n1\t2\t3\n", ":2: expected 'seconds<TAB>Mbit/s'"),
    ("0\t1\n2\t1\n1\t1\n", ":3: time 1 s goes back"),
    ("0\t1\n1\t-2\n", ":2: time and rate must be finite and >= 0"),
    ("0\t1\n1\tnan\n", ":2: time and rate must be finite"),
    ("0\t0\n1\t0\n", "no capacity"),
])
def test_malformed_two_column(tmp_path, text, fragment):
    path = write(tmp_path, "bad.tsv", text)
    with pytest.raises(TraceFileError, match=fragment) as info:
        load_trace(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text, fragment", [
    ("5\n3\n", ":2: timestamp 3 ms goes back"),
    ("1\n2\nx\n", ":3: Mahimahi lines are one integer"),
    ("1\n-2\n", ":2: negative timestamp"),
])
def test_malformed_mahimahi(tmp_path, text, fragment):
    path = write(tmp_path, "bad.mahi", text)
    with pytest.raises(TraceFileError, match=fragment):
        load_trace(path)


def test_binary_and_missing_files(tmp_path):
    path = tmp_path / "bin.tsv"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(TraceFileError, match="not a text trace"):
        load_trace(path)
    with pytest.raises(TraceFileError, match="no trace file or directory"):
        load_traces(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceFileError, match="no trace files"):
        load_traces(tmp_path / "empty")


def test_directory_sorted_and_readme_skipped(tmp_path):
    write(tmp_path, "b.tsv", "0\t1\n1\t2\n")
    write(tmp_path, "a.tsv", "0\t3\n1\t2\n")
    write(tmp_path, "README.md", "# not a trace\n")
    assert [t.name for t in load_traces(tmp_path)] == ["a", "b"]


@needs_traces
def test_shared_traces_load():
    norway = load_traces(SHARED / "norway-hsdpa")
    fcc = load_traces(SHARED / "fcc")
    assert len(norway) == 142 and len(fcc) == 59
    assert all(t.period > 0 and t.mean_bps > 0 for t in norway + fcc)
    bus = next(t for t in norway if t.name == "norway_bus_1")
    assert bus.rate_bps(0.1) == pytest.approx(4.03768755221e6)


def test_a_mahimahi_directory_gives_its_uplink_files(tmp_path):
    from dyno.emulate.patterns import trace_set

    for name, up_every, down_every in (("Verizon-LTE", 2, 1), ("TMobile-UMTS", 4, 3)):
        (tmp_path / f"{name}.up").write_text("".join(f"{ms}\n" for ms in range(0, 1000, up_every)))
        (tmp_path / f"{name}.down").write_text("".join(f"{ms}\n" for ms in range(0, 1000, down_every)))
    traces = trace_set(tmp_path)
    assert [t.name for t in traces] == ["TMobile-UMTS", "Verizon-LTE"]
    # one 1500-byte opportunity every 4 ms (the uplink), not every 3 ms (the downlink): 3 Mbit/s
    assert traces[0].mean_bps == pytest.approx(1500 * 8 / 0.004, rel=0.01)
    assert traces[1].mean_bps == pytest.approx(1500 * 8 / 0.002, rel=0.01)
    down_only = tmp_path / "down"
    down_only.mkdir()
    (down_only / "x.down").write_text("1\n2\n")
    with pytest.raises(TraceFileError, match=r"\.down\) only"):
        trace_set(down_only)


def test_synthetic_patterns_are_fast_bursty_and_seeded():
    from dyno.emulate.patterns import PATTERNS, synthetic, trace_set

    traces = trace_set("synthetic")
    assert len(traces) == 3 * len(PATTERNS)
    assert [t.name for t in trace_set("synthetic:burst")] == ["burst-0", "burst-1", "burst-2"]
    assert [t.rates_bps for t in synthetic(("step",), seeds=2)] == [t.rates_bps for t in synthetic(("step",), seeds=2)]
    for trace in traces:
        assert trace.period == pytest.approx(60.0)
        changes = len(trace.rates_bps) / trace.period
        assert changes >= 1 / 12                      # the rate changes within seconds
    onoff = trace_set("synthetic:onoff")[0]
    assert min(onoff.rates_bps) < 0.3e6 and max(onoff.rates_bps) > 5e6
    burst = trace_set("synthetic:burst")[0]
    assert max(burst.rates_bps) / min(burst.rates_bps) >= 5 and burst.mean_bps > 2e6   # LTE-class
    with pytest.raises(TraceFileError, match="unknown synthetic pattern"):
        trace_set("synthetic:nope")
