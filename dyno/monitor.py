"""Run-time estimates from what the device itself observes (never from a one-off probe).

``Estimates`` is what a policy decides on; the monitor knows nothing about the policies that read it.

- ``BandwidthEstimator`` (``dyno.bandwidth``): uplink bits/s, the harmonic mean of the last transfers' rates.
- ``Monitors``: the bundle the device client and the simulator feed. Device slowdown is the median of
  observed / profiled head time; server time factor, per cut, the median of observed / profiled per-sample
  tail time (a cut no reply has come from yet: the median over all cuts); queueing
  the median of recent waits; cloud capacity this device's own use of the cloud plus the server's
  reported headroom; RTT the median of recent samples.

    monitors = Monitors(plan, initial_bandwidth_bps=2e6)
    monitors.record_transfer(nbytes=12_000, seconds=0.05)
    monitors.estimates()   # -> Estimates, what a policy decides on
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import TYPE_CHECKING

from dyno.bandwidth import BandwidthEstimator
from dyno.errors import ConfigError, PolicyError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dyno.plan import Plan

__all__ = ["Estimates", "BandwidthEstimator", "Monitors", "CLOUD_WINDOW_S", "DEVICE_STALE_S", "SERVER_STALE_S",
           "MIN_PROFILED_MS"]


@dataclasses.dataclass(frozen=True)
class Estimates:
    """Run-time estimates a policy decides on (from ``dyno.monitor.Monitors`` or a probe).

    - ``bandwidth_bps``: uplink bits per second.
    - ``rtt_ms``: round-trip time added once per offloaded inference.
    - ``device_slowdown``: k_d, device time / profiled (plan) device time.
    - ``server_ms_factor``: observed / profiled server time per sample (at the batch size it ran), over
      every cut: the figure for a cut the device has not offloaded at.
    - ``server_ms_factors``: ``(cut, factor)`` pairs for the cuts replies have come from, sorted by cut. A
      tail's time is not its profile times one factor: on fmnist-resnet the short tail after cut 7 read
      2-4x its profile where the whole model (cut 0) read 1.2-1.6x, and one factor over both priced
      cloud-only by cut 7's readings (``server_factor`` reads a cut's own).
    - ``batches``: ``(cut, batch)`` pairs, the server's typical batch size at the cuts replies have come
      from (a policy's own ``batch`` elsewhere; ``batch_at``). A server batches what waits for it: with
      eight inferences in flight fmnist-resnet's cloud-only requests ran in batches of 4-8 (0.6 ms a
      sample against 1.24 alone), a split at cut 7, whose short tail never keeps them waiting, in
      batches of 1; priced at the last replies' batch (cut 7's 1), cloud-only read 450/s and ran 750/s.
    - ``codec_slowdown``: the device's time to encode over the plan's ``encode_ms``: 1 where only the
      heads are emulated slower (padding), k_d where the device is slowed as a whole (a CPU quota; a
      real device): under ``dyno bench``'s quota (k_d 3.5) WebP's 0.14 ms encode costs the device
      0.5 ms; with the encoding as profiled (and the client's own cost read outside the run's session)
      the simulator beside the bench priced cloud-only at 8 Mbit/s at 938/s where it ran 781/s.
    - ``queue_ms``: how long a request waits at the server before its batch starts: *waiting*, which
      lengthens latency and takes no capacity.
    - ``cloud_capacity``: the cloud's compute this device can use, in worker-seconds per second: what
      it uses now plus the headroom the server reports (``1.0``: one whole worker). Load the device
      causes itself is in both terms, so it never reads its own load as lost capacity; load from
      others shrinks the headroom, and so what this device can grow into.
    - ``offload_overhead_ms`` / ``local_overhead_ms``: the client's own work per inference besides the
      head and the encoding (deciding, framing, the RPC and its reply; or running the whole model through
      the client), on an offloaded inference and on a device-only one: part of the device stage.
    - ``server_overhead_ms``: the server's CPU per request beyond its tail's compute and decoding (gRPC,
      checks, batching, the reply), from the ``cpu_ms`` replies carry: part of the cloud's cost.
    """

    bandwidth_bps: float
    rtt_ms: float = 1.0
    device_slowdown: float = 1.0
    server_ms_factor: float = 1.0
    queue_ms: float = 0.0
    cloud_capacity: float = 1.0
    offload_overhead_ms: float = 0.0
    local_overhead_ms: float = 0.0
    server_overhead_ms: float = 0.0
    server_ms_factors: tuple[tuple[int, float], ...] = ()
    batches: tuple[tuple[int, int], ...] = ()
    codec_slowdown: float = 1.0

    def __post_init__(self) -> None:
        for name in ("bandwidth_bps", "rtt_ms", "device_slowdown", "server_ms_factor", "queue_ms", "cloud_capacity",
                     "offload_overhead_ms", "local_overhead_ms", "server_overhead_ms", "codec_slowdown"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise PolicyError(f"Estimates.{name} must be a finite number >= 0, got {value!r}")
        if self.device_slowdown <= 0 or self.server_ms_factor <= 0 or self.codec_slowdown <= 0:
            raise PolicyError("Estimates.device_slowdown, server_ms_factor and codec_slowdown must be > 0")
        for pair in self.server_ms_factors:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], int)
                    and isinstance(pair[1], (int, float)) and math.isfinite(pair[1]) and pair[1] > 0):
                raise PolicyError(f"Estimates.server_ms_factors holds (cut, factor > 0) pairs, got {pair!r}")
        for cut_batch in self.batches:
            if not (isinstance(cut_batch, tuple) and len(cut_batch) == 2
                    and all(isinstance(v, int) for v in cut_batch) and cut_batch[1] >= 1):
                raise PolicyError(f"Estimates.batches holds (cut, batch >= 1) pairs, got {cut_batch!r}")

    def server_factor(self, cut: int) -> float:
        """Observed / profiled server time per sample at ``cut`` (``server_ms_factor`` where none seen)."""
        for seen, factor in self.server_ms_factors:
            if seen == cut:
                return factor
        return self.server_ms_factor

    def batch_at(self, cut: int, batch: int) -> int:
        """The server's batch size at ``cut`` as its replies said (``batch`` where they have not)."""
        for seen, size in self.batches:
            if seen == cut:
                return size
        return batch


