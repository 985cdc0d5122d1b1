"""Settings of both ends, as small frozen objects: the server's (``ServerConfig``, ``TLSConfig``), the
client's (``ClientConfig``, ``ClientTLS``) and the gRPC channel options both ends use.

Every object validates itself on construction and names the field that is wrong::

    ClientConfig(server="127.0.0.1:50051", in_flight=0)
    # ConfigError: ClientConfig.in_flight must be an int in 1..1024, got 0

    config = ClientConfig(server="127.0.0.1:50051", slo="throughput;drop<=1")
    config.replace(in_flight=4)          # a new config; the old one is unchanged
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import ssl
from pathlib import Path
from typing import Any

import grpc

from dyno.errors import ConfigError, PolicyError
from dyno.policy import SLO, Policy
from dyno.runtime.batching import BatchConfig

__all__ = ["TLSConfig", "ServerConfig", "ClientTLS", "ClientConfig", "channel_options", "is_loopback",
           "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_TOP_K", "MAX_TOP_K", "IDLE_CLOSE", "LIFETIME_CLOSE"]

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
DEFAULT_TOP_K = 5        # classes per reply when a request asks for 0
MAX_TOP_K = 100          # the server refuses more (INVALID_ARGUMENT)
# How the details of an UNAVAILABLE status begin when the server ends a stream that did nothing wrong:
# the client opens a new stream without counting an error.
IDLE_CLOSE = "idle stream closed"
LIFETIME_CLOSE = "stream lifetime reached"


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """gRPC options both ends use: message size limits and keepalive."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # a server takes the clients' keepalive pings without data (its default wants 5 minutes between
        # them, and answers more with GOAWAY "too_many_pings", which breaks idle clients' connections)
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def _read(*paths: Path | None) -> list[bytes | None]:
    try:
        return [Path(p).read_bytes() if p else None for p in paths]
    except OSError as error:
        raise ConfigError(f"cannot read TLS file: {error}") from error


