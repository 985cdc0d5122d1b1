"""``dyno bench-runtime``: what the runtime costs, measured side by side in one run.

1. **Overhead per request** on loopback: one stream, one request at a time, fp32 frames of 1 KB,
   10 KB, 100 KB and 1 MB (encoded beforehand: device-side encoding is not the runtime's cost).
   ``overhead = median(round trip through the server) - median(tail called in-process)``; the round
   trip includes gRPC, protobuf framing, validation, decoding and the batcher. The tail is
   ``relu -> global mean -> linear`` on a (C, H, W) activation: cheap, so the runtime dominates.
2. **Throughput** of fmnist-resnet tails (random weights: speed does not depend on them) under
   ``streams`` concurrent streams, each with one request outstanding, with dynamic batching
   (``max_batch``/``max_wait_ms``) against batch size 1; alternating rounds of ``seconds`` each, at
   several cuts (the input, a middle and a late one by default). Besides inferences/s it reports the
   server's CPU time per inference (from /proc), which other load on the machine disturbs less.

Servers run in child processes (one per setting, 1 torch thread each) so the load generator does not
share their interpreter; this process is the client.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.request
from typing import Any

import numpy as np
import torch
from torch import nn

from dyno.runtime import BatchConfig, ServerConfig, ServerProcess
from dyno.runtime.config import channel_options
from dyno.runtime.metrics import parse_text

__all__ = ["PayloadNet", "run_bench", "PAYLOADS"]

PAYLOADS = {"1KB": (16, 4, 4), "10KB": (40, 8, 8), "100KB": (100, 16, 16), "1MB": (256, 32, 32)}


class PayloadNet(nn.Module):
    """x -> relu (the cut, fp32 (C, H, W)) -> global mean -> linear to 10 classes."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(x).mean((2, 3)))


def _build(spec: tuple) -> tuple[nn.Module, Any]:
    from dyno.offline import nominal_plan as tiny_plan

    torch.manual_seed(0)
    if spec[0] == "payload":
        shape = PAYLOADS[spec[1]]
        payload = PayloadNet(shape[0]).eval()
        return payload, tiny_plan(payload, name=f"payload-{spec[1]}", input_shape=shape,
                                  options=(("fp32", None),))
    from dyno import zoo

    model = zoo.load_model(spec[1], weights="random")
    entry = zoo.get_model(spec[1])
    return model, tiny_plan(model, name=spec[1], input_shape=tuple(entry.input_shape),
                            options=(("fp32", None),))


def _plan_and_model(spec: tuple) -> tuple[Any, nn.Module]:
    """The server child's builder (``ServerProcess``): the plan and model of ``spec``."""
    model, plan = _build(spec)
    return plan, model


def _server(spec: tuple, **batching: Any) -> ServerProcess:
    """A server child process for ``spec`` with the given batching (1 torch thread)."""
    config = ServerConfig(batching=BatchConfig(**batching), metrics_port=0, max_in_flight_per_client=1024,
                          max_streams_per_client=256)
    return ServerProcess(_plan_and_model, spec, config=config, threads=1)


def _metrics(server: ServerProcess) -> dict:
    with urllib.request.urlopen(str(server.metrics_url), timeout=5) as response:
        return parse_text(response.read().decode())


def _request(plan: Any, cut: int, x: np.ndarray, rid: int = 0) -> Any:
    from dyno import codec
    from dyno.runtime.proto import inference_pb2 as pb

    encoded = codec.encode(x, mode="fp32")
    return pb.Request(request_id=rid, model=plan.model, plan_hash=plan.hash, cut=cut,
                      meta=encoded.meta.to_bytes(), payload=bytes(encoded.payload), top_k=5)


