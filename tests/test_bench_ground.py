"""``dyno bench`` (``dyno.bench.ground``): its rounds on constructed rows, and a small real run of the
command (fmnist-resnet's cached plan and trained weights, a real server process and one client process
per run; skipped where Fashion-MNIST or the cached weights and plan are not present)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cached_fmnist_resnet, dyno_json, needs_fmnist

from dyno.bench.ground import alternating, median_round


def test_every_other_round_runs_the_systems_in_reverse_order():
    assert alternating(["a", "b", "c"], 3) == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a"),
                                               (2, "a"), (2, "b"), (2, "c")]
    assert alternating(["a"], 2) == [(0, "a"), (1, "a")]


def _row(measured: float, simulated: float, note: str) -> dict:
    return {"measured_throughput": measured, "simulated_throughput": simulated, "ratio": measured / simulated,
            "p95_ms": 10.0, "note": note}


def test_a_system_s_row_is_its_median_round_whole_with_every_round_beside_it():
    rounds = [_row(600, 640, "slow stretch"), _row(900, 800, "fast stretch"), _row(700, 690, "middle")]
    row = median_round(rounds)
    assert row["note"] == "middle" and row["ratio"] == pytest.approx(700 / 690)   # one run's figures, not mixed
    assert [r["measured_throughput"] for r in row["rounds"]] == [600, 900, 700]   # in the order they ran
    assert median_round(rounds[:2])["note"] == "slow stretch"                       # the lower middle of two
    assert median_round(rounds[:1]) == rounds[0]


@needs_fmnist
def test_a_small_bench_runs_each_system_in_rounds_and_keeps_its_median_round(tmp_path):
    document = dyno_json("bench", "--systems", "dyno,device-only", "--tier", "low", "--trace", "builtin", "--duration",
                         "2", "--rounds", "2", "--link", "token-bucket", "--device-emulation", "pad", "--n", "40",
                         "--plot", "", "--markdown", str(tmp_path / "bench.md"), "--no-progress", "--json")
    assert document["rounds"] == 2 and document["link"] == "token-bucket" and document["device_emulation"] == "pad"
    assert [r["system"] for r in document["rows"]] == ["dyno", "device-only"]
    for row in document["rows"]:
        measured = [r["measured_throughput"] for r in row["rounds"]]
        assert len(measured) == 2 and min(measured) > 0
        assert row["measured_throughput"] == min(measured)
        assert row["ratio"] == pytest.approx(row["measured_throughput"] / row["simulated_throughput"])
        assert row["evidence"]["timeline"]
    assert "median of 2 rounds" in (tmp_path / "bench.md").read_text()
    assert set(document["summary"]["dyno_vs"]) == {"device-only"}


def _state(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process from /proc, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def _alive_children(pid: int) -> set[int]:
    states = {int(e.name): _state(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit()}
    return {child for child, st in states.items() if st and st[0] == pid and st[1] != "Z"}


@needs_fmnist
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="no /proc to find the bench's child processes")
def test_a_killed_bench_stops_what_it_started():
    """``kill`` (SIGTERM) on ``dyno bench``: exit code 143, no child process left, and with a kernel-shaped
    link (where this machine can make one) no network namespace left (before: both namespaces stayed)."""
    from dyno.emulate.netns import available

    reason = cached_fmnist_resnet()
    if reason:
        pytest.skip(reason)
    link = "token-bucket" if available() else "tbf"
    bench = subprocess.Popen(
        [sys.executable, "-m", "dyno", "bench", "--systems", "device-only", "--tier", "low", "--duration", "60",
         "--link", link, "--device-emulation", "pad", "--n", "40", "--plot", "", "--no-progress"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_alive_children(bench.pid)) < 2 and time.monotonic() < deadline:   # the server and a client
            time.sleep(0.2)
        started = _alive_children(bench.pid)
        assert len(started) >= 2, "the bench started no server and client"
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) == 143
        deadline = time.monotonic() + 20

        def left() -> set[int]:
            return {pid for pid in started if (_state(pid) or (0, "Z"))[1] != "Z"}

        while left() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left(), f"left running after the bench was killed: {left()}"
        if link == "tbf":
            namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            assert f"dyno-{bench.pid}-" not in namespaces
    finally:
        if bench.poll() is None:
            bench.kill()