def _check_pem(cert: Path | None, key: Path | None, ca: Path | None) -> None:
    """Load the PEM files the way OpenSSL will, so that a wrong file is a ConfigError naming it rather
    than gRPC's "Failed to bind" (or a handshake that fails later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if cert is not None:
            context.load_cert_chain(certfile=cert, keyfile=key)
        if ca is not None:
            context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, ValueError) as error:
        files = ", ".join(str(p) for p in (cert, key, ca) if p is not None)
        raise ConfigError(f"TLS files {files}: not a PEM certificate and matching private key (or CA) "
                          f"OpenSSL can load ({error})") from None
    except OSError as error:
        raise ConfigError(f"cannot read TLS file: {error}") from error


def _token_problem(token: object) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        return "a bearer token must be non-empty and contain no whitespace"
    return None


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _message_bytes_ok(value: object) -> bool:
    return _int_in(value, 1024, 2**31 - 1)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value > 0


# ---------------------------------------------------------------------------------------- server


@dataclasses.dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """Server TLS: certificate chain and key (PEM files); with ``client_ca`` clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        _check_pem(self.cert, self.key, self.client_ca)
        chain, key, ca = _read(self.cert, self.key, self.client_ca)
        assert chain is not None and key is not None
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca,
                                           require_client_auth=ca is not None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Limits, batching and security of one server. Every field has a safe default.

    A *client* is one (bearer token, client IP) pair (``dyno.runtime.admission``). Streams are cheap
    (tens of KB each); the limits that protect the server's time are on requests:

    - ``max_streams`` / ``max_streams_per_client``: open Infer streams; a newcomer over either takes
      the place of a stream idle for a second or more (closed as idle), and is refused only when none is;
    - ``max_in_flight_per_client``: requests accepted and not yet answered, per client;
    - ``max_queued_requests`` / ``max_queued_bytes``: the same across all clients (bytes: meta + payload);
    - ``max_queue_ms``: the longest a request waits for its compute to start: one the server estimates
      would wait longer is refused on arrival, and one that has waited this long is refused rather
      than run late (keep it well under the clients' timeout: ``ClientConfig``'s default is 2 s);
    - ``idle_timeout_s``: a stream with no request in flight for this long is closed (UNAVAILABLE,
      details starting ``IDLE_CLOSE``); ``max_stream_lifetime_s``: a stream older than this takes no
      new request, answers those it has, then closes (UNAVAILABLE, ``LIFETIME_CLOSE``). Clients rotate
      their stream at half their ``stream_lifetime``; keep that <= this.
    Every refusal for load is RESOURCE_EXHAUSTED (UNAVAILABLE while the server drains).
    """

    batching: BatchConfig = BatchConfig()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_streams: int = 1024                 # open Infer streams, whole server
    max_streams_per_client: int = 64
    max_in_flight_per_client: int = 256     # requests accepted and not yet answered, per client
    max_queued_requests: int = 4096         # the same, whole server
    max_queued_bytes: int = 64 * 1024 * 1024
    max_queue_ms: float = 1000.0            # longest a request may wait for its compute to start
    idle_timeout_s: float = 60.0
    max_stream_lifetime_s: float = 600.0    # = ClientConfig.stream_lifetime's default
    token: str | None = None                # bearer token checked on every call
    tls: TLSConfig | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 0            # None: no metrics endpoint; 0: any free port
    torch_threads: int | None = None        # torch intra-op threads for the tails (None: leave)
    target_utilisation: float = 1.0         # above it, devices are asked to take work back (pressure)

    def cloud_signal(self, load: float) -> tuple[float, float]:
        """(headroom, pressure) for a reply (``dyno.monitor``): worker-seconds per second the server can
        still take before ``target_utilisation``, and how far above the target it runs (>= 1)."""
        target = self.target_utilisation
        return max(0.0, target - load) * self.batching.workers, max(1.0, load / target)

    def __post_init__(self) -> None:
        if not (isinstance(self.target_utilisation, (int, float)) and 0.05 <= self.target_utilisation <= 1.0):
            raise ConfigError("ServerConfig.target_utilisation must be in 0.05..1, got "
                              f"{self.target_utilisation!r}")
        if not isinstance(self.batching, BatchConfig):
            raise ConfigError(f"ServerConfig.batching must be a BatchConfig, got {self.batching!r}")
        self._check_limits()
        problem = _token_problem(self.token)
        if problem:
            raise ConfigError(f"ServerConfig.token: {problem}")
        if self.tls is not None and not isinstance(self.tls, TLSConfig):
            raise ConfigError(f"ServerConfig.tls must be a TLSConfig or None, got {self.tls!r}")
        if not isinstance(self.metrics_host, str) or not self.metrics_host.strip() \
                or any(c.isspace() for c in self.metrics_host):
            raise ConfigError(f"ServerConfig.metrics_host must be a host name or address, got {self.metrics_host!r}")
        if self.metrics_port is not None and not _int_in(self.metrics_port, 0, 65535):
            raise ConfigError(f"ServerConfig.metrics_port must be an int in 0..65535 or None, "
                              f"got {self.metrics_port!r}")
        if self.torch_threads is not None and not _int_in(self.torch_threads, 1, 1024):
            raise ConfigError(f"ServerConfig.torch_threads must be an int in 1..1024 or None, "
                              f"got {self.torch_threads!r}")

    def _check_limits(self) -> None:
        for name in ("max_streams", "max_streams_per_client", "max_in_flight_per_client",
                     "max_queued_requests"):
            if not _int_in(getattr(self, name), 1, 1_000_000):
                raise ConfigError(f"ServerConfig.{name} must be an int in 1..1000000, got {getattr(self, name)!r}")
        if not _message_bytes_ok(self.max_message_bytes):
            raise ConfigError(f"ServerConfig.max_message_bytes must be an int in 1 KiB .. 2 GiB, "
                              f"got {self.max_message_bytes!r}")
        if not _int_in(self.max_queued_bytes, self.max_message_bytes if _message_bytes_ok(self.max_message_bytes)
                       else 1024, 2**40):
            raise ConfigError(f"ServerConfig.max_queued_bytes must be an int >= max_message_bytes "
                              f"({self.max_message_bytes}), got {self.max_queued_bytes!r}")
        for name in ("max_queue_ms", "idle_timeout_s", "max_stream_lifetime_s"):
            if not _positive(getattr(self, name)):
                raise ConfigError(f"ServerConfig.{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if not self.max_queue_ms > self.batching.max_wait_ms:
            raise ConfigError(f"ServerConfig.max_queue_ms ({self.max_queue_ms:g}) must exceed batching.max_wait_ms "
                              f"({self.batching.max_wait_ms:g}): a request waits up to that for its batch to fill")

    def metrics_url(self, port: int | None) -> str | None:
        """The Prometheus endpoint's URL when it listens on ``port`` (None: no endpoint)."""
        return None if port is None else f"http://{self.metrics_host}:{port}/metrics"

    def exposure_warning(self, address: str) -> str | None:
        """A warning when ``address`` (host:port) is reachable from other machines and the server
        has neither TLS nor a token (anyone there could use it, and read what is sent); else None."""
        host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
        if is_loopback(host) or (self.tls is not None and self.token is not None):
            return None
        missing = " and ".join(n for n, v in (("TLS", self.tls), ("a token", self.token)) if v is None)
        return (f"listening on {address}, reachable from other machines, without {missing}: anyone who "
                f"can reach it can use it{' and read the frames' if self.tls is None else ''}; "
                "set a token and TLS, or listen on 127.0.0.1")


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------- client


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
        _check_pem(self.cert, self.key, self.ca)
        ca, cert, key = _read(self.ca, self.cert, self.key)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class ClientConfig:
    """How a device client talks to the cloud (see ``dyno.runtime.client``).

    - ``server``: ``host:port`` of the cloud; None: no cloud, every inference runs on the device.
    - ``policy``: a registered name (``dyno.policy.names()``) or a ``Policy``; ``slo``: an ``SLO`` or
      its text form (stored parsed; None: ``SLO()``).
    - ``in_flight``: inferences under way at once (the pipeline's window).
    - ``timeout``: seconds a reply may take before its inference finishes on the device;
      ``connect_timeout``: seconds for the server to describe itself; ``stream_lifetime``: seconds a
      stream lives before a fresh one takes new requests (> 4 x ``timeout``).
    - ``backoff``: (first, max) seconds between reconnection attempts, and before returning to a
      server that said it is overloaded; doubling, jittered.
    - ``token``: bearer token sent on every call; ``tls``: ``ClientTLS`` (None: plaintext).
    - ``top_k``: classes per result; ``want_logits``: also return the logit vector.
    - ``max_message_bytes``: the largest gRPC message either way.
    - ``warm``: build every head and tail and initialise every codec before the first input.
    """

    server: str | None = None
    policy: str | Policy = "dyno"
    slo: SLO | str | None = None
    in_flight: int = 8
    timeout: float = 2.0
    connect_timeout: float = 2.0
    stream_lifetime: float = 600.0
    backoff: tuple[float, float] = (0.1, 2.0)
    token: str | None = None
    tls: ClientTLS | None = None
    top_k: int = DEFAULT_TOP_K
    want_logits: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    warm: bool = True

    def __post_init__(self) -> None:
        self._check_peers()
        self._check_numbers()
        for name in ("want_logits", "warm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ClientConfig.{name} must be True or False, got {getattr(self, name)!r}")

    def _check_peers(self) -> None:
        if self.server is not None and (not isinstance(self.server, str) or not self.server.strip()
                                        or any(c.isspace() for c in self.server)):
            raise ConfigError(f"ClientConfig.server must be 'host:port' or None, got {self.server!r}")
        if isinstance(self.policy, str):
            if not self.policy.strip():
                raise ConfigError("ClientConfig.policy must name a policy (dyno.policy.names()) or be one")
        elif not callable(getattr(self.policy, "decide", None)):
            raise ConfigError(f"ClientConfig.policy must be a policy name or a Policy, got {self.policy!r}")
        object.__setattr__(self, "slo", _parse_slo(self.slo))
        problem = _token_problem(self.token)
        if problem:
            raise ConfigError(f"ClientConfig.token: {problem}")
        if self.tls is not None and not isinstance(self.tls, ClientTLS):
            raise ConfigError(f"ClientConfig.tls must be a ClientTLS or None, got {self.tls!r}")

    def _check_numbers(self) -> None:
        if not (isinstance(self.in_flight, int) and not isinstance(self.in_flight, bool)
                and 1 <= self.in_flight <= 1024):
            raise ConfigError(f"ClientConfig.in_flight must be an int in 1..1024, got {self.in_flight!r}")
        for name in ("timeout", "connect_timeout", "stream_lifetime"):
            if not _positive(getattr(self, name)):
                raise ConfigError(f"ClientConfig.{name} must be a number of seconds > 0, "
                                  f"got {getattr(self, name)!r}")
        if not self.stream_lifetime > 4 * self.timeout:
            raise ConfigError(f"ClientConfig.stream_lifetime must be > 4 * timeout ({4 * self.timeout:g} s), "
                              f"got {self.stream_lifetime!r}")
        backoff = self.backoff
        if not (isinstance(backoff, (tuple, list)) and len(backoff) == 2 and all(map(_positive, backoff))
                and backoff[0] <= backoff[1]):
            raise ConfigError(f"ClientConfig.backoff must be (first, max) seconds with 0 < first <= max, "
                              f"got {backoff!r}")
        object.__setattr__(self, "backoff", (float(backoff[0]), float(backoff[1])))
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and 1 <= self.top_k <= MAX_TOP_K):
            raise ConfigError(f"ClientConfig.top_k must be an int in 1..{MAX_TOP_K}, got {self.top_k!r}")
        if not _message_bytes_ok(self.max_message_bytes):
            raise ConfigError(f"ClientConfig.max_message_bytes must be an int in 1 KiB .. 2 GiB, "
                              f"got {self.max_message_bytes!r}")

    def replace(self, **changes: Any) -> ClientConfig:
        """A copy with ``changes`` applied (validated again). Unknown names are a TypeError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown client setting(s) {', '.join(unknown)}; known: "
                            + ", ".join(f.name for f in dataclasses.fields(self)))
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        """The server and every field that differs from its default; the token is never shown."""
        shown = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            default = _parse_slo(None) if field.name == "slo" else field.default
            if field.name != "server" and value == default:
                continue
            if field.name == "token":
                text = "'***'"
            elif field.name == "slo":
                text = repr(str(value))
            elif field.name == "policy" and not isinstance(value, str):
                text = f"<{type(value).__name__}>"
            else:
                text = repr(value)
            shown.append(f"{field.name}={text}")
        return f"ClientConfig({', '.join(shown)})"


def _parse_slo(slo: object) -> SLO:
    if slo is None:
        return SLO()
    if isinstance(slo, SLO):
        return slo
    if isinstance(slo, str):
        try:
            return SLO.parse(slo)
        except PolicyError as error:
            raise ConfigError(f"ClientConfig.slo: {error}") from error
    raise ConfigError(f"ClientConfig.slo must be an SLO, its text form or None, got {slo!r}")