async def _round_trips(address: str, request: Any, count: int) -> list[float]:
    import grpc

    from dyno.runtime.proto import inference_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address, options=channel_options(8 * 1024 * 1024)) as channel:
        stub = pb_grpc.InferenceStub(channel)
        call = stub.Infer(timeout=600)
        times = []
        for i in range(count + 20):
            request.request_id = i
            start = time.perf_counter()
            await call.write(request)
            reply = await call.read()
            elapsed = time.perf_counter() - start
            if reply.request_id != i:
                raise RuntimeError(f"reply {reply.request_id} for request {i}")
            if i >= 20:  # warm-up
                times.append(elapsed)
        await call.done_writing()
        return times


def _overhead(requests: int, verbose: bool) -> dict:
    from dyno import codec
    from dyno.codec import Expected
    from dyno.runtime.splits import Splits

    out = {}
    for label, shape in PAYLOADS.items():
        spec = ("payload", label)
        model, plan = _build(spec)
        cut = next(c.id for c in plan.cuts if c.name == "relu")
        x = np.abs(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        tail = Splits(model, plan).tail(cut)
        frame = codec.encode(x, mode="fp32")
        meta, payload = frame.meta.to_bytes(), bytes(frame.payload)
        direct, decode = [], []
        batch = torch.from_numpy(x[None])
        with torch.inference_mode():
            for i in range(requests + 20):
                start = time.perf_counter()
                tail(batch)
                middle = time.perf_counter()
                codec.decode(codec.Encoded.from_parts(meta, payload), Expected(shape=shape))
                end = time.perf_counter()
                if i >= 20:
                    direct.append(middle - start)
                    decode.append(end - middle)
        with _server(spec, max_batch=32, max_wait_ms=2.0) as child:
            trips = asyncio.run(_round_trips(child.address, _request(plan, cut, x), requests))
        row = {
            "payload_bytes": len(meta) + len(payload),
            "direct_tail_ms": statistics.median(direct) * 1000,
            "decode_ms": statistics.median(decode) * 1000,
            "round_trip_ms": statistics.median(trips) * 1000,
            "round_trip_p90_ms": float(np.percentile(trips, 90)) * 1000,
        }
        row["overhead_ms"] = row["round_trip_ms"] - row["direct_tail_ms"]
        out[label] = row
        if verbose:
            print(f"  {label:>6}: round trip {row['round_trip_ms']:.3f} ms (p90 {row['round_trip_p90_ms']:.3f}),"
                  f" tail in-process {row['direct_tail_ms']:.3f} ms, decode {row['decode_ms']:.3f} ms"
                  f" -> overhead {row['overhead_ms']:.3f} ms", flush=True)
    return out


async def _load(address: str, requests: list[Any], streams: int, seconds: float) -> tuple[int, list[float]]:
    import grpc

    from dyno.runtime.proto import inference_pb2_grpc as pb_grpc

    done = 0
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    # a few channels, like a few devices' connections; many streams on each
    channels = [grpc.aio.insecure_channel(address, options=channel_options(8 * 1024 * 1024) +
                                          [("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)]

    async def one(k: int) -> None:
        nonlocal done
        stub = pb_grpc.InferenceStub(channels[k % len(channels)])
        call = stub.Infer(timeout=seconds + 60)
        request = requests[k % len(requests)]
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await call.write(request)
            await call.read()
            latencies.append(time.perf_counter() - start)
            done += 1
        await call.done_writing()
        await call.read()

    try:
        await asyncio.gather(*(one(k) for k in range(streams)))
    finally:
        for channel in channels:
            await channel.close()
    return done, latencies


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _throughput(streams: int, seconds: float, rounds: int, cuts: list[int] | None, max_batch: int,
                max_wait_ms: float, verbose: bool) -> dict:
    from dyno.runtime.splits import Splits

    spec = ("model", "fmnist-resnet")
    model, plan = _build(spec)
    if cuts is None:  # the input, a middle cut and a late one
        cuts = [0, len(plan.cuts) // 2 - 1, 2 * len(plan.cuts) // 3]
    splits = Splits(model, plan)
    rng = np.random.default_rng(0)
    inputs = torch.from_numpy(rng.standard_normal((16, *plan.input_shape)).astype(np.float32))
    settings: dict[str, dict[str, Any]] = {"batched": {"max_batch": max_batch, "max_wait_ms": max_wait_ms},
                                           "batch1": {"max_batch": 1}}
    children = {name: _server(spec, **kw) for name, kw in settings.items()}
    out: dict[str, Any] = {"model": "fmnist-resnet", "streams": streams, "seconds": seconds,
                           "rounds": rounds, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                           "cuts": {}}
    try:
        for cut in cuts:
            with torch.inference_mode():
                activations = splits.head(cut)(inputs).numpy()
            requests = [_request(plan, cut, a, k) for k, a in enumerate(activations)]
            for child in children.values():  # warm-up
                asyncio.run(_load(child.address, requests, streams, 1.0))
            rates: dict[str, list[float]] = {name: [] for name in settings}
            p50: dict[str, list[float]] = {name: [] for name in settings}
            cpu: dict[str, list[float]] = {name: [] for name in settings}
            for r in range(rounds):
                for name, child in children.items():
                    before = _cpu_seconds(child.pid)
                    done, latencies = asyncio.run(_load(child.address, requests, streams, seconds))
                    cpu[name].append((_cpu_seconds(child.pid) - before) / max(done, 1) * 1e6)
                    rates[name].append(done / seconds)
                    p50[name].append(statistics.median(latencies) * 1000)
                    if verbose:
                        print(f"  cut {cut:>2} round {r + 1} {name:>7}: {done / seconds:8.1f} inferences/s, "
                              f"p50 {p50[name][-1]:6.1f} ms, server CPU {cpu[name][-1]:6.0f} us/inference",
                              flush=True)
            row: dict[str, Any] = {"shape": list(plan.cuts[cut].shape), "name": plan.cuts[cut].name}
            for name, child in children.items():
                metrics = _metrics(child)
                total = metrics.get(("dyno_batch_size_sum", (("cut", str(cut)),)), 0.0)
                count = metrics.get(("dyno_batch_size_count", (("cut", str(cut)),)), 0.0)
                row[name] = {"throughput": statistics.mean(rates[name]), "per_round": rates[name],
                             "p50_ms": statistics.mean(p50[name]),
                             "server_cpu_us": statistics.mean(cpu[name]),
                             "mean_batch": total / count if count else None}
            row["speedup"] = row["batched"]["throughput"] / row["batch1"]["throughput"]
            row["cpu_ratio"] = row["batch1"]["server_cpu_us"] / row["batched"]["server_cpu_us"]
            out["cuts"][str(cut)] = row
            if verbose:
                print(f"  cut {cut:>2} ({row['name']}, {'x'.join(map(str, row['shape']))}): dynamic batching "
                      f"(mean batch {row['batched']['mean_batch']:.1f}) vs batch size 1: "
                      f"{row['speedup']:.2f}x throughput, {row['cpu_ratio']:.2f}x less server CPU "
                      "per inference", flush=True)
    finally:
        for child in children.values():
            child.stop(grace=1.0)
    return out


def run_bench(*, what: str = "all", requests: int = 300, streams: int = 64, seconds: float = 5.0,
              rounds: int = 2, cuts: list[int] | None = None, max_batch: int = 32, max_wait_ms: float = 2.0,
              verbose: bool = True) -> dict:
    """Run the benchmarks; returns ``{"overhead": {...}, "throughput": {...}}`` (see module docstring)."""
    torch.set_num_threads(1)
    report: dict[str, Any] = {"torch_threads": 1}
    if what in ("all", "overhead"):
        if verbose:
            print(f"overhead per request, loopback, {requests} sequential requests per size:", flush=True)
        report["overhead"] = _overhead(requests, verbose)
    if what in ("all", "throughput"):
        if verbose:
            print(f"throughput, fmnist-resnet, {streams} concurrent streams, {rounds}x{seconds:g} s each:",
                  flush=True)
        report["throughput"] = _throughput(streams, seconds, rounds, cuts, max_batch, max_wait_ms, verbose)
    return report
