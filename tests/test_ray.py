"""The tails on Ray Serve (``dyno.cloud``) against the embedded server: one local Ray instance for the
module, real replicas of a small untrained CNN (tests/nets.py), a real dyno gRPC front, real clients.

Skipped where Ray is not installed (``pip install 'dyno[ray]'``; ``make setup`` installs it)."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from plan_factory import Fixed
from ray_head import local_head

from dyno import codec
from dyno.runtime import BatchConfig, Client, ServerConfig, ServerThread
from dyno.runtime.config import channel_options
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'dyno[ray]')")

from dyno.cloud import RayConfig, RayServer  # noqa: E402
from dyno.cloud.harness import SERVE_ENV  # noqa: E402

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic v1 idioms inside Ray Serve
TOKEN = "s3cret"



@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (starting one costs seconds), in its own process
    (tests/ray_head.py). Logical CPUs beyond the machine's: several small deployments share it; each
    replica still runs one torch thread."""
    if ray.is_initialized():
        ray.shutdown()
    # Serve's handles leave threads in this process that call Ray after the module's teardown; Ray's
    # auto-init then started a local instance from one of them (in CI, pytest's process then exited)
    from ray._private import auto_init_hook

    auto_init_hook.enable_auto_connect = False
    with local_head(num_cpus=8, env=SERVE_ENV) as address:
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}})  # replicas unpickle tests/nets.py's model
        yield ray
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(1)
    return torch.randn(48, 1, 28, 28)


@pytest.fixture(scope="module")
def config():
    return ServerConfig(batching=BatchConfig(max_batch=16, max_wait_ms=2), token=TOKEN)


@pytest.fixture(scope="module")
def embedded(model, plan, splits, config):
    with ServerThread(plan, model, config, splits=splits) as running:
        yield running


@pytest.fixture(scope="module")
def cloud(local_ray, model, plan, splits, config):
    with RayServer(plan, model, config, RayConfig(replicas=2, app="test-two"), splits=splits) as running:
        yield running


def frame(plan, cut: int, x: np.ndarray, request_id: int = 0, **overrides) -> pb.Request:
    encoded = codec.encode(x, mode="fp32")
    fields = dict(request_id=request_id, model=plan.model, plan_hash=plan.hash, cut=cut,
                  meta=encoded.meta.to_bytes(), payload=encoded.payload, top_k=3)
    fields.update(overrides)
    return pb.Request(**fields)


def stream(address: str, requests: list[pb.Request], token: str | None = TOKEN, timeout: float = 30,
           hold_s: float = 0.0) -> tuple[list[pb.Reply], grpc.StatusCode, str]:
    """Send ``requests`` on one raw stream (kept open ``hold_s`` after them); replies and final status."""
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)

    def source():
        yield from requests
        if hold_s:
            time.sleep(hold_s)

    with grpc.insecure_channel(address, options=channel_options(8 << 20)) as channel:
        call = pb_grpc.InferenceStub(channel).Infer(source(), timeout=timeout, metadata=metadata)
        replies: list[pb.Reply] = []
        try:
            replies.extend(call)
        except grpc.RpcError as error:
            return replies, error.code(), error.details()
        return replies, call.code(), call.details()


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


# ------------------------------------------------------------------------------------ results


@pytest.mark.parametrize("cut, mode, bits", [(0, "fp32", None), (4, "shuffle-lz4", 8), (8, "shuffle-lz4", 4)])
def test_same_top1_as_the_embedded_server_for_every_input(cloud, embedded, model, plan, splits, inputs,
                                                          cut, mode, bits):
    answers = {}
    for name, server in (("embedded", embedded), ("ray", cloud)):
        with Client(plan, model, server=server.address, policy=Fixed(cut, mode, bits), splits=splits,
                    token=TOKEN, in_flight=8, want_logits=True) as client:
            answers[name] = list(client.map(inputs))
        assert [r.where for r in answers[name]] == ["cloud"] * len(inputs), name
    assert [r.top1 for r in answers["ray"]] == [r.top1 for r in answers["embedded"]]
    np.testing.assert_allclose(np.stack([r.logits for r in answers["ray"]]),
                               np.stack([r.logits for r in answers["embedded"]]), rtol=1e-5, atol=1e-5)


