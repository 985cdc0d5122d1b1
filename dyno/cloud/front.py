"""The front's side of the Ray path: what the dyno gRPC server runs its batches with
(:class:`RayTails`, a ``dyno.runtime.tails.BatchRunner``) and what it knows of the deployment
(:class:`DeploymentLoad`, :class:`ReplicaWatch`).

The front keeps everything a device talks to - gRPC, the token, TLS, admission limits, batching per cut,
streams, metrics - and checks every frame's header against its cut (``Expected.check_wire``) before a
batch leaves it: a bad frame fails alone with the embedded server's FrameError, and never reaches the
cluster. A batch goes to the deployment as one call carrying plain ``Frame`` tuples (bytes and ints),
where a replica decodes and runs it with the embedded server's own ``Tails``. A batch whose replica
died under it is sent again (``RayConfig.retries``): tails are pure, so a retry is safe.

Load across replicas: every batch comes back with the compute seconds it took on its replica; the load
a reply reports is the deployment's busy share over the last ``LOAD_WINDOW_S``
(sum of compute / (window x running replicas)), its headroom the replica-seconds per second left
before the target utilisation, its pressure how far above the target the deployment runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from dyno import codec
from dyno.errors import FrameError, RuntimeServiceError
from dyno.plan import Plan
from dyno.runtime.batching import LOAD_WINDOW_S
from dyno.runtime.tails import Frame, FrameLike, stored_error

if TYPE_CHECKING:
    from dyno.cloud.config import RayConfig
    from dyno.runtime.config import ServerConfig

__all__ = ["RayTails", "DeploymentLoad", "ReplicaWatch"]

log = logging.getLogger("dyno.cloud")


class DeploymentLoad:
    """Busy share of the deployment's replicas over the last ``window_s`` seconds, from the compute
    seconds each batch reports (thread-safe: the front's compute threads add, replies read)."""

    def __init__(self, window_s: float = LOAD_WINDOW_S, on_busy: Callable[[float], None] | None = None):
        self.window_s, self.on_busy = window_s, on_busy   # on_busy(seconds): each batch's replica compute
        self.running = 0                 # replicas up (``ReplicaWatch``)
        self._spans: collections.deque[tuple[float, float]] = collections.deque()  # (end, busy seconds)
        self._lock = threading.Lock()
        self.replicas_seen: collections.Counter[str] = collections.Counter()

    def add(self, replica: str, busy_s: float) -> None:
        with self._lock:
            self._spans.append((time.perf_counter(), busy_s))
            self.replicas_seen[replica] += 1
        if self.on_busy is not None:
            self.on_busy(busy_s)

    def load(self) -> float:
        """In [0, 1]; 1 while no replica is up."""
        if self.running <= 0:
            return 1.0
        now = time.perf_counter()
        horizon = now - self.window_s
        with self._lock:
            while self._spans and self._spans[0][0] < horizon:
                self._spans.popleft()
            busy = sum(min(busy, end - horizon) for end, busy in self._spans)
        return min(1.0, busy / (self.window_s * self.running))


def _retriable() -> tuple[type[BaseException], ...]:
    """The errors of a call whose replica died or went away under it (safe to send again)."""
    from ray import exceptions

    return (exceptions.RayActorError, exceptions.ActorUnavailableError)


class RayTails:
    """Runs the server's batches on a Ray Serve deployment (see the module docstring).

    ``run_batch`` is a coroutine, awaited on the front's own loop (the server's batcher runs it there,
    not in a compute thread: it only waits). Built on a running loop, the calls go through a handle of
    the deployment whose router runs on that loop, so that a batch leaves and its answer lands with no
    thread hop in this process; built elsewhere, through ``handle`` (its router on Ray Serve's own loop
    thread)."""

    def __init__(self, plan: Plan, handle: Any, ray_config: RayConfig, load: DeploymentLoad | None = None):
        self.plan, self.ray_config = plan, ray_config
        self._own = _on_this_loop(handle)  # None: no loop runs here
        self.handle = (self._own or handle).options(_by_reference=False)  # gRPC to replicas: ~2x the calls/s
        self.load = load or DeploymentLoad()
        self._expected = {cut.id: codec.Expected(shape=tuple(cut.shape)) for cut in plan.cuts}
        self._retriable = _retriable()
        self.retried = 0

    async def close(self) -> None:
        """Stop what this front's own router runs on the loop (its metrics tasks, its long poll of the
        controller), on that loop, before it stops; without it they log, once the loop has stopped, that
        the loop went away. Best effort: it relies on Ray Serve's private parts, and never raises."""
        if self._own is None:
            return
        try:
            await self._own.shutdown_async()
            from ray.serve._private.router import SharedRouterLongPollClient

            router = self._own._router._asyncio_router
            router.long_poll_client.stop()
            SharedRouterLongPollClient.get_or_create(router._controller_handle,
                                                     asyncio.get_running_loop()).long_poll_client.stop()
        except Exception as error:  # a Ray Serve version without these parts: the log lines stay
            log.debug("closing the front's router: %s", error)

    def cloud_signal(self, config: ServerConfig, load: float) -> tuple[float, float, float]:
        """The deployment's (load, headroom, pressure); the front's own batcher load is not it."""
        del load
        now = self.load.load()
        target, running = config.target_utilisation, max(self.load.running, 0)
        return now, max(0.0, target - now) * running, max(1.0, now / target)

    async def run_batch(self, cut_id: int, requests: Sequence[FrameLike]) -> list[Any]:
        """Check every frame's header here (a bad one fails alone), send the rest as one batch."""
        expected = self._expected[cut_id]
        results: list[Any] = [None] * len(requests)
        frames, rows = [], []
        for i, request in enumerate(requests):
            try:
                expected.check_wire(request.meta, len(request.payload))
            except FrameError as error:
                results[i] = stored_error(error)
                continue
            frames.append(Frame(request.meta, request.payload, request.top_k, request.want_logits))
            rows.append(i)
        if frames:
            for i, result in zip(rows, await self._send(cut_id, frames), strict=True):
                results[i] = result
        return results

    async def _send(self, cut_id: int, frames: list[Frame]) -> list[Any]:
        last: BaseException | None = None
        for _ in range(self.ray_config.retries + 1):
            try:
                if self.ray_config.batch_in == "front":
                    replica, busy, results = await self._answer(self.handle.run.remote(cut_id, frames))
                    self.load.add(replica, busy)
                    return results
                return await self._one_by_one(cut_id, frames)
            except self._retriable as error:
                last = error
                self.retried += 1
        raise RuntimeServiceError(f"the deployment lost a batch at cut {cut_id} {self.ray_config.retries + 1} "
                                  f"times: {type(last).__name__}: {str(last)[:200]}")

    async def _answer(self, response: Any) -> Any:
        """A call's result, or TimeoutError (the call cancelled) after ``RayConfig.timeout_s``."""
        try:
            async with asyncio.timeout(self.ray_config.timeout_s):
                return await response
        except TimeoutError:
            response.cancel()
            raise

    async def _one_by_one(self, cut_id: int, frames: list[Frame]) -> list[Any]:
        """``batch_in="replica"``: one call per frame, batched in the replicas by ``@serve.batch``."""
        answers = await asyncio.gather(*(self._answer(self.handle.one.remote((cut_id, frame))) for frame in frames))
        for replica, busy, _ in answers:
            self.load.add(replica, busy)
        return [result for _, _, result in answers]


def _on_this_loop(handle: Any) -> Any:
    """A handle of ``handle``'s deployment whose router runs on the running loop (what
    ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0`` does, for this front alone); None when no loop runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    from ray.serve.handle import DeploymentHandle

    own: Any = DeploymentHandle(handle.deployment_name, handle.app_name)
    own._init(_run_router_in_separate_loop=False)
    return own


class ReplicaWatch:
    """Polls the deployment's running replicas every ``period_s`` (the controller's details) in a thread: sets
    ``load.running``, calls ``on_change(running)`` when it changes, and keeps ``history``:
    (seconds since start, running replicas)."""

    def __init__(self, app: str, deployment: str, load: DeploymentLoad,
                 on_change: Callable[[int], None] | None = None, period_s: float = 0.25):
        self.app, self.deployment, self.load = app, deployment, load
        self.on_change, self.period_s = on_change, period_s
        self.history: list[tuple[float, int]] = []
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dyno-replica-watch", daemon=True)

    def running(self) -> int:
        """Replicas RUNNING, as the controller reports them: the details ``serve.status()`` is built
        from, read as the plain dict they come in (building ``serve.status()``'s models, which pickle
        the request router's class each time, took ~9 ms of this process's CPU per call here, and held
        the GIL from the front's loop meanwhile; the dict, ~1 ms)."""
        from ray.serve.context import _get_global_client

        try:
            client = _get_global_client(raise_if_no_controller_running=False)
            details = client.get_serve_details() if client is not None else {}
            replicas = details["applications"][self.app]["deployments"][self.deployment]["replicas"]
            return sum(1 for replica in replicas if getattr(replica["state"], "value", replica["state"]) == "RUNNING")
        except Exception:  # no such application or deployment (yet), or the controller is unreachable
            return 0

    def start(self) -> ReplicaWatch:
        self.poll()
        self._thread.start()
        return self

    def poll(self) -> int:
        running = self.running()
        changed = running != self.load.running or not self.history
        self.load.running = running
        self.history.append((time.monotonic() - self._start, running))
        if changed and self.on_change is not None:
            self.on_change(running)
        return running

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
