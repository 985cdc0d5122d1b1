"""The client's own cost per inference, measured once when a run starts: what the performance model's
device stage needs besides the head and the encoding (``Estimates.offload_overhead_ms`` and
``local_overhead_ms``), for the policy and for the simulator that is compared with the run.

On a small model the client's work - the decision, futures and queues, framing, the RPC and its reply -
is as long as the head itself (fmnist-resnet: about 0.5 ms beside a 1.1 ms model): without it the model
predicted device-only at 690/s where the runtime ran 510/s.

Measured as CPU time of this whole process (every thread: the device thread and the connection's loop)
per inference over ``seconds`` of inferences, minus the head's own time and the option's encoding
time: once all on the device (a client without a cloud, device-only), once offloaded (cloud-only, JPEG
at the input, against ``server``). CPU time is what the work costs whether or not the link or the cloud
make the client wait. It becomes wall time at the device's speed for that work: times the slowdown when
the whole client process is slowed (a cgroup CPU quota), as is when only the heads are padded.

Device-only and offloaded runs take turns over ``CALIBRATION_ROUNDS`` rounds, and each figure is the
median over them: measured once each, one calibration in 24 of a bench read the offloaded client's CPU
0.48 ms per inference where the rows beside it read 0.35, and the simulator put cloud-only 14% below
what it then ran.

The head's own time is its CPU time now (the whole model, one thread, timed on this thread), not the
plan's profile: a profile timed on a busier afternoon is longer than the head now, and subtracting it
left no overhead at all (0.0 ms measured where the runtime spent 0.38 ms per inference, and DynO priced
its device 20% fast); nor the head's wall time in the run, which beside other work waits for a core.

    overheads = client_overheads(plan, model, xs, server=address, device=device, slowdown=1.3, whole=True)
    overheads["offload_ms"], overheads["local_ms"], overheads["server_factor"]

The head's CPU time over the plan's profile is this machine's device speed now (``device_factor``). The
offloaded run also reads the server's speed now: its replies' compute time per sample over the plan's
profile (``server_factor``; the decoding is in the compute time, so it is above 1 even when the machine
is as fast as when it was profiled), and the batch size its requests ran in (``server_batch``: a
server batches what waits for it, so cloud-only's per-sample cost is the batched one). A simulator
compared with this run scales each tier's slowdown by the first and the cloud by the second: the plan's
profiles were measured at another time, on a machine other work shares.

``server_warmth`` reads how much slower the server computes a request that finds it idle: one client sends
requests one at a time, back to back and then spaced apart (``GAPS_MS``), and the server's time per
request against the time it sat idle before, over the back-to-back one, is the simulated cloud's ``cold``
(``dyno.simulate.CloudConfig``). Calibrated flat out alone, the simulator priced one device sending 10
requests a second at 1.24 ms per request where the server spent 1.67. The spacings take turns over
``ROUNDS`` rounds and each point is a median over them: measured one spacing after the other, the 20 ms
point read 1.06, 1.37 and 1.25 times the back-to-back time in three runs of the fleet bench, and a fleet
of 8 devices (a request every 12.5 ms) was simulated 0.77-1.27 times what the server then spent.
"""

from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["client_overheads", "server_warmth", "cloud_only", "counted_scale", "GAPS_MS", "ROUNDS",
           "CALIBRATION_ROUNDS"]

#: The spacings of ``server_warmth``'s requests, and how many it sends at each.
GAPS_MS = (0.0, 5.0, 10.0, 20.0, 100.0)
COUNTS = (40, 30, 25, 20, 10)
ROUNDS = 3
#: Rounds of ``client_overheads``: each of its runs lasts ``seconds / CALIBRATION_ROUNDS``.
CALIBRATION_ROUNDS = 3


def cloud_only(plan: Any) -> tuple[str, Any]:
    """The policy that sends every input to the calibrated server, and the plan's option it sends:
    cloud-only's JPEG where the plan has one, the raw input (no option) otherwise."""
    option = next((o for o in plan.cuts[0].options if o.codec == "jpeg"), None)
    return ("cloud-only" if option is not None else "cloud-only-raw"), option


