"""Dynamic batching per cut: requests at the same cut are stacked and run through its tail at once.

A batch for a cut runs when it is *full* (``max_batch`` requests) or when its *oldest request has
waited* ``max_wait_ms``. One refinement keeps an idle server from taxing a lone request
(``eager=True``, the default): a compute worker that is free takes what is queued at once, since
waiting could only help if more requests were known to be coming. Under load the workers are busy,
requests queue while they compute, and batches fill; ``eager=False`` always waits out
``max_wait_ms`` for a batch that is not full.

``workers`` compute coroutines take batches in turn (oldest request first across cuts) and run
``run_batch(cut_id, items)`` in the given executor, off the event loop (a ``run_batch`` that is a
coroutine function, one that only waits such as the Ray front's call to its replicas, is awaited on the
loop instead: no thread hop). Items are opaque to the batcher (the server passes undecoded frames, so
decoding too happens in the executor, once per batch rather than one thread hop per request);
``run_batch`` returns one entry per item, either its result or the exception that item alone failed
with. A batch whose ``run_batch`` raises, or returns another
number of entries, fails every item with a ``BatchError`` naming why (never a request left waiting).
With ``max_queue_s``, an item that has waited longer than that when its batch is formed is not run:
it fails with ``Overdue`` (the server refuses it as overload rather than answer it too late).

    batcher = Batcher(run_batch, executor, BatchConfig(max_batch=32, max_wait_ms=2))
    batcher.start()
    outcome = await batcher.submit(cut_id, frame)   # -> Outcome(value, queue_s, compute_s, batch)
    await batcher.close()                           # finishes what is queued
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import inspect
import time
from typing import Any, Callable

from dyno.errors import ConfigError

__all__ = ["BatchConfig", "Batcher", "BatchError", "Overdue", "Outcome", "LoadMeter", "LOAD_WINDOW_S",
           "MAX_BATCH"]

#: The largest batch a server may run (``BatchConfig.max_batch``).
MAX_BATCH = 4096
#: The window over which the server's load (the share of time its workers were busy) is measured.
LOAD_WINDOW_S = 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """How the server batches: at most ``max_batch`` per run, waiting at most ``max_wait_ms``."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    eager: bool = True
    workers: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.max_batch, int) and not isinstance(self.max_batch, bool)
                and 1 <= self.max_batch <= MAX_BATCH):
            raise ConfigError(f"max_batch must be an int in 1..{MAX_BATCH}, got {self.max_batch!r}")
        if not (isinstance(self.max_wait_ms, (int, float)) and not isinstance(self.max_wait_ms, bool)
                and 0 <= self.max_wait_ms <= 10_000):
            raise ConfigError(f"max_wait_ms must be in 0..10000, got {self.max_wait_ms!r}")
        if not (isinstance(self.workers, int) and not isinstance(self.workers, bool) and 1 <= self.workers <= 64):
            raise ConfigError(f"workers must be an int in 1..64, got {self.workers!r}")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One request's share of a batch run: its output row and the batch's timings."""

    value: Any               # run_batch's result for this request
    queue_s: float           # submission to start of the batch's compute
    compute_s: float         # the batch's compute time
    batch: int               # the batch size


@dataclasses.dataclass
class _Item:
    payload: Any
    future: asyncio.Future
    arrived: float


class CpuMeter:
    """The process's CPU time per request answered over the last ``window_s`` seconds, in ms: everything
    one request costs the server, its tail's compute and the handling around it (gRPC, checks, decoding,
    batching, the reply). A Python server spends more CPU on that handling than on a small tail
    (fmnist-resnet here: 1.75 ms per request against about 0.6 ms of decode and tail).

    Counted between answers less than ``GAP_S`` apart only: across a longer gap the process's idle work
    (gRPC's pollers, timers) would be charged to the next request, and a device probing now and then
    would read the cloud as dear. Reading the process's CPU clock costs about a microsecond."""

    GAP_S = 0.05
    MIN_ANSWERS = 8

    def __init__(self, window_s: float = LOAD_WINDOW_S, *, cpu: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic):
        self.window_s, self._cpu, self._clock = window_s, cpu, clock
        self._deltas: collections.deque[tuple[float, float]] = collections.deque()   # (at, CPU seconds)
        self._sum = 0.0
        self._last: tuple[float, float] | None = None

    def answered(self) -> float | None:
        """Count one request answered; the current figure (None until ``MIN_ANSWERS`` close together)."""
        now, cpu = self._clock(), self._cpu()
        if self._last is not None and now - self._last[0] < self.GAP_S:
            delta = max(0.0, cpu - self._last[1])
            self._deltas.append((now, delta))
            self._sum += delta
        self._last = (now, cpu)
        deltas = self._deltas
        while deltas and deltas[0][0] < now - self.window_s:
            self._sum -= deltas.popleft()[1]
        if len(deltas) < self.MIN_ANSWERS:
            return None
        return max(0.0, self._sum) / len(deltas) * 1000.0


class LoadMeter:
    """Share of the last ``window_s`` seconds the compute workers were busy, in [0, 1]."""

    def __init__(self, workers: int = 1, window_s: float = LOAD_WINDOW_S):
        self.workers, self.window_s = workers, window_s
        self._spans: collections.deque[tuple[float, float]] = collections.deque()
        self._active: dict[int, float] = {}
        self._at, self._value = -1.0, 0.0

    def begin(self, token: int) -> None:
        self._active[token] = time.perf_counter()

    def end(self, token: int) -> None:
        start = self._active.pop(token, None)
        if start is not None:
            self._spans.append((start, time.perf_counter()))

    def load(self) -> float:
        """Recomputed at most every 5 ms (it is asked once per reply)."""
        now = time.perf_counter()
        if now - self._at < 0.005:
            return self._value
        horizon = now - self.window_s
        while self._spans and self._spans[0][1] < horizon:
            self._spans.popleft()
        busy = sum(end - max(start, horizon) for start, end in self._spans)
        busy += sum(now - max(start, horizon) for start in self._active.values())
        self._at, self._value = now, min(1.0, busy / (self.window_s * self.workers))
        return self._value


class Batcher:
    """Per-cut queues and the compute workers that drain them (see the module docstring)."""

    def __init__(self, run_batch: Callable[[int, list[Any]], Any], executor: concurrent.futures.Executor,
                 config: BatchConfig = BatchConfig(),
                 on_batch: Callable[[int, int, float], None] | None = None, *, max_queue_s: float | None = None):
        self.run_batch, self.executor, self.config = run_batch, executor, config
        self._awaited = inspect.iscoroutinefunction(run_batch)  # run on the loop, not in the executor
        self.on_batch = on_batch  # (cut_id, size, compute_s)
        self.max_queue_s = max_queue_s
        self.meter = LoadMeter(config.workers)
        self._queues: dict[int, collections.deque[_Item]] = {}
        self._wake = asyncio.Event()
        self._idle_workers = 0
        self._closing = False
        self._tasks: list[asyncio.Task] = []

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._worker(i), name=f"dyno-batch-worker-{i}")
                           for i in range(self.config.workers)]

    async def submit(self, cut_id: int, payload: Any, arrived: float | None = None) -> Outcome:
        """Queue one item for ``cut_id``; resolves when its batch has run (or raises its error)."""
        if self._closing:
            raise RuntimeError("the batcher is closed")
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(cut_id, collections.deque()).append(
            _Item(payload, future, time.perf_counter() if arrived is None else arrived))
        self._wake.set()
        try:
            return await future
        finally:
            # an error raised here would otherwise sit in a cycle (future -> error -> traceback -> this
            # frame -> future) that also holds the caller's frame and its request, until the cyclic GC
            del future

    async def close(self) -> None:
        """Run everything still queued, then stop the workers."""
        self._closing = True
        self._wake.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []

    def _pick(self, now: float) -> tuple[int | None, float]:
        """The cut to run now (oldest ready request first), or None and how long to sleep."""
        max_wait = self.config.max_wait_ms / 1000
        best, best_age, sleep = None, -1.0, max_wait
        eager = self.config.eager
        for cut_id, queue in self._queues.items():
            while queue and queue[0].future.done():  # the stream went away
                queue.popleft()
            if not queue:
                continue
            age = now - queue[0].arrived
            ready = len(queue) >= self.config.max_batch or age >= max_wait or eager or self._closing
            if ready and age > best_age:
                best, best_age = cut_id, age
            elif not ready:
                sleep = min(sleep, max_wait - age)
        return best, max(sleep, 0.0)

    async def _worker(self, index: int) -> None:
        while True:
            cut_id, sleep = self._pick(time.perf_counter())
            if cut_id is None:
                if self._closing and not self.queued:
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=sleep if self.queued else None)
                except asyncio.TimeoutError:
                    pass
                continue
            queue = self._queues[cut_id]
            items = [queue.popleft() for _ in range(min(len(queue), self.config.max_batch))]
            items = self._in_time([i for i in items if not i.future.done()])
            if items:
                await self._run(index, cut_id, items)
            del items  # a batch's requests must not outlive it while this worker waits for the next

    def _in_time(self, items: list[_Item]) -> list[_Item]:
        """The items that have not waited past ``max_queue_s``; the others fail with ``Overdue``."""
        if self.max_queue_s is None:
            return items
        now = time.perf_counter()
        kept = []
        for item in items:
            waited = now - item.arrived
            if waited > self.max_queue_s:
                item.future.set_exception(Overdue(f"waited {waited * 1000:.0f} ms for compute, longer than "
                                                  f"the server's limit of {self.max_queue_s * 1000:g} ms"))
            else:
                kept.append(item)
        return kept

    async def _run(self, index: int, cut_id: int, items: list[_Item]) -> None:
        start = time.perf_counter()
        self.meter.begin(index)
        try:
            payloads = [i.payload for i in items]
            if self._awaited:
                results = await self.run_batch(cut_id, payloads)
            else:
                results = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.run_batch, cut_id, payloads)
            if not isinstance(results, list) or len(results) != len(items):
                raise BatchError(f"run_batch returned {len(results) if isinstance(results, list) else results!r}"
                                 f" results for {len(items)} requests")
        except Exception as error:  # the tail failed: every request of the batch learns why
            failure = _without_traceback(error)
            for item in items:
                if not item.future.done():
                    item.future.set_exception(failure)
            return
        finally:
            self.meter.end(index)
        compute = time.perf_counter() - start
        for item, result in zip(items, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(Outcome(result, start - item.arrived, compute, len(items)))
        if self.on_batch is not None:
            self.on_batch(cut_id, len(items), compute)


class BatchError(RuntimeError):
    """A batch failed as a whole (its tail raised, or ``run_batch`` broke its contract)."""


class Overdue(Exception):
    """An item waited longer than the batcher's ``max_queue_s`` and was not run."""


def _without_traceback(error: Exception) -> BatchError:
    """What the requests of a failed batch are told: the error's type and text, with no traceback, so
    that nothing the failed run held (its inputs, its frames' buffers) outlives it."""
    return BatchError(f"{type(error).__name__}: {error}"[:400])
