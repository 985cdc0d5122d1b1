"""One process of the fleet benchmark's devices: several real clients side by side, each with its own
emulated device and uplink, its own policy and monitors, all against one server.

Each client is fed frames at ``rate`` from its own phase (a camera); a frame that finds the client's
window full is dropped, as the simulator drops a frame that finds its backlog full. A client with
``"active": [[from_s, to_s], ...]`` is fed only inside those spans of the run (a stepped load: the
autoscaling benchmark); frames outside them are neither demanded nor dropped. The child reports,
per client, every answered frame (latency from the frame's time, the choice, where it finished) and how
many frames it was asked for and dropped.

    spec = {"plan_path": ..., "weights": "trained", "server": "127.0.0.1:5001", "slo": "...", "rate": 10.0,
            "duration": 20.0, "window": 8, "n": 64, "clients": [{"system": "dyno", "slowdown": 1.3,
            "trace": {"times": [...], "rates": [...], "name": ...}, "offset": 12.5, "phase": 0.03,
            "probe_phase": 0.62}, ...]}
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dyno.bench.child import answer

__all__ = ["worker_main"]


class _Feed:
    """One client's frames: submitted at their times unless the window is full."""

    def __init__(self, client: Any, xs: Any, ys: list[int], spec: dict[str, Any], window: int) -> None:
        self.client, self.xs, self.ys, self.spec, self.window = client, xs, ys, spec, window
        self.outstanding = 0
        self.demanded = self.dropped = 0
        self.answers: list[tuple] = []
        self.lock = threading.Lock()

    def _answered(self, future: Any, index: int) -> None:
        result = future.result()
        with self.lock:
            self.outstanding -= 1
            self.answers.append((result.latency_ms, result.cut, result.codec, result.bits, result.where,
                                 result.finished, result.top1 == self.ys[index % len(self.ys)], result.bytes))

    def _active(self, t: float) -> bool:
        spans = self.spec.get("active")
        return spans is None or any(low <= t < high for low, high in spans)

    def run(self, start: float, duration: float, rate: float) -> None:
        period, k = 1.0 / rate, 0
        while True:
            at = start + self.spec["phase"] + k * period
            if at - start >= duration:
                return
            if not self._active(at - start):
                k += 1
                continue
            delay = at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.demanded += 1
            with self.lock:
                full = self.outstanding >= self.window
                if not full:
                    self.outstanding += 1
            if full:
                self.dropped += 1
            else:
                future = self.client.submit(self.xs[k % len(self.xs)])
                future.add_done_callback(lambda f, i=k: self._answered(f, i))
            k += 1


def _clients(spec: dict[str, Any], plan: Any, model: Any, splits: Any) -> list[Any]:
    from dyno.bench.simulate import build_policy
    from dyno.emulate.device import Device
    from dyno.emulate.link import Link
    from dyno.emulate.traces import Trace
    from dyno.monitor import Monitors
    from dyno.runtime import Client, ClientConfig

    clients = []
    for c in spec["clients"]:
        trace = Trace(c["trace"]["times"], c["trace"]["rates"], name=c["trace"]["name"]).shifted(c["offset"])
        device = Device(c["slowdown"], mode="pad") if c["slowdown"] > 1.0 else None
        monitors = Monitors(plan, initial_bandwidth_bps=max(trace.rate_bps(0.0), 1e3), initial_slowdown=c["slowdown"])
        policy = build_policy(c["system"])
        policy.desynchronise(c.get("probe_phase", 0.0))   # clients started together do not probe together
        config = ClientConfig(server=spec["server"], policy=policy, slo=spec["slo"], in_flight=spec["window"],
                              timeout=10.0)
        clients.append((Client(plan, model, config, link=Link(trace), device=device, monitors=monitors,
                               splits=splits), device))
    return clients


def _run(spec: dict[str, Any], conn: Any) -> list[dict[str, Any]]:
    import torch

    from dyno import zoo
    from dyno.bench.session import labelled
    from dyno.plan import Plan
    from dyno.runtime import Splits

    torch.set_num_threads(1)
    plan = Plan.load(spec["plan_path"])
    model = zoo.load_model(plan.model, weights=spec["weights"])
    xs, ys = labelled(plan.model, spec.get("data"), spec["n"])
    splits = Splits(model, plan)
    splits.warm()
    clients = _clients(spec, plan, model, splits)
    feeds = [_Feed(client, xs, ys, c, spec["window"]) for (client, _), c in zip(clients, spec["clients"], strict=True)]
    conn.send(("ready", None))
    conn.recv()
    start = time.perf_counter()
    threads = [threading.Thread(target=f.run, args=(start, spec["duration"], spec["rate"]), daemon=True) for f in feeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out = []
    for (client, device), feed in zip(clients, feeds, strict=True):
        client.close()                       # waits for the frames under way
        if device is not None:
            device.close()
        out.append({"demanded": feed.demanded, "dropped": feed.dropped, "answers": feed.answers,
                    "start": start, "stats": dict(client.stats)})
    return out


def worker_main(spec: dict[str, Any], conn: Any) -> None:
    """The child's body: ("ready", None), waits for ("go", None), then ("done", per-client reports) or
    ("error", text) (``dyno.bench.child``)."""
    answer(conn, lambda: _run(spec, conn))
