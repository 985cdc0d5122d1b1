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
import math
from pathlib import Path
from typing import Any

import grpc

from dyno.errors import ConfigError, PolicyError
from dyno.policy import SLO, Policy
from dyno.runtime.batching import BatchConfig

__all__ = ["TLSConfig", "ServerConfig", "ClientTLS", "ClientConfig", "channel_options",
           "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_TOP_K", "MAX_TOP_K"]

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
DEFAULT_TOP_K = 5        # classes per reply when a request asks for 0
MAX_TOP_K = 100          # the server refuses more (INVALID_ARGUMENT)


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """gRPC options both ends use: message size limits and keepalive."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _read(*paths: Path | None) -> list[bytes | None]:
    try:
        return [Path(p).read_bytes() if p else None for p in paths]
    except OSError as error:
        raise ConfigError(f"cannot read TLS file: {error}") from error


def _token_problem(token: object) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        return "a bearer token must be non-empty and contain no whitespace"
    return None


def _message_bytes_ok(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1024 <= value <= 2**31 - 1


# ---------------------------------------------------------------------------------------- server


@dataclasses.dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """Server TLS: certificate chain and key (PEM files); with ``client_ca`` clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        chain, key, ca = _read(self.cert, self.key, self.client_ca)
        assert chain is not None and key is not None
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca,
                                           require_client_auth=ca is not None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Limits, batching and security of one server. Every field has a safe default."""

    batching: BatchConfig = BatchConfig()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_streams: int = 256                  # concurrent calls, whole server
    max_streams_per_client: int = 16
    max_in_flight_per_client: int = 64      # requests accepted and not yet answered, per client
    token: str | None = None                # bearer token checked on every call
    tls: TLSConfig | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 0            # None: no metrics endpoint; 0: any free port
    torch_threads: int | None = None        # torch intra-op threads for the tails (None: leave)

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_streams_per_client",
                     "max_in_flight_per_client"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"ServerConfig.{name} must be an int >= 1, got {value!r}")
        if not _message_bytes_ok(self.max_message_bytes):
            raise ConfigError("ServerConfig.max_message_bytes must be in 1 KiB .. 2 GiB")
        problem = _token_problem(self.token)
        if problem:
            raise ConfigError(problem)

    def metrics_url(self, port: int | None) -> str | None:
        """The Prometheus endpoint's URL when it listens on ``port`` (None: no endpoint)."""
        return None if port is None else f"http://{self.metrics_host}:{port}/metrics"


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
        ca, cert, key = _read(self.ca, self.cert, self.key)
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value > 0


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
    - ``backoff``: (first, max) seconds between reconnection attempts, doubling, jittered.
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
