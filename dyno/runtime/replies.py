"""What the device client makes of what the server sends, or of its failure to: replies are checked
before anything in them is used, failed calls become one readable line, and stream endings are
sorted into overload (back off), a routine close (reopen quietly) and anything else.

    problem = check_reply(reply, top_k=5, classes=10, want_logits=False)   # None, or what is wrong
    text = describe_failure("cloud:50051", error, tls=False)              # "cannot connect to ..."
    kind = ending(code, details)                                          # "overload" | "routine" | "error"

No I/O here; ``dyno.runtime.connection`` uses it on its loop.
"""

from __future__ import annotations

import math
import re
from typing import Iterable

import grpc

from dyno.runtime.batching import MAX_BATCH
from dyno.runtime.config import IDLE_CLOSE, LIFETIME_CLOSE
from dyno.runtime.proto import inference_pb2 as pb

__all__ = ["check_reply", "describe_failure", "describe_ending", "ending", "GRPC_WRITE_RACE", "WRITE_RACE",
           "MAX_SERVER_MS"]

#: The details grpc.aio gives a call whose write was under way when the server's status arrived; the
#: real status is lost (the server lingers to avoid it, see ``dyno.runtime.streams``).
GRPC_WRITE_RACE = "Internal error from Core"
#: What the client says instead.
WRITE_RACE = ("the server ended the stream while a request was being written (grpc then reports only "
              f"'INTERNAL: {GRPC_WRITE_RACE}': the server's reason is lost); taken as overload")
#: No reply's queue or compute time may claim more than this (about 3 hours).
MAX_SERVER_MS = 1e7
MAX_WORKERS = 4096        # headroom is in worker-seconds per second
MAX_PRESSURE = 20.0       # load / target utilisation: the target is at least 0.05


def _finite_in(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


def _scores_problem(scores: Iterable[float]) -> str | None:
    values = list(scores)
    if not all(_finite_in(s, 0.0, 1.0 + 1e-6) for s in values):
        return "scores must be probabilities in [0, 1]"
    if any(b > a + 1e-6 for a, b in zip(values, values[1:])):
        return "scores must be best first"
    return None


def check_reply(reply: pb.Reply, *, top_k: int, classes: int, want_logits: bool) -> str | None:
    """What is wrong with ``reply`` to a request that asked for ``top_k`` of ``classes`` classes, or
    None. Every number the client feeds its monitors or returns is checked: finite, in range."""
    for name in ("queue_ms", "compute_ms"):
        if not _finite_in(getattr(reply, name), 0.0, MAX_SERVER_MS):
            return f"{name} {getattr(reply, name)!r} is not a time in 0..{MAX_SERVER_MS:g} ms"
    if not _finite_in(reply.load, 0.0, 1.0):
        return f"load {reply.load!r} is not in [0, 1]"
    if reply.HasField("headroom") and not _finite_in(reply.headroom, 0.0, MAX_WORKERS):
        return f"headroom {reply.headroom!r} is not in 0..{MAX_WORKERS} worker-seconds per second"
    if reply.HasField("pressure") and not _finite_in(reply.pressure, 1.0, MAX_PRESSURE):
        return f"pressure {reply.pressure!r} is not in 1..{MAX_PRESSURE:g}"
    if not 1 <= reply.batch <= MAX_BATCH:
        return f"batch {reply.batch} is not in 1..{MAX_BATCH}"
    n = len(reply.classes)
    if not 1 <= n <= min(top_k, classes) or len(reply.scores) != n:
        return (f"{n} classes and {len(reply.scores)} scores for a request of top {top_k} "
                f"(of {classes} classes)")
    if any(c >= classes for c in reply.classes) or len(set(reply.classes)) != n:
        return f"classes must be distinct ids below {classes}"
    problem = _scores_problem(reply.scores)
    if problem:
        return problem
    if reply.logits or want_logits:
        if len(reply.logits) != classes or not all(math.isfinite(v) for v in reply.logits):
            return f"logits must be {classes} finite numbers, got {len(reply.logits)}"
    return None


def describe_ending(code: grpc.StatusCode | None, details: str) -> str:
    """One line for a stream that ended with ``code`` and ``details``."""
    if code == grpc.StatusCode.INTERNAL and details == GRPC_WRITE_RACE:
        return WRITE_RACE
    return f"{code.name if code else 'stream ended'}: {details[:300]}"


def ending(code: grpc.StatusCode | None, details: str) -> str:
    """How a stream that ended with ``code`` should be taken: ``"overload"`` (the server is busy or
    going away: finish on the device and back off before returning), ``"routine"`` (the server closed
    an idle or old stream: open a new one, no error) or ``"error"``."""
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith((IDLE_CLOSE, LIFETIME_CLOSE)):
        return "routine"
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED):
        return "overload"
    if code == grpc.StatusCode.INTERNAL and details == GRPC_WRITE_RACE:
        return "overload"  # the server ended the stream while we wrote: it refused us for a reason
    return "error"


_TLS_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED", "the server's certificate is not signed by the CA given ({})"),
    ("Hostname Verification", "the server's certificate does not name this host (set ClientTLS.server_name "
                              "to the name in it)"),
    ("WRONG_VERSION_NUMBER", "the server does not speak TLS (drop the CA, or start it with TLS)"),
)


def _tls_problem(text: str) -> str | None:
    if "Tls handshake failed" not in text and "Hostname Verification" not in text:
        return None
    for marker, reason in _TLS_REASONS:
        if marker in text:
            detail = re.search(r"CERTIFICATE_VERIFY_FAILED: ([^:|]+)", text)
            return reason.format(detail.group(1).strip() if detail else "verification failed")
    found = re.search(r"Tls handshake failed[^:]*: (.*)", text)
    return found.group(1)[:160] if found else "handshake failed"


def describe_failure(server: str, error: grpc.aio.AioRpcError, *, tls: bool) -> str:
    """One line saying why a call to ``server`` failed, with what to do about it."""
    code, details = error.code(), error.details() or ""
    text = f"{details} {error.debug_error_string() or ''}"
    tls_problem = _tls_problem(text)
    if tls_problem:
        return f"TLS handshake with {server} failed: {tls_problem}"
    if "Connection refused" in text:
        return f"cannot connect to {server}: connection refused (is the server running, on this port?)"
    if "errors resolving" in text or "DNS resolution failed" in text:
        return f"cannot connect to {server}: the host name does not resolve"
    if "Socket closed" in text and not tls:
        return f"cannot connect to {server}: the connection was closed during setup (does it expect TLS?)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{server} did not answer in time ({details})"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{server} refused this client's token: {details}"
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
        last = details.split("last error:", 1)[-1].strip()
        return f"cannot connect to {server}: {last[:200]}"
    return f"{server}: {code.name}: {details[:300]}"
