"""Bandwidth traces: a piecewise-constant link rate over time, looped, with exact transfer times.

Formats read (``load_trace`` detects which from the first data line):

- two columns ``seconds<TAB>Mbit/s`` (the Norway HSDPA and FCC traces of ``../shared/traces``):
  sample k's rate holds from its time until the next sample's; the last sample holds for the previous
  sample interval, and the trace then loops (period = last time + last interval). Times must not
  decrease; rates must be finite and >= 0.
- Mahimahi: one integer millisecond timestamp per line, each a 1500-byte delivery opportunity (a
  timestamp repeated n times = n opportunities in that millisecond). The rate in millisecond bin
  [m, m+1) is count(m) * 1500 * 8 bits per ms; the trace loops with period = the last timestamp (ms),
  as in Mahimahi (a trace whose last timestamp is 0 has period 1 ms).

``Trace.transfer_time(nbytes, start_t)`` integrates the rate exactly (cumulative bits per segment and a
binary search; O(log n) per call, no loop over segments), so the runtime's link emulator and the
simulator agree to the float. Zero-rate stretches (tunnels) just take time; a trace without any
capacity is refused.

    trace = load_trace("../shared/traces/norway-hsdpa/norway_bus_1.tsv")
    trace.rate_bps(12.3); trace.transfer_time(20_000, start_t=12.3)
    traces = load_traces("../shared/traces/norway-hsdpa")      # a file or a directory
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Iterable, Sequence

from dyno.errors import TraceFileError

__all__ = ["Trace", "Shifted", "load_trace", "load_traces", "MAHIMAHI_PACKET_BYTES"]

MAHIMAHI_PACKET_BYTES = 1500


class Trace:
    """A looped piecewise-constant rate: ``rates_bps[k]`` holds on ``[times[k], times[k+1])``.

    ``times`` has one more entry than ``rates_bps``; ``times[0] == 0`` and ``times[-1]`` is the period.
    """

    __slots__ = ("name", "times", "rates_bps", "period", "_cum", "_total")

    def __init__(self, times: Sequence[float], rates_bps: Sequence[float], *, name: str = "trace") -> None:
        times = [float(t) for t in times]
        rates = [float(r) for r in rates_bps]
        if len(times) != len(rates) + 1 or not rates:
            raise TraceFileError(f"{name}: a trace needs n rates and n+1 segment boundaries")
        if times[0] != 0.0 or any(b < a for a, b in zip(times, times[1:])) or not times[-1] > 0:
            raise TraceFileError(f"{name}: segment boundaries must start at 0, not decrease, and end > 0")
        if any(not math.isfinite(r) or r < 0 for r in rates):
            raise TraceFileError(f"{name}: rates must be finite and >= 0")
        cum = [0.0]
        for k, r in enumerate(rates):
            cum.append(cum[-1] + r * (times[k + 1] - times[k]))
        if not cum[-1] > 0:
            raise TraceFileError(f"{name}: the trace has no capacity at all (every rate is 0)")
        self.name = name
        self.times = times
        self.rates_bps = rates
        self.period = times[-1]
        self._cum = cum
        self._total = cum[-1]

    def __repr__(self) -> str:
        return (f"Trace({self.name!r}, {len(self.rates_bps)} segments, period {self.period:g} s, "
                f"mean {self.mean_bps / 1e6:.3g} Mbit/s)")

    def __len__(self) -> int:
        return len(self.rates_bps)

    @property
    def mean_bps(self) -> float:
        return self._total / self.period

    def _segment(self, tau: float) -> int:
        return min(bisect.bisect_right(self.times, tau) - 1, len(self.rates_bps) - 1)

    def rate_bps(self, t: float) -> float:
        """The rate at time ``t`` (seconds; looped)."""
        return self.rates_bps[self._segment(t % self.period)]

    def bits_until(self, t: float) -> float:
        """Bits the link can carry from time 0 to ``t`` (looped)."""
        loops, tau = divmod(t, self.period)
        k = self._segment(tau)
        return loops * self._total + self._cum[k] + self.rates_bps[k] * (tau - self.times[k])

    def time_for_bits(self, bits: float) -> float:
        """The earliest time at which the link has carried ``bits`` since time 0."""
        if bits <= 0:
            return 0.0
        loops = math.ceil(bits / self._total) - 1
        rem = bits - loops * self._total          # in (0, total]
        if rem <= 0:                               # float edge: bits just above a multiple of total
            loops, rem = loops - 1, rem + self._total
        j = bisect.bisect_left(self._cum, rem)     # first boundary with cum >= rem; j >= 1
        j = min(max(j, 1), len(self.rates_bps))
        k = j - 1
        if self.rates_bps[k] == 0:                 # float edge: rem equals the boundary
            return loops * self.period + self.times[j]
        return loops * self.period + self.times[k] + (rem - self._cum[k]) / self.rates_bps[k]

    def transfer_time(self, nbytes: float, start_t: float) -> float:
        """Seconds to send ``nbytes`` starting at ``start_t``, integrating the (looped) rate."""
        if nbytes <= 0:
            return 0.0
        end = self.time_for_bits(self.bits_until(start_t) + 8.0 * nbytes)
        return max(end - start_t, 0.0)

    def mean_rate(self, t0: float, t1: float) -> float:
        """Mean rate (bits/s) over ``[t0, t1]``."""
        if t1 <= t0:
            return self.rate_bps(t0)
        return (self.bits_until(t1) - self.bits_until(t0)) / (t1 - t0)

    def resample(self, dt: float) -> "Trace":
        """The trace averaged over bins of ``dt`` seconds (same bits per bin; the last bin may be short)."""
        if not dt > 0:
            raise TraceFileError(f"{self.name}: resample interval must be > 0")
        edges = [min(i * dt, self.period) for i in range(math.ceil(self.period / dt) + 1)]
        if edges[-1] < self.period:
            edges.append(self.period)
        edges = [e for i, e in enumerate(edges) if i == 0 or e > edges[i - 1]]
        rates = [(self.bits_until(b) - self.bits_until(a)) / (b - a) for a, b in zip(edges, edges[1:])]
        return Trace(edges, rates, name=self.name)

    def scaled(self, factor: float) -> "Trace":
        """The same trace with every rate multiplied by ``factor``."""
        return Trace(self.times, [r * factor for r in self.rates_bps], name=f"{self.name}x{factor:g}")

    @classmethod
    def constant(cls, rate_bps: float, period: float = 1.0, name: str = "constant") -> "Trace":
        return cls([0.0, period], [rate_bps], name=name)

    def shifted(self, offset_s: float) -> "Shifted":
        """This trace read from ``offset_s`` on: what a device that joins the trace there sees."""
        return Shifted(self, offset_s)


class Shifted:
    """A trace read from an offset (``Trace.shifted``): the same rates, ``offset_s`` later."""

    def __init__(self, trace: Trace, offset_s: float) -> None:
        self.trace, self.offset_s = trace, float(offset_s)
        self.name, self.period = trace.name, trace.period

    def rate_bps(self, t: float) -> float:
        return self.trace.rate_bps(t + self.offset_s)

    def transfer_time(self, nbytes: float, start_t: float) -> float:
        return self.trace.transfer_time(nbytes, start_t + self.offset_s)

    def mean_rate(self, t0: float, t1: float) -> float:
        return self.trace.mean_rate(t0 + self.offset_s, t1 + self.offset_s)


# ------------------------------------------------------------------------------------------ files

def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise TraceFileError(f"{path}: not a text trace file ({error.reason})") from error
    except OSError as error:
        raise TraceFileError(f"cannot read trace {path}: {error.strerror or error}") from error
    rows = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    rows = [(n, line) for n, line in rows if line and not line.startswith("#")]
    if not rows:
        raise TraceFileError(f"{path}: empty trace file (expected 'seconds<TAB>Mbit/s' lines or "
                             f"Mahimahi millisecond timestamps)")
    return rows


def _two_column(path: Path, rows: list[tuple[int, str]]) -> Trace:
    times: list[float] = []
    rates: list[float] = []
    for n, line in rows:
        fields = line.split()
        if len(fields) != 2:
            raise TraceFileError(f"{path}:{n}: expected 'seconds<TAB>Mbit/s', got {line[:60]!r}")
        try:
            t, mbps = float(fields[0]), float(fields[1])
        except ValueError:
            raise TraceFileError(f"{path}:{n}: not a number in {line[:60]!r}") from None
        if not (math.isfinite(t) and math.isfinite(mbps)) or t < 0 or mbps < 0:
            raise TraceFileError(f"{path}:{n}: time and rate must be finite and >= 0, got {line[:60]!r}")
        if times and t < times[-1]:
            raise TraceFileError(f"{path}:{n}: time {t:g} s goes back (previous {times[-1]:g} s)")
        times.append(t)
        rates.append(mbps * 1e6)
    if len(times) == 1:
        interval = 1.0
    else:
        interval = times[-1] - times[-2] or max((b - a for a, b in zip(times, times[1:])), default=1.0) or 1.0
    offset = times[0]
    boundaries = [t - offset for t in times] + [times[-1] - offset + interval]
    try:
        return Trace(boundaries, rates, name=path.stem)
    except TraceFileError as error:
        raise TraceFileError(f"{path}: {error}") from None


def _mahimahi(path: Path, rows: list[tuple[int, str]]) -> Trace:
    counts: dict[int, int] = {}
    last = -1
    for n, line in rows:
        try:
            ms = int(line)
        except ValueError:
            raise TraceFileError(f"{path}:{n}: Mahimahi lines are one integer millisecond timestamp, "
                                 f"got {line[:60]!r}") from None
        if ms < 0:
            raise TraceFileError(f"{path}:{n}: negative timestamp {ms}")
        if ms < last:
            raise TraceFileError(f"{path}:{n}: timestamp {ms} ms goes back (previous {last} ms)")
        last = ms
        counts[ms] = counts.get(ms, 0) + 1
    period_ms = max(last, 1)
    # Mahimahi delivers the opportunities stamped m at m; as a rate they fill the bin [m, m+1) ms.
    # Opportunities stamped at the period itself wrap to bin 0 of the next loop.
    bins: dict[int, int] = {}
    for ms, c in counts.items():
        b = ms % period_ms
        bins[b] = bins.get(b, 0) + c
    times = [0.0]
    rates: list[float] = []
    bits_per_opportunity = MAHIMAHI_PACKET_BYTES * 8
    for ms in sorted(bins):
        if ms / 1000 > times[-1]:
            times.append(ms / 1000)
            rates.append(0.0)
        rates.append(bins[ms] * bits_per_opportunity * 1000.0)
        times.append((ms + 1) / 1000)
    if times[-1] < period_ms / 1000:
        rates.append(0.0)
        times.append(period_ms / 1000)
    try:
        return Trace(times, rates, name=path.stem)
    except TraceFileError as error:
        raise TraceFileError(f"{path}: {error}") from None


def load_trace(path: str | Path, *, format: str = "auto") -> Trace:
    """Read one trace file. ``format``: ``"auto"``, ``"tsv"`` (seconds, Mbit/s) or ``"mahimahi"``."""
    path = Path(path)
    rows = _lines(path)
    if format == "auto":
        format = "mahimahi" if len(rows[0][1].split()) == 1 else "tsv"
    if format == "tsv":
        return _two_column(path, rows)
    if format == "mahimahi":
        return _mahimahi(path, rows)
    raise TraceFileError(f"unknown trace format {format!r}; use 'auto', 'tsv' or 'mahimahi'")


def load_traces(path: str | Path, *, format: str = "auto",
                suffixes: Iterable[str] = (".tsv", ".txt", ".log", ".trace", ".mahi", "")) -> list[Trace]:
    """A trace file, or every trace file in a directory (sorted by name; hidden files and README skipped).

    A directory of Mahimahi traces as the Mahimahi project publishes them (``NAME.up`` and
    ``NAME.down`` per link) gives its uplink files, each named ``NAME``: the traces are the device's
    uplink capacity. A directory with only ``.down`` files is refused (no uplink to replay)."""
    path = Path(path)
    if path.is_dir():
        visible = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and not p.stem.upper().startswith("README")]
        up = sorted(p for p in visible if p.suffix == ".up")
        if up:
            return [_named(load_trace(p, format=format), p.stem) for p in up]
        if any(p.suffix == ".down" for p in visible):
            raise TraceFileError(f"{path}: Mahimahi downlink traces (.down) only; the uplink is replayed "
                                 "from NAME.up files")
        suffixes = tuple(suffixes)
        files = sorted(p for p in visible if p.suffix in suffixes)
        if not files:
            raise TraceFileError(f"{path}: no trace files in this directory (two-column .tsv/.txt/.log, "
                                 "Mahimahi files, or Mahimahi NAME.up/NAME.down pairs)")
        return [load_trace(p, format=format) for p in files]
    if not path.exists():
        raise TraceFileError(f"no trace file or directory at {path}")
    return [load_trace(path, format=format)]


def _named(trace: Trace, name: str) -> Trace:
    trace.name = name
    return trace
