"""The cloud server: the tails of one model for every cut of its plan, behind gRPC (``dyno.v1``).

Building a server is separate from serving it (as in the gRPC examples)::

    server, port = create_server(plan, model, address="127.0.0.1:0")   # inside a running loop
    await server.start()
    ...
    await server.stop(grace=5)    # drains: in-flight requests are answered, new ones refused

or, from synchronous code (tests, the demo, benchmarks), on a loop in a background thread::

    with ServerThread(plan, model) as running:
        running.address                         # "127.0.0.1:PORT"

What every request goes through, in order, before any compute:

1. the bearer token, once per call (``UNAUTHENTICATED``); the stream count of this client and of the
   whole server (``RESOURCE_EXHAUSTED``);
2. model name and plan hash equal the server's, the cut exists and is served
   (``FAILED_PRECONDITION``); the client's requests in flight stay under the limit
   (``RESOURCE_EXHAUSTED``); gRPC itself refuses messages over ``max_message_bytes``
   (``RESOURCE_EXHAUSTED``);
3. the frame is decoded by ``dyno.codec`` against the cut's expected shape, off the event loop (in
   the compute worker, for the whole batch, before the tail runs); any bad frame is a ``FrameError``
   -> ``INVALID_ARGUMENT`` for its stream, and the rest of its batch runs without it.

Errors end the offending stream only; every other stream keeps being served. A "client" for the
per-client limits is one connection (its peer address), or one bearer token when tokens are in use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from torch import nn

from dyno.errors import ConfigError, FrameError
from dyno.plan import CutPlan, Plan
from dyno.runtime.batching import BatchConfig, Batcher
from dyno.runtime.metrics import BATCH_BUCKETS, MetricsEndpoint, Registry
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc
from dyno.runtime.splits import Splits, warm_codecs

__all__ = ["TLSConfig", "ServerConfig", "Server", "create_server", "ServerThread", "serve",
           "SERVICE_NAME"]

log = logging.getLogger("dyno.server")
SERVICE_NAME = "dyno.v1.Inference"
DEFAULT_TOP_K = 5
MAX_TOP_K = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """Server TLS: certificate chain and key (PEM files); with ``client_ca`` clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        try:
            chain, key = Path(self.cert).read_bytes(), Path(self.key).read_bytes()
            ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        except OSError as error:
            raise ConfigError(f"cannot read TLS file: {error}") from error
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca,
                                           require_client_auth=ca is not None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Limits, batching and security of one server. Every field has a safe default."""

    batching: BatchConfig = BatchConfig()
    max_message_bytes: int = 8 * 1024 * 1024
    max_streams: int = 256                  # concurrent calls, whole server
    max_streams_per_client: int = 16
    max_in_flight_per_client: int = 64      # requests accepted and not yet answered, per client
    token: str | None = None                # bearer token checked on every call
    tls: TLSConfig | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 0            # None: no metrics endpoint; 0: any free port
    torch_threads: int | None = None        # torch intra-op threads for the tails (None: leave)

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_streams_per_client",
                     "max_in_flight_per_client"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"ServerConfig.{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.max_message_bytes, int) and 1024 <= self.max_message_bytes <= 2**31 - 1):
            raise ConfigError("ServerConfig.max_message_bytes must be in 1 KiB .. 2 GiB")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ConfigError("a bearer token must be non-empty and contain no whitespace")


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """gRPC options both ends use: message size limits and keepalive."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class _Refusal(Exception):
    """Ends one stream with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


@dataclasses.dataclass
class _ClientState:
    streams: int = 0
    in_flight: int = 0


class _Stream:
    """Book-keeping of one Infer call."""

    def __init__(self, client: _ClientState):
        self.client = client
        self.events: asyncio.Queue = asyncio.Queue()
        self.pending: set[asyncio.Task] = set()
        self.reader: asyncio.Task | None = None


class _Metrics:
    def __init__(self) -> None:
        self.registry = r = Registry()
        self.requests = r.counter("dyno_requests_total", "Requests answered or refused, by cut and status",
                                  ("cut", "code"))
        self.bytes = r.counter("dyno_request_bytes_total", "Frame bytes received (meta + payload), by cut",
                               ("cut",))
        self.batch = r.histogram("dyno_batch_size", "Requests per tail run, by cut", ("cut",), BATCH_BUCKETS)
        self.latency = r.histogram("dyno_request_latency_seconds",
                                   "Server time of a request, arrival to reply, by cut", ("cut",))
        self.queue = r.histogram("dyno_queue_seconds", "Arrival to start of the batch's compute, by cut",
                                 ("cut",))
        self.compute = r.histogram("dyno_compute_seconds", "Tail compute time per batch, by cut", ("cut",))
        self.streams = r.gauge("dyno_streams", "Open Infer streams")
        self.in_flight = r.gauge("dyno_in_flight", "Requests accepted and not yet answered")
        self.load = r.gauge("dyno_load", "Share of the last second the compute workers were busy")


class Server:
    """A dyno cloud server; made by :func:`create_server`. ``start``, ``stop`` and
    ``wait_for_termination`` are coroutines on the loop the server was created in."""

    def __init__(self, plan: Plan, model: nn.Module, config: ServerConfig, *, splits: Splits | None = None):
        self.plan, self.config = plan, config
        self.plan_hash = plan.hash  # computed once: hashing a plan serialises it
        self.splits = splits or Splits(model, plan)
        self.served = {c.id for c in plan.cuts[:-1] if self.splits.batchable(c.id)}
        self.metrics = _Metrics()
        self._compute_pool = concurrent.futures.ThreadPoolExecutor(
            config.batching.workers, thread_name_prefix="dyno-compute")
        self.batcher: Batcher | None = None
        self._clients: dict[str, _ClientState] = {}
        self._streams: set[_Stream] = set()
        self._draining = False
        self.health = HealthServicer()
        self._grpc = grpc.aio.server(
            options=channel_options(config.max_message_bytes) + [("grpc.so_reuseport", 1)],
            maximum_concurrent_rpcs=config.max_streams)
        pb_grpc.add_InferenceServicer_to_server(_Service(self), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        self._metrics_endpoint = (None if config.metrics_port is None else
                                  MetricsEndpoint(self.metrics.registry, config.metrics_host,
                                                  config.metrics_port))
        self.port = 0
        self.metrics_port: int | None = None
        self._expected: dict[int, Any] = {}

    # ------------------------------------------------------------------------------ lifecycle

    def bind(self, address: str) -> int:
        try:
            if self.config.tls is not None:
                self.port = self._grpc.add_secure_port(address, self.config.tls.credentials())
            else:
                self.port = self._grpc.add_insecure_port(address)
        except RuntimeError as error:
            raise ConfigError(f"cannot listen on {address}: {error}") from error
        if not self.port:
            raise ConfigError(f"cannot listen on {address} (in use, or not a local address?)")
        return self.port

    async def start(self, *, warm: bool = True) -> None:
        """Build the tails (``warm``), start the batcher, the metrics endpoint and gRPC."""
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        if warm:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._compute_pool, self.splits.warm, sorted(self.served))
            await loop.run_in_executor(self._compute_pool, warm_codecs, self.plan)
        self.batcher = Batcher(self._run_batch, self._compute_pool, self.config.batching, self._on_batch)
        self.batcher.start()
        if self._metrics_endpoint is not None:
            self.metrics_port = await self._metrics_endpoint.start()
        await self._grpc.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s (plan %s) on port %s", self.plan.model, self.plan_hash[:12], self.port)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Graceful stop: refuse new requests, answer the accepted ones, close every stream with
        UNAVAILABLE, then stop gRPC. ``grace=None`` or 0 stops at once (in-flight work is dropped)."""
        self._draining = True
        await self.health.enter_graceful_shutdown()
        if grace:
            for stream in list(self._streams):
                if stream.reader is not None:
                    stream.reader.cancel()  # no new requests; the handler writes what is pending
            deadline = time.monotonic() + grace
            while self._streams and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await self._grpc.stop(grace if grace else None)
        if self.batcher is not None:
            await self.batcher.close()
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.stop()
        self._compute_pool.shutdown(wait=False, cancel_futures=True)

    async def wait_for_termination(self) -> None:
        await self._grpc.wait_for_termination()

    # ------------------------------------------------------------------------------ checks

    def _authorize(self, context: grpc.aio.ServicerContext) -> str | None:
        token = self.config.token
        if token is None:
            return None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                if hmac.compare_digest(value[7:].encode(), token.encode()):
                    return value[7:]
        raise _Refusal(grpc.StatusCode.UNAUTHENTICATED,
                       "missing or wrong bearer token; send metadata 'authorization: Bearer TOKEN'")

    def _check(self, request: pb.Request) -> CutPlan:
        if request.model != self.plan.model or request.plan_hash != self.plan_hash:
            raise _Refusal(grpc.StatusCode.FAILED_PRECONDITION,
                           f"request {request.request_id} is for model {request.model!r} plan "
                           f"{request.plan_hash[:12]!r}; this server serves {self.plan.model!r} plan "
                           f"{self.plan_hash[:12]!r} (see Describe)")
        if request.cut not in self.served:
            known = len(self.plan.cuts)
            why = ("it does not exist" if request.cut >= known else
                   "it is the device-only output" if request.cut == known - 1 else "it is not batchable")
            raise _Refusal(grpc.StatusCode.FAILED_PRECONDITION,
                           f"request {request.request_id}: cut {request.cut} is not served ({why})")
        if request.top_k > MAX_TOP_K:
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                           f"request {request.request_id}: top_k {request.top_k} > {MAX_TOP_K}")
        return self.plan.cuts[request.cut]

    def _decode(self, cut: CutPlan, meta: bytes, payload: bytes) -> np.ndarray:
        """Validate and decode one frame (runs in the decode pool). FrameError on anything wrong."""
        from dyno import codec

        expected = self._expected.get(cut.id)
        if expected is None:
            expected = self._expected[cut.id] = codec.Expected(shape=tuple(cut.shape))
        try:
            array = codec.decode(codec.Encoded.from_parts(meta, payload), expected)
        except FrameError:
            raise
        except Exception as error:  # the codec promises FrameError; never let a frame crash us
            raise FrameError(f"undecodable frame: {type(error).__name__}: {error}") from error
        array = np.asarray(array, dtype=np.float32)
        if array.shape != tuple(cut.shape):
            raise FrameError(f"frame decodes to shape {array.shape}, cut {cut.id} expects {tuple(cut.shape)}")
        return array

    # ------------------------------------------------------------------------------ compute

    def _run_batch(self, cut_id: int, requests: list[pb.Request]) -> list[Any]:
        """Decode every frame (a bad one fails alone), stack, run the tail, take top-k per row.
        Runs in the compute pool; returns per request (classes, scores, logits or None) or its error."""
        cut = self.plan.cuts[cut_id]
        results: list[Any] = [None] * len(requests)
        arrays, rows = [], []
        for i, request in enumerate(requests):
            try:
                arrays.append(self._decode(cut, request.meta, request.payload))
                rows.append(i)
            except FrameError as error:
                results[i] = error
        if not arrays:
            return results
        stacked = np.stack(arrays)  # a copy: decoded frames may be read-only views of the message
        with torch.inference_mode():
            logits = self.splits.tail(cut_id)(torch.from_numpy(stacked))
            logits = logits.float().reshape(logits.shape[0], -1)
            probs = torch.softmax(logits.double(), dim=1)
            k = min(max((requests[i].top_k or DEFAULT_TOP_K) for i in rows), probs.shape[1])
            scores, classes = torch.topk(probs, k, dim=1, sorted=True)
        logits_np, scores_np, classes_np = logits.numpy(), scores.numpy(), classes.numpy()
        for j, i in enumerate(rows):
            kk = min(requests[i].top_k or DEFAULT_TOP_K, k)
            results[i] = (classes_np[j, :kk].tolist(), scores_np[j, :kk].tolist(),
                          logits_np[j].tolist() if requests[i].want_logits else None)
        return results

    def _on_batch(self, cut_id: int, size: int, queue_s: float, compute_s: float) -> None:
        self.metrics.batch.observe(size, cut=cut_id)
        self.metrics.compute.observe(compute_s, cut=cut_id)

    async def _serve_one(self, request: pb.Request, cut: CutPlan, arrived: float) -> pb.Reply:
        assert self.batcher is not None
        outcome = await self.batcher.submit(cut.id, request, arrived)
        classes, scores, logits = outcome.value
        load = self.batcher.meter.load()
        self.metrics.load.set(load)
        self.metrics.queue.observe(outcome.queue_s, cut=cut.id)
        return pb.Reply(request_id=request.request_id, classes=classes, scores=scores, logits=logits,
                        queue_ms=outcome.queue_s * 1000, compute_ms=outcome.compute_s * 1000,
                        batch=outcome.batch, load=load, queued=self.batcher.queued)

    # ------------------------------------------------------------------------------ the stream

    async def infer(self, requests: AsyncIterator[pb.Request], context: grpc.aio.ServicerContext) -> None:
        try:
            key = self._authorize(context) or context.peer()
        except _Refusal as refusal:
            self.metrics.requests.inc(cut="-", code=refusal.code.name)
            await context.abort(refusal.code, refusal.details)
            return
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry later")
        client = self._clients.setdefault(key, _ClientState())
        if client.streams >= self.config.max_streams_per_client:
            self.metrics.requests.inc(cut="-", code="RESOURCE_EXHAUSTED")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"this client already has {client.streams} open streams (limit "
                                f"{self.config.max_streams_per_client}); reuse one")
        client.streams += 1
        stream = _Stream(client)
        self._streams.add(stream)
        self.metrics.streams.inc()
        stream.reader = asyncio.create_task(self._read(requests, stream))
        refusal: _Refusal | None = None
        try:
            reading = True
            while reading or stream.pending or not stream.events.empty():
                event = await stream.events.get()
                kind = event[0]
                if kind == "eof":
                    reading = False
                elif kind == "reply":
                    await context.write(event[1])
                elif kind == "refuse":
                    refusal = event[1]
                    break
            if refusal is None and self._draining:
                refusal = _Refusal(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry later")
        finally:
            stream.reader.cancel()
            for task in stream.pending:
                task.cancel()
            client.in_flight -= len(stream.pending)
            self.metrics.in_flight.dec(len(stream.pending))
            stream.pending.clear()
            client.streams -= 1
            if client.streams == 0 and client.in_flight == 0:
                self._clients.pop(key, None)
            self._streams.discard(stream)
            self.metrics.streams.dec()
        if refusal is not None:
            await context.abort(refusal.code, refusal.details)

    async def _read(self, requests: AsyncIterator[pb.Request], stream: _Stream) -> None:
        try:
            async for request in requests:
                arrived = time.perf_counter()
                try:
                    cut = self._check(request)
                    if stream.client.in_flight >= self.config.max_in_flight_per_client:
                        raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"request {request.request_id}: this client has "
                                       f"{stream.client.in_flight} requests in flight (limit "
                                       f"{self.config.max_in_flight_per_client}); wait for replies")
                except _Refusal as refusal:
                    label = request.cut if request.cut < len(self.plan.cuts) else "invalid"  # bounded labels
                    self.metrics.requests.inc(cut=label, code=refusal.code.name)
                    stream.events.put_nowait(("refuse", refusal))
                    return
                self.metrics.bytes.inc(len(request.meta) + len(request.payload), cut=cut.id)
                stream.client.in_flight += 1
                self.metrics.in_flight.inc()
                task = asyncio.create_task(self._serve_one(request, cut, arrived))
                stream.pending.add(task)
                task.add_done_callback(lambda t, r=request, s=stream, a=arrived: self._done(t, r, s, a))
        except asyncio.CancelledError:
            pass  # draining, or the stream ended
        except grpc.RpcError:
            pass  # the client went away; the handler's finally cleans up
        except Exception as error:  # e.g. a message gRPC could not parse
            log.warning("reading a stream failed: %s", error)
        stream.events.put_nowait(("eof",))

    def _done(self, task: asyncio.Task, request: pb.Request, stream: _Stream, arrived: float) -> None:
        if task not in stream.pending:
            return  # the stream already ended and accounted for it
        stream.pending.discard(task)
        stream.client.in_flight -= 1
        self.metrics.in_flight.dec()
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self.metrics.requests.inc(cut=request.cut, code="OK")
            self.metrics.latency.observe(time.perf_counter() - arrived, cut=request.cut)
            stream.events.put_nowait(("reply", task.result()))
        elif isinstance(error, FrameError):
            self.metrics.requests.inc(cut=request.cut, code="INVALID_ARGUMENT")
            stream.events.put_nowait(("refuse", _Refusal(
                grpc.StatusCode.INVALID_ARGUMENT, f"request {request.request_id}: bad frame: {error}")))
        else:
            log.error("request %s at cut %s failed: %r", request.request_id, request.cut, error)
            self.metrics.requests.inc(cut=request.cut, code="INTERNAL")
            stream.events.put_nowait(("refuse", _Refusal(
                grpc.StatusCode.INTERNAL, f"request {request.request_id}: the tail failed: "
                                          f"{type(error).__name__}: {error}")))

    # ------------------------------------------------------------------------------ unary calls

    def health_reply(self) -> pb.HealthReply:
        status = pb.HealthReply.DRAINING if self._draining else pb.HealthReply.SERVING
        load = self.batcher.meter.load() if self.batcher else 0.0
        return pb.HealthReply(status=status, load=load,
                              in_flight=sum(c.in_flight for c in self._clients.values()))

    def describe_reply(self) -> pb.DescribeReply:
        from dyno import __version__

        cuts = [pb.CutInfo(id=c.id, name=c.name, shape=list(c.shape), served=c.id in self.served)
                for c in self.plan.cuts]
        b = self.config.batching
        return pb.DescribeReply(model=self.plan.model, plan_hash=self.plan_hash, cuts=cuts,
                                max_batch=b.max_batch, max_wait_ms=b.max_wait_ms,
                                max_message_bytes=self.config.max_message_bytes,
                                max_in_flight_per_client=self.config.max_in_flight_per_client,
                                version=__version__)