def test_batching_in_the_replica_gives_the_embedded_servers_answers(local_ray, embedded, model, plan, splits,
                                                                    config, inputs):
    """``batch_in="replica"`` (one deployment call per request, @serve.batch in the replica; the design
    not chosen, kept for the comparison): the same top-1 and logits, and every call counted as load."""
    answers = {}
    with RayServer(plan, model, config, RayConfig(replicas=1, batch_in="replica", app="test-serve-batch"),
                   splits=splits) as cloud:
        for name, server in (("embedded", embedded), ("ray", cloud)):
            with Client(plan, model, server=server.address, policy=Fixed(4, "shuffle-lz4", 8), splits=splits,
                        token=TOKEN, in_flight=8, want_logits=True) as client:
                answers[name] = list(client.map(inputs))
        assert sum(cloud.runner.load.replicas_seen.values()) >= len(inputs)  # one call per request
    assert [r.where for r in answers["ray"]] == ["cloud"] * len(inputs)
    assert [r.top1 for r in answers["ray"]] == [r.top1 for r in answers["embedded"]]
    np.testing.assert_allclose(np.stack([r.logits for r in answers["ray"]]),
                               np.stack([r.logits for r in answers["embedded"]]), rtol=1e-5, atol=1e-5)


def test_both_replicas_serve_and_replies_price_the_whole_deployment(cloud, model, plan, splits, inputs):
    with Client(plan, model, server=cloud.address, policy=Fixed(2), splits=splits, token=TOKEN,
                in_flight=16) as client:
        for _ in range(4):
            list(client.map(inputs))
    assert len(cloud.runner.load.replicas_seen) == 2  # the batches went to both replicas
    # the front's router runs on the front's own loop: a batch leaves and lands with no thread hop
    assert cloud.runner.handle._router.event_loop is cloud._loop
    x = np.zeros(plan.cuts[6].shape, np.float32)
    replies, code, _ = stream(cloud.address, [frame(plan, 6, x, request_id=i) for i in range(8)])
    assert code == grpc.StatusCode.OK and len(replies) == 8
    for reply in replies:  # two replicas at a target utilisation of 1: headroom up to 2 replica-seconds/s
        assert 0 <= reply.load <= 1 and reply.pressure == max(1.0, reply.load)
        assert reply.headroom == pytest.approx(2 * (1 - reply.load))
        assert reply.headroom > 1  # more than one replica's worth: one replica could not say so
    assert health(cloud.address) == health_pb2.HealthCheckResponse.SERVING
    assert cloud.info["replicas"] == 2 and cloud.replicas() == 2


# ------------------------------------------------------------------------------------ refusals


