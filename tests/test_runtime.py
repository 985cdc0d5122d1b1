"""Runtime integration tests: a real server on a free loopback port, real clients, a small untrained
Fashion-MNIST-sized CNN (tests/nets.py) and its real cuts and codec."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
import torch
from plan_factory import Fixed

from dyno import codec
from dyno.emulate.link import Link, Transfer
from dyno.emulate.traces import Trace
from dyno.errors import ConfigError
from dyno.offline import nominal_plan as tiny_plan
from dyno.runtime import BatchConfig, Client, ClientTLS, ServerConfig, ServerThread, TLSConfig
from dyno.runtime.config import channel_options
from dyno.runtime.metrics import parse_text
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc
from dyno.wire import on_the_wire


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(1)
    return torch.randn(24, 1, 28, 28)


@pytest.fixture(scope="module")
def server(model, plan, splits):
    # no load shedding (max_queue_ms): these tests count answers, and a busy machine must not refuse them
    config = ServerConfig(batching=BatchConfig(max_batch=32, max_wait_ms=2), max_queue_ms=60_000)
    with ServerThread(plan, model, config, splits=splits) as running:
        yield running


def metrics(running: ServerThread) -> dict:
    with urllib.request.urlopen(running.metrics_url, timeout=5) as response:
        return parse_text(response.read().decode())


def frame(plan, cut: int, x: np.ndarray, request_id: int = 0, **overrides) -> pb.Request:
    encoded = codec.encode(x, mode="fp32")
    fields = dict(request_id=request_id, model=plan.model, plan_hash=plan.hash, cut=cut,
                  meta=encoded.meta.to_bytes(), payload=encoded.payload, top_k=3)
    fields.update(overrides)
    return pb.Request(**fields)


def stream_status(address: str, requests: list[pb.Request], metadata=(), max_message=8 << 20,
                  pause: float = 0.0) -> tuple[list[pb.Reply], grpc.StatusCode, str]:
    """Send requests on one raw stream; return the replies and the final status."""
    with grpc.insecure_channel(address, options=channel_options(max_message)) as channel:
        stub = pb_grpc.InferenceStub(channel)

        def source():
            for request in requests:
                yield request
                if pause:
                    time.sleep(pause)

        call = stub.Infer(source(), timeout=20, metadata=metadata)
        replies = []
        try:
            for reply in call:
                replies.append(reply)
        except grpc.RpcError as error:
            return replies, error.code(), error.details()
        return replies, call.code(), call.details()


def in_process(splits, cut: int, x: torch.Tensor, mode: str = "fp32", bits: int | None = None,
               nonnegative: bool = False) -> torch.Tensor:
    with torch.inference_mode():
        activation = splits.head(cut)(x)
        if mode != "fp32":
            decoded = [codec.decode(codec.encode(a.numpy(), bits=bits, mode=mode, nonnegative=nonnegative),
                                    codec.Expected(shape=tuple(a.shape))) for a in activation]
            activation = torch.from_numpy(np.stack(decoded))
        return splits.tail(cut)(activation)


# ------------------------------------------------------------------------------------ results


def test_fp32_results_equal_the_in_process_model_at_every_cut(server, model, plan, splits, inputs):
    with torch.inference_mode():
        expected = model(inputs)
    for cut in range(len(plan.cuts)):
        with Client(plan, model, server=server.address, policy=Fixed(cut), splits=splits,
                    want_logits=True, top_k=3) as client:
            results = list(client.map(inputs))
        where = "device" if cut == len(plan.cuts) - 1 else "cloud"
        assert [r.where for r in results] == [where] * len(inputs), cut
        assert [r.top1 for r in results] == expected.argmax(1).tolist(), cut
        logits = np.stack([r.logits for r in results])
        np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)
        assert [r.index for r in results] == list(range(len(inputs)))  # map keeps input order
        assert all(len(r.classes) == 3 and r.scores[0] >= r.scores[1] >= r.scores[2] for r in results)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_results_equal_the_in_process_quantised_pipeline(server, model, plan, splits, inputs, bits):
    cut = 4
    expected = in_process(splits, cut, inputs, "shuffle-lz4", bits, plan.cuts[cut].nonnegative)
    with Client(plan, model, server=server.address, policy=Fixed(cut, "shuffle-lz4", bits),
                splits=splits, want_logits=True) as client:
        results = list(client.map(inputs))
    assert all(r.where == "cloud" and r.bits == bits for r in results)
    assert [r.top1 for r in results] == expected.argmax(1).tolist()
    np.testing.assert_allclose(np.stack([r.logits for r in results]), expected.numpy(), rtol=1e-4, atol=1e-4)
    # fewer bits on the wire than fp32, and the frame size the client reports is the real one
    assert max(r.bytes for r in results) < 4 * plan.cuts[cut].numel
    with torch.inference_mode():
        agreement = float((expected.argmax(1) == model(inputs).argmax(1)).float().mean())
    assert agreement >= (0.9 if bits == 8 else 0.6)


def test_batching_is_visible_in_the_metrics(model, plan, splits, inputs):
    config = ServerConfig(batching=BatchConfig(max_batch=16, max_wait_ms=20, eager=False))
    with ServerThread(plan, model, config, splits=splits) as running:
        clients = [Client(plan, model, server=running.address, policy=Fixed(5), splits=splits, in_flight=8)
                   for _ in range(4)]
        results: list = []
        threads = [threading.Thread(target=lambda c=c: results.extend(c.map(inputs))) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for c in clients:
            c.close()
        m = metrics(running)
    assert len(results) == 4 * len(inputs) and all(r.where == "cloud" for r in results)
    assert m[("dyno_requests_total", (("code", "OK"), ("cut", "5")))] == 4 * len(inputs)
    count = m[("dyno_batch_size_count", (("cut", "5"),))]
    total = m[("dyno_batch_size_sum", (("cut", "5"),))]
    assert total == 4 * len(inputs)
    assert total / count >= 2.0  # batches really formed
    assert max(r.batch for r in results) > 1
    assert m[("dyno_request_bytes_total", (("cut", "5"),))] > 0
    assert m[("dyno_request_latency_seconds_count", (("cut", "5"),))] == 4 * len(inputs)
    # the compute thread's CPU time: some, and no more than the batches' wall time
    cpu, wall = m[("dyno_compute_cpu_seconds_total", (("cut", "5"),))], m[("dyno_compute_seconds_sum", (("cut", "5"),))]
    assert 0 < cpu <= wall * 1.05 + 0.01


def test_64_concurrent_clients_are_served_and_nothing_is_lost(server, model, plan, splits):
    torch.manual_seed(2)
    data = torch.randn(64, 4, 1, 28, 28)
    with torch.inference_mode():
        expected = model(data.view(-1, 1, 28, 28)).argmax(1).view(64, 4)
    before = metrics(server).get(("dyno_requests_total", (("code", "OK"), ("cut", "3"))), 0)
    results: dict[int, list] = {}
    clients = [Client(plan, model, server=server.address, policy=Fixed(3), splits=splits, in_flight=2,
                      timeout=20) for _ in range(64)]

    def work(k: int) -> None:
        results[k] = list(clients[k].map(data[k]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for c in clients:
        c.close()
    assert sorted(results) == list(range(64))
    assert all(r.where == "cloud" for k in results for r in results[k])
    assert [[r.top1 for r in results[k]] for k in range(64)] == expected.tolist()
    after = metrics(server)[("dyno_requests_total", (("code", "OK"), ("cut", "3")))]
    assert after - before == 256


def test_server_killed_mid_run_every_request_completes_and_the_client_returns(model, plan, splits):
    torch.manual_seed(3)
    data = torch.randn(80, 1, 28, 28)
    with torch.inference_mode():
        expected = model(data).argmax(1).tolist()
    first = ServerThread(plan, model, splits=splits)
    port = first.port
    seen = threading.Event()
    count = [0]

    def on_result(_result):
        count[0] += 1
        if count[0] == 20:
            seen.set()

    from dyno.emulate.device import Device

    client = Client(plan, model, server=first.address, policy=Fixed(4), splits=splits, in_flight=4,
                    timeout=1.0, backoff=(0.05, 0.3), on_result=on_result,
                    device=Device(slowdown=1.0))
    out: list = []
    runner = threading.Thread(target=lambda: out.extend(client.map(_slowly(data, 0.01))))
    runner.start()
    assert seen.wait(30)
    first.kill()
    runner.join(60)
    assert not runner.is_alive()
    assert len(out) == len(data)
    assert [r.top1 for r in out] == expected  # fallbacks compute the same model on the device
    assert any(r.where == "cloud" for r in out)
    assert sum(r.where == "fallback" for r in out) >= 1
    assert client.stats["fallback"] >= 1 and not client.connected.is_set()

    second = ServerThread(plan, model, splits=splits, address=f"127.0.0.1:{port}")
    try:
        assert client.connected.wait(10), client.errors
        again = list(client.map(data[:10]))
        assert [r.where for r in again] == ["cloud"] * 10
        assert [r.top1 for r in again] == expected[:10]
        assert client.stats["reconnects"] >= 1
    finally:
        client.close()
        second.stop(grace=1)


def _slowly(items, delay):
    for item in items:
        time.sleep(delay)
        yield item


def test_unreachable_server_falls_back_to_the_device(model, plan, splits, inputs):
    with Client(plan, model, server="127.0.0.1:1", policy=Fixed(2), splits=splits, connect_timeout=0.3,
                backoff=(0.05, 0.2)) as client:
        results = list(client.map(inputs[:6]))
    with torch.inference_mode():
        expected = model(inputs[:6]).argmax(1).tolist()
    assert [r.where for r in results] == ["fallback"] * 6
    assert [r.top1 for r in results] == expected
    assert all(r.bytes == 0 for r in results)


def test_client_with_another_plan_is_refused_and_loses_nothing(server, model, inputs):
    other = tiny_plan(model, name="tiny", options=(("fp32", None), ("shuffle-lz4", 6)))
    assert other.hash != server.server.plan.hash
    with Client(other, model, server=server.address, policy=Fixed(2), connect_timeout=0.5,
                backoff=(0.05, 0.2)) as client:
        results = list(client.map(inputs[:4]))
        assert "not tiny plan" in " ".join(client.errors) or "serves tiny plan" in " ".join(client.errors)
    assert [r.where for r in results] == ["fallback"] * 4


# ------------------------------------------------------------------------------------ refusals


def test_malformed_frames_are_invalid_argument_and_others_keep_being_served(server, model, plan, splits,
                                                                             inputs):
    x = np.abs(np.random.default_rng(0).standard_normal(plan.cuts[3].shape)).astype(np.float32)
    good = frame(plan, 3, x)
    bad_cases = {
        "garbage meta": frame(plan, 3, x, meta=b"not a frame"),
        "flipped payload byte": frame(plan, 3, x, payload=bytes([good.payload[0] ^ 1]) + good.payload[1:]),
        "truncated payload": frame(plan, 3, x, payload=good.payload[:-4]),
        "shape of another cut": frame(plan, 3, np.zeros(plan.cuts[5].shape, np.float32)),
        "top_k too large": frame(plan, 3, x, top_k=10_000),
    }
    with Client(plan, model, server=server.address, policy=Fixed(3), splits=splits) as bystander:
        for name, request in bad_cases.items():
            replies, code, details = stream_status(server.address, [good, request], pause=0.05)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
            assert [r.request_id for r in replies] in ([0], []), name
            result = bystander.infer(inputs[0])
            assert result.where == "cloud", name
    replies, code, _ = stream_status(server.address, [good, frame(plan, 3, x, request_id=1)])
    assert code == grpc.StatusCode.OK and sorted(r.request_id for r in replies) == [0, 1]


def test_plan_mismatch_and_unserved_cuts_are_failed_precondition(server, plan):
    x = np.zeros(plan.cuts[2].shape, np.float32)
    last = len(plan.cuts) - 1
    cases = {
        "plan hash": frame(plan, 2, x, plan_hash="0" * 64),
        "model": frame(plan, 2, x, model="other"),
        "no such cut": _with(frame(plan, 2, x), cut=99),
        "device-only cut": frame(plan, last, np.zeros(plan.cuts[last].shape, np.float32)),
    }
    for name, request in cases.items():
        _, code, details = stream_status(server.address, [request])
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (name, code, details)


def _with(request: pb.Request, **fields) -> pb.Request:
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def test_oversized_messages_are_resource_exhausted(model, plan, splits):
    config = ServerConfig(max_message_bytes=4096)
    with ServerThread(plan, model, config, splits=splits) as running:
        big = frame(plan, 1, np.zeros(plan.cuts[1].shape, np.float32))  # 8x28x28 fp32 = 25 KB
        assert big.ByteSize() > 4096
        _, code, details = stream_status(running.address, [big])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        small = frame(plan, 8, np.zeros(plan.cuts[8].shape, np.float32))
        replies, code, _ = stream_status(running.address, [small])
        assert code == grpc.StatusCode.OK and len(replies) == 1


def test_in_flight_and_stream_limits_are_resource_exhausted(model, plan, splits):
    config = ServerConfig(batching=BatchConfig(max_batch=64, max_wait_ms=500, eager=False),
                          max_in_flight_per_client=4, max_streams_per_client=2)
    with ServerThread(plan, model, config, splits=splits) as running:
        x = np.zeros(plan.cuts[8].shape, np.float32)
        flood = [frame(plan, 8, x, request_id=i) for i in range(10)]
        _, code, details = stream_status(running.address, flood)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "in flight" in details
        # a third concurrent stream on one connection
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.InferenceStub(channel)
            held = [stub.Infer(_blocking(), timeout=10) for _ in range(2)]
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Infer(iter([flood[0]]), timeout=10))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in held:
                call.cancel()


def _blocking():
    time.sleep(2)
    return
    yield  # an empty request stream that stays open for a while


def test_bearer_token_is_checked_on_every_call(model, plan, splits, inputs):
    config = ServerConfig(token="s3cret-token")
    with ServerThread(plan, model, config, splits=splits) as running:
        x = np.zeros(plan.cuts[8].shape, np.float32)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)):
            _, code, _ = stream_status(running.address, [frame(plan, 8, x)], metadata=metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED, metadata
        replies, code, _ = stream_status(running.address, [frame(plan, 8, x)],
                                         metadata=(("authorization", "Bearer s3cret-token"),))
        assert code == grpc.StatusCode.OK and len(replies) == 1
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.InferenceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Describe(pb.DescribeRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="dyno.v1.Inference"), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        with Client(plan, model, server=running.address, policy=Fixed(8), splits=splits,
                    token="s3cret-token") as client:
            assert client.infer(inputs[0]).where == "cloud"
        with Client(plan, model, server=running.address, policy=Fixed(8), splits=splits, token="nope",
                    connect_timeout=0.5, backoff=(0.05, 0.1)) as client:
            assert client.infer(inputs[0]).where == "fallback"


# ------------------------------------------------------------------------------------ service


def test_describe_and_health(server, plan):
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.InferenceStub(channel)
        described = stub.Describe(pb.DescribeRequest(), timeout=5)
        health = stub.Health(pb.HealthRequest(), timeout=5)
    assert described.model == plan.model and described.plan_hash == plan.hash
    assert [c.id for c in described.cuts] == list(range(len(plan.cuts)))
    assert [c.served for c in described.cuts] == [True] * (len(plan.cuts) - 1) + [False]
    assert list(described.cuts[1].shape) == list(plan.cuts[1].shape)
    assert health.status == pb.HealthReply.SERVING and 0 <= health.load <= 1


def test_graceful_stop_answers_in_flight_requests_then_says_unavailable(model, plan, splits):
    config = ServerConfig(batching=BatchConfig(max_batch=64, max_wait_ms=400, eager=False))
    running = ServerThread(plan, model, config, splits=splits)
    x = np.zeros(plan.cuts[8].shape, np.float32)
    requests = [frame(plan, 8, x, request_id=i) for i in range(6)]
    outcome: dict = {}

    # the stream stays open (the generator sleeps) so only the server's stop can end it
    def run():
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.InferenceStub(channel)

            def source():
                yield from requests
                time.sleep(5)

            call = stub.Infer(source(), timeout=20)
            replies = []
            try:
                for reply in call:
                    replies.append(reply)
            except grpc.RpcError as error:
                outcome["result"] = (replies, error.code())
                return
            outcome["result"] = (replies, call.code())

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.15)  # the requests are queued, waiting for their batch
    start = time.monotonic()
    running.stop(grace=5)
    thread.join(10)
    replies, code = outcome["result"]
    assert sorted(r.request_id for r in replies) == list(range(6))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start < 4


def test_tls_with_a_self_signed_certificate(model, plan, splits, inputs, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    config = ServerConfig(tls=TLSConfig(cert=cert, key=key), token="t0ken")
    with ServerThread(plan, model, config, splits=splits) as running:
        with Client(plan, model, server=f"localhost:{running.port}", policy=Fixed(6), splits=splits,
                    tls=ClientTLS(ca=cert), token="t0ken") as client:
            result = client.infer(inputs[0])
        assert result.where == "cloud"
        with grpc.insecure_channel(running.address) as channel:  # plaintext to a TLS port fails
            with pytest.raises(grpc.RpcError):
                pb_grpc.InferenceStub(channel).Health(pb.HealthRequest(), timeout=2)


# ------------------------------------------------------------------------------------ client


def test_pipelining_overlaps_device_link_and_cloud(server, model, plan, splits, inputs):
    """With ``in_flight`` > 1 the device runs the next head while earlier frames cross the link and wait
    for the cloud; with 1 it never does. Read from when each stage ran, not from a wall-clock total, so a
    stall of the shared machine cannot decide it."""
    cut = 5
    nbytes = 4 * plan.cuts[cut].numel  # fp32 frame, about 6 KB

    def run(in_flight: int) -> tuple[float, int]:
        device, link = _FixedDelay(0.015), _RecordingLink(Trace.constant(nbytes * 8 / 0.015))  # ~15 ms each
        with Client(plan, model, server=server.address, policy=Fixed(cut), splits=splits,
                    in_flight=in_flight, link=link, device=device) as client:
            results = list(client.map(inputs[:16]))
        assert all(r.where == "cloud" for r in results)
        under_way = [(r.finished - r.latency_ms / 1000, r.finished) for r in results]
        return _overlap(device.spans, link.spans), max(_count_at(under_way, t) for t, _ in under_way)

    serial, pipelined = run(1), run(4)
    assert serial[0] < 0.001 and serial[1] == 1   # head, link, cloud, then the next head
    assert pipelined[0] > 5 * 0.015               # heads ran while other frames were on the link
    assert pipelined[1] > 1                       # several inferences under way at once


class _FixedDelay:
    """A device stand-in whose every run takes at least ``seconds`` (deterministic); ``spans`` holds
    each run's (start, end), ``time.monotonic``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spans: list[tuple[float, float]] = []

    def run(self, fn, *args):
        start = time.monotonic()
        value = fn(*args)
        left = self.seconds - (time.monotonic() - start)
        if left > 0:
            time.sleep(left)
        self.spans.append((start, time.monotonic()))
        return value, (time.monotonic() - start) * 1000


