"""Discrete-event simulation of a fleet: N devices, each with its own policy, monitors, link and speed,
sharing one batching cloud (``dyno.simulate.cloud``). One device is the single-device simulator
(``dyno.simulate.engine.simulate_policy`` runs exactly this with N = 1).

Each device is a pipeline of its own two stages and the shared cloud::

    device (k_d * device_ms + k_codec * encode_ms + the client's own work) -> link (transfer_time(wire bytes, start))
        -> RTT/2 -> cloud (batched per cut) -> RTT/2 -> reply

Work arrives in one of two ways (``DeviceSpec.rate``):

- ``None``, closed loop: inferences start as fast as the device and the request window admit (at most
  ``window`` started and not answered), during ``[0, duration)``: the single-device simulator.
- a rate: frames are generated every ``1 / rate`` s from a per-device phase; one waits while the
  device is busy or the window is full, and a newer frame replaces the oldest beyond ``backlog``
  waiting ones (``dropped``, as a camera app drops stale frames). Latency counts from the frame's
  generation.

At each start the device's policy decides on estimates fed, as on the runtime, only by what that device
has observed by then (``feed``): its transfers when they end, its head times when the device finishes,
and the server's replies (compute, batch, wait, headroom, pressure) when they arrive, applied in time
order and never early. The hindsight oracle (``feed = "oracle"``) instead sees the true mean rate of its
trace over the next ``oracle_horizon_s``. A refused request finishes on the device (its tail at the
device's speed) and the device keeps off the cloud for a back-off (doubling from ``backoff_s[0]`` to
``backoff_s[1]`` while refusals follow each other, as ``dyno.runtime.connection``); meanwhile offloaded
choices run whole on the device (``fallbacks``). The runtime also gives back every other request of a
refused stream; the simulator gives back only the refused one.

Every inference started is answered (cloud, device or fallback): ``started == answered`` after the
drain; frames that never started are ``dropped``.
"""

from __future__ import annotations

import collections
import heapq
import math
from typing import Any, Callable, Sequence

from dyno.errors import ConfigError
from dyno.monitor import Monitors
from dyno.policy import FEEDS, SLO, Estimates, State
from dyno.policy.model import PerfModel
from dyno.simulate.cloud import DONE, REPLY, Request, SimCloud
from dyno.simulate.fleet_types import DeviceSpec, DeviceTally, FleetConfig, FleetResult, met_rows

__all__ = ["DeviceSpec", "FleetConfig", "DeviceTally", "FleetResult", "run_fleet", "met_rows", "device_phase"]

START, ARRIVE, FRAME = 0, 1, 4
_GOLDEN = 0.618034   # spreads device i's phases evenly over [0, 1)


def device_phase(i: int) -> float:
    """Device ``i``'s phase in [0, 1) (its frames' and its probes'): device 0 at 0, the others spread evenly."""
    return i * _GOLDEN % 1.0


class _Device:
    """One device's state in the engine."""

    __slots__ = ("index", "spec", "policy", "monitors", "pending", "seq", "tally", "device_free", "link_free",
                 "inflight", "blocked", "start_pending", "frames", "hold_until", "backoff", "batches",
                 "last_est", "last_row", "last_batch", "decided_at", "met_ok", "oracle", "next_frame", "cur_est")

    def __init__(self, index: int, spec: DeviceSpec, monitors: Monitors, met_ok: list[bool], timeline: bool):
        self.index, self.spec, self.policy, self.monitors = index, spec, spec.policy, monitors
        self.pending: list[tuple] = []
        self.seq = 0
        self.tally = DeviceTally(spec.tier, spec.trace.name)
        if timeline:
            self.tally.timeline = {"t": [], "cut": [], "bits": [], "codec": [], "bw_est": []}
        self.device_free = self.link_free = 0.0
        self.inflight = 0
        self.blocked = self.start_pending = False
        self.frames: collections.deque[float] = collections.deque()
        self.hold_until = 0.0
        self.backoff = 0.0
        self.batches: collections.deque[int] = collections.deque(maxlen=16)
        self.last_est: Estimates | None = None
        self.cur_est: Estimates | None = None
        self.last_row = -1
        self.last_batch = 0
        self.decided_at = -math.inf
        self.met_ok = met_ok
        self.oracle = spec.policy.feed == "oracle"
        self.next_frame = 0.0

    def later(self, when: float, observation: tuple) -> None:
        heapq.heappush(self.pending, (when, self.seq, observation))
        self.seq += 1


