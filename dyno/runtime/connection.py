"""The device's connection to the cloud: an asyncio loop in its own thread holding the gRPC channel, the
stream that carries requests, the uplink and the reply timers.

- The **connector** keeps one live ``Infer`` stream open while the server answers: it asks the server
  to ``Describe`` itself (same model, same plan hash, which cuts it serves), opens a stream, and
  while the server does not answer retries with exponential backoff (``backoff`` = (first, max)
  seconds, jittered). Before a stream's deadline (``stream_lifetime``) new requests move to a fresh
  stream and the old one drains (**rotation**).
- The **sender** is the uplink: frames leave one after another, through the emulated ``Link`` if
  there is one (``dyno.runtime.uplink``: booked on it back to back), and each starts a ``timeout`` timer.
- A **reader** per stream matches replies to requests and feeds the monitors.
- Anything the cloud does not answer - a refused or broken stream, a reply later than ``timeout``, a
  reply that fails its checks (``dyno.runtime.replies``) - goes back to the device (``fall_back``);
  nothing is lost.
- **Overload** (a stream ended with RESOURCE_EXHAUSTED or UNAVAILABLE, or no reply in time): the
  connection backs off before it returns to the cloud (``backoff``, doubling while overloads follow
  each other, reset by a reply), and the device works alone meanwhile. A stream the server closed
  for idleness or age is replaced at once, without an error.

What the client has seen is in its ``Telemetry``: ``errors`` holds why the cloud could not be used, in
words (``cannot connect to HOST:PORT: connection refused ...``, ``TLS handshake with ... failed: ...``,
``RESOURCE_EXHAUSTED: ...``); ``stats`` counts ``replies`` (valid replies from the cloud),
``bad_replies``, ``overloaded``, ``timeouts``, ``connects``, ``reconnects`` and ``reopened``.

Replies feed the monitors the server's compute, wait, headroom and pressure (``dyno.monitor`` prices the
cloud from them), the round trip and, without an emulated link, each frame's time on the wire (``WireClock``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Any, Callable

import grpc
import numpy as np

from dyno.errors import ServerUnavailable
from dyno.plan import Plan
from dyno.runtime.config import ClientConfig, channel_options
from dyno.runtime.inflight import Inference, Telemetry
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc
from dyno.runtime.replies import check_reply, describe_ending, describe_failure, ending
from dyno.runtime.results import Result
from dyno.runtime.uplink import book, paced

__all__ = ["CloudConnection"]

log = logging.getLogger("dyno.client")


class _Stream:
    """One Infer call and the requests it carries that are not answered yet."""

    def __init__(self, call: Any):
        self.call = call
        self.outstanding: dict[int, Inference] = {}
        self.opened = time.monotonic()
        self.reader: asyncio.Task | None = None
        self.broken = False


class CloudConnection:
    """The loop thread of one client (see the module docstring).

    ``fall_back(inference, note)`` finishes an inference on the device; ``deliver(inference, result)``
    takes every result the cloud answers. ``connected`` is set while a stream is live; ``served`` holds
    the cuts the server serves.
    """

    def __init__(self, plan: Plan, config: ClientConfig, *, telemetry: Telemetry,
                 fall_back: Callable[[Inference, str], None], deliver: Callable[[Inference, Result], None],
                 link: Any = None):
        self.plan, self.config, self.link, self.telemetry = plan, config, link, telemetry
        self.plan_hash = plan.hash
        self._fall_back_to_device, self._deliver = fall_back, deliver
        self.connected = threading.Event()
        self.served: set[int] = set()
        self._closing = False
        self._classes = plan.cuts[-1].numel
        self._overload_delay = config.backoff[0]   # the next back-off after an overload
        self._hold_off = 0.0                        # seconds to wait before returning to the cloud
        self._reopen = False                        # the server closed an idle or old stream
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dyno-client-loop", daemon=True)
        self._stream: _Stream | None = None
        self._streams: set[_Stream] = set()
        self._channel: Any = None
        self._stub: Any = None
        self._send_q: asyncio.Queue[Inference | None] | None = None
        self._booked: asyncio.Queue[tuple[Inference, Any] | None] = asyncio.Queue()   # on the emulated link
        self._wake_connector: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------------------ any thread

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def serves(self, cut_id: int) -> bool:
        return self.connected.is_set() and cut_id in self.served

    def send(self, inference: Inference) -> None:
        self._loop.call_soon_threadsafe(self._enqueue, inference)

    def close(self) -> None:
        """Close the streams and the channel, then the loop (call once nothing is under way)."""
        self._closing = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        except Exception as error:  # never fail close() over a dying connection
            log.debug("client shutdown: %r", error)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    # ------------------------------------------------------------------------------ connecting

    async def _start(self) -> None:
        self._send_q = asyncio.Queue()
        self._wake_connector = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._sender(), name="dyno-sender"))
        if self.link is not None:
            self._tasks.append(asyncio.create_task(paced(self.link, self._booked, write=self._send,
                                                         record=self.telemetry.record_transfer), name="dyno-uplink"))
        if self.config.server is not None:
            self._channel = self._open_channel(self.config.server)
            self._stub = pb_grpc.InferenceStub(self._channel)
            self._tasks.append(asyncio.create_task(self._connector(), name="dyno-connector"))

    def _open_channel(self, server: str) -> Any:
        options = channel_options(self.config.max_message_bytes) + [
            ("grpc.use_local_subchannel_pool", 1),  # a connection of its own, as a device has
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(self.config.backoff[1] * 1000))]
        tls = self.config.tls
        if tls is None:
            return grpc.aio.insecure_channel(server, options=options)
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        return grpc.aio.secure_channel(server, tls.credentials(), options=options)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self.config.token
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _connector(self) -> None:
        """Keeps one live stream open while the server answers; backs off while it does not."""
        assert self._wake_connector is not None
        first, most = self.config.backoff
        delay = first
        while not self._closing:
            if self._stream is not None and not self._stream.broken:
                await self._keep(self._stream)
                continue
            if self._hold_off:  # the server is overloaded: let it breathe before returning
                hold, self._hold_off = self._hold_off, 0.0
                await asyncio.sleep(hold)
                continue
            try:
                if self._reopen:  # a routine close: the server is there, a new stream will do
                    self._reopen = False
                    await self._open_stream()
                    self.telemetry.count("reopened")
                    self.connected.set()
                else:
                    await self._connect()
                delay = first
                continue
            except ServerUnavailable as error:
                self.telemetry.note_error(str(error))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, most)

    async def _keep(self, stream: _Stream) -> None:
        """Wait until the stream breaks or a quarter of its lifetime passes; rotate it at half."""
        assert self._wake_connector is not None
        lifetime = self.config.stream_lifetime
        self._wake_connector.clear()
        try:
            await asyncio.wait_for(self._wake_connector.wait(), timeout=lifetime / 4)
        except asyncio.TimeoutError:
            pass
        if self._stream is stream and not stream.broken and time.monotonic() - stream.opened > lifetime / 2:
            await self._rotate()

    async def _connect(self) -> None:
        server = self.config.server
        try:
            asked = time.perf_counter()
            described = await self._stub.Describe(pb.DescribeRequest(), timeout=self.config.connect_timeout,
                                                  metadata=self._metadata())
            self.telemetry.wire.note_rtt(time.perf_counter() - asked)   # a round trip without payload
        except grpc.aio.AioRpcError as error:
            raise ServerUnavailable(describe_failure(str(server), error, tls=self.config.tls is not None)) \
                from error
        if described.model != self.plan.model or described.plan_hash != self.plan_hash:
            raise ServerUnavailable(
                f"{server} serves {described.model} plan {described.plan_hash[:12]}, not "
                f"{self.plan.model} plan {self.plan_hash[:12]}; start it with this plan")
        self.served = {c.id for c in described.cuts if c.served}
        self.telemetry.wire.reset()
        await self._open_stream()
        if self.telemetry.stats["connects"]:
            self.telemetry.count("reconnects")
        self.telemetry.count("connects")
        self.connected.set()

    async def _open_stream(self) -> None:
        call = self._stub.Infer(timeout=self.config.stream_lifetime, metadata=self._metadata())
        stream = _Stream(call)
        stream.reader = asyncio.create_task(self._reader(stream))
        self._streams.add(stream)
        self._stream = stream

    async def _rotate(self) -> None:
        """Move new requests to a fresh stream before the old one's deadline; the old one drains."""
        old = self._stream
        await self._open_stream()
        if old is not None:
            try:
                await old.call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass

    # ------------------------------------------------------------------------------ the uplink

    def _enqueue(self, inference: Inference) -> None:
        assert self._send_q is not None
        self._send_q.put_nowait(inference)

    def _fall_back(self, inference: Inference, note: str) -> None:
        """On the loop: stop the inference's timer and give it back to the device."""
        if inference.timer is not None:
            inference.timer.cancel()
            inference.timer = None
        self._fall_back_to_device(inference, note)

    def _live(self) -> bool:
        return self._stream is not None and not self._stream.broken and self.connected.is_set()

    async def _sender(self) -> None:
        """The uplink: frames leave one after another; through an emulated link, booked on it as soon
        as they are ready and written once they have crossed (``dyno.runtime.uplink``)."""
        assert self._send_q is not None
        while (inference := await self._send_q.get()) is not None:
            if not self._live():
                self._fall_back(inference, "cloud unavailable")
            elif self.link is not None:
                book(self.link, self._booked, inference)
            else:
                await self._send(inference)

    async def _send(self, inference: Inference) -> None:
        try:
            await self._write(inference)
        except Exception as error:  # never let the uplink die (the sender or the emulated link's pacer)
            log.exception("sending request %s failed", inference.index)
            self._fall_back(inference, f"send failed: {error!r}")

    async def _write(self, inference: Inference) -> None:
        stream = self._stream  # it may have been replaced while the frame was on the link
        if stream is None or stream.broken:
            self._fall_back(inference, "cloud unavailable")
            return
        stream.outstanding[inference.index] = inference
        inference.written = time.perf_counter()
        inference.timer = asyncio.get_running_loop().call_later(
            self.config.timeout, self._on_timeout, stream, inference)
        try:
            await stream.call.write(inference.request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            # the stream died under us: the break falls back what it still holds, this one here
            held = stream.outstanding.pop(inference.index, None) is not None
            if isinstance(error, grpc.aio.AioRpcError):
                code, details = error.code(), error.details() or ""
            else:  # it had ended already: its reader knows why
                code, details = None, "the stream had ended"
            self._break(stream, describe_ending(code, details), ending(code, details))
            if held:
                self._fall_back(inference, "cloud unavailable")

    # ------------------------------------------------------------------------------ replies

    async def _reader(self, stream: _Stream) -> None:
        reason, kind = "the server closed the stream", "error"
        try:
            while (reply := await stream.call.read()) is not grpc.aio.EOF:
                self._on_reply(stream, reply)
        except grpc.aio.AioRpcError as error:
            details = error.details() or ""
            reason, kind = describe_ending(error.code(), details), ending(error.code(), details)
        except asyncio.CancelledError:
            reason = "stream cancelled"
        self._break(stream, reason, kind)

    def _on_reply(self, stream: _Stream, reply: pb.Reply) -> None:
        inference = stream.outstanding.pop(reply.request_id, None)
        if inference is None:
            return  # it timed out and went to the device already
        if inference.timer is not None:
            inference.timer.cancel()
            inference.timer = None
        problem = check_reply(reply, top_k=self.config.top_k, classes=self._classes,
                              want_logits=self.config.want_logits)
        if problem is not None:  # nothing of it reaches the monitors or the caller
            self.telemetry.count("bad_replies")
            self.telemetry.note_error(f"bad reply from {self.config.server}: {problem}")
            self._fall_back(inference, f"bad reply: {problem}")
            return
        self.telemetry.count("replies")
        self._overload_delay = self.config.backoff[0]
        now = time.perf_counter()
        server_s = (reply.queue_ms + reply.compute_ms) / 1000
        network_s = max(now - inference.written - server_s, 0.0)
        wire = None
        if self.link is None:  # no emulated link: the frame's own time on the wire (inflight.WireClock)
            transfer, rtt = self.telemetry.wire.frame(inference.written, now, server_s)
            network_s, wire = rtt, None if transfer is None else (inference.nbytes, transfer)
            inference.transfer_ms = max(transfer or 0.0, 0.0) * 1000
        decision = inference.decision
        assert decision is not None and decision.codec is not None
        option = self.plan.cuts[decision.cut].option(decision.codec, decision.bits)
        self.telemetry.record_reply(decision.cut, reply, at=now, decode_ms=option.decode_ms if option else 0.0,
                                    rtt_ms=network_s * 1000, wire=wire)
        self._deliver(inference, Result(
            index=inference.index, classes=tuple(reply.classes), scores=tuple(reply.scores),
            cut=decision.cut, codec=decision.codec, bits=decision.bits, where="cloud",
            latency_ms=(now - inference.submitted) * 1000, device_ms=inference.device_ms,
            transfer_ms=inference.transfer_ms, server_ms=server_s * 1000, bytes=inference.nbytes,
            batch=reply.batch, logits=np.asarray(reply.logits, dtype=np.float32) if reply.logits else None,
            note=decision.note, finished=now))

    def _on_timeout(self, stream: _Stream, inference: Inference) -> None:
        inference.timer = None
        if stream.outstanding.get(inference.index) is inference:
            self.telemetry.count("timeouts")
            self._break(stream, f"no reply within {self.config.timeout:g} s", "overload")

    def _break(self, stream: _Stream, reason: str, kind: str = "error") -> None:
        """A stream failed: everything it holds finishes on the device; reconnect (after a back-off
        on overload, at once after a routine close; see ``dyno.runtime.replies.ending``)."""
        if not stream.broken:
            stream.broken = True
            if stream is self._stream:
                self.connected.clear()
                self._stream = None
                if not self._closing:
                    self._after_break(reason, kind)
                if self._wake_connector is not None:
                    self._wake_connector.set()
            stream.call.cancel()
        self._streams.discard(stream)
        for inference in list(stream.outstanding.values()):
            self._fall_back(inference, reason)
        stream.outstanding.clear()

    def _after_break(self, reason: str, kind: str) -> None:
        if kind == "routine":
            self._reopen = True
            return
        self.telemetry.note_error(reason)
        if kind == "overload":
            self.telemetry.count("overloaded")
            self._hold_off = self._overload_delay * random.uniform(0.8, 1.2)
            self._overload_delay = min(self._overload_delay * 2, self.config.backoff[1])

    # ------------------------------------------------------------------------------ closing

    async def _shutdown(self) -> None:
        assert self._send_q is not None
        self._send_q.put_nowait(None)
        for task in self._tasks:
            if task.get_name() != "dyno-sender":
                task.cancel()
        readers = []
        for stream in list(self._streams) + ([self._stream] if self._stream else []):
            try:
                await asyncio.wait_for(stream.call.done_writing(), 1)
            except Exception:
                pass
            stream.broken = True
            stream.call.cancel()
            if stream.reader is not None:
                readers.append(stream.reader)
        await asyncio.gather(*self._tasks, *readers, return_exceptions=True)
        for stream in list(self._streams):
            try:  # let gRPC deliver the final status before the loop goes away
                await asyncio.wait_for(stream.call.code(), 1)
            except Exception:
                pass
        if self._channel is not None:
            await self._channel.close(grace=None)
        await asyncio.sleep(0.01)
