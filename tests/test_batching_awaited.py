"""A ``run_batch`` that is a coroutine function (the Ray front's: it only waits for the replicas) is
awaited on the batcher's own loop, never handed to the executor; a plain function still runs in the
executor. Both keep the batcher's contract: one outcome per item, a failing item fails alone, a batch
that raises fails every item with a BatchError."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from dyno.runtime.batching import BatchConfig, Batcher, BatchError, Outcome


def _run(run_batch, items: int, max_batch: int = 8) -> list[object]:
    async def go():
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dyno-test-pool") as pool:
            batcher = Batcher(run_batch, pool, BatchConfig(max_batch=max_batch, max_wait_ms=1))
            batcher.start()
            outcomes = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i % 2, i) for i in range(items)),
                                                             return_exceptions=True), 10)
            await batcher.close()
            return outcomes
    return asyncio.run(go())


def test_a_coroutine_run_batch_is_awaited_on_the_loop_thread_and_a_plain_one_runs_in_the_executor():
    seen: dict[str, set[str]] = {"async": set(), "sync": set()}

    async def awaited(cut, items):
        seen["async"].add(threading.current_thread().name)
        await asyncio.sleep(0.001)  # it may wait: the loop serves the other items meanwhile
        return [(cut, item * 10) for item in items]

    def plain(cut, items):
        seen["sync"].add(threading.current_thread().name)
        return [(cut, item * 10) for item in items]

    main = threading.current_thread().name
    for run_batch in (awaited, plain):
        outcomes = _run(run_batch, 12)
        assert all(isinstance(o, Outcome) for o in outcomes), outcomes
        assert [o.value for o in outcomes] == [(i % 2, i * 10) for i in range(12)]
        assert sum(1 for o in outcomes if o.batch > 1) > 0  # items were batched, per cut
    assert seen["async"] == {main}
    assert seen["sync"] and all(name.startswith("dyno-test-pool") for name in seen["sync"])


def test_a_coroutine_run_batch_keeps_the_contract_item_errors_and_batch_errors():
    async def one_bad(_cut, items):
        return [ValueError(f"bad {i}") if i == 3 else i for i in items]

    outcomes = _run(one_bad, 6)
    assert isinstance(outcomes[3], ValueError) and str(outcomes[3]) == "bad 3"
    assert [o.value for k, o in enumerate(outcomes) if k != 3] == [0, 1, 2, 4, 5]

    async def failing(_cut, _items):
        raise TimeoutError("the deployment took too long")

    outcomes = _run(failing, 4)
    assert all(isinstance(o, BatchError) and "TimeoutError: the deployment took too long" in str(o)
               for o in outcomes), outcomes

    async def short(_cut, items):
        return items[:-1]

    outcomes = _run(short, 4, max_batch=4)
    assert any(isinstance(o, BatchError) and "results for" in str(o) for o in outcomes), outcomes


# ------------------------------------------------------------------------------------ CPU per request


class _Clocks:
    """A wall clock and a CPU clock the test moves by hand."""

    def __init__(self):
        self.now, self.cpu = 0.0, 0.0

    def answer(self, meter, gap_s: float, cpu_s: float):
        self.now += gap_s
        self.cpu += cpu_s
        return meter.answered()


def test_the_cpu_meter_is_the_process_cpu_per_answer_in_a_busy_stretch():
    from dyno.runtime.batching import CpuMeter

    clocks = _Clocks()
    meter = CpuMeter(1.0, cpu=lambda: clocks.cpu, clock=lambda: clocks.now)
    figures = [clocks.answer(meter, 0.002, 0.0015) for _ in range(9)]
    assert figures[:8] == [None] * 8 and figures[8] == pytest.approx(1.5)   # 1.5 ms of CPU per answer
    # a probe after a pause: the idle second's CPU (0.2 s of pollers) is not charged to it
    assert clocks.answer(meter, 1.0, 0.2) is None
    figures = [clocks.answer(meter, 0.004, 0.003) for _ in range(8)]
    assert figures[-1] == pytest.approx(3.0)   # the window moved on: the newer, dearer requests
