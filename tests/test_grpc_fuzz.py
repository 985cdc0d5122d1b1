"""Fuzzing the server over the network (issue 13, "Done when"): 10,000 damaged or hostile requests,
each on its own stream over a real gRPC connection to a real server in its own process. Every one
ends with OK (one well-formed reply) or a refusal for what it is - INVALID_ARGUMENT,
FAILED_PRECONDITION - and never INTERNAL, UNKNOWN or a hang; after every batch the server still
answers a valid request exactly as the in-process model does, and its memory stays bounded.

Cases (``Fuzzer.case``): valid frames of several cuts and codec modes with damaged metadata or
payload (bit flips, byte changes, truncation, extension, random runs), damaged payloads re-signed
with a correct crc32 (so the checks behind the checksum see garbage too), metadata and payload of
different frames, random bytes, frames sent to the wrong cut, bad request fields (cut, top_k, model,
plan hash), and messages that are not protobuf at all.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import struct
import zlib

import grpc
import numpy as np
import pytest
import torch
from nets import tiny_model

from dyno import codec
from dyno.offline import nominal_plan as tiny_plan
from dyno.runtime import ServerConfig, ServerProcess, Splits
from dyno.runtime.config import channel_options
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc

CASES = 10_000
BATCH = 500
CONCURRENCY = 24
FINE = {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}


def build_tiny(seed: int):
    """The server child's builder: TinyNet's nominal plan and model."""
    model = tiny_model(seed=seed)
    return tiny_plan(model), model


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def _damage(rng: random.Random, data: bytes, *, keep_length: bool = False) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(2 if keep_length else 5)
    if kind == 0 and buf:  # bit flips
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == 1 and buf:  # byte changes
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 2:  # truncation
        del buf[rng.randrange(len(buf) + 1):]
    elif kind == 3:  # extension
        buf += rng.randbytes(rng.randint(1, 64))
    else:  # a run of random bytes somewhere
        start = rng.randrange(len(buf) + 1)
        buf[start:start + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
    return bytes(buf)


def resigned(meta: bytes, payload: bytes) -> bytes:
    """``meta`` with the crc32 (its last 4 bytes, over the bytes before them and then the payload)
    made right for ``payload``, as a hostile sender would."""
    body = meta[:-4]
    return body + struct.pack("<I", zlib.crc32(payload, zlib.crc32(body)))


class Fuzzer:
    """Valid frames for some of the plan's cuts, and one damaged request per call of ``case``."""

    def __init__(self, plan, splits, seed: int = 13):
        self.plan, self.rng = plan, random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(1, *plan.input_shape, generator=gen)
        self.frames: list[tuple[int, bytes, bytes]] = []
        with torch.inference_mode():
            for cut in (0, 2, 4, 6, 8):
                activation = splits.head(cut)(x)[0].numpy()
                nonnegative = bool((activation >= 0).all())
                for mode, bits in (("fp32", None), ("fp16", None), ("shuffle-lz4", 4), ("shuffle-lz4", 8),
                                   ("shuffle-zstd", 12), ("dense", 3)):
                    enc = codec.encode(activation, bits=bits, mode=mode, nonnegative=nonnegative)
                    self.frames.append((cut, enc.meta.to_bytes(), bytes(enc.payload)))
            for mode in ("jpeg", "webp"):
                enc = codec.encode(x[0].numpy(), bits=80, mode=mode)
                self.frames.append((0, enc.meta.to_bytes(), bytes(enc.payload)))

    def request(self, rid: int, cut: int, meta: bytes, payload: bytes, **fields) -> pb.Request:
        values = dict(request_id=rid, model=self.plan.model, plan_hash=self.plan.hash, cut=cut, meta=meta,
                      payload=payload, top_k=3)
        values.update(fields)  # may replace any of the above
        return pb.Request(**values)

    def case(self, rid: int) -> pb.Request | bytes:
        """One damaged request (or, one time in 50, bytes that are not a Request at all)."""
        rng = self.rng
        cut, meta, payload = rng.choice(self.frames)
        kind = rng.random()
        if kind < 0.02:
            return rng.randbytes(rng.randint(1, 200))
        if kind < 0.30:
            return self.request(rid, cut, _damage(rng, meta), payload)
        if kind < 0.50:
            return self.request(rid, cut, meta, _damage(rng, payload))
        if kind < 0.65:  # damaged payload, correct checksum
            damaged = _damage(rng, payload, keep_length=True)
            return self.request(rid, cut, resigned(meta, damaged), damaged)
        if kind < 0.72:  # metadata of one frame, payload of another
            return self.request(rid, cut, meta, rng.choice(self.frames)[2])
        if kind < 0.78:
            return self.request(rid, cut, rng.randbytes(rng.randint(0, 80)), rng.randbytes(rng.randint(0, 80)))
        if kind < 0.86:  # a valid frame at another cut
            return self.request(rid, rng.choice([c for c in range(len(self.plan.cuts)) if c != cut]), meta, payload)
        if kind < 0.95:  # bad fields around a valid frame
            field, value = rng.choice([("cut", rng.randint(9, 2**32 - 1)), ("top_k", rng.randint(0, 500)),
                                       ("model", "other"), ("plan_hash", rng.randbytes(8).hex()),
                                       ("meta", b""), ("payload", b""), ("want_logits", True)])
            return self.request(rid, **{"cut": cut, "meta": meta, "payload": payload, field: value})
        return self.request(rid, cut, meta, payload)  # valid


