"""The device client: policy, head, encoding and the uplink on the device; the tail in the cloud.

    with Client(plan, model, server="127.0.0.1:50051") as client:
        result = client.infer(x)                 # one input (C, H, W) or (1, C, H, W)
        for result in client.map(inputs):         # pipelined, results in input order
            ...

Per input the policy decides (cut, codec, bits) from the monitors' estimates; the device runs the
head (through an emulated ``Device`` if given: the head, device-only runs and fallback tails are the
device's slowed work; encoding is not, as the performance model prices it), encodes the activation
with ``dyno.codec`` and hands the frame to the uplink (an emulated ``Link`` if given), which feeds one gRPC stream to the server.
Up to ``in_flight`` inferences are under way at once, so device compute, uplink and cloud overlap.
Every reply feeds the monitors (bandwidth, RTT, server time and load; device time from every head).

Nothing is lost: when the server cannot be reached, refuses a request, or a reply is later than
``timeout`` seconds, the affected inferences finish on the device (their tail runs locally from the
activation already computed; ``Result.where == "fallback"``), and while the cloud is away the device
runs whole inferences itself. A background task retries the cloud with exponential backoff
(``backoff`` = (first, max) seconds, jittered) and the client returns to it as soon as it answers.

Threads: the caller's, one device thread (the device's single core: heads, encoding, fallback
tails), and one asyncio loop thread for gRPC, the link and timers.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import grpc
import numpy as np
import torch
from torch import nn

from dyno.errors import ConfigError, RuntimeServiceError, ServerUnavailable
from dyno.plan import Plan
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.proto import inference_pb2_grpc as pb_grpc
from dyno.runtime.results import Result, top_k
from dyno.runtime.server import channel_options
from dyno.runtime.splits import Splits, warm_codecs

__all__ = ["ClientTLS", "Client"]

log = logging.getLogger("dyno.client")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientTLS:
    """Client TLS: the CA that signed the server's certificate; for mutual TLS also this client's
    certificate chain and key (PEM files). ``server_name`` overrides the name checked in the server's
    certificate (e.g. ``localhost`` when connecting to 127.0.0.1)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        try:
            ca = Path(self.ca).read_bytes()
            cert = Path(self.cert).read_bytes() if self.cert else None
            key = Path(self.key).read_bytes() if self.key else None
        except OSError as error:
            raise ConfigError(f"cannot read TLS file: {error}") from error
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


class _Inference:
    """One input on its way through the pipeline."""

    __slots__ = ("index", "x", "future", "submitted", "decision", "activation", "device_ms", "request",
                 "nbytes", "transfer_ms", "written", "timer", "option")

    def __init__(self, index: int, x: torch.Tensor, future: concurrent.futures.Future):
        self.index, self.x, self.future = index, x, future
        self.submitted = time.perf_counter()
        self.decision: Any = None
        self.activation: torch.Tensor | None = None
        self.device_ms = 0.0
        self.request: pb.Request | None = None
        self.nbytes = 0
        self.transfer_ms = 0.0
        self.written = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.option: Any = None


class _Stream:
    """One Infer call and the requests it carries that are not answered yet."""

    def __init__(self, call: Any):
        self.call = call
        self.outstanding: dict[int, _Inference] = {}
        self.opened = time.monotonic()
        self.reader: asyncio.Task | None = None
        self.broken = False


