"""The uplink through an emulated ``dyno.emulate.link.Link``: frames are booked on the link as soon as
they are ready and written to the stream once they have crossed, in order.

A real uplink carries frames back to back from the socket buffer in front of it. Waiting for one frame
to cross and be written before booking the next (as the client once did) loses the write's time and
the sleep's overshoot on every frame: a quarter of an 8 Mbit/s link at fmnist's 3 kB inputs, which
the performance model, pricing the link at its rate, never saw.

    booked = asyncio.Queue()
    task = asyncio.create_task(paced(link, booked, write=send, record=telemetry.record_transfer))
    book(link, booked, inference)    # at once, as frames come
    booked.put_nowait(None)          # no more: the task ends

The link carries a request's wire bytes (``dyno.wire``: with the gRPC and HTTP/2 framing and the packet
headers a kernel token bucket counts), so the emulated and the kernel-shaped link carry the same.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from dyno.runtime.inflight import Inference
from dyno.wire import on_the_wire

__all__ = ["book", "paced"]


def book(link: Any, booked: asyncio.Queue, inference: Inference) -> None:
    """Book ``inference``'s request on ``link`` now, behind the frames booked before it."""
    booked.put_nowait((inference, link.reserve(int(on_the_wire(inference.nbytes)))))


async def paced(link: Any, booked: asyncio.Queue, *, write: Callable[[Inference], Awaitable[None]],
                record: Callable[[int, float], None]) -> None:
    """Hand each booked ``(inference, transfer)`` to ``write`` when its last byte has crossed the link
    (``transfer.end``, link time), after ``record(wire bytes, seconds on the link)``; ``None`` ends."""
    while (item := await booked.get()) is not None:
        inference, transfer = item
        delay = transfer.end - link.now()
        if delay > 0:
            await asyncio.sleep(delay)
        inference.transfer_ms = transfer.seconds * 1000
        record(transfer.nbytes, transfer.seconds)
        await write(inference)