def _bad_requests(plan) -> dict[str, tuple[list[pb.Request], str | None]]:
    x = np.zeros(plan.cuts[4].shape, np.float32)
    good = frame(plan, 4, x)
    corrupt = bytearray(good.payload)
    corrupt[len(corrupt) // 2] ^= 0xFF  # a header that checks out and a crc that does not
    return {
        "wrong token": ([good], "wrong"),
        "no token": ([good], None),
        "garbage meta": ([frame(plan, 4, x, meta=b"\x00" * 12)], TOKEN),
        "short payload": ([frame(plan, 4, x, payload=good.payload[:-8])], TOKEN),
        "corrupt payload": ([frame(plan, 4, x, payload=bytes(corrupt))], TOKEN),
        "wrong shape": ([frame(plan, 4, np.zeros(plan.cuts[2].shape, np.float32))], TOKEN),
        "other plan": ([frame(plan, 4, x, plan_hash="0" * 64)], TOKEN),
        "unserved cut": ([frame(plan, len(plan.cuts) - 1, np.zeros(plan.cuts[-1].shape, np.float32))], TOKEN),
        "no such cut": ([frame(plan, 99, x)], TOKEN),
        "top_k too large": ([frame(plan, 4, x, top_k=10_000)], TOKEN),
        "good, then junk": ([good, frame(plan, 4, x, request_id=1, meta=struct.pack("<I", 7) * 5)], TOKEN),
    }


def test_malformed_and_unauthorised_requests_get_the_embedded_servers_statuses(cloud, embedded, plan):
    for name, (requests, token) in _bad_requests(plan).items():
        seen = {}
        for which, server in (("embedded", embedded), ("ray", cloud)):
            replies, code, details = stream(server.address, requests, token=token)
            seen[which] = ([r.request_id for r in replies], code, details)
        assert seen["ray"] == seen["embedded"], name
        assert seen["ray"][1] != grpc.StatusCode.OK, name
    with grpc.insecure_channel(cloud.address) as channel:  # the unary calls check the token too
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.InferenceStub(channel).Describe(pb.DescribeRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------------------------------ failures


def _replica_actors(app: str) -> list:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app}#")]
    return [ray.get_actor(name, namespace="serve") for name in names]


def test_a_replica_killed_mid_load_loses_no_inference(local_ray, model, plan, splits):
    torch.manual_seed(5)
    data = torch.randn(300, 1, 28, 28)
    with torch.inference_mode():
        expected = model(data).argmax(1).tolist()
    with RayServer(plan, model, ServerConfig(batching=BatchConfig(max_batch=8, max_wait_ms=2)),
                   RayConfig(replicas=2, app="test-kill"), splits=splits) as cloud:
        results: list = []

        def load():
            with Client(plan, model, server=cloud.address, policy=Fixed(0), splits=splits, in_flight=16,
                        timeout=10) as client:
                results.extend(client.map(data))

        thread = threading.Thread(target=load)
        thread.start()
        deadline = time.monotonic() + 30
        while sum(cloud.runner.load.replicas_seen.values()) < 5:  # under load: batches are going out
            assert time.monotonic() < deadline, "no batch reached the replicas"
            time.sleep(0.01)
        victim = _replica_actors("test-kill")[0]
        ray.kill(victim, no_restart=True)
        thread.join(120)
        assert not thread.is_alive()
    assert len(results) == len(data)  # every inference answered: by a replica, or on the device
    assert [r.top1 for r in results] == expected
    assert {r.where for r in results} <= {"cloud", "device"}


def test_a_replica_answers_the_routers_probe_while_it_computes(cloud, plan):
    """A batch computes in the replica's compute thread, off its event loop, so the router's queue-length
    probe (``get_num_ongoing_requests``, what Ray Serve's router asks a replica before routing to it) is
    answered meanwhile. Computing on the loop (stop 17), a busy replica answered only after its batch: the
    router missed its 0.1 s deadline and backed off (stalls of ~1 s in a 2-replica fleet)."""
    from dyno.runtime.tails import Frame

    encoded = codec.encode(np.zeros(plan.cuts[0].shape, np.float32), mode="fp32")
    frames = [Frame(encoded.meta.to_bytes(), encoded.payload, 1, False)] * 4000  # one long batch
    done = threading.Event()
    outcome: dict = {}

    def send() -> None:
        outcome["answer"] = cloud.handle.run.remote(0, frames).result(timeout_s=120)
        done.set()

    thread = threading.Thread(target=send)
    thread.start()
    replicas = _replica_actors("test-two")
    busy_answers = 0  # probes a replica answered, holding the batch, before the batch's answer came
    while not done.is_set():
        counts = ray.get([replica.get_num_ongoing_requests.remote() for replica in replicas], timeout=60)
        busy_answers += max(counts) >= 1 and not done.is_set()
    thread.join(120)
    # on the loop, the probes were answered only in the moment between the batch's arrival and its compute
    assert busy_answers >= 10, f"the busy replica answered {busy_answers} probes while it computed"
    assert len(outcome["answer"][2]) == len(frames)
    # Ray Serve's own limit per replica is all the front keeps in flight: it never rejects a batch the front sends
    options = RayConfig(replicas=2).deployment_options(gpus=False)
    assert options["max_ongoing_requests"] == RayConfig(replicas=2).in_flight == 4


def test_graceful_stop_drains_requests_in_flight(local_ray, model, plan, splits):
    config = ServerConfig(batching=BatchConfig(max_batch=64, max_wait_ms=1500, eager=False), max_queue_ms=5000)
    cloud = RayServer(plan, model, config, RayConfig(replicas=1, app="test-drain"), splits=splits)
    x = np.zeros(plan.cuts[8].shape, np.float32)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault(
        "result", stream(cloud.address, [frame(plan, 8, x, request_id=i) for i in range(6)], token=None,
                         hold_s=8)))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while cloud.server.admission.in_flight < 6:  # all six accepted, held for their batch
            assert time.monotonic() < deadline, "the requests never reached the front"
            time.sleep(0.01)
        cloud.stop(grace=10)
    finally:
        cloud.kill()
        thread.join(30)
    replies, code, _ = outcome["result"]
    assert sorted(r.request_id for r in replies) == list(range(6))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "test-drain" not in ray.serve.status().applications  # the application is gone after the drain


# ------------------------------------------------------------------------------------ scaling


def _wait_for(what, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.2)


