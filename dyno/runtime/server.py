"""The cloud server: the tails of one model for every cut of its plan, behind gRPC (``dyno.v1``).

Building a server is separate from serving it (as in the gRPC examples)::

    server, port = create_server(plan, model, address="127.0.0.1:0")   # inside a running loop
    await server.start()
    ...
    await server.stop(grace=5)    # drains: in-flight requests are answered, new ones refused

To run one from synchronous code - on a loop in a background thread (``ServerThread``), in a child
process (``ServerProcess``), or until SIGTERM (``serve``, the ``dyno serve`` body) - see
``dyno.runtime.harness``; its settings are ``dyno.runtime.config.ServerConfig``.

What every request goes through, in order, before any compute:

1. the bearer token, once per call (``UNAUTHENTICATED``); the stream count of this client and of the
   whole server (``RESOURCE_EXHAUSTED``);
2. model name and plan hash equal the server's, the cut exists and is served
   (``FAILED_PRECONDITION``); the client's requests in flight stay under the limit
   (``RESOURCE_EXHAUSTED``); gRPC itself refuses messages over ``max_message_bytes``
   (``RESOURCE_EXHAUSTED``);
3. the frame is decoded by ``dyno.codec`` against the cut's expected shape, off the event loop (in
   the compute worker, for the whole batch, before the tail runs: ``dyno.runtime.tails``); any bad
   frame is a ``FrameError`` -> ``INVALID_ARGUMENT`` for its stream, and the rest of its batch runs
   without it.

Errors end the offending stream only; every other stream keeps being served. A "client" for the
per-client limits is one connection (its peer address), or one bearer token when tokens are in use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hmac
import logging
import time
from typing import AsyncIterator

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from torch import nn

from dyno.errors import ConfigError, FrameError
from dyno.plan import CutPlan, Plan
from dyno.runtime.batching import Batcher
from dyno.runtime.config import MAX_TOP_K, ServerConfig, TLSConfig, channel_options
from dyno.runtime.metrics import MetricsEndpoint, ServerMetrics
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc
from dyno.runtime.splits import Splits, warm_codecs
from dyno.runtime.tails import Tails

# ServerConfig, TLSConfig and channel_options live in dyno.runtime.config; re-exported for old imports.
__all__ = ["Server", "create_server", "SERVICE_NAME", "ServerConfig", "TLSConfig", "channel_options"]

log = logging.getLogger("dyno.server")
SERVICE_NAME = "dyno.v1.Inference"
_SHUTTING_DOWN = "the server is shutting down; retry later"


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


class Server:
    """A dyno cloud server; made by :func:`create_server`. ``start``, ``stop`` and
    ``wait_for_termination`` are coroutines on the loop the server was created in."""

    def __init__(self, plan: Plan, model: nn.Module, config: ServerConfig, *, splits: Splits | None = None):
        self.plan, self.config = plan, config
        self.plan_hash = plan.hash  # computed once: hashing a plan serialises it
        self.splits = splits or Splits(model, plan)
        self.served = {c.id for c in plan.cuts[:-1] if self.splits.batchable(c.id)}
        self.tails = Tails(plan, self.splits)
        self.metrics = ServerMetrics()
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
        self.batcher = Batcher(self.tails.run_batch, self._compute_pool, self.config.batching, self._on_batch)
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

    def authorize(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller's bearer token (None when the server has none); ``_Refusal`` if it is wrong."""
        token = self.config.token
        if token is None:
            return None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                if hmac.compare_digest(value[7:].encode(), token.encode()):
                    return value[7:]
        raise _Refusal(grpc.StatusCode.UNAUTHENTICATED,
                       "missing or wrong bearer token; send metadata 'authorization: Bearer TOKEN'")

    def _check(self, request: pb.Request, client: _ClientState) -> CutPlan:
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
        limit = self.config.max_in_flight_per_client
        if client.in_flight >= limit:
            raise _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"request {request.request_id}: this client has {client.in_flight} requests "
                           f"in flight (limit {limit}); wait for replies")
        return self.plan.cuts[request.cut]

    # ------------------------------------------------------------------------------ compute

    def _on_batch(self, cut_id: int, size: int, compute_s: float) -> None:
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
        """One Infer call: admit it, then write replies as they are ready until the client has stopped
        sending and every accepted request is answered, or until a request is refused."""
        admitted = await self._admit(context)
        if admitted is None:
            return
        key, client = admitted
        client.streams += 1
        stream = _Stream(client)
        self._streams.add(stream)
        self.metrics.streams.inc()
        stream.reader = asyncio.create_task(self._read(requests, stream))
        try:
            refusal = await self._pump(stream, context)
        finally:
            self._release(stream, key)
        if refusal is not None:
            await context.abort(refusal.code, refusal.details)

    async def _admit(self, context: grpc.aio.ServicerContext) -> tuple[str, _ClientState] | None:
        """The caller's key and book-keeping, or None once the call has been aborted."""
        try:
            key = self.authorize(context) or context.peer()
        except _Refusal as refused:
            self.metrics.requests.inc(cut="-", code=refused.code.name)
            await context.abort(refused.code, refused.details)
            return None
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
            return None
        client = self._clients.setdefault(key, _ClientState())
        if client.streams >= self.config.max_streams_per_client:
            self.metrics.requests.inc(cut="-", code="RESOURCE_EXHAUSTED")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"this client already has {client.streams} open streams (limit "
                                f"{self.config.max_streams_per_client}); reuse one")
            return None
        return key, client

    async def _pump(self, stream: _Stream, context: grpc.aio.ServicerContext) -> _Refusal | None:
        """Write replies until the stream is done; the refusal that ends it early, if any."""
        reading = True
        while reading or stream.pending or not stream.events.empty():
            event = await stream.events.get()
            kind = event[0]
            if kind == "eof":
                reading = False
            elif kind == "reply":
                await context.write(event[1])
            elif kind == "refuse":
                return event[1]
        return _Refusal(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN) if self._draining else None

    def _release(self, stream: _Stream, key: str) -> None:
        """The stream has ended: drop what it still holds and its share of the limits."""
        assert stream.reader is not None
        stream.reader.cancel()
        for task in stream.pending:
            task.cancel()
        client = stream.client
        client.in_flight -= len(stream.pending)
        self.metrics.in_flight.dec(len(stream.pending))
        stream.pending.clear()
        client.streams -= 1
        if client.streams == 0 and client.in_flight == 0:
            self._clients.pop(key, None)
        self._streams.discard(stream)
        self.metrics.streams.dec()

    async def _read(self, requests: AsyncIterator[pb.Request], stream: _Stream) -> None:
        try:
            async for request in requests:
                arrived = time.perf_counter()
                try:
                    cut = self._check(request, stream.client)
                except _Refusal as refused:
                    label = request.cut if request.cut < len(self.plan.cuts) else "invalid"  # bounded labels
                    self.metrics.requests.inc(cut=label, code=refused.code.name)
                    stream.events.put_nowait(("refuse", refused))
                    return
                self.metrics.bytes.inc(len(request.meta) + len(request.payload), cut=cut.id)
                stream.client.in_flight += 1
                self.metrics.in_flight.inc()
                task = asyncio.create_task(self._serve_one(request, cut, arrived))
                stream.pending.add(task)
                task.add_done_callback(functools.partial(self._done, request, stream, arrived))
        except asyncio.CancelledError:
            pass  # draining, or the stream ended
        except grpc.RpcError:
            pass  # the client went away; the handler's finally cleans up
        except Exception as error:  # e.g. a message gRPC could not parse
            log.warning("reading a stream failed: %s", error)
        stream.events.put_nowait(("eof",))

    def _done(self, request: pb.Request, stream: _Stream, arrived: float, task: asyncio.Task) -> None:
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

    async def Health(self, _request, context):  # noqa: N802
        await self._authorize(context)
        return self.server.health_reply()

    async def Describe(self, _request, context):  # noqa: N802
        await self._authorize(context)
        return self.server.describe_reply()

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        try:
            self.server.authorize(context)
        except _Refusal as refusal:
            await context.abort(refusal.code, refusal.details)


def create_server(plan: Plan, model: nn.Module, config: ServerConfig | None = None, *,
                  address: str = "127.0.0.1:0", splits: Splits | None = None) -> tuple[Server, int]:
    """Build a server for ``plan`` and ``model`` bound to ``address`` (port 0: any free port).

    Call it in the thread of the event loop that will run the server; then ``await server.start()``.
    The model must be the one the plan was made for (the plan's cuts are matched to its graph).
    """
    server = Server(plan, model, config or ServerConfig(), splits=splits)
    port = server.bind(address)
    return server, port
