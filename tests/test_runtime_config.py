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
from dyno.runtime import Client, ClientConfig, ClientTLS

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
