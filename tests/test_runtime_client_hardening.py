"""The device client when the cloud is missing, hostile or overloaded (issue 13): it says why in
``client.errors`` and counts the cloud's replies in ``client.stats``; it uses nothing from a reply that
fails its checks; under overload it finishes what it had on the device and backs off; a stream the
server closed as idle or old is replaced without an error."""

from __future__ import annotations

import concurrent.futures
import math
import shutil
import socket
import subprocess
import time

import grpc
import pytest
import torch
from plan_factory import Fixed

from dyno.runtime import BatchConfig, Client, ClientTLS, ServerConfig, ServerThread, TLSConfig
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc
from dyno.runtime.replies import WRITE_RACE


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(5)
    return torch.randn(40, 1, 28, 28)


@pytest.fixture(scope="module")
def expected(model, inputs):
    with torch.inference_mode():
        return model(inputs).argmax(1).tolist()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------ item 9


def test_nothing_listening_is_reported_as_connection_refused(model, plan, splits, inputs, expected):
    port = free_port()
    with Client(plan, model, server=f"127.0.0.1:{port}", policy=Fixed(2), splits=splits, connect_timeout=0.5,
                backoff=(0.05, 0.2)) as client:
        results = list(client.map(inputs[:5]))
        errors, stats = list(client.errors), dict(client.stats)
    assert [r.top1 for r in results] == expected[:5] and {r.where for r in results} == {"fallback"}
    assert stats.get("replies", 0) == 0
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in errors[0], errors