#: The window over which the server reports its utilisation and headroom (``dyno.runtime``); a
#: device sums its own use of the cloud over the same span.
CLOUD_WINDOW_S = 1.0
#: The least capacity a device prices the cloud at, so that a saturated cloud is very slow, not impossible.
MIN_CLOUD_CAPACITY = 0.01
#: Until the slowdown window holds this many samples, the initial slowdown fills it: one head timed
#: slow (the first in a new thread took 3.6x its profile here) does not send a device's work away.
SLOWDOWN_PRIOR = 3
#: Seconds without a device sample after which the device's earlier samples no longer count: shorter
#: than the policy's least probe interval (0.5 s), so a device probe after a streak of input offloads
#: always reads the device afresh.
DEVICE_STALE_S = 0.25
#: Seconds after a cut's last reply its readings (server factor, batch) no longer count, by the clock of
#: the replies and heads that come after it: the cut is priced as calibrated, or as the cloud as a whole,
#: again (and with no cut's readings left, the cloud as a whole as calibrated). Kept for ever, a cut's cold
#: replies did: in ``dyno bench`` (low tier, a 4.3 Mbit/s Norway trace) three early replies at cut 0 read
#: several times its calibrated 1.1 and DynO ran on the device (389/s) all run where cloud-only ran 524/s;
#: the probes went to deeper cuts and never refreshed cut 0. Forgotten only when a reply came from another
#: cut, they were kept where no reply came at all: on norway_bus_11 three probes that found the server idle
#: read 3.25 against a calibrated 1.6, and DynO stayed on the device for 10 of 15 s (579/s measured, 698
#: simulated).
SERVER_STALE_S = 2.0
#: A head profiled shorter than this says nothing of the device's speed (the input cut runs no layer).
MIN_PROFILED_MS = 0.05
#: The estimates are republished only when a figure moves by more than this share: the median of a
#: window of device times moves with almost every head, and each new ``Estimates`` costs the policy a
#: whole evaluation (31 us of the 1.5 ms fmnist-resnet inference here, on the device's thread) for a
#: change far inside any margin a decision turns on.
REPUBLISH_REL = 0.01


def _median(samples: collections.deque[float], default: float, prior: int = 0) -> float:
    """The median of a short window (``statistics.median``'s value, without its overhead); while it
    holds fewer than ``prior`` samples, ``default`` stands in for the missing ones."""
    n = len(samples)
    if not n:
        return default
    ordered = sorted([*samples, *[default] * (prior - n)]) if n < prior else sorted(samples)
    n = len(ordered)
    half = n // 2
    return ordered[half] if n % 2 else (ordered[half - 1] + ordered[half]) / 2.0