class Client:
    """A device client for one plan and model (see the module docstring).

    ``server`` is ``host:port`` (None: no cloud, every inference runs on the device). ``policy`` is a
    registered name (``dyno.policy.names()``) or a ``Policy``; ``slo`` an ``SLO`` or its text form.
    ``link`` (``dyno.emulate.link.Link``) and ``device`` (``dyno.emulate.device.Device``) emulate a
    slow uplink and a slow device. ``monitors`` defaults to ``dyno.monitor.Monitors(plan)``.
    ``on_result`` is called (in a client thread) with every ``Result`` as it is made. ``warm``
    builds every head and tail and initialises every codec of the plan before the first input.
    """

    def __init__(self, plan: Plan, model: nn.Module, *, server: str | None = None,
                 policy: Any = "dyno", slo: Any = None, in_flight: int = 8, timeout: float = 2.0,
                 connect_timeout: float = 2.0, stream_lifetime: float = 600.0,
                 backoff: tuple[float, float] = (0.1, 2.0), token: str | None = None,
                 tls: ClientTLS | None = None, link: Any = None, device: Any = None,
                 monitors: Any = None, top_k: int = 5, want_logits: bool = False,
                 max_message_bytes: int = 8 * 1024 * 1024, splits: Splits | None = None,
                 on_result: Callable[[Result], None] | None = None, warm: bool = True):
        from dyno import policy as policies
        from dyno.monitor import Monitors

        if not (isinstance(in_flight, int) and 1 <= in_flight <= 1024):
            raise ConfigError(f"in_flight must be an int in 1..1024, got {in_flight!r}")
        if not (timeout > 0 and connect_timeout > 0 and stream_lifetime > 4 * timeout):
            raise ConfigError("timeout and connect_timeout must be > 0, stream_lifetime > 4 * timeout")
        if not (0 < backoff[0] <= backoff[1]):
            raise ConfigError(f"backoff must be (first, max) with 0 < first <= max, got {backoff!r}")
        self.plan = plan
        self.plan_hash = plan.hash  # computed once: hashing a plan serialises it
        self.splits = splits or Splits(model, plan)
        self.policy = policies.make(policy) if isinstance(policy, str) else policy
        if slo is None:
            slo = policies.SLO()
        self.slo = policies.SLO.parse(slo) if isinstance(slo, str) else slo
        self.monitors = monitors or Monitors(plan)
        self.server, self.token, self.tls = server, token, tls
        self.link, self.device = link, device
        self.in_flight, self.timeout, self.connect_timeout = in_flight, timeout, connect_timeout
        self.stream_lifetime, self.backoff = stream_lifetime, backoff
        self.top_k, self.want_logits = top_k, want_logits
        self.max_message_bytes = max_message_bytes
        self.on_result = on_result
        self.last = len(plan.cuts) - 1
        self.served: set[int] = set()
        self.connected = threading.Event()
        self.stats = collections.Counter()      # cloud, device, fallback, reconnects, timeouts
        self.batches: collections.deque[int] = collections.deque(maxlen=16)
        self._shares: collections.deque[tuple[float, float]] = collections.deque()
        self._share_sum = 0.0
        self.errors: collections.deque[str] = collections.deque(maxlen=16)

        if warm:  # pay one-time costs now, not in the first (timed) inferences
            self.splits.warm()
            warm_codecs(plan, decode=False)
            self.policy.decide(policies.State(plan, self.monitors.estimates(), self.slo, 1, in_flight))
            self.policy.reset()

        self._ids = itertools.count()
        self._slots = threading.BoundedSemaphore(in_flight)
        self._monitor_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._device_q: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._closed = False
        self._device_thread = threading.Thread(target=self._device_loop, name="dyno-device", daemon=True)
        self._device_thread.start()

        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="dyno-client-loop",
                                             daemon=True)
        self._loop_thread.start()
        self._stream: _Stream | None = None
        self._streams: set[_Stream] = set()
        self._channel: Any = None
        self._stub: Any = None
        self._send_q: asyncio.Queue | None = None
        self._wake_connector: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        if server is not None:
            self.connected.wait(connect_timeout)  # a head start for the first inputs; fine if it fails

    # ------------------------------------------------------------------------------ public API

    def submit(self, x: Any) -> concurrent.futures.Future:
        """Start one inference; blocks while ``in_flight`` inferences are under way."""
        if self._closed:
            raise RuntimeServiceError("the client is closed")
        tensor = self._as_input(x)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._slots.acquire()
        inference = _Inference(next(self._ids), tensor, future)
        future.add_done_callback(lambda _: self._slots.release())
        self._device_q.put((1, next(self._seq), "infer", inference, ""))
        return future

    def infer(self, x: Any) -> Result:
        """One inference, start to finish."""
        return self.submit(x).result()

    def map(self, inputs: Iterable[Any]) -> Iterator[Result]:
        """Pipelined inferences over ``inputs``, yielded in input order."""
        window: collections.deque[concurrent.futures.Future] = collections.deque()
        for x in inputs:
            window.append(self.submit(x))
            while window and window[0].done():
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def close(self) -> None:
        """Wait for the inferences under way, then close the connection and the threads."""
        if self._closed:
            return
        for _ in range(self.in_flight):
            self._slots.acquire()
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        except Exception as error:  # never fail close() over a dying connection
            log.debug("client shutdown: %r", error)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(5)
        self._device_q.put((-1, next(self._seq), "stop", None, ""))
        self._device_thread.join(10)
        if not self._loop.is_running():
            self._loop.close()
        for _ in range(self.in_flight):
            self._slots.release()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def estimates(self) -> Any:
        with self._monitor_lock:
            return self.monitors.estimates()

    # ------------------------------------------------------------------------------ the device

    def _as_input(self, x: Any) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        shape = tuple(self.plan.input_shape)
        if tuple(tensor.shape) == shape:
            tensor = tensor.unsqueeze(0)
        if tuple(tensor.shape) != (1, *shape):
            raise ConfigError(f"an input must be shaped {shape} or (1, *{shape}), got {tuple(tensor.shape)}")
        return tensor.float().contiguous()

    def _run_on_device(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        if self.device is not None:
            return self.device.run(fn, *args)
        start = time.perf_counter()
        value = fn(*args)
        return value, (time.perf_counter() - start) * 1000

    def _device_loop(self) -> None:
        while True:
            _, _, kind, inference, note = self._device_q.get()
            if kind == "stop":
                return
            try:
                with torch.inference_mode():
                    if kind == "infer":
                        self._start_inference(inference)
                    else:
                        self._finish_on_device(inference, note)
            except Exception as error:  # a bug or a bad input: the caller sees it on its future
                if not inference.future.done():
                    inference.future.set_exception(error)

    def _decide(self) -> Any:
        from dyno.policy import Decision, State

        recent = list(self.batches)  # a copy: the loop thread appends to it
        batch = int(np.median(recent)) if recent else 1
        decision = self.policy.decide(State(self.plan, self.estimates(), self.slo, max(1, batch),
                                            self.in_flight))
        return decision if isinstance(decision, Decision) else Decision(decision.cut, decision.codec,
                                                                       decision.bits)

    def _start_inference(self, inference: _Inference) -> None:
        decision = inference.decision = self._decide()
        cut_id = decision.cut
        offload = decision.codec is not None and cut_id != self.last
        if offload and (not self.connected.is_set() or cut_id not in self.served):
            # the cloud is away (or does not serve this cut): all of it on the device, at once
            self._count("unavailable")
            return self._device_whole(inference, "fallback", "cloud unavailable")
        if not offload:
            return self._device_whole(inference, "device", decision.note)
        head = self.splits.head(cut_id)
        activation, head_ms = self._run_on_device(head, inference.x)
        with self._monitor_lock:
            self.monitors.record_device(cut_id, head_ms)
        inference.activation = activation
        option = _option(self.plan, cut_id, decision.codec, decision.bits)
        # Encoding runs at this machine's speed: only the head is the emulated device's work (the
        # performance model prices k_d * T_dev(c) + T_enc, with T_enc as measured).
        start = time.perf_counter()
        encoded = self._encode(activation, cut_id, decision, option)
        inference.device_ms = head_ms + (time.perf_counter() - start) * 1000
        meta = encoded.meta.to_bytes()
        inference.request = pb.Request(request_id=inference.index, model=self.plan.model,
                                       plan_hash=self.plan_hash, cut=cut_id, meta=meta,
                                       payload=bytes(encoded.payload), top_k=self.top_k,
                                       want_logits=self.want_logits)
        inference.nbytes = inference.request.ByteSize()
        self._loop.call_soon_threadsafe(self._enqueue, inference)

    def _encode(self, activation: torch.Tensor, cut_id: int, decision: Any, option: Any) -> Any:
        from dyno import codec

        cut = self.plan.cuts[cut_id]
        array = activation.detach().float().numpy()[0]
        return codec.encode(array, bits=decision.bits, mode=decision.codec, nonnegative=cut.nonnegative,
                            clip=None if option is None else option.clip)

    def _device_whole(self, inference: _Inference, where: str, note: str) -> None:
        logits, ms = self._run_on_device(self.splits.model, inference.x)
        with self._monitor_lock:
            self.monitors.record_device(self.last, ms)
        inference.device_ms += ms
        self._finish(inference, logits, where, note)

    def _finish_on_device(self, inference: _Inference, note: str) -> None:
        """The fallback: the tail of the decided cut, on the device, from the activation."""
        tail = self.splits.tail(inference.decision.cut)
        logits, ms = self._run_on_device(tail, inference.activation)
        inference.device_ms += ms
        self._finish(inference, logits, "fallback", note)

    def _finish(self, inference: _Inference, logits: torch.Tensor, where: str, note: str) -> None:
        vector = logits.detach().float().reshape(-1).numpy()
        classes, scores = top_k(vector, self.top_k)
        decision = inference.decision
        sent = where == "fallback" and inference.request is not None and inference.written > 0
        self._resolve(inference, Result(
            index=inference.index, classes=classes, scores=scores, cut=decision.cut,
            codec=decision.codec if where != "device" else None, bits=decision.bits if where != "device" else None,
            where=where, latency_ms=(time.perf_counter() - inference.submitted) * 1000,
            device_ms=inference.device_ms, transfer_ms=inference.transfer_ms,
            bytes=inference.nbytes if sent else 0, logits=vector.copy() if self.want_logits else None,
            note=note, finished=time.perf_counter()))

    def _resolve(self, inference: _Inference, result: Result) -> None:
        if inference.future.done():
            return
        self._count(result.where)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception as error:  # a display callback must not lose a result
                log.warning("on_result failed: %r", error)
        inference.future.set_result(result)

    def _fall_back(self, inference: _Inference, note: str) -> None:
        """Called on the loop: finish this inference on the device (before new work)."""
        if inference.timer is not None:
            inference.timer.cancel()
            inference.timer = None
        if not inference.future.done():
            self._device_q.put((0, next(self._seq), "finish", inference, note))

    # ------------------------------------------------------------------------------ the network

    async def _start(self) -> None:
        self._send_q = asyncio.Queue()
        self._wake_connector = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._sender(), name="dyno-sender"))
        if self.server is not None:
            options = channel_options(self.max_message_bytes) + [
                ("grpc.use_local_subchannel_pool", 1),  # a connection of its own, as a device has
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", int(self.backoff[1] * 1000))]
            if self.tls is not None:
                if self.tls.server_name:
                    options.append(("grpc.ssl_target_name_override", self.tls.server_name))
                self._channel = grpc.aio.secure_channel(self.server, self.tls.credentials(), options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self.server, options=options)
            self._stub = pb_grpc.InferenceStub(self._channel)
            self._tasks.append(asyncio.create_task(self._connector(), name="dyno-connector"))

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    async def _connector(self) -> None:
        """Keeps one live stream open while the server answers; backs off while it does not."""
        assert self._wake_connector is not None
        delay = self.backoff[0]
        while not self._closed:
            if self._stream is not None and not self._stream.broken:
                self._wake_connector.clear()
                try:
                    await asyncio.wait_for(self._wake_connector.wait(), timeout=self.stream_lifetime / 4)
                except asyncio.TimeoutError:
                    pass
                if self._stream is not None and not self._stream.broken and \
                        time.monotonic() - self._stream.opened > self.stream_lifetime / 2:
                    await self._rotate()
                continue
            try:
                await self._connect()
                delay = self.backoff[0]
                continue
            except ServerUnavailable as error:
                self._note_error(str(error))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff[1])

    async def _connect(self) -> None:
        try:
            described = await self._stub.Describe(pb.DescribeRequest(), timeout=self.connect_timeout,
                                                  metadata=self._metadata())
        except grpc.aio.AioRpcError as error:
            raise ServerUnavailable(f"{self.server}: {error.code().name}: {error.details()}") from error
        if described.model != self.plan.model or described.plan_hash != self.plan_hash:
            raise ServerUnavailable(
                f"{self.server} serves {described.model} plan {described.plan_hash[:12]}, not "
                f"{self.plan.model} plan {self.plan_hash[:12]}; start it with this plan")
        self.served = {c.id for c in described.cuts if c.served}
        await self._open_stream()
        if self.stats["connects"]:
            self._count("reconnects")
        self._count("connects")
        self.connected.set()

    async def _open_stream(self) -> None:
        call = self._stub.Infer(timeout=self.stream_lifetime, metadata=self._metadata())
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

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _note_error(self, message: str) -> None:
        if not self.errors or self.errors[-1] != message:
            log.info("cloud unavailable: %s", message)
            self.errors.append(message)

    def _enqueue(self, inference: _Inference) -> None:
        assert self._send_q is not None
        self._send_q.put_nowait(inference)

    async def _sender(self) -> None:
        """The uplink: frames leave one after another, through the emulated link if there is one."""
        assert self._send_q is not None
        while True:
            inference: _Inference = await self._send_q.get()
            if inference is None:
                return
            stream = self._stream
            if stream is None or stream.broken or not self.connected.is_set():
                self._fall_back(inference, "cloud unavailable")
                continue
            try:
                if self.link is not None:
                    transfer = await self.link.send(inference.nbytes)
                    inference.transfer_ms = transfer.seconds * 1000
                    with self._monitor_lock:
                        self.monitors.record_transfer(inference.nbytes, transfer.seconds)
                stream = self._stream  # it may have been replaced while the frame was on the link
                if stream is None or stream.broken:
                    self._fall_back(inference, "cloud unavailable")
                    continue
                stream.outstanding[inference.index] = inference
                inference.written = time.perf_counter()
                inference.timer = asyncio.get_running_loop().call_later(
                    self.timeout, self._on_timeout, stream, inference)
                await stream.call.write(inference.request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                # the stream died under us: its reader falls back what it holds; this one too
                if stream is not None:
                    stream.outstanding.pop(inference.index, None)
                    self._break(stream, f"write failed: {error}")
                self._fall_back(inference, "cloud unavailable")
            except Exception as error:  # never let the sender die
                log.exception("sending request %s failed", inference.index)
                self._fall_back(inference, f"send failed: {error!r}")

    async def _reader(self, stream: _Stream) -> None:
        reason = "the server closed the stream"
        try:
            while True:
                reply = await stream.call.read()
                if reply is grpc.aio.EOF:
                    break
                self._on_reply(stream, reply)
        except grpc.aio.AioRpcError as error:
            reason = f"{error.code().name}: {error.details()}"
        except asyncio.CancelledError:
            reason = "stream cancelled"
        self._break(stream, reason)

    def _on_reply(self, stream: _Stream, reply: pb.Reply) -> None:
        inference = stream.outstanding.pop(reply.request_id, None)
        if inference is None:
            return  # it timed out and went to the device already
        if inference.timer is not None:
            inference.timer.cancel()
        now = time.perf_counter()
        cut_id = inference.decision.cut
        server_s = (reply.queue_ms + reply.compute_ms) / 1000
        network_s = max(now - inference.written - server_s, 0.0)
        # The server's load counts this client's own requests too; the policy wants the load of the
        # others (it prices this client's share itself), so take out our share of the busy time.
        own = self._own_share(now, reply.compute_ms / 1000 / max(1, reply.batch))
        with self._monitor_lock:
            self.monitors.record_server(cut_id, reply.compute_ms, max(0.0, reply.load - own),
                                        max(1, reply.batch))
            self.monitors.record_rtt(network_s * 1000)
            if self.link is None:  # no emulated link: the wire time is all we can see
                self.monitors.record_transfer(inference.nbytes, network_s)
        if self.link is None:
            inference.transfer_ms = network_s * 1000
        self.batches.append(max(1, reply.batch))
        decision = inference.decision
        self._resolve(inference, Result(
            index=inference.index, classes=tuple(reply.classes), scores=tuple(reply.scores),
            cut=cut_id, codec=decision.codec, bits=decision.bits, where="cloud",
            latency_ms=(now - inference.submitted) * 1000, device_ms=inference.device_ms,
            transfer_ms=inference.transfer_ms, server_ms=server_s * 1000, bytes=inference.nbytes,
            batch=reply.batch, logits=np.asarray(reply.logits, dtype=np.float32) if reply.logits else None,
            note=decision.note, finished=now))

    def _own_share(self, now: float, busy_s: float) -> float:
        """This client's share of the server's compute over the server's load window (1 s)."""
        shares = self._shares
        shares.append((now, busy_s))
        self._share_sum += busy_s
        while shares and shares[0][0] < now - 1.0:
            self._share_sum -= shares.popleft()[1]
        return min(1.0, max(0.0, self._share_sum))

    def _on_timeout(self, stream: _Stream, inference: _Inference) -> None:
        inference.timer = None
        if stream.outstanding.get(inference.index) is inference:
            self._count("timeouts")
            self._break(stream, f"no reply within {self.timeout:g} s")

    def _break(self, stream: _Stream, reason: str) -> None:
        """A stream failed: everything it holds finishes on the device; reconnect with backoff."""
        if not stream.broken:
            stream.broken = True
            if stream is self._stream:
                self.connected.clear()
                self._stream = None
                if not self._closed:
                    self._note_error(reason)
                if self._wake_connector is not None:
                    self._wake_connector.set()
            stream.call.cancel()
        self._streams.discard(stream)
        for inference in list(stream.outstanding.values()):
            self._fall_back(inference, reason)
        stream.outstanding.clear()

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


def _option(plan: Plan, cut_id: int, codec: str | None, bits: int | None) -> Any:
    for option in plan.cuts[cut_id].options:
        if option.codec == codec and option.bits == bits:
            return option
    return None

