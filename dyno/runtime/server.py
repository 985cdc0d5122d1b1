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

1. the bearer token, once per call (``UNAUTHENTICATED``); the stream limits of its client - one
   (token, client IP) pair - and of the whole server (``dyno.runtime.admission``: an idle stream
   makes room, else ``RESOURCE_EXHAUSTED``);
2. model name and plan hash equal the server's, the cut exists and is served
   (``FAILED_PRECONDITION``); ``top_k`` <= ``MAX_TOP_K`` (``INVALID_ARGUMENT``); the client's
   requests in flight, the server's queued requests and bytes, and the estimated wait for compute
   stay under their limits (``RESOURCE_EXHAUSTED``); gRPC itself refuses messages over
   ``max_message_bytes`` (``RESOURCE_EXHAUSTED``);
3. the frame is decoded by ``dyno.codec`` against the cut's expected shape, off the event loop (in
   the compute worker, for the whole batch, before the tail runs: ``dyno.runtime.tails``); any bad
   frame is a ``FrameError`` -> ``INVALID_ARGUMENT`` for its stream, and the rest of its batch runs
   without it.

A status ends the offending stream only, after the requests it had accepted are answered
(``dyno.runtime.streams``); every other stream keeps being served. Streams idle for
``idle_timeout_s`` or older than ``max_stream_lifetime_s`` are closed with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hmac
import inspect
import logging
import socket
import time
from typing import Any, AsyncIterator, Callable

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from torch import nn

from dyno.errors import ConfigError
from dyno.plan import CutPlan, Plan
from dyno.runtime.admission import Admission, Refusal
from dyno.runtime.batching import Batcher, CpuMeter
from dyno.runtime.config import MAX_TOP_K, ServerConfig, TLSConfig, channel_options
from dyno.runtime.metrics import MetricsEndpoint, ServerMetrics
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc
from dyno.runtime.splits import Splits, warm_codecs
from dyno.runtime.streams import StreamHandler
from dyno.runtime.tails import BatchRunner, Tails

# ServerConfig, TLSConfig and channel_options live in dyno.runtime.config; re-exported for old imports.
__all__ = ["Server", "create_server", "SERVICE_NAME", "ServerConfig", "TLSConfig", "channel_options"]

log = logging.getLogger("dyno.server")
SERVICE_NAME = "dyno.v1.Inference"