def _dearer_on_agreement(samples: collections.deque[float], initial: float) -> float:
    """A cloud figure (time per sample, handling per request): a reading below ``initial`` counts at once,
    one above it only once ``SLOWDOWN_PRIOR`` replies agree. A cold tail's first reply read 12-24x and
    priced the cloud out; a fast server seen by one probe should bring the next inference to it."""
    return min(_median(samples, initial, SLOWDOWN_PRIOR), _median(samples, initial))


_NONE: collections.deque[float] = collections.deque()   # a cut's readings before its first reply


def _moved(values: tuple[float, ...], published: tuple[float, ...]) -> bool:
    """Whether any figure moved by more than ``REPUBLISH_REL`` of itself since it was published."""
    return any(abs(a - b) > REPUBLISH_REL * max(abs(a), abs(b)) for a, b in zip(values, published, strict=True))


class Monitors:
    """All run-time estimates for one device and plan, fed by the client's own traffic.

    - ``record_transfer(nbytes, seconds)``: one uplink transfer (wire bytes, seconds on the link).
    - ``record_device(cut_id, head_ms, at=...)``: observed head time at a cut; slowdown = head_ms / plan's
      ``device_ms`` (cuts profiled below ``MIN_PROFILED_MS``, e.g. the input cut, are ignored). A
      sample more than ``DEVICE_STALE_S`` after the one before starts the window afresh: a device that
      sent its input to the cloud for seconds learns its speed from its next head, not from a median
      of heads timed before (``at``: seconds on the replies' clock, default ``time.monotonic()``); it
      ages the cuts' readings as a reply does.
    - ``record_reply(cut_id, compute_ms, batch, queue_ms, headroom, at=..., decode_ms=...)``: one
      reply. ``compute_ms`` is the tail time of the batch the request ran in and ``batch`` its size, so
      the per-sample time is ``compute_ms / batch``, compared with the plan's
      ``cloud_ms_per_sample(batch)``; ``queue_ms`` is the request's wait; ``headroom`` the server's
      spare worker-seconds per second (None: a server that does not say; one idle worker assumed) and
      ``pressure`` how far above its target utilisation it runs (1: at or below; then each device
      takes back its share of the excess);
      ``at`` the time in seconds on any clock the caller keeps (the simulator's or the wall's).
      This device's own use of the cloud (per-sample compute plus decode) is summed over the last
      ``CLOUD_WINDOW_S``: capacity = (own use + headroom) / pressure. ``cpu_ms``, the server's whole CPU
      per request where it says, less this request's compute share and decoding, is the server's
      per-request handling (``server_overhead_ms``; ``initial_server_overhead_ms`` until three replies
      outvote it). The server factor is kept per cut as well: ``initial_server_factors`` (cut -> factor,
      as calibrated at those cuts) stand in for a cut's replies until they outvote it, and
      ``initial_server_factor`` for the cloud as a whole; so does the batch size the replies ran in
      (``initial_batches``). A cut's readings are forgotten ``SERVER_STALE_S`` after its last reply.
    - ``record_rtt(ms)``: a round-trip time sample.

    ``codec_slowdown``: how much slower than the plan's ``encode_ms`` the device encodes (1 where only
    its heads are emulated slower; ``Device.codec_slowdown``), scaled like the overheads below.

    ``overheads_ms`` (offloaded, device-only) are the client's own per-inference costs, given as measured
    once when the client starts (``dyno.bench.calibrate``), not learned here: the device thread does not
    report its per-inference time yet. They run on the device's CPU like the heads, so when the heads run
    slower than ``initial_slowdown`` (the device as emulated or profiled: other work has taken the CPU
    since) they are estimated slower by the same factor; never faster than measured. (Seen in ``dyno
    demo`` on a loaded machine: with the overheads as measured, a slower head made offloading at cut 7 look
    as fast as device-only, and it was 10% slower.)
    """

    def __init__(self, plan: "Plan", *, initial_bandwidth_bps: float = 1e6, window: int = 8,
                 initial_rtt_ms: float = 1.0, initial_slowdown: float = 1.0,
                 initial_server_factor: float = 1.0, overheads_ms: tuple[float, float] = (0.0, 0.0),
                 initial_server_overhead_ms: float = 0.0,
                 initial_server_factors: Mapping[int, float] | None = None,
                 initial_batches: Mapping[int, int] | None = None, codec_slowdown: float = 1.0) -> None:
        if not (initial_bandwidth_bps > 0 and initial_slowdown > 0 and initial_rtt_ms >= 0 and codec_slowdown > 0
                and initial_server_factor > 0 and min(overheads_ms) >= 0 and initial_server_overhead_ms >= 0):
            raise ConfigError("initial bandwidth, slowdowns and server factor must be > 0, initial RTT and "
                              "overheads >= 0")
        self.overheads_ms = (float(overheads_ms[0]), float(overheads_ms[1]))   # (offloaded, device-only)
        self.plan = plan
        self.window = window
        self.initial_bandwidth_bps = float(initial_bandwidth_bps)
        self.initial_rtt_ms = float(initial_rtt_ms)
        self.initial_slowdown = float(initial_slowdown)
        self.codec_slowdown = float(codec_slowdown)
        self.initial_server_factor = float(initial_server_factor)   # the cloud's speed against the plan
        self.initial_server_factors = {int(c): float(f) for c, f in (initial_server_factors or {}).items()}
        if not all(f > 0 and math.isfinite(f) for f in self.initial_server_factors.values()):
            raise ConfigError(f"initial server factors must be > 0, got {initial_server_factors!r}")
        self.initial_batches = {int(c): int(b) for c, b in (initial_batches or {}).items()}
        if not all(b >= 1 for b in self.initial_batches.values()):
            raise ConfigError(f"initial batch sizes must be >= 1, got {initial_batches!r}")
        self.initial_server_overhead_ms = float(initial_server_overhead_ms)
        self.bandwidth = BandwidthEstimator(window)
        self._slowdown: collections.deque[float] = collections.deque(maxlen=window)
        self._server: collections.deque[float] = collections.deque(maxlen=window)
        self._server_at: dict[int, collections.deque[float]] = {}   # the same readings, per cut
        self._batches_at: dict[int, collections.deque[float]] = {}
        self._replied_at: dict[int, float] = {}   # per cut, its last reply (the caller's clock)
        self._handling: collections.deque[float] = collections.deque(maxlen=window)
        self._rtt: collections.deque[float] = collections.deque(maxlen=window)
        self._queue: collections.deque[float] = collections.deque(maxlen=window)
        self._own: collections.deque[tuple[float, float]] = collections.deque()   # (at, seconds of cloud)
        self._own_sum = 0.0
        self._headroom: float | None = None
        self._pressure = 1.0
        self._last_device = -math.inf
        self._cached: Estimates | None = None
        self._previous: Estimates | None = None
        self._values: tuple[float, ...] = ()
        self._cuts: tuple[int, ...] = ()
        self._profiled: dict[tuple[int, int], float] = {}

    def record_transfer(self, nbytes: float, seconds: float) -> None:
        self.bandwidth.update(nbytes, seconds)
        self._cached = None

    def record_device(self, cut_id: int, head_ms: float, *, at: float | None = None) -> None:
        profiled = self.plan.cuts[cut_id].device_ms
        if profiled >= MIN_PROFILED_MS and head_ms > 0 and math.isfinite(head_ms):
            at = time.monotonic() if at is None else at
            if at - self._last_device > DEVICE_STALE_S:   # what came before the gap is stale
                self._slowdown.clear()
            self._last_device = at
            self._slowdown.append(head_ms / profiled)
            self._forget_stale_cuts(at)
            self._cached = None

    def record_reply(self, cut_id: int, compute_ms: float, batch: int, queue_ms: float,
                     headroom: float | None, *, at: float, decode_ms: float = 0.0, pressure: float = 1.0,
                     cpu_ms: float | None = None) -> None:
        batch = max(1, int(batch))
        profiled = self._profiled.get((cut_id, batch))
        if profiled is None:
            profiled = self._profiled[(cut_id, batch)] = self.plan.cuts[cut_id].cloud_ms_per_sample(batch)
        if profiled > 0 and compute_ms > 0 and math.isfinite(compute_ms):
            factor = (compute_ms / batch) / profiled
            self._server.append(factor)
            at_cut = self._server_at.get(cut_id)
            if at_cut is None:
                at_cut = self._server_at[cut_id] = collections.deque(maxlen=self.window)
            at_cut.append(factor)
        sizes = self._batches_at.get(cut_id)
        if sizes is None:
            sizes = self._batches_at[cut_id] = collections.deque(maxlen=self.window)
        sizes.append(float(batch))
        self._replied_at[cut_id] = at
        self._forget_stale_cuts(at)
        if math.isfinite(queue_ms) and queue_ms >= 0:
            self._queue.append(queue_ms)
        if headroom is not None and math.isfinite(headroom) and headroom >= 0:
            self._headroom = headroom
        if math.isfinite(pressure) and pressure >= 1:
            self._pressure = pressure
        share = (max(compute_ms, 0.0) / batch + max(decode_ms, 0.0)) / 1000.0
        if cpu_ms is not None and math.isfinite(cpu_ms) and cpu_ms >= 0:
            self._handling.append(max(0.0, cpu_ms - share * 1000.0))
        self._own.append((at, share))
        self._own_sum += share
        self._expire(at)
        self._cached = None

    def _forget_stale_cuts(self, at: float) -> None:
        """Drop the readings of each cut whose last reply came ``SERVER_STALE_S`` before ``at``; with no
        cut's left, the readings across cuts as well."""
        stale = [c for c, last in self._replied_at.items() if last < at - SERVER_STALE_S]
        for c in stale:
            del self._replied_at[c]
            self._server_at.pop(c, None)
            self._batches_at.pop(c, None)
        if stale and not self._replied_at:
            self._server.clear()

    def _expire(self, now: float) -> None:
        own = self._own
        while own and own[0][0] <= now - CLOUD_WINDOW_S:
            self._own_sum -= own.popleft()[1]
        if not own:
            self._own_sum = 0.0   # no drift

    @property
    def own_cloud_use(self) -> float:
        """Worker-seconds per second of the cloud this device used over the last window."""
        return max(self._own_sum, 0.0) / CLOUD_WINDOW_S

    def record_rtt(self, ms: float) -> None:
        if ms >= 0 and math.isfinite(ms):
            self._rtt.append(ms)
            self._cached = None

    def estimates(self) -> Estimates:
        """The current estimates (the same object until an observation changes them)."""
        if self._cached is None:
            bandwidth = self.bandwidth.estimate_bps
            capacity = 1.0 if self._headroom is None else (self.own_cloud_use + self._headroom) / self._pressure
            slowdown = _median(self._slowdown, self.initial_slowdown, SLOWDOWN_PRIOR)
            busier = max(1.0, slowdown / self.initial_slowdown)   # the client's own work shares the CPU
            unseen = _dearer_on_agreement(self._server, self.initial_server_factor)
            cuts = tuple(sorted({*self._server_at, *self.initial_server_factors}))
            values = (self.initial_bandwidth_bps if bandwidth is None else bandwidth,
                      _median(self._rtt, self.initial_rtt_ms), slowdown, unseen, _median(self._queue, 0.0),
                      max(capacity, MIN_CLOUD_CAPACITY), *(busier * o for o in self.overheads_ms),
                      busier * self.codec_slowdown,
                      _dearer_on_agreement(self._handling, self.initial_server_overhead_ms),
                      *(_dearer_on_agreement(self._server_at.get(c, _NONE), self.initial_server_factors.get(c, unseen))
                        for c in cuts))
            batches = self._batches()
            cached = self._previous
            if (cached is None or cuts != self._cuts or batches != cached.batches
                    or _moved(values, self._values)):   # else the same object
                (bandwidth_bps, rtt_ms, device_slowdown, server_ms_factor, queue_ms, cloud_capacity,
                 offload_overhead_ms, local_overhead_ms, codec_slowdown, server_overhead_ms, *per_cut) = values
                cached = self._previous = Estimates(
                    bandwidth_bps, rtt_ms, device_slowdown, server_ms_factor, queue_ms, cloud_capacity,
                    offload_overhead_ms, local_overhead_ms, server_overhead_ms, tuple(zip(cuts, per_cut, strict=True)),
                    batches, codec_slowdown)
                self._values, self._cuts = values, cuts
            self._cached = cached
        return self._cached

    def _batches(self) -> tuple[tuple[int, int], ...]:
        """Per cut, the median batch of its last replies (as calibrated, until three replies outvote it)."""
        initial = self.initial_batches
        return tuple((c, max(1, round(_median(self._batches_at.get(c, _NONE), initial.get(c, 1),
                                              SLOWDOWN_PRIOR if c in initial else 0))))
                     for c in sorted({*self._batches_at, *initial}))

    def reset(self) -> None:
        self.bandwidth.reset()
        for samples in (self._slowdown, self._server, self._handling, self._rtt, self._queue, self._own):
            samples.clear()
        self._server_at.clear()
        self._batches_at.clear()
        self._replied_at.clear()
        self._own_sum = 0.0
        self._headroom = None
        self._pressure = 1.0
        self._last_device = -math.inf
        self._cached = None
