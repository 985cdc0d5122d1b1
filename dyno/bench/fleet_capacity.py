"""The cloud-bound case of the fleet benchmark (``capacity_s``): raw closed-loop streams, every input all
in the cloud, from one asyncio client process with no device work: how many inferences a second the
server answers when the devices are not what limits it.

    capacity(plan, "127.0.0.1:5001", seconds=5.0)["per_s"]
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["capacity"]


async def _closed_loop(address: str, requests: list[Any], streams: int, seconds: float) -> dict[str, Any]:
    """``streams`` streams, each one request at a time for ``seconds``; a stream the server refuses
    (RESOURCE_EXHAUSTED: admission) is counted and reopened after 50 ms, as a device backs off."""
    import asyncio

    import grpc

    from dyno.runtime.config import channel_options
    from dyno.runtime.proto import inference_pb2_grpc as pb_grpc

    tally: dict[str, Any] = {"done": 0, "refused": 0, "latencies": []}
    stop_at = time.perf_counter() + seconds
    channels = [grpc.aio.insecure_channel(address, options=channel_options(8 << 20)) for _ in range(8)]

    async def one(k: int) -> None:
        stub, request = pb_grpc.InferenceStub(channels[k % len(channels)]), requests[k % len(requests)]
        while time.perf_counter() < stop_at:
            call = stub.Infer(timeout=seconds + 60)
            try:
                while time.perf_counter() < stop_at:
                    start = time.perf_counter()
                    await call.write(request)
                    await call.read()
                    tally["latencies"].append(time.perf_counter() - start)
                    tally["done"] += 1
                await call.done_writing()
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                tally["refused"] += 1
                await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(one(k) for k in range(streams)))
    finally:
        for channel in channels:
            await channel.close()
    return tally


def capacity(plan: Any, address: str, *, seconds: float, streams: int = 64) -> dict[str, Any]:
    """The cloud-bound case: ``streams`` raw closed-loop streams of pre-encoded fp32 inputs (cut 0, all of
    the model in the cloud; one asyncio client process, no device work) for ``seconds``: answered/s, p50,
    and the streams the server's admission refused (each reopened after a backoff)."""
    import asyncio
    import statistics

    from dyno.bench.runtime import _request
    from dyno.bench.session import labelled

    xs, _ = labelled(plan.model, None, 16)
    requests = [_request(plan, 0, x.numpy(), k) for k, x in enumerate(xs)]
    asyncio.run(_closed_loop(address, requests, streams, 1.0))                  # warm
    tally = asyncio.run(_closed_loop(address, requests, streams, seconds))
    latencies = tally["latencies"]
    return {"per_s": tally["done"] / seconds, "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
            "refused": tally["refused"], "streams": streams, "seconds": seconds, "cut": 0}
