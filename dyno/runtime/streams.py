"""One ``Infer`` call on the server, from admission to its final status.

    handler = StreamHandler(server)          # the server's parts it needs: ``ServerSide``
    await handler.infer(requests, context)   # the gRPC handler's body
    handler.drain()                          # refuse new requests on every stream (UNAVAILABLE)

A stream is admitted by ``dyno.runtime.admission`` (or refused at once); then a **reader** takes its
requests - the server's checks, admission of each request, the batcher - while the handler writes
replies as they are ready. A stream ends with OK when the client has stopped sending and every
accepted request is answered. Anything that refuses it - a bad request or frame, a limit, idleness,
its lifetime, the server draining - ends it with a status instead: from then on it takes no new
request, still answers the ones it accepted, and then lingers. (A stream closed as idle is the
exception: a request arriving before its status has gone out cancels the close, if the limits allow.)

**Lingering**: the status is sent when the client is not writing: once it has half-closed; or
``SETTLE_S`` after the last request it wrote at or after the refusal (a client that just wrote is
now waiting for a reply, or writing the rest of a burst); or, if it wrote nothing since, ``QUIET_S``
after the refusal - at most ``LINGER_S`` after it, and for at most ``MAX_LINGERING`` streams at once
(others get their status at once). Requests arriving meanwhile are read, counted and dropped. Why: a
grpc.aio client whose write is under way when the status arrives reports ``INTERNAL: Internal error
from Core`` instead of the status, and never learns the real one (measured with grpcio 1.85: 45 of
48 streams writing 50 requests back to back, refused at a stream limit, saw INTERNAL; none since).
Lingering cannot help a client that writes just as the status arrives (one paced by its device, say,
whose event loop is late to see the status): ``dyno.runtime.replies`` makes the device client take
that INTERNAL as overload too.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import AsyncIterator, Protocol

import grpc

from dyno.errors import FrameError
from dyno.plan import CutPlan
from dyno.runtime.admission import Admission, Refusal, Ticket, client_key
from dyno.runtime.batching import Overdue
from dyno.runtime.metrics import ServerMetrics
from dyno.runtime.proto import inference_pb2 as pb

__all__ = ["StreamHandler", "ServerSide", "SETTLE_S", "QUIET_S", "LINGER_S", "MAX_LINGERING", "SHUTTING_DOWN"]

log = logging.getLogger("dyno.server")

SETTLE_S = 0.1
QUIET_S = 0.5
LINGER_S = 2.0
MAX_LINGERING = 256
SHUTTING_DOWN = "the server is shutting down; retry later"


class ServerSide(Protocol):
    """What a stream needs from the server (``dyno.runtime.server.Server``)."""

    admission: Admission
    metrics: ServerMetrics
    draining: bool

    def authorize(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller's token (None without one); ``Refusal`` if it is wrong."""
        ...

    def check(self, request: pb.Request) -> CutPlan:
        """The request's cut, or ``Refusal`` (model, plan, cut, top_k)."""
        ...

    def cut_label(self, cut: int) -> str:
        """A bounded metrics label for a cut id from the wire."""
        ...

    async def serve_one(self, request: pb.Request, cut: CutPlan, arrived: float) -> pb.Reply:
        ...


class _Stream:
    """Book-keeping of one Infer call."""

    def __init__(self) -> None:
        self.key: tuple[str, str] = ("", "")
        self.ticket: Ticket | None = None
        self.refusal: Refusal | None = None
        self.replies: collections.deque[pb.Reply] = collections.deque()
        self.pending: dict[asyncio.Task, tuple[int, int]] = {}   # task -> (cut id, bytes)
        self.wake = asyncio.Event()
        self.reader: asyncio.Task | None = None
        self.reading = True
        self.last_message = time.monotonic()
        self.refused_at = 0.0
        self.heard = False          # a request arrived at or after the refusal

    def refuse(self, refusal: Refusal, *, on_message: bool = False) -> None:
        """End the stream with ``refusal`` once what it accepted is answered (the first one wins);
        ``on_message``: the refusal is of the request that just arrived."""
        if self.refusal is None:
            self.refusal = refusal
            self.refused_at = time.monotonic()
            self.heard = on_message
        self.wake.set()

    def linger_until(self, deadline: float) -> float:
        """When the status may go (see the module docstring)."""
        until = self.last_message + SETTLE_S if self.heard else self.refused_at + QUIET_S
        return min(until, deadline)

    @property
    def finished(self) -> bool:
        return not self.replies and not self.pending and (self.refusal is not None or not self.reading)


