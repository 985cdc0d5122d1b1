"""One replica of the tails deployment on Ray Serve: the plan's tails (``dyno.runtime.tails.Tails``,
the very code the embedded server runs), pinned to ``threads`` torch threads and one batch at a time.

Two entry points, one per place batches form (``RayConfig.batch_in``):

- ``run(cut_id, frames)``: a batch the front formed (one call per batch); the default;
- ``one(cut_id, frame)``: one request, batched here by ``@serve.batch`` (grouped by cut in each batch).

Both return the replica's id and the compute seconds of the batch with the results, so that the front
can tell the deployment's load. Imported only on the Ray path (it imports Ray).

A batch that may hold the replica's event loop longer than ``INLINE_S`` (its cut's one-sample cost x its
size, measured at start) computes in the replica's one compute thread: the loop stays free to answer the
front's router (its queue-length probes, its accept/reject replies). With every batch on the loop (stop
17), a busy replica missed the probes' 0.1 s deadlines and the router backed off (deadlines doubling to
1 s, sleeps of 25 ms doubling to 0.5 s): stalls of ~1 s at p95 in a 2-replica fleet. A shorter batch
computes on the loop: the hop to the thread and back cost ~0.19 ms a batch (p50, development runs), a
tenth of the Ray path's whole overhead per request.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from typing import Any, Sequence

import torch
from ray import serve
from torch import nn

from dyno.plan import Plan
from dyno.runtime.splits import Splits, warm_codecs
from dyno.runtime.tails import Frame, Tails

__all__ = ["TailReplica", "DEPLOYMENT"]

#: The deployment's name inside its application.
DEPLOYMENT = "tails"
#: Longest a batch may compute on the replica's event loop (seconds, estimated); longer ones, in its thread.
INLINE_S = 0.005


class TailReplica:
    """The deployment's class (see the module docstring); built by Ray Serve in each replica."""

    def __init__(self, plan: Plan, model: nn.Module, device: str, threads: int, max_batch: int, max_wait_ms: float):
        torch.set_num_threads(threads)
        splits = Splits(model, plan)
        self.tails = Tails(plan, splits, device=device)
        self.served = sorted(c.id for c in plan.cuts[:-1] if splits.batchable(c.id))
        self._compute = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dyno-tails")  # one batch at a time
        self._threaded = 0  # batches sent to the compute thread and not back yet
        self.id = serve.get_replica_context().replica_id.unique_id
        warm_codecs(plan)
        self._costs = self._warm(plan)
        batched: Any = self.one  # @serve.batch's wrapper takes its limits at run time
        batched.set_max_batch_size(max_batch)
        batched.set_batch_wait_timeout_s(max_wait_ms / 1000)

    def _warm(self, plan: Plan) -> dict[int, float]:
        """Build every served tail on the device and time it once on zeros (batch size 1)."""
        costs = {}
        with torch.inference_mode():
            for cut_id in self.served:
                zeros = torch.zeros(1, *plan.cuts[cut_id].shape, device=self.tails.device)
                try:
                    self.tails.tail(cut_id)(zeros)  # the first run builds; the second is timed
                    start = time.perf_counter()
                    self.tails.tail(cut_id)(zeros)
                    costs[cut_id] = time.perf_counter() - start
                except Exception:  # a tail that cannot take zeros still serves real frames
                    continue
        return costs

    def costs(self) -> dict[int, float]:
        """Seconds of one sample's tail per served cut, measured at start (seeds the front's admission)."""
        return self._costs

    def describe(self) -> dict[str, Any]:
        return {"replica": self.id, "device": str(self.tails.device), "threads": torch.get_num_threads()}

    async def run(self, cut_id: int, frames: Sequence[Frame]) -> tuple[str, float, list[Any]]:
        """One batch: (this replica's id, compute seconds, per frame its result or FrameError); one batch
        computes at a time (a replica is one thread's worth of compute): on the loop, or in the thread."""
        if not self._threaded and self._costs.get(cut_id, INLINE_S) * len(frames) < INLINE_S:
            return self._run(cut_id, frames)   # short, and the thread idle: on the loop (module docstring)
        self._threaded += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._compute, self._run, cut_id, frames)
        finally:
            self._threaded -= 1

    def _run(self, cut_id: int, frames: Sequence[Frame]) -> tuple[str, float, list[Any]]:
        start = time.perf_counter()
        results = self.tails.run_batch(cut_id, frames)
        return self.id, time.perf_counter() - start, results

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def one(self, items: list[tuple[int, Frame]]) -> list[tuple[str, float, Any]]:
        """One request, batched with the others waiting here (per cut within each batch)."""
        by_cut: dict[int, list[int]] = collections.defaultdict(list)
        for i, (cut_id, _) in enumerate(items):
            by_cut[cut_id].append(i)
        out: list[Any] = [None] * len(items)
        for cut_id, rows in by_cut.items():
            replica, compute, results = await self.run(cut_id, [items[i][1] for i in rows])
            for i, result in zip(rows, results):
                out[i] = (replica, compute / len(rows), result)
        return out
