"""Admission control of the cloud server: who may open a stream, which requests the server takes, and
which streams it ends. No gRPC I/O here; ``dyno.runtime.streams`` asks, and ends streams as told.

A **client** is one (bearer token, client IP) pair (:func:`client_key`): the peer's IP without its port,
so that a device cannot buy a fresh allowance by opening another connection, and with the token, so
that devices sharing one token from different addresses do not share one allowance (no token: "").

What a stream holds is little (a gRPC call and a few objects, tens of KB); what costs is the work it
asks for. So the limits on streams only bound memory, and never let idle streams lock working clients
out; the limits on requests protect the server's time (every refusal is RESOURCE_EXHAUSTED):

- **streams**: at most ``max_streams`` on the server and ``max_streams_per_client`` per client. A
  newcomer over either limit takes the place of the stream (of that client; of anyone, for the server's
  limit) that has had no request in flight for longest, if for at least ``EVICTABLE_AFTER_S``; that one
  is closed as idle. Only when no stream is idle is the newcomer refused.
- **idle and old streams** (:meth:`Admission.sweep`): no request in flight for ``idle_timeout_s`` ->
  closed (UNAVAILABLE, ``IDLE_CLOSE``); older than ``max_stream_lifetime_s`` -> takes no new request,
  answers what it has, then closes (UNAVAILABLE, ``LIFETIME_CLOSE``).
- **requests** (:meth:`Admission.admit`): per client at most ``max_in_flight_per_client`` accepted and
  unanswered; on the server at most ``max_queued_requests`` and ``max_queued_bytes``; and none
  estimated to wait more than ``ADMIT_SHARE`` of ``max_queue_ms`` for its compute to start (the rest
  is margin for the estimate: the batcher refuses, rather than runs, a request that has really
  waited ``max_queue_ms``). The wait is estimated from the requests already accepted, per cut, at the
  compute seconds per sample of recent batches there (:class:`Costs`; the server seeds it with one
  run of every tail when it starts).
"""

from __future__ import annotations

import collections
import ipaddress
import time
from typing import Callable

import grpc

from dyno.runtime.config import IDLE_CLOSE, LIFETIME_CLOSE, ServerConfig

__all__ = ["Refusal", "Ticket", "Admission", "Costs", "client_key", "client_ip", "EVICTABLE_AFTER_S",
           "ADMIT_SHARE", "MAX_DETAILS"]

#: A stream with no request in flight for this long may be closed to make room for a newcomer.
EVICTABLE_AFTER_S = 1.0
#: Admission refuses a request estimated to wait more than this share of ``max_queue_ms``.
ADMIT_SHARE = 0.75
#: Status details are cut to this many characters (nothing proportional to a frame is kept).
MAX_DETAILS = 400


class Refusal(Exception):
    """Ends one stream with a gRPC status; ``details`` at most ``MAX_DETAILS`` characters. ``idle``:
    the stream is closed for doing nothing, which a request arriving before the status cancels."""

    def __init__(self, code: grpc.StatusCode, details: str, *, idle: bool = False):
        if len(details) > MAX_DETAILS:
            details = details[:MAX_DETAILS - 3] + "..."
        super().__init__(details)
        self.code, self.details, self.idle = code, details, idle


