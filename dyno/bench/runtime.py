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

3. **Abuse** (``what="abuse"``, issue 13): one server with its default limits (per-client limits
   raised: every stream comes from one loopback address) under ``streams`` legitimate streams of
   ``requests`` requests each (fmnist-resnet, random weights, 8-bit shuffle-lz4 frames at a middle
   cut; one request outstanding per stream; on a refusal a stream backs off as ``ClientConfig`` does
   and carries on), with ``junk`` streams sending malformed frames one after another and ``idle``
   streams that never send, all at once. Every legitimate request written is answered, refused with a
   status, or lost (neither). Reports p50/p99 of the answered against the client's timeout, refusals
   by status, what became of junk and idle streams, and the server's RSS before and after (/proc).

Servers run in child processes (one per setting, 1 torch thread each) so the load generator does not
share their interpreter; this process is the client. Throughput and overhead measure saturation, so
their servers' queue budget (``max_queue_ms``) is out of the way; the abuse benchmark keeps it.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
import time
import urllib.request
from typing import Any

import numpy as np
import torch
from torch import nn

from dyno.bench.load import abuse_load, resign
from dyno.runtime import BatchConfig, ClientConfig, ServerConfig, ServerProcess
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
    """A server child process for ``spec`` with the given batching (1 torch thread), for saturation."""
    config = ServerConfig(batching=BatchConfig(**batching), metrics_port=0, max_in_flight_per_client=1024,
                          max_streams_per_client=256, max_queue_ms=600_000)
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


# ---------------------------------------------------------------------------------------- abuse


def _huge_table(meta: bytes, payload: bytes, channels: int) -> bytes:
    """A per-channel frame's header re-declared for ``channels`` channels, with a range for each."""
    ndim = meta[8]
    head = meta[:9] + struct.pack("<I", channels) + meta[13:9 + 4 * ndim]
    return resign(head + struct.pack("<ff", 0.0, 1.0) * channels + meta[-8:], payload)


def _abuse_frames(plan: Any, splits: Any, cut: int) -> tuple[list[Any], list[tuple[str, Any]]]:
    """16 legitimate requests at ``cut`` (8-bit shuffle-lz4) and one malformed request of each kind."""
    from dyno import codec
    from dyno.runtime.proto import inference_pb2 as pb

    inputs = torch.from_numpy(np.random.default_rng(0).standard_normal((16, *plan.input_shape)).astype(np.float32))
    with torch.inference_mode():
        activations = splits.head(cut)(inputs).numpy()

    def make(meta: bytes, payload: bytes) -> Any:
        return pb.Request(model=plan.model, plan_hash=plan.hash, cut=cut, meta=meta, payload=payload, top_k=5)

    legit = [make(e.meta.to_bytes(), bytes(e.payload)) for e in
             (codec.encode(a, bits=8, mode="shuffle-lz4", nonnegative=bool((a >= 0).all())) for a in activations)]
    good, x = legit[0], activations[0]
    nan = np.full(x.size, np.nan, np.float32).tobytes()
    other = codec.encode(np.zeros(plan.cuts[0].shape, np.float32), mode="fp32")
    table = codec.encode(x, bits=8, mode="shuffle-lz4", per_channel=True)
    return legit, [
        ("garbage metadata", make(b"\x00 not a frame", good.payload)),
        ("truncated payload", make(good.meta, good.payload[:-7])),
        ("bad checksum", make(good.meta, bytes([good.payload[0] ^ 1]) + good.payload[1:])),
        ("another cut's shape", make(other.meta.to_bytes(), bytes(other.payload))),
        ("NaN payload, valid checksum", make(resign(codec.encode(x, mode="fp32").meta.to_bytes(), nan), nan)),
        ("131072 per-channel ranges", make(_huge_table(table.meta.to_bytes(), bytes(table.payload), 131_072),
                                           bytes(table.payload))),
    ]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def _abuse(streams: int, requests: int, junk: int, idle: int, cut: int | None, idle_timeout_s: float) -> dict:
    from dyno.runtime.splits import Splits

    spec = ("model", "fmnist-resnet")
    model, plan = _build(spec)
    cut = len(plan.cuts) // 2 - 1 if cut is None else cut
    legit, bad = _abuse_frames(plan, Splits(model, plan), cut)
    defaults = ServerConfig()  # per-client limits raised to the server's: every stream is from 127.0.0.1
    config = ServerConfig(max_streams_per_client=defaults.max_streams, idle_timeout_s=idle_timeout_s,
                          max_in_flight_per_client=defaults.max_queued_requests, torch_threads=1)
    with ServerProcess(_plan_and_model, spec, config=config, threads=1) as server:
        asyncio.run(abuse_load(server.address, legit, bad, 32, 8, 0, 0))  # warm-up: batches, buffers
        before = _rss_mb(server.pid)
        start = time.perf_counter()
        tally, idle_outcomes = asyncio.run(abuse_load(server.address, legit, bad, streams, requests, junk, idle))
        seconds = time.perf_counter() - start
        after = _rss_mb(server.pid)
    ms = np.asarray(tally["latencies"]) * 1000
    return {
        "legit": {"streams": streams, "requests_per_stream": requests, "sent": tally["sent"], "answered": len(ms),
                  "refused": sum(tally["refusals"].values()), "lost": tally["lost"], "late": tally["late"],
                  "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                  "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
                  "max_ms": float(ms.max()) if len(ms) else None},
        "refusals": dict(tally["refusals"]), "client_timeout_ms": ClientConfig().timeout * 1000,
        "rss_before_mb": before, "rss_after_mb": after, "rss_growth_mb": after - before,
        "junk": {"streams": junk, "outcomes": {k: dict(v) for k, v in tally["junk"].items()}},
        "idle": {"streams": idle, "outcomes": dict(idle_outcomes)},
        "cut": {"id": cut, "name": plan.cuts[cut].name, "shape": list(plan.cuts[cut].shape),
                "frame_bytes": legit[0].ByteSize()},
        "server": {k: getattr(config, k) for k in ("max_streams", "max_streams_per_client", "max_in_flight_per_client",
                                                   "max_queued_requests", "max_queued_bytes", "max_queue_ms",
                                                   "idle_timeout_s", "max_stream_lifetime_s")},
        "seconds": seconds,
    }


def run_bench(*, what: str = "all", requests: int = 300, streams: int = 64, seconds: float = 5.0,
              rounds: int = 2, cuts: list[int] | None = None, max_batch: int = 32, max_wait_ms: float = 2.0,
              junk: int = 32, idle: int = 256, idle_timeout_s: float = 10.0, verbose: bool = True) -> dict:
    """Run the benchmarks (see the module docstring): ``what`` is "all" (overhead and throughput),
    "overhead", "throughput" or "abuse" (``streams`` x ``requests`` legitimate requests at ``cuts[0]``
    (default: a middle cut) beside ``junk`` and ``idle`` streams; the server closes idle streams after
    ``idle_timeout_s``). Returns ``{"overhead": {...}, "throughput": {...}}`` or the abuse result
    ``{"legit": {...}, "refusals": {...}, "client_timeout_ms", "rss_growth_mb", ...}``."""
    torch.set_num_threads(1)
    if what == "abuse":
        if verbose:
            print(f"abuse: {streams} streams x {requests} requests beside {junk} junk and {idle} idle streams",
                  flush=True)
        return _abuse(streams, requests, junk, idle, cuts[0] if cuts else None, idle_timeout_s)
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