def test_autoscaling_goes_from_one_to_two_replicas_under_load_and_back(local_ray, model, plan, splits):
    ray_config = RayConfig(autoscale=(1, 2), target_ongoing=1, upscale_delay_s=0.5, downscale_delay_s=2,
                           look_back_s=1, app="test-autoscale")
    with RayServer(plan, model, ServerConfig(batching=BatchConfig(max_batch=4, max_wait_ms=1)), ray_config,
                   splits=splits) as cloud:
        assert cloud.replicas() == 1
        stop = threading.Event()

        def device(seed: int) -> None:
            torch.manual_seed(seed)
            data = torch.randn(64, 1, 28, 28)
            with Client(plan, model, server=cloud.address, policy=Fixed(0), splits=splits, in_flight=8) as client:
                while not stop.is_set():
                    list(client.map(data))

        devices = [threading.Thread(target=device, args=(seed,)) for seed in range(3)]
        for thread in devices:
            thread.start()
        try:
            _wait_for("two replicas under load", lambda: cloud.replicas() == 2, 60)
        finally:
            stop.set()
            for thread in devices:
                thread.join(30)
        _wait_for("back to one replica once idle", lambda: cloud.replicas() == 1, 60)
        counts = [n for _, n in cloud.watch.history]
        assert counts[0] == 1 and 2 in counts and counts[-1] == 1


def test_health_says_not_serving_while_no_replica_is_up(local_ray, model, plan, splits):
    ray_config = RayConfig(autoscale=(0, 1), upscale_delay_s=0, downscale_delay_s=2, look_back_s=1,
                           app="test-zero")
    with RayServer(plan, model, ServerConfig(), ray_config, splits=splits) as cloud:
        _wait_for("no replica at min 0", lambda: cloud.replicas() == 0, 60)
        _wait_for("NOT_SERVING", lambda: health(cloud.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 5)
        asleep = len(cloud.watch.history)
        x = np.zeros(plan.cuts[3].shape, np.float32)
        replies, code, _ = stream(cloud.address, [frame(plan, 3, x)], token=None, timeout=60)
        assert code == grpc.StatusCode.OK and len(replies) == 1  # a request wakes a replica and is answered
        # the replica may sleep again 2 s after the reply: the watch saw it up, whatever it sees now
        cloud.replicas()
        assert any(n >= 1 for _, n in cloud.watch.history[asleep:])


# ------------------------------------------------------------------------------------ tails on a GPU

CUDA = torch.cuda.is_available()


@pytest.mark.skipif(not CUDA, reason="no CUDA device here (torch.cuda.is_available() is False): the "
                    "--torch-device cuda path runs where one is present")
def test_tails_on_cuda_give_the_embedded_servers_top1(local_ray, embedded, model, plan, splits, inputs):
    with RayServer(plan, model, ServerConfig(batching=BatchConfig(max_batch=16, max_wait_ms=2), token=TOKEN),
                   RayConfig(replicas=1, torch_device="cuda", app="test-cuda"), splits=splits) as cloud:
        assert cloud.device == "cuda" and cloud.info["device"] == "cuda"
        assert cloud.handle.describe.remote().result(timeout_s=30)["device"].startswith("cuda")
        answers = {}
        for name, server in (("embedded", embedded), ("ray", cloud)):
            with Client(plan, model, server=server.address, policy=Fixed(4, "shuffle-lz4", 8), splits=splits,
                        token=TOKEN, in_flight=8) as client:
                answers[name] = list(client.map(inputs))
            assert [r.where for r in answers[name]] == ["cloud"] * len(inputs), name
        assert [r.top1 for r in answers["ray"]] == [r.top1 for r in answers["embedded"]]


@pytest.mark.skipif(CUDA, reason="a CUDA device is present: the test above runs the tails on it")
def test_cuda_asked_of_a_cluster_without_gpus_is_a_config_error_and_auto_runs_on_cpu(local_ray, model, plan,
                                                                                     splits):
    from dyno.errors import ConfigError

    with pytest.raises(ConfigError, match="has no GPU"):
        RayServer(plan, model, ServerConfig(), RayConfig(replicas=1, torch_device="cuda", app="test-no-gpu"),
                  splits=splits)
    with RayServer(plan, model, ServerConfig(), RayConfig(replicas=1, torch_device="auto", app="test-auto"),
                   splits=splits) as cloud:
        assert cloud.device == "cpu"
        assert cloud.handle.describe.remote().result(timeout_s=30)["device"] == "cpu"


def test_a_local_ray_that_misses_its_start_up_time_is_started_once_more(monkeypatch):
    from dyno.cloud import harness

    calls = []

    def init(**kwargs):
        calls.append(kwargs["address"])
        if len(calls) == 1:
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    assert harness.connect(None) is True
    assert calls == [None, "shutdown", None]

    def fails(**kwargs):
        calls.append(kwargs["address"])
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", fails)
    for address, tries in ((None, 2), ("10.1.2.3:6379", 1)):   # a cluster's address is not restarted here
        calls.clear()
        with pytest.raises(Exception, match="timed out during startup"):
            harness.connect(address)
        assert [c for c in calls if c != "shutdown"] == [address] * tries
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(1 / 0))
    calls.clear()
    with pytest.raises(ZeroDivisionError):                          # any other failure: at once
        harness.connect(None)
