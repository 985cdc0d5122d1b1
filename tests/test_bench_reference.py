"""This machine's speed as tiers are quoted (``dyno.bench.reference``): its speed, not its load."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dyno.bench import reference


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.delenv("DYNO_REFERENCE_MS", raising=False)
    monkeypatch.setattr(reference, "_MEASURED", {})
    return reference


def test_the_reference_latency_leaves_out_time_spent_waiting_for_the_cpu(fresh):
    alone = fresh.measure_reference_ms(repeats=7)["ms"]
    fresh._MEASURED.clear()
    # two busy processes a core: each run waits for a core about two thirds of its wall time
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        beside = fresh.measure_reference_ms(repeats=7)["ms"]
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert beside < 1.6 * alone


def test_a_known_machine_overrides_the_measurement(fresh, monkeypatch):
    monkeypatch.setenv("DYNO_REFERENCE_MS", "38.5")
    assert fresh.measure_reference_ms()["ms"] == 38.5
    fresh._MEASURED.clear()
    monkeypatch.setenv("DYNO_REFERENCE_MS", "fast")
    with pytest.raises(reference.ConfigError, match="DYNO_REFERENCE_MS"):
        fresh.measure_reference_ms()