async def one(channel: grpc.aio.Channel, case: pb.Request | bytes) -> tuple[str, list[pb.Reply]]:
    """Send one case on its own stream; (final status, replies)."""
    if isinstance(case, bytes):
        call = channel.stream_stream("/dyno.v1.Inference/Infer", request_serializer=None,
                                     response_deserializer=pb.Reply.FromString)(timeout=30)
    else:
        call = pb_grpc.InferenceStub(channel).Infer(timeout=30)
    replies: list[pb.Reply] = []
    try:
        await call.write(case)
        await call.done_writing()
        async for reply in call:
            replies.append(reply)
        return (await call.code()).name, replies
    except grpc.aio.AioRpcError as error:
        return error.code().name, replies
    except asyncio.InvalidStateError:
        return (await call.code()).name, replies


def well_formed(case: pb.Request, replies: list[pb.Reply]) -> bool:
    if len(replies) != 1:
        return False
    reply, k = replies[0], min(case.top_k or 5, 10)
    return (reply.request_id == case.request_id and len(reply.classes) == len(reply.scores) == k
            and all(0 <= c < 10 for c in reply.classes) and all(math.isfinite(s) and 0 <= s <= 1 for s in reply.scores)
            and all(math.isfinite(v) for v in reply.logits))


@pytest.fixture(scope="module")
def setup():
    plan, model = build_tiny(0)
    return plan, model, Splits(model, plan)


def test_ten_thousand_fuzzed_requests_over_grpc(setup):
    plan, model, splits = setup
    fuzzer = Fuzzer(plan, splits)
    probe_x = torch.rand(1, *plan.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        activation = splits.head(4)(probe_x)[0].numpy()
        want = model(probe_x)[0].numpy()
    enc = codec.encode(activation, mode="fp32")
    probe = fuzzer.request(0, 4, enc.meta.to_bytes(), bytes(enc.payload), want_logits=True)

    async def run(address: str, pid: int):
        outcomes: collections.Counter[str] = collections.Counter()
        bad: list[tuple[str, object]] = []
        gate = asyncio.Semaphore(CONCURRENCY)
        rss = [rss_mb(pid)]
        async with grpc.aio.insecure_channel(address, options=channel_options(8 << 20)) as channel:
            async def guarded(case):
                async with gate:
                    return await one(channel, case)
            for start in range(0, CASES, BATCH):
                cases = [fuzzer.case(rid) for rid in range(start, start + BATCH)]
                for case, (code, replies) in zip(cases, await asyncio.gather(*map(guarded, cases)), strict=True):
                    outcomes[code] += 1
                    if code not in FINE or (code == "OK" and not well_formed(case, replies)):
                        bad.append((code, case if isinstance(case, bytes) else (case.cut, case.top_k)))
                code, replies = await one(channel, probe)  # the server still serves, exactly
                assert code == "OK" and len(replies) == 1, (start, code)
                np.testing.assert_allclose(np.asarray(replies[0].logits), want, rtol=1e-4, atol=1e-4)
                rss.append(rss_mb(pid))
        return outcomes, bad, rss

    with ServerProcess(build_tiny, 0, config=ServerConfig(metrics_port=None)) as server:
        outcomes, bad, rss = asyncio.run(run(server.address, server.pid))
    assert sum(outcomes.values()) == CASES
    assert not bad, bad[:10]
    assert outcomes["INVALID_ARGUMENT"] > CASES / 2 and outcomes["OK"] > 0 and outcomes["FAILED_PRECONDITION"] > 0
    assert rss[-1] - rss[1] < 100, rss  # memory flat after the first batch (allocator warm-up)
