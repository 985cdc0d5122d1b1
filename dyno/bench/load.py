"""Raw ``dyno.v1`` traffic as devices and attackers send it, for benchmarks and probes of a server
(``dyno.bench.runtime``'s abuse benchmark): a device's stream, malformed requests one stream after
another, streams that never send. Nothing here serves or decides; it only talks to a server.

    tally, idle = await abuse_load(address, legit, junk, streams=512, requests=100, n_junk=32, n_idle=256)

``tally``: ``sent`` (legitimate requests written), ``latencies`` (seconds, of those answered),
``late`` (answered after the client's timeout), ``refusals`` (status name -> requests refused with it),
``lost`` (written, then neither answered nor refused: the stream ended OK, or its deadline passed),
``junk`` (kind -> status name -> count); ``idle``: status of each idle stream at the end ("still open",
or e.g. "UNAVAILABLE (idle close)").
"""

from __future__ import annotations

import asyncio
import collections
import random
import struct
import time
import zlib
from typing import Any

import grpc

from dyno.runtime.config import IDLE_CLOSE, ClientConfig, channel_options
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc

__all__ = ["abuse_load", "legit_stream", "junk_stream", "idle_outcome", "resign"]


def resign(meta: bytes, payload: bytes) -> bytes:
    """``meta`` with its crc32 (the last 4 bytes: over the bytes before them, then the payload) made
    right for ``payload``, as a hostile sender would."""
    return meta[:-4] + struct.pack("<I", zlib.crc32(payload, zlib.crc32(meta[:-4])))


async def _outcome(call: Any) -> str:
    """The status name a finished call ended with (``grpc.aio`` raises it from reads and writes)."""
    return (await call.code()).name


async def legit_stream(stub: Any, request: Any, requests: int, timeout_s: float, tally: dict) -> None:
    """One device's stream: a request, its reply, the next; on a refusal it backs off as
    ``ClientConfig.backoff`` does and carries on on a new stream."""
    first, most = ClientConfig().backoff
    delay, call, left = first, None, requests
    while left:
        call = call or stub.Infer(timeout=600)
        start = time.perf_counter()
        try:
            await call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            call = None  # ended before this request went out: not sent, try again
            await asyncio.sleep(delay)
            continue
        tally["sent"] += 1
        left -= 1
        try:
            reply = await call.read()
            code = "EOF" if reply is grpc.aio.EOF else ""
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            code = await _outcome(call)
        if not code:
            seconds = time.perf_counter() - start
            tally["latencies"].append(seconds)
            tally["late"] += seconds > timeout_s
            delay = first
            continue
        if code in ("EOF", "OK", "DEADLINE_EXCEEDED", "CANCELLED"):
            tally["lost"] += 1
        else:
            tally["refusals"][code] += 1
        call = None
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, most)
    if call is not None:
        await call.done_writing()


async def junk_stream(stub: Any, junk: list[tuple[str, Any]], offset: int, tally: dict,
                      done: asyncio.Event) -> None:
    """Malformed requests, one per stream, one stream after another until ``done``."""
    while not done.is_set():
        kind, request = junk[offset % len(junk)]
        offset += 1
        call = stub.Infer(timeout=60)
        try:
            await call.write(request)
            await call.done_writing()
            async for _ in call:
                pass
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        tally["junk"][kind][await _outcome(call)] += 1


async def idle_outcome(call: Any) -> str:
    """How an idle stream stands: "still open", or the status it was ended with."""
    if not call.done():
        return "still open"
    details = await call.details() or ""
    return await _outcome(call) + (" (idle close)" if details.startswith(IDLE_CLOSE) else "")


async def abuse_load(address: str, legit: list[Any], junk: list[tuple[str, Any]], streams: int, requests: int,
                     n_junk: int, n_idle: int) -> tuple[dict, collections.Counter]:
    """``streams`` legitimate streams of ``requests`` requests (``legit`` in turn), beside ``n_junk``
    junk streams (``junk``: (kind, request)) until they finish and ``n_idle`` idle streams, all at once
    over 28 connections (16 legitimate, 8 idle, 4 junk). See the module docstring for the result."""
    options = channel_options(8 << 20) + [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(28)]
    stubs = [pb_grpc.InferenceStub(c) for c in channels]  # 16 for legitimate streams, 8 idle, 4 junk
    tally: dict[str, Any] = {"sent": 0, "lost": 0, "late": 0, "latencies": [], "refusals": collections.Counter(),
                             "junk": collections.defaultdict(collections.Counter)}
    done = asyncio.Event()
    idle = [stubs[16 + k % 8].Infer(timeout=3600) for k in range(n_idle)]
    junk_tasks = [asyncio.create_task(junk_stream(stubs[24 + k % 4], junk, k, tally, done)) for k in range(n_junk)]
    timeout_s = ClientConfig().timeout
    await asyncio.gather(*(legit_stream(stubs[k % 16], legit[k % len(legit)], requests, timeout_s, tally)
                           for k in range(streams)))
    done.set()
    await asyncio.gather(*junk_tasks)
    idle_outcomes = collections.Counter([await idle_outcome(call) for call in idle])
    for call in idle:
        call.cancel()
    for channel in channels:
        await channel.close()
    return tally, idle_outcomes
