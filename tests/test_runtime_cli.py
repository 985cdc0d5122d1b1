"""`dyno serve` and `dyno run` as a user runs them: a server process on a free port, a client process,
the JSON summary, and a graceful stop on SIGTERM. Untrained fmnist-resnet weights (saved to a file)
and a plan made for them from their real cuts; Fashion-MNIST test images as data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from dyno.offline import nominal_plan as tiny_plan
from dyno.runtime.results import SUMMARY_KEYS

FASHION = Path(os.environ.get("DYNO_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from dyno import zoo

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = zoo.load_model("fmnist-resnet", weights="random")
    weights = zoo.save_weights(model, "fmnist-resnet", {"note": "untrained, for tests"}, path=root / "w.pt")
    plan = tiny_plan(model, name="fmnist-resnet", options=(("fp32", None), ("shuffle-lz4", 8)))
    return plan.save(root / "plan.json"), weights, root


def served(metrics_port: int) -> float:
    """Requests the server has answered, from its Prometheus endpoint."""
    from dyno.runtime.metrics import parse_text

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        metrics = parse_text(response.read().decode())
    return sum(v for (name, labels), v in metrics.items()
               if name == "dyno_requests_total" and ("code", "OK") in labels)


def dyno(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dyno", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) is not installed")
def test_serve_and_run_from_the_command_line(files):
    plan_path, weights, root = files
    ready = root / "ready.json"
    server = dyno("serve", "--plan", str(plan_path), "--weights", str(weights), "--port", "0",
                  "--threads", "1", "--ready-file", str(ready))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        assert info["model"] == "fmnist-resnet" and info["metrics_port"]
        for policy in ("cloud-only-raw", "device-only"):
            client = dyno("run", "--plan", str(plan_path), "--weights", str(weights), "--server",
                          info["address"], "--data", "fashion-mnist", "--n", "24", "--policy", policy, "--json")
            out, err = client.communicate(timeout=120)
            assert client.returncode == 0, err
            summary = json.loads(out.strip().splitlines()[-1])
            assert tuple(summary)[:len(SUMMARY_KEYS)] == SUMMARY_KEYS
            assert summary["cloud_replies"] == (0 if policy == "device-only" else 24)
            assert summary["cloud_errors"] == []
            assert summary["n"] == 24 and summary["fallbacks"] == 0
            if policy == "device-only":
                assert summary["bytes_mean"] == 0
            else:  # fp32 input frames: 28x28x4 bytes of payload plus metadata and framing
                assert 4 * 28 * 28 < summary["bytes_mean"] < 4 * 28 * 28 + 200
            assert 0 <= summary["accuracy"] <= 1 and summary["throughput"] > 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, err


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) is not installed")
def test_run_survives_a_server_killed_with_sigkill(files):
    plan_path, weights, root = files
    ready = root / "ready-kill.json"
    server = dyno("serve", "--plan", str(plan_path), "--weights", str(weights), "--port", "0",
                  "--threads", "1", "--ready-file", str(ready))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        client = dyno("run", "--plan", str(plan_path), "--weights", str(weights), "--server", info["address"],
                      "--data", "fashion-mnist", "--n", "150", "--policy", "cloud-only-raw", "--tier", "3",
                      "--timeout", "1", "--json")
        deadline = time.monotonic() + 90
        while served(info["metrics_port"]) < 10:  # wait until the cloud has done some of the work
            assert client.poll() is None and time.monotonic() < deadline, client.communicate()[1]
            time.sleep(0.05)
        server.kill()  # SIGKILL: no goodbye
        out, err = client.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)
    assert client.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["n"] == 150          # every input has a result
    assert summary["fallbacks"] >= 1    # some finished on the device
    assert summary["bytes_mean"] > 0    # and some in the cloud before the kill


def test_serve_refuses_a_plan_for_other_weights(files):
    plan_path, _, root = files
    torch.manual_seed(1)
    from dyno import zoo

    other = zoo.save_weights(zoo.load_model("fmnist-resnet", weights="random"), "fmnist-resnet", {},
                             path=root / "other.pt")
    server = dyno("serve", "--plan", str(plan_path), "--weights", str(other), "--port", "0")
    _, err = server.communicate(timeout=60)
    assert server.returncode == 1
    assert "weights" in err and "dyno analyze" in err