class Server:
    """A dyno cloud server; made by :func:`create_server`. ``start``, ``stop`` and
    ``wait_for_termination`` are coroutines on the loop the server was created in."""

    def __init__(self, plan: Plan, model: nn.Module, config: ServerConfig, *, splits: Splits | None = None,
                 runner: BatchRunner | None = None):
        self.plan, self.config = plan, config
        self.plan_hash = plan.hash  # computed once: hashing a plan serialises it
        self.splits = splits or Splits(model, plan)
        self.served = {c.id for c in plan.cuts[:-1] if self.splits.batchable(c.id)}
        # what runs the batches and says the load replies report: these tails, or e.g. dyno.cloud's replicas
        self.tails: BatchRunner = runner if runner is not None else Tails(plan, self.splits)
        self.metrics = ServerMetrics()
        self.admission = Admission(config)
        self._compute_pool = concurrent.futures.ThreadPoolExecutor(
            config.batching.workers, thread_name_prefix="dyno-compute")
        self.batcher: Batcher | None = None
        # the CPU per request replies report: only where this process runs the tails (not Ray's front)
        self.cpu: CpuMeter | None = CpuMeter() if runner is None else None
        self.streams = StreamHandler(self)
        self.draining = False
        self._sweeper: asyncio.Task | None = None
        self.health = HealthServicer()
        # no maximum_concurrent_rpcs: gRPC's own refusal reaches grpc.aio clients as INTERNAL; the
        # stream limits are ours (dyno.runtime.admission). No SO_REUSEPORT: a taken port is an error.
        self._grpc = grpc.aio.server(
            options=channel_options(config.max_message_bytes) + [("grpc.so_reuseport", 0)])
        pb_grpc.add_InferenceServicer_to_server(_Service(self), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        self._metrics_endpoint = (None if config.metrics_port is None else
                                  MetricsEndpoint(self.metrics.registry, config.metrics_host,
                                                  config.metrics_port))
        self.port = 0
        self.metrics_port: int | None = None

    # ------------------------------------------------------------------------------ lifecycle

    def bind(self, address: str) -> int:
        """Listen on ``address`` (host:port; port 0: any free port); ConfigError if it cannot."""
        try:
            if self.config.tls is not None:
                self.port = self._grpc.add_secure_port(address, self.config.tls.credentials())
            else:
                self.port = self._grpc.add_insecure_port(address)
        except RuntimeError as error:
            self.port = 0
            reason = str(error)
        else:
            reason = ""
        if not self.port:
            raise ConfigError(f"cannot listen on {address}: {_bind_problem(address) or reason or 'unknown reason'}")
        return self.port

    async def start(self, *, warm: bool = True) -> None:
        """Build the tails (``warm``), start the batcher, the metrics endpoint and gRPC."""
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        if warm:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._compute_pool, self.splits.warm, sorted(self.served))
            await loop.run_in_executor(self._compute_pool, warm_codecs, self.plan)
            await loop.run_in_executor(self._compute_pool, self._seed_costs)
        run: Callable[[int, Any], Any] = self.tails.run_batch
        if not inspect.iscoroutinefunction(run):
            run = self._cpu_counted(run)
        self.batcher = Batcher(run, self._compute_pool, self.config.batching, self._on_batch,
                               max_queue_s=self.config.max_queue_ms / 1000)
        self.batcher.start()
        if self._metrics_endpoint is not None:
            try:
                self.metrics_port = await self._metrics_endpoint.start()
            except OSError as error:
                await self.batcher.close()
                raise ConfigError(f"cannot serve metrics on {self.config.metrics_host}:"
                                  f"{self.config.metrics_port}: {error.strerror or error}") from error
        await self._grpc.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="dyno-stream-sweeper")
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s (plan %s) on port %s", self.plan.model, self.plan_hash[:12], self.port)

    def _seed_costs(self) -> None:
        """Run every served tail once on zeros: a warm-up, and the first compute-time estimates of
        admission control (one sample at batch size 1: on the safe side until batches are seen)."""
        with torch.inference_mode():
            for cut_id in sorted(self.served):
                start = time.perf_counter()
                try:
                    self.splits.tail(cut_id)(torch.zeros(1, *self.plan.cuts[cut_id].shape))
                except Exception as error:  # a tail that cannot take zeros still serves real frames
                    log.debug("seeding the cost of cut %s: %r", cut_id, error)
                    continue
                self.admission.costs.observe(cut_id, 1, time.perf_counter() - start)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Graceful stop: refuse new requests, answer the accepted ones, close every stream with
        UNAVAILABLE, then stop gRPC. ``grace=None`` or 0 stops at once (in-flight work is dropped)."""
        self.draining = True
        await self.health.enter_graceful_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if grace:
            self.streams.drain()
            deadline = time.monotonic() + grace
            while self.streams.streams and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await self._grpc.stop(grace if grace else None)
        if self.batcher is not None:
            await self.batcher.close()
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.stop()
        self._compute_pool.shutdown(wait=False, cancel_futures=True)

    async def wait_for_termination(self) -> None:
        await self._grpc.wait_for_termination()

    async def _sweep(self) -> None:
        """Close idle streams and streams past their lifetime (``Admission.sweep``), periodically."""
        period = min(1.0, self.config.idle_timeout_s / 4, self.config.max_stream_lifetime_s / 4)
        while True:
            await asyncio.sleep(period)
            self.admission.sweep()

    # ------------------------------------------------------------------------------ checks

    def authorize(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller's bearer token (None when the server has none); ``Refusal`` if it is wrong."""
        token = self.config.token
        if token is None:
            return None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                if hmac.compare_digest(value[7:].encode(), token.encode()):
                    return value[7:]
        raise Refusal(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or wrong bearer token; send metadata 'authorization: Bearer TOKEN'")

    def check(self, request: pb.Request) -> CutPlan:
        """The request's cut; ``Refusal`` if the request is for another plan, an unserved cut or too
        many classes."""
        if request.model != self.plan.model or request.plan_hash != self.plan_hash:
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION,
                          f"request {request.request_id} is for model {request.model[:64]!r} plan "
                          f"{request.plan_hash[:12]!r}; this server serves {self.plan.model!r} plan "
                          f"{self.plan_hash[:12]!r} (see Describe)")
        if request.cut not in self.served:
            known = len(self.plan.cuts)
            why = ("it does not exist" if request.cut >= known else
                   "it is the device-only output" if request.cut == known - 1 else "it is not batchable")
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION,
                          f"request {request.request_id}: cut {request.cut} is not served ({why})")
        if request.top_k > MAX_TOP_K:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                          f"request {request.request_id}: top_k {request.top_k} > {MAX_TOP_K}")
        return self.plan.cuts[request.cut]

    def cut_label(self, cut: int) -> str:
        return str(cut) if cut < len(self.plan.cuts) else "invalid"  # bounded metric labels

    # ------------------------------------------------------------------------------ compute

    def _cpu_counted(self, run: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
        """``run`` counting its thread's CPU time (``dyno_compute_cpu_seconds_total``): what the cloud spends,
        where the wall time also holds the waits for a core the machine's other work causes (64 emulated
        devices on the same 2 cores: 1.31 ms of wall time per request, 0.75 ms of CPU). Torch's intra-op
        threads beyond the compute thread are not counted (the fleet bench runs one)."""

        def counted(cut_id: int, requests: Any) -> Any:
            start = time.thread_time()
            try:
                return run(cut_id, requests)
            finally:
                self.metrics.compute_cpu.inc(time.thread_time() - start, cut=self.cut_label(cut_id))

        return counted

    def _on_batch(self, cut_id: int, size: int, compute_s: float) -> None:
        self.metrics.batch.observe(size, cut=cut_id)
        self.metrics.compute.observe(compute_s, cut=cut_id)
        self.admission.costs.observe(cut_id, size, compute_s)

    async def serve_one(self, request: pb.Request, cut: CutPlan, arrived: float) -> pb.Reply:
        assert self.batcher is not None
        outcome = await self.batcher.submit(cut.id, request, arrived)
        classes, scores, logits = outcome.value
        load, headroom, pressure = self.tails.cloud_signal(self.config, self.batcher.meter.load())
        self.metrics.load.set(load)
        self.metrics.queue.observe(outcome.queue_s, cut=cut.id)
        return pb.Reply(request_id=request.request_id, classes=classes, scores=scores, logits=logits,
                        queue_ms=outcome.queue_s * 1000, compute_ms=outcome.compute_s * 1000,
                        batch=outcome.batch, load=load, queued=self.batcher.queued, headroom=headroom,
                        pressure=pressure, cpu_ms=self.cpu.answered() if self.cpu is not None else None)

    async def infer(self, requests: AsyncIterator[pb.Request], context: grpc.aio.ServicerContext) -> None:
        """One Infer call (``dyno.runtime.streams``)."""
        await self.streams.infer(requests, context)

    # ------------------------------------------------------------------------------ unary calls

    def health_reply(self) -> pb.HealthReply:
        status = pb.HealthReply.DRAINING if self.draining else pb.HealthReply.SERVING
        load = self.tails.cloud_signal(self.config, self.batcher.meter.load())[0] if self.batcher else 0.0
        return pb.HealthReply(status=status, load=load, in_flight=self.admission.in_flight)

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
        except Refusal as refusal:
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


def _bind_problem(address: str) -> str | None:
    """Why ``address`` cannot be listened on, as the OS says it (None if a test bind works)."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (ValueError, OSError) as error:
        return f"not a host:port this machine can listen on ({error})"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(sockaddr)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return (f"the address is already in use (another server on port {port}?); stop it or "
                            "choose another port")
                return error.strerror or str(error)
    return None
