"""The client's one config object: validation names the field, the repr is readable and keeps the token
secret, and ``Client(plan, model, **settings)`` is sugar for a ``ClientConfig``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from nets import tiny_model

from dyno.errors import ConfigError
from dyno.offline import nominal_plan as tiny_plan
from dyno.policy import SLO
from dyno.runtime import Client, ClientConfig, ClientTLS, ServerConfig, TLSConfig

BAD = [
    ("server", ""), ("server", "host :50051"), ("server", 50051),
    ("policy", ""), ("policy", 3),
    ("slo", "speed;drop<=1"), ("slo", "throughput;drop<<1"), ("slo", 7),
    ("in_flight", 0), ("in_flight", 1025), ("in_flight", 2.0), ("in_flight", True),
    ("timeout", 0), ("timeout", -1.0), ("timeout", float("nan")), ("timeout", "2"),
    ("connect_timeout", 0.0), ("connect_timeout", float("inf")),
    ("stream_lifetime", 8.0),  # not > 4 x the default 2 s timeout
    ("backoff", (0.0, 1.0)), ("backoff", (2.0, 1.0)), ("backoff", (1.0,)), ("backoff", "fast"),
    ("token", ""), ("token", "two words"), ("token", 12345),
    ("tls", "ca.pem"),
    ("top_k", 0), ("top_k", 101), ("top_k", 2.5),
    ("want_logits", "yes"), ("warm", None),
    ("max_message_bytes", 100), ("max_message_bytes", 2**31), ("max_message_bytes", 8e6),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_a_bad_value_is_a_config_error_naming_its_field(field, value):
    with pytest.raises(ConfigError, match=rf"ClientConfig\.{field}\b"):
        ClientConfig(**{field: value})


def test_defaults_and_normalised_values():
    config = ClientConfig()
    assert (config.server, config.policy, config.in_flight, config.timeout, config.connect_timeout,
            config.stream_lifetime, config.backoff, config.token, config.tls, config.top_k,
            config.want_logits, config.max_message_bytes, config.warm) == (
        None, "dyno", 8, 2.0, 2.0, 600.0, (0.1, 2.0), None, None, 5, False, 8 * 1024 * 1024, True)
    assert config.slo == SLO()
    parsed = ClientConfig(slo="throughput;drop<=1", backoff=[0.05, 1])
    assert parsed.slo == SLO.parse("throughput;drop<=1") and str(parsed.slo) == "throughput;drop<=1"
    assert parsed.backoff == (0.05, 1.0) and isinstance(parsed.backoff, tuple)
    assert ClientConfig(timeout=200, stream_lifetime=801).timeout == 200
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.in_flight = 4  # type: ignore[misc]


def test_replace_validates_and_refuses_unknown_settings():
    config = ClientConfig(server="127.0.0.1:50051", in_flight=4)
    changed = config.replace(top_k=3, token="t0ken")
    assert (changed.server, changed.in_flight, changed.top_k, changed.token) == ("127.0.0.1:50051", 4, 3, "t0ken")
    assert config.top_k == 5 and config.token is None  # the original is unchanged
    with pytest.raises(ConfigError, match=r"ClientConfig\.in_flight"):
        config.replace(in_flight=0)
    with pytest.raises(TypeError, match="in_flite"):
        config.replace(in_flite=4)


def test_the_repr_shows_what_differs_from_the_defaults_and_hides_the_token(tmp_path):
    assert repr(ClientConfig()) == "ClientConfig(server=None)"
    config = ClientConfig(server="127.0.0.1:50051", slo="throughput;drop<=1", in_flight=4,
                          token="s3cret-token", tls=ClientTLS(ca=tmp_path / "ca.pem"))
    text = repr(config)
    assert text.startswith("ClientConfig(server='127.0.0.1:50051', slo='throughput;drop<=1', in_flight=4, "
                           "token='***', tls=ClientTLS(")
    assert "s3cret" not in text


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model(seed=0)
    return tiny_plan(model), model


def test_client_keywords_are_settings_of_its_config(tiny):
    plan, model = tiny
    torch.manual_seed(4)
    inputs = torch.randn(6, 1, 28, 28)
    with torch.inference_mode():
        expected = model(inputs).argmax(1).tolist()
    with Client(plan, model, policy="device-only", in_flight=3, top_k=2) as client:
        assert client.config == ClientConfig(policy="device-only", in_flight=3, top_k=2)
        results = list(client.map(inputs))
    assert [r.top1 for r in results] == expected and all(len(r.classes) == 2 for r in results)
    assert [r.where for r in results] == ["device"] * 6 and client.stats["device"] == 6
    base = ClientConfig(policy="device-only", in_flight=3, warm=False)
    with Client(plan, model, base, top_k=1) as client:  # keywords replace fields of the config
        assert client.config == base.replace(top_k=1)
        assert client.infer(inputs[0]).classes == (expected[0],)
    with pytest.raises(TypeError, match="in_flite"):
        Client(plan, model, in_flite=3)
    with pytest.raises(ConfigError, match=r"ClientConfig\.in_flight"):
        Client(plan, model, in_flight=0)


# ------------------------------------------------------------------------------------ the server's


SERVER_BAD = [
    ("batching", "fast"), ("max_message_bytes", 100), ("max_message_bytes", float("nan")),
    ("max_streams", 0), ("max_streams", True), ("max_streams", 2.0), ("max_streams_per_client", -1),
    ("max_in_flight_per_client", 0), ("max_queued_requests", 0),
    ("max_queued_bytes", 1024), ("max_queued_bytes", 2**50),  # below max_message_bytes; absurd
    ("max_queue_ms", 0), ("max_queue_ms", float("nan")), ("max_queue_ms", "100"), ("max_queue_ms", 2.0),
    ("idle_timeout_s", float("inf")), ("idle_timeout_s", -1.0), ("max_stream_lifetime_s", 0),
    ("token", ""), ("token", "two words"), ("tls", "cert.pem"),
    ("metrics_host", ""), ("metrics_host", "a host"), ("metrics_host", 127),
    ("metrics_port", 99999), ("metrics_port", -1), ("metrics_port", 80.0), ("metrics_port", True),
    ("torch_threads", 0), ("torch_threads", -4), ("torch_threads", 2.0),
]


@pytest.mark.parametrize(("field", "value"), SERVER_BAD, ids=[f"{f}={v!r}" for f, v in SERVER_BAD])
def test_a_bad_server_value_is_a_config_error_naming_its_field(field, value):
    with pytest.raises(ConfigError, match=rf"ServerConfig\.{field}\b"):
        ServerConfig(**{field: value})


def test_server_defaults_bound_work_not_streams():
    config = ServerConfig()
    assert (config.max_streams, config.max_streams_per_client, config.max_in_flight_per_client,
            config.max_queued_requests, config.max_queued_bytes, config.max_queue_ms, config.idle_timeout_s,
            config.max_stream_lifetime_s) == (1024, 64, 256, 4096, 64 * 2**20, 1000.0, 60.0, 600.0)
    # the server's stream lifetime is no shorter than the client's (which rotates at half of it), and
    # its queue budget leaves room in the client's timeout
    assert config.max_stream_lifetime_s >= ClientConfig().stream_lifetime
    assert config.max_queue_ms / 1000 < ClientConfig().timeout
    assert ServerConfig(metrics_port=None, torch_threads=2).torch_threads == 2


@pytest.mark.parametrize(("address", "tls", "token", "missing"), [
    ("127.0.0.1:50051", False, False, None), ("[::1]:50051", False, False, None),
    ("localhost:50051", False, False, None), ("0.0.0.0:50051", False, False, "without TLS and a token"),
    ("[::]:50051", True, False, "without a token"), ("10.1.2.3:50051", False, True, "without TLS"),
    ("myhost:50051", True, True, None),
])
def test_listening_beyond_loopback_without_tls_or_token_is_warned_about(tmp_path, address, tls, token,
                                                                         missing):
    config = ServerConfig(tls=TLSConfig(cert=tmp_path / "c.pem", key=tmp_path / "k.pem") if tls else None,
                          token="t0ken" if token else None)
    warning = config.exposure_warning(address)
    if missing is None:
        assert warning is None
    else:
        assert warning is not None and address in warning and missing in warning


def test_the_cloud_signal_is_headroom_below_the_target_and_pressure_above_it():
    from dyno.runtime import BatchConfig

    config = ServerConfig(batching=BatchConfig(workers=2), target_utilisation=0.8)
    assert config.cloud_signal(0.3) == pytest.approx((1.0, 1.0))      # (0.8 - 0.3) x 2 workers free
    assert config.cloud_signal(0.8) == pytest.approx((0.0, 1.0))
    assert config.cloud_signal(1.0) == pytest.approx((0.0, 1.25))     # each device sheds a fifth
    with pytest.raises(ConfigError, match="target_utilisation"):
        ServerConfig(target_utilisation=1.5)