def client_ip(peer: str) -> str:
    """The IP of a gRPC peer string without its port: ``ipv4:10.0.0.7:5123`` -> ``10.0.0.7``,
    ``ipv6:[::1]:5123`` -> ``::1``, ``ipv6:[::ffff:10.0.0.7]:5123`` -> ``10.0.0.7``; ``unix:...`` ->
    ``unix``; anything unparseable is kept whole."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return kind or peer
    host = rest.rsplit(":", 1)[0].strip("[]")
    host = host.split("%", 1)[0]  # an IPv6 zone
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def client_key(token: str | None, peer: str) -> tuple[str, str]:
    """The key of the per-client limits: (token or "", client IP)."""
    return (token or "", client_ip(peer))


class Ticket:
    """One admitted stream's share of the limits. ``close(refusal)`` ends the stream (it is the
    stream's, called on the server's loop); ``closing`` once it has been called."""

    __slots__ = ("key", "opened", "last_active", "in_flight", "close", "closing")

    def __init__(self, key: tuple[str, str], now: float, close: Callable[[Refusal], None]):
        self.key, self.opened, self.last_active, self.close = key, now, now, close
        self.in_flight = 0
        self.closing = False

    def end(self, refusal: Refusal) -> None:
        self.closing = True
        self.close(refusal)


class _Client:
    __slots__ = ("tickets", "in_flight")

    def __init__(self) -> None:
        self.tickets: dict[Ticket, None] = {}  # insertion-ordered set
        self.in_flight = 0


class Costs:
    """Compute seconds per sample of each cut, from recent batches (decayed sums, so large batches
    weigh by their size). A cut not yet seen costs as much as the dearest seen so far."""

    DECAY = 0.9

    def __init__(self) -> None:
        self._sums: dict[int, list[float]] = {}

    def observe(self, cut_id: int, size: int, seconds: float) -> None:
        sums = self._sums.setdefault(cut_id, [0.0, 0.0])
        sums[0] = sums[0] * self.DECAY + max(seconds, 0.0)
        sums[1] = sums[1] * self.DECAY + max(size, 1)

    def per_sample(self, cut_id: int) -> float:
        sums = self._sums.get(cut_id)
        if sums is not None:
            return sums[0] / sums[1]
        return max((s[0] / s[1] for s in self._sums.values()), default=0.0)


def _who(key: tuple[str, str]) -> str:
    return f"client {key[1]}" + (" (with a token)" if key[0] else "")


class Admission:
    """The server's limits (see the module docstring); used on the server's event loop only."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.costs = Costs()
        self._clients: dict[tuple[str, str], _Client] = {}
        self._tickets: dict[Ticket, None] = {}
        self.in_flight = 0          # requests accepted and not answered, whole server
        self.queued_bytes = 0
        self._queued: collections.Counter[int] = collections.Counter()   # the same per cut

    def wait_s(self) -> float:
        """Estimated seconds before a request accepted now starts its compute."""
        per_sample = self.costs.per_sample
        return sum(n * per_sample(cut) for cut, n in self._queued.items()) / self.config.batching.workers

    @property
    def streams(self) -> int:
        return len(self._tickets)

    # ------------------------------------------------------------------------------ streams

    def open(self, key: tuple[str, str], close: Callable[[Refusal], None]) -> Ticket:
        """A ticket for a new stream of client ``key``, making room if needed; ``Refusal`` if none."""
        now = time.monotonic()
        config = self.config
        client = self._clients.get(key)
        if client is not None and len(client.tickets) >= config.max_streams_per_client:
            self._make_room(client.tickets, now, f"{_who(key)} already has {len(client.tickets)} open streams "
                                                 f"(limit {config.max_streams_per_client}); reuse one")
        if len(self._tickets) >= config.max_streams:
            self._make_room(self._tickets, now, f"the server has {len(self._tickets)} open streams "
                                                f"(limit {config.max_streams}); retry after a backoff")
        ticket = Ticket(key, now, close)
        self._tickets[ticket] = None
        self._clients.setdefault(key, _Client()).tickets[ticket] = None
        return ticket

    def _make_room(self, tickets: dict[Ticket, None], now: float, why: str) -> None:
        idle = [t for t in tickets if t.in_flight == 0 and now - t.last_active >= EVICTABLE_AFTER_S]
        if not idle:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        victim = min(idle, key=lambda t: t.last_active)
        self.release(victim)
        victim.end(Refusal(grpc.StatusCode.UNAVAILABLE,
                           f"{IDLE_CLOSE}: no request for {now - victim.last_active:.1f} s and a new stream "
                           "needed its place; open a new one when there is work", idle=True))

    def release(self, ticket: Ticket) -> None:
        """The stream has ended (or is being closed with nothing in flight); idempotent."""
        if ticket not in self._tickets:
            return
        del self._tickets[ticket]
        client = self._clients.get(ticket.key)
        if client is not None:
            client.tickets.pop(ticket, None)
            if not client.tickets and client.in_flight <= 0:
                del self._clients[ticket.key]

    def sweep(self, now: float | None = None) -> int:
        """Close idle streams and those past their lifetime; returns how many were told to close."""
        now = time.monotonic() if now is None else now
        idle_s, lifetime_s = self.config.idle_timeout_s, self.config.max_stream_lifetime_s
        told = 0
        for ticket in list(self._tickets):
            if ticket.in_flight == 0 and now - ticket.last_active >= idle_s:
                self.release(ticket)
                ticket.end(Refusal(grpc.StatusCode.UNAVAILABLE,
                                   f"{IDLE_CLOSE}: no request for {idle_s:g} s (the server's idle timeout); "
                                   "open a new stream when there is work", idle=True))
                told += 1
            elif not ticket.closing and now - ticket.opened >= lifetime_s:
                ticket.end(Refusal(grpc.StatusCode.UNAVAILABLE,
                                   f"{LIFETIME_CLOSE}: streams live at most {lifetime_s:g} s on this server; "
                                   "open a new one (clients rotate before)"))
                told += 1
        return told

    # ------------------------------------------------------------------------------ requests

    def admit(self, ticket: Ticket, cut_id: int, nbytes: int) -> None:
        """Take one request of ``nbytes`` at ``cut_id`` on ``ticket``'s stream, or ``Refusal``
        (RESOURCE_EXHAUSTED; UNAVAILABLE if the stream is no longer admitted)."""
        config = self.config
        client = self._clients.get(ticket.key)
        if client is None or ticket not in self._tickets:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "this stream is closing; open a new one")
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        if client.in_flight >= config.max_in_flight_per_client:
            raise Refusal(exhausted, f"{_who(ticket.key)} has {client.in_flight} requests in flight "
                                     f"(limit {config.max_in_flight_per_client}); wait for replies")
        if self.in_flight >= config.max_queued_requests:
            raise Refusal(exhausted, f"the server has {self.in_flight} requests queued (limit "
                                     f"{config.max_queued_requests}); retry after a backoff")
        if self.queued_bytes + nbytes > config.max_queued_bytes:
            raise Refusal(exhausted, f"the server has {self.queued_bytes / 2**20:.1f} MiB of requests queued "
                                     f"(limit {config.max_queued_bytes / 2**20:.1f} MiB); retry after a backoff")
        wait_s = self.wait_s() if self.in_flight else 0.0
        if wait_s * 1000 > ADMIT_SHARE * config.max_queue_ms:
            raise Refusal(exhausted, f"the server is overloaded: a request now would wait about "
                                     f"{wait_s * 1000:.0f} ms for compute (budget {config.max_queue_ms:g} ms); "
                                     "retry after a backoff")
        client.in_flight += 1
        ticket.in_flight += 1
        ticket.last_active = time.monotonic()
        self.in_flight += 1
        self.queued_bytes += nbytes
        self._queued[cut_id] += 1

    def finish(self, ticket: Ticket, cut_id: int, nbytes: int) -> None:
        """A request admitted on ``ticket`` was answered, refused or dropped."""
        self.in_flight -= 1
        self.queued_bytes -= nbytes
        self._queued[cut_id] -= 1
        if self._queued[cut_id] <= 0:
            del self._queued[cut_id]
        ticket.in_flight -= 1
        ticket.last_active = time.monotonic()
        client = self._clients.get(ticket.key)
        if client is not None:
            client.in_flight -= 1
            if not client.tickets and client.in_flight <= 0:
                del self._clients[ticket.key]