class _Service(pb_grpc.InferenceServicer):
    def __init__(self, server: Server):
        self.server = server

    async def Infer(self, request_iterator, context):  # noqa: N802 (gRPC names)
        await self.server.infer(request_iterator, context)

    async def Health(self, request, context):  # noqa: N802
        try:
            self.server._authorize(context)
        except _Refusal as refusal:
            await context.abort(refusal.code, refusal.details)
        return self.server.health_reply()

    async def Describe(self, request, context):  # noqa: N802
        try:
            self.server._authorize(context)
        except _Refusal as refusal:
            await context.abort(refusal.code, refusal.details)
        return self.server.describe_reply()


def create_server(plan: Plan, model: nn.Module, config: ServerConfig | None = None, *,
                  address: str = "127.0.0.1:0", splits: Splits | None = None) -> tuple[Server, int]:
    """Build a server for ``plan`` and ``model`` bound to ``address`` (port 0: any free port).

    Call it in the thread of the event loop that will run the server; then ``await server.start()``.
    The model must be the one the plan was made for (the plan's cuts are matched to its graph).
    """
    server = Server(plan, model, config or ServerConfig(), splits=splits)
    port = server.bind(address)
    return server, port


class ServerThread:
    """A server on its own event loop in a background thread, for synchronous callers.

        with ServerThread(plan, model, config) as running:
            client = Client(plan, model, server=running.address)
        running.stop(grace=0)      # or kill(): stop at once, dropping in-flight work
    """

    def __init__(self, plan: Plan, model: nn.Module, config: ServerConfig | None = None, *,
                 address: str = "127.0.0.1:0", splits: Splits | None = None, warm: bool = True):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dyno-server-loop", daemon=True)
        self._thread.start()

        async def make() -> Server:
            server, _ = create_server(plan, model, config, address=address, splits=splits)
            await server.start(warm=warm)
            return server

        try:
            self.server = self.call(make())
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            raise
        host = address.rsplit(":", 1)[0]
        self.address = f"{host}:{self.server.port}"
        self.port = self.server.port
        self._stopped = False

    def call(self, coroutine: Any, timeout: float | None = 60) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def metrics_url(self) -> str | None:
        port = self.server.metrics_port
        return None if port is None else f"http://{self.server.config.metrics_host}:{port}/metrics"

    def stop(self, grace: float | None = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.server.stop(grace), timeout=(grace or 0) + 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def kill(self) -> None:
        """Stop at once: in-flight requests are dropped, as if the process had died."""
        self.stop(grace=None)

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)


def serve(plan: Plan, model: nn.Module, config: ServerConfig | None = None, *,
          address: str = "127.0.0.1:50051", ready_file: str | Path | None = None,
          grace: float = 5.0) -> None:
    """Run a server until SIGINT/SIGTERM, then stop gracefully (the ``dyno serve`` body)."""
    import json
    import os
    import signal

    async def main() -> None:
        server, port = create_server(plan, model, config, address=address)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await server.start()
            host = address.rsplit(":", 1)[0]
            info = {"address": f"{host}:{port}", "port": port, "metrics_port": server.metrics_port,
                    "pid": os.getpid(),
                    "model": plan.model, "plan_hash": plan.hash, "served_cuts": sorted(server.served)}
            print(f"dyno serve: {plan.model} (plan {plan.hash[:12]}) on {host}:{port}"
                  + (f", metrics on http://{server.config.metrics_host}:{server.metrics_port}/metrics"
                     if server.metrics_port else ""), flush=True)
            if ready_file is not None:
                tmp = Path(str(ready_file) + ".tmp")
                tmp.write_text(json.dumps(info))
                tmp.replace(ready_file)
            await stop.wait()
        finally:
            await server.stop(grace)

    asyncio.run(main())