def _cpu_per_inference(plan: Any, model: Any, xs: Any, config: Any, *, device: Any, splits: Any,
                       seconds: float) -> tuple[float, int, Any]:
    """(CPU seconds per inference, inferences, the estimates at the end: the server's speed), through
    the session a run goes through (``dyno.bench.session``: its recording of each result, the policy's
    decision log): timed with a bare client, the client's work read 5-10% short of the run's."""
    from dyno.bench.record import Recorder
    from dyno.bench.session import SystemRun, Workload, run_system
    from dyno.policy import make

    ys = [0] * len(xs)
    config = config.replace(policy=Recorder(make(config.policy)))
    run_system(SystemRun("warm", 0.0), plan, model, Workload(xs=xs, ys=ys, n=16), config, device=device,
               splits=splits)       # the first replies, the codec
    state, started = SystemRun("calibration", seconds), []
    run_system(state, plan, model, Workload(xs=xs, ys=ys, duration=seconds), config, device=device, splits=splits,
               ready=lambda: started.append(time.process_time()))   # from here: not building the client
    count = len(state.points)
    used = time.process_time() - started[0]
    return (used / count if count else 0.0), count, state.estimates


def _head_cpu_ms(plan: Any, model: Any, xs: Any, splits: Any, repeats: int = 21) -> float:
    """The median CPU time of the whole model on one input, as the device runs it (its last cut's head)."""
    import statistics

    from dyno.bench.reference import cpu_times_ms
    from dyno.runtime.splits import Splits

    head = (splits or Splits(model, plan)).head(plan.cuts[-1].id)
    return statistics.median(cpu_times_ms(lambda i: head(xs[i % len(xs)].unsqueeze(0)), repeats, warmup=2))


def client_overheads(plan: Any, model: Any, xs: Any, *, server: str | None, device: Any = None, slowdown: float = 1.0,
                     whole: bool = False, splits: Any = None, seconds: float = 1.5,
                     rounds: int = CALIBRATION_ROUNDS) -> dict[str, Any]:
    """(module docstring) ``whole``: the whole process is slowed by ``slowdown`` (cgroup), so its CPU time
    is ``slowdown`` times longer in wall time. ``seconds``: of each kind of run, over all ``rounds``.
    Without ``server`` only the device-only figure is measured and the offloaded one is taken equal to it."""
    import statistics

    from dyno.runtime import ClientConfig

    factor = slowdown if whole else 1.0
    configs = [ClientConfig(server=None, policy="device-only")]
    if server is not None:
        policy, option = cloud_only(plan)
        configs.append(ClientConfig(server=server, policy=policy, timeout=30.0))
    runs: list[list[tuple[float, int, Any]]] = [[] for _ in configs]
    for _ in range(rounds):                 # taking turns: a slow stretch of the host costs one round of each
        for config, kind in zip(configs, runs, strict=True):
            kind.append(_cpu_per_inference(plan, model, xs, config, device=device, splits=splits,
                                           seconds=seconds / rounds))
    local_cpu = statistics.median(cpu for cpu, _, _ in runs[0])
    head_ms = _head_cpu_ms(plan, model, xs, splits)
    local_ms = max(0.0, local_cpu * 1000 - head_ms)
    profiled = plan.cuts[-1].device_ms
    out = {"local_ms": local_ms * factor, "local_cpu_ms": local_cpu * 1000, "local_n": sum(n for _, n, _ in runs[0]),
           "local_cpu_rounds_ms": [cpu * 1000 for cpu, _, _ in runs[0]],
           "head_ms": head_ms, "device_factor": head_ms / profiled if profiled > 0 else 1.0, "factor": factor,
           "seconds": seconds, "rounds": rounds}
    if server is None:
        out.update(offload_ms=out["local_ms"], offload_cpu_ms=None, offload_n=0, server_factor=1.0,
                   server_overhead_ms=0.0, server_batch=1)
        return out
    offload_cpu = statistics.median(cpu for cpu, _, _ in runs[1])
    seen = [estimates for _, _, estimates in runs[1]]
    encode = option.encode_ms if option is not None else 0.0
    out.update(offload_ms=max(0.0, offload_cpu * 1000 - encode) * factor, offload_cpu_ms=offload_cpu * 1000,
               offload_n=sum(n for _, n, _ in runs[1]), offload_cpu_rounds_ms=[cpu * 1000 for cpu, _, _ in runs[1]],
               offload_policy=policy, server_factor=statistics.median(e.server_ms_factor for e in seen),
               server_overhead_ms=statistics.median(e.server_overhead_ms for e in seen),
               server_batch=statistics.median_low(e.batch_at(plan.cuts[0].id, 1) for e in seen))
    return out


