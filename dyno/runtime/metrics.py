"""Server metrics in the Prometheus text exposition format, and a tiny HTTP endpoint for them.

Three metric kinds, each with named labels, safe to update from any thread::

    registry = Registry()
    requests = registry.counter("dyno_requests_total", "Requests answered", ("cut", "code"))
    requests.inc(cut="3", code="OK")
    registry.render()      # the text a Prometheus scraper reads from /metrics

``MetricsEndpoint`` serves ``registry.render()`` at ``GET /metrics`` on the running asyncio loop
(no extra thread, no dependency). ``parse_text`` reads the format back (tests, ``dyno bench``).
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Iterable

__all__ = ["Registry", "Counter", "Gauge", "Histogram", "MetricsEndpoint", "ServerMetrics", "parse_text",
           "LATENCY_BUCKETS", "BATCH_BUCKETS"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        self.name, self.help, self.labels = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, object]) -> tuple[str, ...]:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labels)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count (requests, bytes)."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self._header() + [f"{self.name}{_format_labels(self.labels, k)} {_format_value(v)}"
                                 for k, v in items]


class Gauge(Counter):
    """A value that goes up and down (in-flight requests, load)."""

    kind = "gauge"

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self.inc(-amount, **labels)

    def set(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    """Counts of observations per bucket (cumulative on output), their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (),
                 buckets: Iterable[float] = LATENCY_BUCKETS):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._values: dict[tuple[str, ...], list[float]] = {}  # per bucket counts, then sum, count

    def observe(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            row = self._values.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    row[i] += 1
                    break
            row[-2] += value
            row[-1] += 1

    def render(self) -> list[str]:
        lines = self._header()
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._values.items())
        for key, row in items:
            cumulative = 0.0
            for bound, count in zip(self.buckets, row[:len(self.buckets)], strict=True):
                cumulative += count
                le = f'le="{_format_value(bound)}"'
                lines.append(f"{self.name}_bucket{_format_labels(self.labels, key, le)} "
                             f"{_format_value(cumulative)}")
            inf = _format_labels(self.labels, key, 'le="+Inf"')
            lines.append(f"{self.name}_bucket{inf} {_format_value(row[-1])}")
            lines.append(f"{self.name}_sum{_format_labels(self.labels, key)} {_format_value(row[-2])}")
            lines.append(f"{self.name}_count{_format_labels(self.labels, key)} {_format_value(row[-1])}")
        return lines


class Registry:
    """The set of metrics one server exports."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, labels: Iterable[str] = (),
                  buckets: Iterable[float] = LATENCY_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets))  # type: ignore[return-value]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """The metrics one dyno server exports (``registry.render()`` is the /metrics text)."""

    def __init__(self) -> None:
        self.registry = r = Registry()
        self.requests = r.counter("dyno_requests_total", "Requests answered or refused, by cut and status",
                                  ("cut", "code"))
        self.bytes = r.counter("dyno_request_bytes_total", "Frame bytes received (meta + payload), by cut",
                               ("cut",))
        self.batch = r.histogram("dyno_batch_size", "Requests per tail run, by cut", ("cut",), BATCH_BUCKETS)
        self.latency = r.histogram("dyno_request_latency_seconds",
                                   "Server time of a request, arrival to reply, by cut", ("cut",))
        self.queue = r.histogram("dyno_queue_seconds", "Arrival to start of the batch's compute, by cut",
                                 ("cut",))
        self.compute = r.histogram("dyno_compute_seconds", "Tail compute time per batch, by cut", ("cut",))
        self.compute_cpu = r.counter("dyno_compute_cpu_seconds_total",
                                     "CPU time of the compute thread in the tails (decode and tail), by cut",
                                     ("cut",))
        self.streams = r.gauge("dyno_streams", "Open Infer streams")
        self.in_flight = r.gauge("dyno_in_flight", "Requests accepted and not yet answered")
        self.load = r.gauge("dyno_load", "Share of the last second the compute workers were busy")


def parse_text(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse Prometheus text into {(sample name, sorted label pairs): value} (no escapes in values)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if "{" in head:
            name, _, rest = head.partition("{")
            pairs = []
            for part in rest.rstrip("}").split(","):
                if part:
                    k, _, v = part.partition("=")
                    pairs.append((k, v.strip('"')))
            labels = tuple(sorted(pairs))
        else:
            name, labels = head, ()
        out[(name, labels)] = float(value.replace("+Inf", "inf"))
    return out


class MetricsEndpoint:
    """``GET /metrics`` on the current asyncio loop; anything else is a 404. At most ``max_connections``
    are served at once (more are closed at once), each for at most ``REQUEST_TIMEOUT_S``."""

    REQUEST_TIMEOUT_S = 5.0

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 0, max_connections: int = 16):
        self.registry, self.host, self.port = registry, host, port
        self.max_connections = max_connections
        self.open = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= self.max_connections:
            writer.close()
            return
        self.open += 1
        try:
            await asyncio.wait_for(self._answer(reader, writer), timeout=self.REQUEST_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
        if request.startswith(b"GET ") and target.split(b"?")[0] == b"/metrics":
            body, status = self.registry.render().encode(), b"200 OK"
            kind = b"text/plain; version=0.0.4; charset=utf-8"
        else:
            body, status, kind = b"not found; try /metrics\n", b"404 Not Found", b"text/plain"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
