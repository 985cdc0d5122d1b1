"""Many clients, one server, on the real runtime: eight real clients, each with its own emulated device,
against one real server on loopback (issue 10, "Done when")."""

from __future__ import annotations

import collections
import threading

import pytest
import torch
from nets import tiny_model

from dyno.emulate.device import Device
from dyno.offline import nominal_plan
from dyno.runtime import Client, ServerConfig, ServerThread, Splits

CLIENTS = 8
PER_CLIENT = 40


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=0)
    plan = nominal_plan(model)
    torch.manual_seed(3)
    return model, plan, Splits(model, plan), torch.randn(PER_CLIENT, 1, 28, 28)


def _fleet(setup, target: float) -> tuple[dict[int, list], dict[int, float]]:
    """Eight clients at once (a device 20x slower than this machine each, the dyno policy) against one
    server that asks to stay under ``target`` utilisation; every client's results and its last estimate
    of the cloud capacity it may use."""
    model, plan, splits, data = setup
    results: dict[int, list] = {}
    capacity: dict[int, float] = {}
    errors: list[BaseException] = []
    with ServerThread(plan, model, ServerConfig(target_utilisation=target), splits=splits) as running:
        def one(k: int) -> None:
            try:
                with Client(plan, model, server=running.address, policy="dyno", splits=splits, in_flight=4,
                            device=Device(20.0)) as client:
                    results[k] = list(client.map(data))
                    capacity[k] = client.estimates().cloud_capacity
            except BaseException as error:  # noqa: BLE001 (re-raised in the test's thread)
                errors.append(error)
        threads = [threading.Thread(target=one, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    if errors:
        raise errors[0]
    return results, capacity


def test_eight_clients_one_server_every_inference_answered_and_the_load_signal_steers_them(setup):
    model, _, _, data = setup
    with torch.inference_mode():
        expected = model(data).argmax(1).tolist()
    where: dict[float, collections.Counter] = {}
    capacity: dict[float, list[float]] = {}
    for target in (1.0, 0.05):
        results, caps = _fleet(setup, target)
        assert sorted(results) == list(range(CLIENTS))
        for k, rs in results.items():   # every inference answered, in order, nearly always with the fp32
            assert [r.index for r in rs] == list(range(PER_CLIENT)), k      # model's class (an untrained
            agree = sum(r.classes[0] == e for r, e in zip(rs, expected, strict=True))  # net: quantised
            assert agree >= 0.85 * PER_CLIENT, (k, agree)                   # splits flip a few)
        where[target] = collections.Counter(r.where for rs in results.values() for r in rs)
        # a client whose every request the server refused (admission) ran all on its device: it never
        # had a reply to hear the load signal in
        heard = {k for k, rs in results.items() if any(r.where == "cloud" for r in rs)}
        assert all(r.where == "device" for k in set(results) - heard for r in results[k])
        assert len(heard) >= CLIENTS // 2
        capacity[target] = sorted(caps[k] for k in heard)
    total = CLIENTS * PER_CLIENT
    # an idle server lets the slow devices offload most of their work ...
    assert where[1.0]["cloud"] > 0.6 * total
    # ... and a server asking them to keep it under 5% busy is heard by every client it answers: each
    # prices the cloud at far less capacity, and the fleet keeps most of its work on the devices
    assert max(capacity[0.05]) < 0.5 * min(capacity[1.0])
    assert where[0.05]["cloud"] < 0.5 * where[1.0]["cloud"]