class StreamHandler:
    """The Infer streams of one server (see the module docstring)."""

    def __init__(self, server: ServerSide):
        self.server = server
        self.streams: set[_Stream] = set()
        self.lingering = 0

    async def infer(self, requests: AsyncIterator[pb.Request], context: grpc.aio.ServicerContext) -> None:
        stream = _Stream()
        self._admit(stream, context)
        self.streams.add(stream)
        stream.reader = asyncio.create_task(self._read(requests, stream))
        try:
            while True:
                await self._pump(stream, context)
                await self._linger(stream)
                if stream.refusal is not None or not stream.reading:
                    break  # else an idle close was cancelled by a request: serve on
        finally:
            self._release(stream)
        refusal = stream.refusal
        if refusal is None and self.server.draining:
            refusal = Refusal(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        if refusal is not None:
            await context.abort(refusal.code, refusal.details)

    def drain(self) -> None:
        """Every stream takes no new request, answers what it has, then ends with UNAVAILABLE."""
        for stream in list(self.streams):
            stream.refuse(Refusal(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN))

    def _admit(self, stream: _Stream, context: grpc.aio.ServicerContext) -> None:
        server = self.server
        try:
            token = server.authorize(context)
            if server.draining:
                raise Refusal(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            stream.key = client_key(token, context.peer())
            stream.ticket = server.admission.open(stream.key, stream.refuse)
        except Refusal as refused:
            server.metrics.requests.inc(cut="-", code=refused.code.name)
            stream.refuse(refused)
            return
        server.metrics.streams.inc()

    async def _pump(self, stream: _Stream, context: grpc.aio.ServicerContext) -> None:
        """Write replies as they are ready until the stream is finished."""
        while not stream.finished:
            if stream.replies:
                await context.write(stream.replies.popleft())
                continue
            stream.wake.clear()
            await stream.wake.wait()

    async def _linger(self, stream: _Stream) -> None:
        """Before a refusal's status: wait until the client stops writing (see the module docstring)."""
        if stream.refusal is None or self.lingering >= MAX_LINGERING:
            return
        self.lingering += 1
        deadline = time.monotonic() + LINGER_S
        try:
            while stream.reading and stream.refusal is not None:
                now = time.monotonic()
                until = stream.linger_until(deadline)
                if now >= until:
                    return
                stream.wake.clear()
                try:
                    await asyncio.wait_for(stream.wake.wait(), until - now)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.lingering -= 1

    async def _read(self, requests: AsyncIterator[pb.Request], stream: _Stream) -> None:
        try:
            async for request in requests:
                stream.last_message = time.monotonic()
                if stream.refusal is not None and not self._revive(stream):  # refused: read and drop
                    stream.heard = True
                    stream.wake.set()
                    self._count(request.cut, stream.refusal.code.name)
                    continue
                try:
                    self._take(request, stream)
                except Refusal as refused:
                    self._count(request.cut, refused.code.name)
                    stream.refuse(refused, on_message=True)
        except asyncio.CancelledError:
            pass  # the stream ended
        except grpc.RpcError:
            pass  # the client went away; the handler's finally cleans up
        except Exception as error:  # e.g. a message gRPC could not parse
            log.debug("reading a stream failed: %s", str(error)[:200])
            stream.refuse(Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"unreadable request: {error}"))
        stream.reading = False
        stream.wake.set()

    def _revive(self, stream: _Stream) -> bool:
        """A request on a stream being closed as idle: keep the stream if the limits allow."""
        if stream.refusal is None or not stream.refusal.idle or stream.ticket is None or self.server.draining:
            return False
        try:
            stream.ticket = self.server.admission.open(stream.key, stream.refuse)
        except Refusal:
            return False
        stream.refusal = None
        stream.wake.set()
        return True

    def _take(self, request: pb.Request, stream: _Stream) -> None:
        """Check and admit one request and hand it to the batcher; ``Refusal`` if it is not taken."""
        server = self.server
        arrived = time.perf_counter()
        cut = server.check(request)
        assert stream.ticket is not None
        nbytes = len(request.meta) + len(request.payload)
        server.admission.admit(stream.ticket, cut.id, nbytes)
        server.metrics.bytes.inc(nbytes, cut=cut.id)
        server.metrics.in_flight.inc()
        task = asyncio.create_task(server.serve_one(request, cut, arrived))
        stream.pending[task] = (cut.id, nbytes)
        task.add_done_callback(functools.partial(self._done, request.request_id, cut.id, stream, arrived))

    def _count(self, cut: int, code: str) -> None:
        self.server.metrics.requests.inc(cut=self.server.cut_label(cut), code=code)

    def _done(self, request_id: int, cut_id: int, stream: _Stream, arrived: float, task: asyncio.Task) -> None:
        share = stream.pending.pop(task, None)
        if share is None:
            return  # the stream already ended and accounted for it
        self._finish(stream, share)
        stream.wake.set()
        if task.cancelled():
            return
        metrics = self.server.metrics
        error = task.exception()
        if error is None:
            metrics.requests.inc(cut=cut_id, code="OK")
            metrics.latency.observe(time.perf_counter() - arrived, cut=cut_id)
            stream.replies.append(task.result())
        elif isinstance(error, FrameError):
            metrics.requests.inc(cut=cut_id, code="INVALID_ARGUMENT")
            stream.refuse(Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"request {request_id}: bad frame: {error}"))
        elif isinstance(error, Overdue):
            metrics.requests.inc(cut=cut_id, code="RESOURCE_EXHAUSTED")
            stream.refuse(Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request {request_id} {error}: the "
                                                                      "server is overloaded; retry after a backoff"))
        else:
            log.error("request %s at cut %s failed: %s", request_id, cut_id, str(error)[:400])
            metrics.requests.inc(cut=cut_id, code="INTERNAL")
            stream.refuse(Refusal(grpc.StatusCode.INTERNAL, f"request {request_id}: the tail failed: "
                                                            f"{type(error).__name__}: {error}"))

    def _finish(self, stream: _Stream, share: tuple[int, int]) -> None:
        assert stream.ticket is not None
        self.server.admission.finish(stream.ticket, *share)
        self.server.metrics.in_flight.dec()

    def _release(self, stream: _Stream) -> None:
        """The stream has ended: drop what it still holds and its share of the limits."""
        if stream.reader is not None:
            stream.reader.cancel()
        for task, share in list(stream.pending.items()):
            task.cancel()
            self._finish(stream, share)
        stream.pending.clear()
        stream.replies.clear()
        if stream.ticket is not None:
            self.server.admission.release(stream.ticket)
            self.server.metrics.streams.dec()
        self.streams.discard(stream)