def test_the_wrong_tls_ca_is_reported_as_a_failed_handshake(model, plan, splits, inputs, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    for name in ("server", "other"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.pem")],
                       check=True, capture_output=True)
    config = ServerConfig(tls=TLSConfig(cert=tmp_path / "server.pem", key=tmp_path / "server.key"))
    with ServerThread(plan, model, config, splits=splits) as running:
        address = f"localhost:{running.port}"
        with Client(plan, model, server=address, policy=Fixed(2), splits=splits, connect_timeout=0.5,
                    tls=ClientTLS(ca=tmp_path / "other.pem"), backoff=(0.05, 0.2)) as client:
            results = list(client.map(inputs[:3]))
            errors, stats = list(client.errors), dict(client.stats)
        with Client(plan, model, server=address, policy=Fixed(2), splits=splits,
                    tls=ClientTLS(ca=tmp_path / "server.pem")) as good:
            served = list(good.map(inputs[:3]))
            good_stats = dict(good.stats)
    assert {r.where for r in results} == {"fallback"} and stats.get("replies", 0) == 0
    assert errors[0].startswith(f"TLS handshake with {address} failed: the server's certificate is not "
                                "signed by the CA given"), errors
    assert {r.where for r in served} == {"cloud"} and good_stats["replies"] == 3


# ------------------------------------------------------------------------------------ replies


class Hostile(pb_grpc.InferenceServicer):
    """A server that describes itself correctly and answers every request with ``reply`` (its
    request id filled in): what a broken or malicious cloud could send."""

    def __init__(self, plan, reply: pb.Reply):
        self.plan, self.reply = plan, reply

    def Describe(self, _request, _context):  # noqa: N802
        cuts = [pb.CutInfo(id=c.id, name=c.name, shape=list(c.shape), served=c.id < len(self.plan.cuts) - 1)
                for c in self.plan.cuts]
        return pb.DescribeReply(model=self.plan.model, plan_hash=self.plan.hash, cuts=cuts, max_batch=8)

    def Infer(self, request_iterator, _context):  # noqa: N802
        for request in request_iterator:
            reply = pb.Reply()
            reply.CopyFrom(self.reply)
            reply.request_id = request.request_id
            yield reply


GOOD = dict(classes=[3, 1, 4, 0, 2], scores=[0.5, 0.2, 0.1, 0.1, 0.05], queue_ms=1.0, compute_ms=2.0,
            batch=2, load=0.5)
BAD = {
    "queue_ms NaN": dict(queue_ms=math.nan),
    "compute_ms infinite": dict(compute_ms=math.inf),
    "negative compute_ms": dict(compute_ms=-5.0),
    "load above 1": dict(load=7.0),
    "load NaN": dict(load=math.nan),
    "negative headroom": dict(headroom=-1.0),
    "headroom NaN": dict(headroom=math.nan),
    "pressure below 1": dict(pressure=0.5),
    "batch 0": dict(batch=0),
    "more classes than top_k": dict(classes=[0, 1, 2, 3, 4, 5], scores=[0.2] * 6),
    "scores shorter than classes": dict(scores=[0.5, 0.2]),
    "no classes": dict(classes=[], scores=[]),
    "a class id past the model's": dict(classes=[3, 1, 4, 0, 99]),
    "NaN score": dict(scores=[math.nan, 0.2, 0.1, 0.1, 0.05]),
    "logits of the wrong length": dict(logits=[0.1, 0.2]),
}


@pytest.mark.parametrize("case", ["good", *BAD], ids=["good", *BAD])
def test_a_reply_that_fails_its_checks_is_not_used(model, plan, splits, inputs, expected, case):
    reply = pb.Reply(**{**GOOD, **BAD.get(case, {})})
    hostile = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    pb_grpc.add_InferenceServicer_to_server(Hostile(plan, reply), hostile)
    port = hostile.add_insecure_port("127.0.0.1:0")
    hostile.start()
    try:
        with Client(plan, model, server=f"127.0.0.1:{port}", policy=Fixed(4), splits=splits, top_k=5) as client:
            results = list(client.map(inputs[:4]))
            estimates, errors, stats = client.estimates(), list(client.errors), dict(client.stats)
    finally:
        hostile.stop(0)
    if case == "good":
        assert [r.where for r in results] == ["cloud"] * 4 and stats["replies"] == 4
        assert [r.classes for r in results] == [(3, 1, 4, 0, 2)] * 4
        return
    assert [r.where for r in results] == ["fallback"] * 4, case
    assert [r.top1 for r in results] == expected[:4]
    assert stats["bad_replies"] == 4 and stats.get("replies", 0) == 0
    assert errors and errors[0].startswith(f"bad reply from 127.0.0.1:{port}: ")
    for value in (estimates.queue_ms, estimates.cloud_capacity, estimates.rtt_ms, estimates.server_ms_factor):
        assert math.isfinite(value), (case, estimates)


# ------------------------------------------------------------------------------------ overload


def test_overload_finishes_on_the_device_and_backs_off(model, plan, splits, inputs, expected):
    """Issue 13 item 11: a client refused with RESOURCE_EXHAUSTED returned at once and was refused
    again; now what it had finishes on the device and it waits before returning."""
    config = ServerConfig(batching=BatchConfig(max_batch=64, max_wait_ms=300, eager=False),
                          max_in_flight_per_client=2)
    with ServerThread(plan, model, config, splits=splits) as running:
        with Client(plan, model, server=running.address, policy=Fixed(8), splits=splits, in_flight=8,
                    backoff=(2.0, 4.0)) as client:
            started = time.perf_counter()
            results = list(client.map(inputs))
            stats, errors = dict(client.stats), list(client.errors)
            elapsed = time.perf_counter() - started
    assert [r.top1 for r in results] == expected  # nothing lost
    # the refusal, or (if a write was under way as it arrived) grpc's INTERNAL, which the client takes
    # as overload too and says so
    assert stats["overloaded"] >= 1 and any(e.startswith(("RESOURCE_EXHAUSTED", WRITE_RACE)) for e in errors), errors
    # it did not come straight back to be refused again: every return after an overload waits out a hold-off
    # of at least 0.8 x 2 s (a slow machine's map lasts long enough for one or two; straight back would be
    # dozens). One more is allowed: a stream that ends otherwise (an error, not an overload) is reopened at
    # once by design, and CI once saw 2 reconnects in 0.9 s here
    assert stats.get("reconnects", 0) <= 2 + elapsed / 1.6, (stats, elapsed, errors)
    assert stats["cloud"] >= 1 and stats["fallback"] + stats.get("unavailable", 0) >= 1


# ------------------------------------------------------------------------------------ routine closes


def test_a_stream_closed_as_idle_is_replaced_without_an_error(model, plan, splits, inputs):
    with ServerThread(plan, model, ServerConfig(idle_timeout_s=0.5), splits=splits) as running:
        with Client(plan, model, server=running.address, policy=Fixed(3), splits=splits) as client:
            first = client.infer(inputs[0])
            time.sleep(2.0)  # closed as idle (after the server's linger), and replaced
            assert client.connected.wait(2)
            second = client.infer(inputs[1])
            stats, errors = dict(client.stats), list(client.errors)
    assert (first.where, second.where) == ("cloud", "cloud")
    assert stats["reopened"] >= 1 and not errors and not stats.get("reconnects")


def test_client_rotation_beats_the_server_stream_lifetime(model, plan, splits):
    """The server closes streams older than max_stream_lifetime_s; a client whose stream_lifetime is
    no longer rotates first and never sees that close."""
    torch.manual_seed(9)
    data = torch.randn(100, 1, 28, 28)
    with torch.inference_mode():
        want = model(data).argmax(1).tolist()
    with ServerThread(plan, model, ServerConfig(max_stream_lifetime_s=2.1), splits=splits) as running:
        with Client(plan, model, server=running.address, policy=Fixed(6), splits=splits, in_flight=2,
                    timeout=0.5, stream_lifetime=2.1) as client:
            results = []
            for x in data:  # about 3 s
                results.append(client.infer(x))
                time.sleep(0.03)
            stats, errors = dict(client.stats), list(client.errors)
    assert [r.top1 for r in results] == want and {r.where for r in results} == {"cloud"}
    assert stats["connects"] == 1 and not stats.get("reopened") and not errors, (stats, errors)