class _RecordingLink(Link):
    """An emulated link whose ``spans`` holds each frame's (first byte out, last byte in), ``time.monotonic``."""

    def __init__(self, trace: Trace):
        super().__init__(trace)
        self.spans: list[tuple[float, float]] = []

    def reserve(self, nbytes: int) -> Transfer:
        transfer = super().reserve(nbytes)
        offset = time.monotonic() - self.now()  # link time -> monotonic
        self.spans.append((offset + transfer.start, offset + transfer.end))
        return transfer


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Seconds during which a span of ``a`` and a span of ``b`` both ran (each list disjoint)."""
    return sum(max(0.0, min(end, b_end) - max(start, b_start)) for start, end in a for b_start, b_end in b)


def _count_at(spans: list[tuple[float, float]], t: float) -> int:
    return sum(start <= t < end for start, end in spans)


def test_monitors_see_the_emulated_link_and_the_server(server, model, plan, splits, inputs):
    link = Link(Trace.constant(2e6))
    with Client(plan, model, server=server.address, policy=Fixed(7, "shuffle-lz4", 8), splits=splits,
                link=link) as client:
        results = list(client.map(inputs[:12]))
        estimates = client.estimates()
    assert all(r.where == "cloud" for r in results)
    assert estimates.bandwidth_bps == pytest.approx(2e6, rel=0.02)
    for r in results:  # the time on the link is the request's wire size (framing, packet headers) at its rate
        assert r.transfer_ms == pytest.approx(on_the_wire(r.bytes) * 8 / 2e6 * 1000, rel=0.02)
    assert link.frames == 12 and link.sent_bytes == sum(on_the_wire(r.bytes) for r in results)


def test_the_emulated_link_carries_frames_back_to_back(server, model, plan, splits, inputs):
    """Frames ready while the link is busy leave the moment it is free: writing one to the stream does
    not hold the link idle before the next (a quarter of an 8 Mbit/s link was lost that way)."""
    class Booking(Link):   # the real link, keeping what it booked
        def __init__(self, trace):
            super().__init__(trace)
            self.booked = []

        def reserve(self, nbytes):
            transfer = super().reserve(nbytes)
            self.booked.append(transfer)
            return transfer

    link = Booking(Trace.constant(4 * plan.cuts[0].numel * 8 / 0.004))   # an fp32 input in 4 ms
    with Client(plan, model, server=server.address, policy=Fixed(0), splits=splits, in_flight=8,
                link=link) as client:
        results = list(client.map(torch.cat([inputs, inputs])))
    assert [r.where for r in results] == ["cloud"] * 2 * len(inputs)
    backlog = [(a, b) for a, b in zip(link.booked, link.booked[1:]) if b.queued < a.end]
    assert len(backlog) >= len(inputs)   # the device hands frames over faster than the link carries them
    assert all(b.start == a.end for a, b in backlog)   # and then the link is never idle


def test_the_dyno_policy_drives_the_client(server, model, plan, splits, inputs):
    with Client(plan, model, server=server.address, policy="dyno", splits=splits) as client:
        results = list(client.map(inputs[:8]))
    with torch.inference_mode():
        expected = model(inputs[:8]).argmax(1).tolist()
    assert len(results) == 8 and all(r.where in ("cloud", "device") for r in results)
    assert sum(r.top1 == e for r, e in zip(results, expected, strict=True)) >= 7


def test_streams_rotate_before_their_deadline_without_losing_a_request(server, model, plan, splits):
    torch.manual_seed(6)
    data = torch.randn(200, 1, 28, 28)
    with torch.inference_mode():
        expected = model(data).argmax(1).tolist()
    # a stream lives 4.1 s; the run takes longer, so requests must move to a fresh stream in time
    with Client(plan, model, server=server.address, policy=Fixed(6), splits=splits, in_flight=2, timeout=1.0,
                stream_lifetime=4.1) as client:
        start = time.monotonic()
        results = list(client.map(_slowly(data, 0.025)))
        elapsed = time.monotonic() - start
        stats = dict(client.stats)
    assert elapsed > 4.1
    assert [r.where for r in results] == ["cloud"] * len(data)
    assert [r.top1 for r in results] == expected
    assert stats.get("connects") == 1 and not stats.get("reconnects") and not stats.get("timeouts")


def test_a_client_that_cannot_start_leaves_no_thread_behind(model, plan, splits, tmp_path):
    before = set(threading.enumerate())
    with pytest.raises(ConfigError, match="TLS file"):
        Client(plan, model, server="localhost:1", splits=splits, tls=ClientTLS(ca=tmp_path / "missing.pem"))
    time.sleep(0.1)
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("dyno-")]


def test_the_server_tells_a_client_its_cloud_capacity(model, plan, splits, inputs):
    """One client alone prices the cloud at about one worker (its own use plus the headroom); a
    server asked to stay under 5% utilisation pushes back (pressure), and the client's capacity falls."""
    capacity = {}
    for target in (1.0, 0.05):
        with ServerThread(plan, model, ServerConfig(target_utilisation=target), splits=splits) as running, \
                Client(plan, model, server=running.address, policy="cloud-only-raw", splits=splits,
                       in_flight=8) as client:
            results = list(client.map(inputs.repeat(10, 1, 1, 1)))
            assert {r.where for r in results} == {"cloud"}
            capacity[target] = client.estimates().cloud_capacity
    assert 0.3 < capacity[1.0] < 1.5
    assert capacity[0.05] < 0.5 * capacity[1.0]
