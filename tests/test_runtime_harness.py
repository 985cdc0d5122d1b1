"""The server harness's child process: a real server in its own interpreter (multiprocessing "spawn")
on a free loopback port, built there from a picklable builder, answering like the in-process model;
stopped gracefully (in-flight requests answered, exit code 0) or killed (clients lose nothing). And the
harness's generic parts: a ServerProcess serves and reports what its Serving says (a process group of its
own when asked), a LoopThread runs any serve coroutine and hands it the grace."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from nets import tiny_model
from plan_factory import Fixed

from dyno import codec
from dyno.errors import ModelError, PlanError, RuntimeServiceError
from dyno.offline import nominal_plan as tiny_plan
from dyno.runtime import BatchConfig, Client, ServerConfig, ServerProcess, ServerThread, from_plan_file
from dyno.runtime.config import channel_options
from dyno.runtime.harness import LoopThread, Serving, ready_info, run_server
from dyno.runtime.metrics import parse_text
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc


def build_tiny(seed: int):
    """The builder the child runs: TinyNet's nominal plan and model (the same as the tests' own)."""
    model = tiny_model(seed=seed)
    return tiny_plan(model), model


def build_nothing():
    raise ModelError("this builder always fails")


async def serve_with_helper(plan, model, config, seconds, *, address, until, ready):
    """A serve coroutine for a Serving: the embedded server, and a helper process the child starts."""
    helper = subprocess.Popen(["sleep", str(seconds)])
    await run_server(plan, model, config, address=address, until=until, ready=lambda server: ready((server, helper)))


def helper_info(started, address):
    server, helper = started
    return ready_info(server, address) | {"helper": helper.pid}


def alive(pid: int) -> bool:
    """The process exists and is no zombie (a killed orphan may wait for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False



def metrics(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse_text(response.read().decode())


def test_a_server_process_answers_like_the_in_process_model(model, plan, splits):
    torch.manual_seed(1)
    inputs = torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        expected = model(inputs)
    config = ServerConfig(batching=BatchConfig(max_batch=8, max_wait_ms=2))
    with ServerProcess(build_tiny, 0, config=config) as cloud:
        assert cloud.pid == cloud.process.pid != os.getpid()
        assert cloud.address == f"127.0.0.1:{cloud.port}" and cloud.info["plan_hash"] == plan.hash
        assert cloud.info["served_cuts"] == list(range(len(plan.cuts) - 1))
        for cut in (0, 4, 8):
            with Client(plan, model, server=cloud.address, policy=Fixed(cut), splits=splits,
                        want_logits=True) as client:
                results = list(client.map(inputs))
            assert [r.where for r in results] == ["cloud"] * len(inputs), cut
            assert [r.top1 for r in results] == expected.argmax(1).tolist(), cut
            np.testing.assert_allclose(np.stack([r.logits for r in results]), expected.numpy(),
                                       rtol=1e-4, atol=1e-4)
        answered = metrics(cloud.metrics_url)
        for cut in (0, 4, 8):
            assert answered[("dyno_requests_total", (("code", "OK"), ("cut", str(cut))))] == len(inputs)
    assert cloud.process.exitcode == 0  # the context manager stopped it gracefully


def test_a_server_in_its_own_process_reports_its_cpu_per_request_and_one_beside_its_callers_does_not(
        model, plan, splits):
    x = np.zeros(plan.cuts[8].shape, np.float32)
    encoded = codec.encode(x, mode="fp32")
    requests = [pb.Request(request_id=i, model=plan.model, plan_hash=plan.hash, cut=8,
                           meta=encoded.meta.to_bytes(), payload=encoded.payload, top_k=3) for i in range(40)]

    def replies(address: str) -> list:
        with grpc.insecure_channel(address, options=channel_options(8 << 20)) as channel:
            return list(pb_grpc.InferenceStub(channel).Infer(iter(requests), timeout=30))

    with ServerProcess(build_tiny, 0, config=ServerConfig(metrics_port=None)) as cloud:
        answered = replies(cloud.address)
    carrying = [r.cpu_ms for r in answered if r.HasField("cpu_ms")]
    # from the ninth answer of a busy stretch on, each says what the process spent per request
    assert len(answered) == 40 and len(carrying) >= 10 and all(0 < ms < 1000 for ms in carrying)
    with ServerThread(plan, model, ServerConfig(metrics_port=None), splits=splits) as running:
        assert not any(r.HasField("cpu_ms") for r in replies(running.address))   # its process is theirs too


def test_stop_answers_the_requests_in_flight_then_says_unavailable(plan):
    # a long batching window holds the requests in the server until the stop
    config = ServerConfig(batching=BatchConfig(max_batch=64, max_wait_ms=2000, eager=False), max_queue_ms=5000)
    cloud = ServerProcess(build_tiny, 0, config=config)
    x = np.zeros(plan.cuts[8].shape, np.float32)
    encoded = codec.encode(x, mode="fp32")
    requests = [pb.Request(request_id=i, model=plan.model, plan_hash=plan.hash, cut=8,
                           meta=encoded.meta.to_bytes(), payload=encoded.payload, top_k=3) for i in range(6)]
    outcome: dict = {}

    def run():  # the stream stays open (the generator sleeps) so only the server's stop can end it
        def source():
            yield from requests
            time.sleep(8)

        with grpc.insecure_channel(cloud.address, options=channel_options(8 << 20)) as channel:
            call = pb_grpc.InferenceStub(channel).Infer(source(), timeout=30)
            replies = []
            try:
                replies.extend(call)
                outcome["result"] = (replies, call.code())
            except grpc.RpcError as error:
                outcome["result"] = (replies, error.code())

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while metrics(cloud.metrics_url).get(("dyno_in_flight", ()), 0) < 6:  # all six accepted
            assert time.monotonic() < deadline, "the requests never reached the server"
            time.sleep(0.02)
        cloud.stop(grace=10)
    finally:
        cloud.kill()
        thread.join(30)
    replies, code = outcome["result"]
    assert sorted(r.request_id for r in replies) == list(range(6))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert cloud.process.exitcode == 0


def test_a_killed_server_process_loses_nothing(model, plan, splits):
    from dyno.emulate.device import Device

    torch.manual_seed(3)
    data = torch.randn(80, 1, 28, 28)
    with torch.inference_mode():
        expected = model(data).argmax(1).tolist()
    cloud = ServerProcess(build_tiny, 0)
    seen = threading.Event()
    count = [0]

    def on_result(_result):
        count[0] += 1
        if count[0] == 20:
            seen.set()

    def slowly():
        for x in data:
            time.sleep(0.01)
            yield x

    out: list = []
    with Client(plan, model, server=cloud.address, policy=Fixed(4), splits=splits, in_flight=4, timeout=1.0,
                backoff=(0.05, 0.3), on_result=on_result, device=Device(slowdown=1.0)) as client:
        runner = threading.Thread(target=lambda: out.extend(client.map(slowly())))
        runner.start()
        try:
            assert seen.wait(60)
        finally:
            cloud.kill()
        runner.join(90)
        assert not runner.is_alive()
        assert not client.connected.is_set() and client.errors
    assert cloud.process.exitcode == -signal.SIGKILL
    assert len(out) == len(data) and [r.index for r in out] == list(range(len(data)))
    assert [r.top1 for r in out] == expected  # fallbacks compute the same model on the device
    assert any(r.where == "cloud" for r in out)  # some before the kill
    assert sum(r.where == "fallback" for r in out) >= 1
    assert client.stats["cloud"] + client.stats["fallback"] == len(data)


def test_a_builder_that_fails_is_reported_with_its_error(tmp_path):
    log = tmp_path / "serve.log"
    with pytest.raises(RuntimeServiceError, match="this builder always fails"):
        ServerProcess(build_nothing, timeout=120, log=log)
    assert "ModelError: this builder always fails" in log.read_text()  # the child's stderr went there


def test_from_plan_file_serves_the_plan_and_refuses_other_weights(tmp_path):
    from dyno import zoo

    torch.manual_seed(0)
    model = zoo.load_model("fmnist-resnet", weights="random")
    weights = zoo.save_weights(model, "fmnist-resnet", {"note": "untrained, for tests"}, path=tmp_path / "w.pt")
    plan = tiny_plan(model, name="fmnist-resnet", options=(("fp32", None),))
    path = plan.save(tmp_path / "plan.json")
    loaded, net = from_plan_file(path, str(weights))
    assert loaded.hash == plan.hash
    torch.manual_seed(5)
    inputs = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        expected = model(inputs).argmax(1).tolist()
        assert net(inputs).argmax(1).tolist() == expected
    with ServerProcess(from_plan_file, path, str(weights)) as cloud:
        with Client(plan, model, server=cloud.address, policy="cloud-only-raw") as client:
            results = list(client.map(inputs))
    assert [r.where for r in results] == ["cloud"] * 4 and [r.top1 for r in results] == expected

    torch.manual_seed(1)
    other = zoo.save_weights(zoo.load_model("fmnist-resnet", weights="random"), "fmnist-resnet", {},
                             path=tmp_path / "other.pt")
    with pytest.raises(PlanError, match="weights"):
        from_plan_file(path, str(other))


@pytest.mark.parametrize("own_group", [True, False])
def test_a_server_process_serves_and_reports_what_its_serving_says(plan, own_group):
    serving = Serving(serve_with_helper, helper_info, (600,), name="dyno-test-server", own_group=own_group)
    cloud = ServerProcess(build_tiny, 0, serving=serving)
    helper = cloud.info["helper"]
    try:
        assert cloud.process.name == "dyno-test-server" and cloud.info["plan_hash"] == plan.hash
        assert alive(helper) and os.getpgid(helper) == os.getpgid(cloud.pid)
        assert (os.getpgid(cloud.pid) == cloud.pid) is own_group  # it leads a group of its own only if asked
        with Client(plan, tiny_model(seed=0), server=cloud.address, policy=Fixed(4)) as client:
            assert [r.where for r in client.map(torch.zeros(2, 1, 28, 28))] == ["cloud"] * 2
        cloud.kill()
        assert cloud.process.exitcode == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while own_group and alive(helper):  # SIGKILL to the whole group took the helper with it
            assert time.monotonic() < deadline, "the helper outlived its process group's kill"
            time.sleep(0.02)
        assert alive(helper) is not own_group  # SIGKILL to the child alone: the helper is still there
    finally:
        cloud.kill()
        with contextlib.suppress(ProcessLookupError):  # reaped already
            os.kill(helper, signal.SIGKILL)


async def hold(value, *, address, until, ready, told):
    """A serve coroutine with no server: ready with what it was given, then note the grace it is told."""
    ready((value, address))
    told.append(await until)


async def fail_early(**_serving):
    raise ModelError("it failed before it was ready")


async def end_early(**_serving):
    return


def loop_threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def test_a_loop_thread_runs_any_serve_coroutine_and_hands_it_the_grace():
    told: list = []
    with LoopThread(hold, "x", address="here", told=told, name="dyno-test-loop") as running:
        assert running.started == ("x", "here") and told == [] and len(loop_threads("dyno-test-loop")) == 1
    assert told == [1.0] and not loop_threads("dyno-test-loop")  # the context manager stops with grace 1
    running.stop(grace=7)  # once only
    again = LoopThread(hold, "y", address="there", told=told)
    again.stop(grace=3)
    LoopThread(hold, "z", address="there", told=told).kill()
    assert told == [1.0, 3, None]


def test_a_loop_thread_whose_coroutine_ends_before_ready_says_why():
    with pytest.raises(ModelError, match="before it was ready"):
        LoopThread(fail_early, address="here", name="dyno-test-failing")
    with pytest.raises(RuntimeServiceError, match="stopped before it started"):
        LoopThread(end_early, address="here", name="dyno-test-failing")
    assert not loop_threads("dyno-test-failing")