def server_warmth(plan: Any, model: Any, xs: Any, *, server: str,
                  compute: Callable[[], float] | None = None) -> dict[str, Any]:
    """The server's time per request against its idle time before it (module docstring): the points
    ``[idle ms, server ms]`` (per spacing: the median idle, and the median over ``ROUNDS`` of the replies'
    median server time or, with ``compute``, a reader of the server's compute-seconds counter, its growth
    per request), ``rounds``: ``[gap ms, [[idle ms, server ms] per round]]``, and ``cold``: ``[idle ms,
    multiplier]``, each time over the back-to-back one (at least 1, never falling as the idle time grows)."""
    import statistics

    from dyno.runtime import Client, ClientConfig

    policy, _ = cloud_only(plan)
    idles: dict[float, list[float]] = {gap: [] for gap in GAPS_MS}
    times: dict[float, list[float]] = {gap: [] for gap in GAPS_MS}
    with Client(plan, model, ClientConfig(server=server, policy=policy, in_flight=1, timeout=30.0)) as client:
        for i in range(16):                     # the connection, the codec, the server's first batches
            client.infer(xs[i % len(xs)])
        for _ in range(ROUNDS):                 # spacings interleaved: a drifting machine moves them all
            for gap, count in zip(GAPS_MS, COUNTS, strict=True):
                spaced = _spaced(client, xs, gap, count, compute)
                if spaced is not None:
                    idles[gap].append(spaced[0])
                    times[gap].append(spaced[1])
    points = [(statistics.median(idles[gap]), statistics.median(times[gap])) for gap in GAPS_MS if times[gap]]
    cold: list[list[float]] = []
    top = 1.0
    for idle, ms in sorted(points):
        top = min(10.0, max(top, ms / points[0][1]))
        if not cold or idle > cold[-1][0]:
            cold.append([round(idle, 3), round(top, 4)])
    rounds = [[gap, [[round(i, 3), round(m, 4)] for i, m in zip(idles[gap], times[gap], strict=True)]]
              for gap in GAPS_MS]
    return {"points": [[round(i, 3), round(m, 4)] for i, m in points], "cold": cold if len(cold) > 1 else [],
            "rounds": rounds}


def _spaced(client: Any, xs: Any, gap: float, count: int,
            compute: Callable[[], float] | None) -> tuple[float, float] | None:
    """``count`` requests one at a time, each ``gap`` ms after the last was sent: (median idle ms before
    one, server ms per request), or None when the cloud answered none alone. A first request, not
    counted, follows the last spacing's idle time."""
    import statistics

    start = time.perf_counter()
    client.infer(xs[0])
    before = compute() if compute is not None else 0.0
    time.sleep(max(0.0, start + gap / 1000.0 - time.perf_counter()))
    sent, served = [], []
    for i in range(count):
        start = time.perf_counter()
        result = client.infer(xs[i % len(xs)])
        if result.where == "cloud" and result.batch == 1:
            served.append(result.server_ms)
        sent.append(start)
        time.sleep(max(0.0, start + gap / 1000.0 - time.perf_counter()))
    if not served:
        return None
    period = statistics.median(b - a for a, b in zip(sent, sent[1:])) * 1000.0
    ms = statistics.median(served) if compute is None else (compute() - before) * 1000.0 / count
    return max(0.0, period - ms), ms


def counted_scale(plan: Any, before: tuple[float, float, float], after: tuple[float, float, float]) -> float | None:
    """The simulated cloud's scale from the calibration's offloaded run as the server counted it, given
    its (compute seconds, samples, batches) ``before`` and ``after``: its compute per sample over the
    profile's at the batch size it ran in (cut 0, the sent option's decode aside). The
    replies' wall time beside a client running flat out on the same two cores read 1.8-2.2 in three
    runs a few minutes apart; the compute counter is the one the fleet's cloud-seconds are read from."""
    from dyno.simulate.cloud import batch_times

    compute, samples, batches = (a - b for a, b in zip(after, before, strict=True))
    if samples < 8 or batches <= 0 or compute <= 0:
        return None
    cut = plan.cuts[0]
    batch = max(1, round(samples / batches))
    option = cloud_only(plan)[1]
    decode = option.decode_ms if option is not None else 0.0
    profiled = batch_times(cut.cloud_ms, batch, 1.0)[batch] * 1000.0 / batch
    per_sample = compute * 1000.0 / samples - decode
    return per_sample / profiled if profiled > 0 and per_sample > 0 else None