class _Engine:
    """The event loop (see the module docstring)."""

    def __init__(self, model: PerfModel, specs: Sequence[DeviceSpec], config: FleetConfig,
                 progress: Callable[[float], None] | None) -> None:
        self.model, self.config, self.progress = model, config, progress
        self.plan = model.plan
        self.rows = model.rows
        self.heap: list[tuple] = []
        self.seq = 0
        self.half_rtt = config.rtt_ms / 2000.0
        self.cloud = SimCloud([c.cloud_ms for c in self.plan.cuts[:-1]] + [{}], config.cloud, self.push,
                              self.half_rtt)
        self.tail_ms = [self.plan.cuts[-1].device_ms - c.device_ms for c in self.plan.cuts]
        met_cache: dict[SLO, list[bool]] = {}
        self.devices = []
        for i, spec in enumerate(specs):
            spec.policy.desynchronise(device_phase(i))
            spec.policy.reset()
            met = met_cache.get(spec.slo)
            if met is None:
                met = met_cache[spec.slo] = met_rows(model, spec.slo)
            monitors = Monitors(self.plan, initial_bandwidth_bps=config.initial_bandwidth_bps,
                                window=config.monitor_window, initial_rtt_ms=config.rtt_ms,
                                initial_slowdown=spec.slowdown, initial_server_factor=config.cloud.scale,
                                overheads_ms=(config.overhead_ms, config.local_overhead_ms),
                                initial_server_overhead_ms=config.cloud.overhead_ms,
                                codec_slowdown=spec.codec_slowdown)
            self.devices.append(_Device(i, spec, monitors, met, config.timeline))

    def push(self, when: float, kind: int, a: Any, b: Any = None) -> None:
        heapq.heappush(self.heap, (when, self.seq, kind, a, b))
        self.seq += 1

    def run(self) -> FleetResult:
        duration = self.config.duration_s
        for dev in self.devices:
            rate = dev.spec.rate
            if rate is None:
                self._schedule_start(dev, 0.0)
            else:  # a phase per device, spread evenly, so that frames do not all arrive together
                phase = dev.spec.phase_s
                self.push(device_phase(dev.index) / rate if phase is None else phase, FRAME, dev)
        heap, pop = self.heap, heapq.heappop
        ticked, progress = 0.0, self.progress
        cloud = self.cloud
        while heap:
            t, _, kind, a, b = pop(heap)
            if kind == START:
                a.start_pending = False
                self._start(a, t)
            elif kind == REPLY:
                self._reply(self.devices[a], b, t)
            elif kind == ARRIVE:
                cloud.arrive(b, t)
            elif kind == DONE:
                cloud.done(a, t, b)
            else:
                self._frame(a, t)
            if progress is not None and t - ticked >= 1.0:
                ticked = math.floor(t)
                progress(min(ticked, duration))
        end = max([duration] + [d.tally.end for d in self.devices])
        return FleetResult([d.tally for d in self.devices], duration, cloud.busy_total, self.config.cloud.workers,
                           cloud.batches, cloud.served, cloud.refused, end)

    # ------------------------------------------------------------------------------ work arriving

    def _schedule_start(self, dev: _Device, t: float) -> None:
        if dev.start_pending or dev.blocked:
            return
        if dev.inflight >= self.config.window:   # a reply will schedule it
            dev.blocked = True
            return
        dev.start_pending = True
        self.push(t, START, dev)

    def _frame(self, dev: _Device, t: float) -> None:
        dev.tally.demanded += 1
        dev.frames.append(t)
        if len(dev.frames) > self.config.backlog:
            dev.frames.popleft()
            dev.tally.dropped += 1
        self._schedule_start(dev, max(t, dev.device_free))
        nxt = t + 1.0 / dev.spec.rate  # type: ignore[operator]
        if nxt < self.config.duration_s:
            self.push(nxt, FRAME, dev)

    def _start(self, dev: _Device, t: float) -> None:
        if dev.inflight >= self.config.window:
            dev.blocked = True
            return
        if dev.spec.rate is None:
            if t >= self.config.duration_s:
                return
            t0 = t
            dev.tally.demanded += 1
        elif dev.frames:
            t0 = dev.frames.popleft()
        else:
            return
        i = self._decide(dev, t)
        self._run(dev, i, t, t0)
        if dev.spec.rate is None or dev.frames:
            self._schedule_start(dev, dev.device_free)

    # ------------------------------------------------------------------------------ deciding

    def _estimates(self, dev: _Device, t: float) -> Estimates:
        if dev.oracle:
            start = max(t, dev.link_free) + dev.spec.offset_s
            c = self.config
            return Estimates(bandwidth_bps=dev.spec.trace.mean_rate(start, start + c.oracle_horizon_s),
                             rtt_ms=c.rtt_ms, device_slowdown=dev.spec.slowdown, server_ms_factor=c.cloud.scale,
                             offload_overhead_ms=c.overhead_ms, local_overhead_ms=c.local_overhead_ms,
                             server_overhead_ms=c.cloud.overhead_ms, codec_slowdown=dev.spec.codec_slowdown)
        pending, monitors = dev.pending, dev.monitors
        while pending and pending[0][0] <= t:
            when, _, observed = heapq.heappop(pending)
            kind = observed[0]
            if kind == "x":
                monitors.record_transfer(observed[1], observed[2])
            elif kind == "d":
                monitors.record_device(observed[1], observed[2], at=when)
            else:
                _, cut, compute_ms, batch, queue_ms, headroom, pressure, decode_ms = observed
                monitors.record_reply(cut, compute_ms, batch, queue_ms, headroom, at=when, decode_ms=decode_ms,
                                      pressure=pressure,   # the CPU per request a server reports
                                      cpu_ms=compute_ms / batch + decode_ms + self.config.cloud.overhead_ms)
                monitors.record_rtt(self.config.rtt_ms)
                dev.batches.append(batch)
        return monitors.estimates()

    def _decide(self, dev: _Device, t: float) -> int:
        est = dev.cur_est = self._estimates(dev, t)
        batches = dev.batches
        batch = sorted(batches)[len(batches) // 2] if batches else self.config.batch_hint
        policy = dev.policy
        if dev.last_row >= 0 and batch == dev.last_batch and (
                (policy.pure and (est is dev.last_est or est == dev.last_est))
                or t - dev.decided_at < self.config.decide_every_s):
            return dev.last_row
        state = State(self.plan, est, dev.spec.slo, batch, self.config.window)
        pick = getattr(policy, "choose_index", None)
        if pick is not None:
            i = pick(state)
        else:
            d = policy.decide(state)
            i = self.model.index[(d.cut, d.codec, d.bits)]
        dev.last_est, dev.last_row, dev.last_batch, dev.decided_at = est, i, batch, t
        return i

    # ------------------------------------------------------------------------------ running

    def _run(self, dev: _Device, i: int, t: float, t0: float) -> None:
        row = self.rows[i]
        k = dev.spec.slowdown
        tally = dev.tally
        tally.started += 1
        if tally.timeline is not None:
            est = dev.cur_est
            for key, value in (("t", t), ("cut", row.cut), ("bits", -1 if row.bits is None else row.bits),
                               ("codec", row.codec), ("bw_est", est.bandwidth_bps if est else math.nan)):
                tally.timeline[key].append(value)
        offload = row.codec is not None
        if offload and t < dev.hold_until:   # backing off the cloud: all of it on the device
            tally.fallbacks += 1
            head = k * self.plan.cuts[-1].device_ms + self.config.local_overhead_ms
            dev.device_free = t + head / 1000.0
            dev.later(dev.device_free, ("d", self.plan.cuts[-1].id, k * self.plan.cuts[-1].device_ms))
            self._answer(dev, i, t0, dev.device_free, 0.0, False)
            return
        head_ms = k * row.device_ms
        extra = self.config.overhead_ms if offload else self.config.local_overhead_ms
        dev_end = t + (head_ms + dev.spec.codec_slowdown * row.encode_ms + extra) / 1000.0
        dev.device_free = dev_end
        if row.device_ms > 0:
            dev.later(dev_end, ("d", row.cut, head_ms))
        if not offload:
            self._answer(dev, i, t0, dev_end, 0.0, True)
            return
        link_start = max(dev_end, dev.link_free)
        offset = dev.spec.offset_s
        seconds = dev.spec.trace.transfer_time(row.wire_bytes, link_start + offset)
        dev.link_free = link_start + seconds
        dev.later(dev.link_free, ("x", row.wire_bytes, seconds))
        dev.inflight += 1
        request = Request(dev.index, i, t0, row.cut, row.decode_ms / 1000.0)
        self.push(dev.link_free + self.half_rtt, ARRIVE, dev.index, request)

    def _reply(self, dev: _Device, reply: Any, t: float) -> None:
        dev.inflight -= 1
        request = reply.request
        row = self.rows[request.row]
        if reply.refused:
            dev.tally.refused += 1
            dev.backoff = min(max(dev.backoff * 2, self.config.backoff_s[0]), self.config.backoff_s[1])
            dev.hold_until = t + dev.backoff
            tail_ms = dev.spec.slowdown * self.tail_ms[row.cut]
            dev.device_free = max(dev.device_free, t) + tail_ms / 1000.0
            dev.tally.fallbacks += 1
            self._answer(dev, request.row, request.t0, dev.device_free, 0.0, False)
        else:
            dev.backoff = 0.0
            dev.later(t, ("s", row.cut, reply.compute_ms, reply.batch, reply.queue_ms, reply.headroom,
                          reply.pressure, row.decode_ms))
            self._answer(dev, request.row, request.t0, t, reply.cloud_s, True)
        if dev.blocked:
            dev.blocked = False
            self._schedule_start(dev, max(t, dev.device_free))

    def _answer(self, dev: _Device, i: int, t0: float, done: float, cloud_s: float, as_chosen: bool) -> None:
        row = self.rows[i]
        tally = dev.tally
        tally.answered += 1
        latency = (done - t0) * 1000.0
        tally.latencies_ms.append(latency)
        tally.end = max(tally.end, done)
        tally.cloud_s_total += cloud_s
        slo = dev.spec.slo
        if as_chosen and row.codec is not None:
            tally.offloaded += 1
            tally.bytes_total += row.bytes
        if as_chosen or row.codec is None:
            tally.accuracy_sum += row.accuracy
            ok = dev.met_ok[i]
        else:                    # finished on the device: the fp32 model's answer, nothing sent
            tally.accuracy_sum += self.plan.accuracy_fp32
            ok = True
        if ok and (slo.max_latency_ms is None or latency <= slo.max_latency_ms):
            tally.met += 1


def run_fleet(model: PerfModel, specs: Sequence[DeviceSpec], config: FleetConfig,
              progress: Callable[[float], None] | None = None) -> FleetResult:
    """Simulate ``specs`` against one cloud (see the module docstring). ``progress(t)`` is called as
    simulated time passes each second."""
    if not specs:
        raise ConfigError("a fleet needs at least one device")
    for spec in specs:
        if spec.policy.feed not in FEEDS:
            raise ConfigError(f"unknown estimate feed {spec.policy.feed!r}; known: {', '.join(FEEDS)}")
    if len({id(s.policy) for s in specs}) != len(specs):
        raise ConfigError("every device needs its own policy instance")
    return _Engine(model, specs, config, progress).run()
