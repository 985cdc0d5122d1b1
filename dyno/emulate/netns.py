"""A link shaped by the kernel: two network namespaces joined by a veth pair, the client side's egress
(the uplink) limited by a ``tc`` token bucket filter (tbf) whose rate follows a trace (``tc qdisc
change``). Needs root and iproute2; netem is not used (not every kernel has it).

    with KernelLink.create() as link:          # namespaces dyno-PID-s (server) and dyno-PID-c (client)
        link.set_rate(8e6)
        link.server_address(50051)              # "10.X.Y.1:50051", reachable from the client namespace
        enter(link.client_ns)                   # in a child process, before it starts any thread
        with link.replay(trace): ...            # a thread steps the rate along the trace

Everything made is removed on ``close()`` (deleting a namespace deletes its end of the veth, and the
peer with it), and ``cleanup_stale()`` removes what a killed run left behind. Only the project's own
namespaces carry test traffic: nothing here touches the host's interfaces.

The bucket (``burst``) holds ``BURST_S`` of traffic at the current rate but at least two full-size
packets, so a rate is kept over milliseconds rather than let through in large bursts; the queue
(``limit``) holds ``LIMIT_BYTES``, more than any window of frames the clients keep in flight, so frames
wait at the rate rather than being dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
import time
from typing import Iterator

from dyno.errors import ConfigError

__all__ = ["KernelLink", "available", "enter", "cleanup_stale", "MIN_RATE_BPS", "BURST_S", "LIMIT_BYTES"]

MIN_RATE_BPS = 8_000.0          # tbf needs a rate > 0: a trace's zero stretches become 8 kbit/s
BURST_S = 0.002
LIMIT_BYTES = 8 * 1024 * 1024
_PREFIX = "dyno-"
_CLONE_NEWNET = 0x40000000


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=10)


def available() -> str | None:
    """None when a kernel-shaped link can be made here, else why not (for a skip or a report)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a kernel-shaped link needs root (network namespaces, tc)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"a kernel-shaped link needs iproute2 ({', '.join(missing)} not found)"
    name = f"{_PREFIX}probe-{os.getpid()}"
    made = _run("ip", "netns", "add", name)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()[:200]}"
    _run("ip", "netns", "del", name)
    return None


def enter(namespace: str) -> None:
    """Move the calling thread into network namespace ``namespace`` (threads it starts follow). Call it
    first thing in a child process, before grpc or torch start their threads."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise ConfigError(f"cannot enter network namespace {namespace}: {os.strerror(error)}")
    finally:
        os.close(fd)


def cleanup_stale() -> list[str]:
    """Delete namespaces named by this module whose process is gone; returns their names."""
    listed = _run("ip", "netns", "list")
    removed = []
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(_PREFIX):
            continue
        pid = name[len(_PREFIX):].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _run("ip", "netns", "del", name)
            removed.append(name)
    return removed


class KernelLink:
    """The namespaces, the veth pair and the tbf on the client's side (module docstring)."""

    def __init__(self, tag: int | None = None) -> None:
        tag = os.getpid() if tag is None else tag
        self.server_ns, self.client_ns = f"{_PREFIX}{tag}-s", f"{_PREFIX}{tag}-c"
        short = tag % 100_000
        self.server_dev, self.client_dev = f"dy{short}s", f"dy{short}c"
        self.server_ip = f"10.{200 + (short >> 14) % 50}.{(short >> 6) & 255}.{((short & 63) << 2) + 1}"
        self.client_ip = self.server_ip.rsplit(".", 1)[0] + "." + str(int(self.server_ip.rsplit(".", 1)[1]) + 1)
        self.rate_bps = 0.0
        self.changes = 0
        self._made = False
        self._lock = threading.Lock()

    @classmethod
    def create(cls, rate_bps: float = 8e6, tag: int | None = None) -> "KernelLink":
        """Make the namespaces, the veth pair and the tbf at ``rate_bps``; ConfigError if it cannot."""
        why = available()
        if why:
            raise ConfigError(why)
        link = cls(tag)
        try:
            link._make(rate_bps)
        except BaseException:
            link.close()
            raise
        return link

    def _make(self, rate_bps: float) -> None:
        self._made = True
        s, c = self.server_ns, self.client_ns
        steps = [("ip", "netns", "add", s), ("ip", "netns", "add", c),
                 ("ip", "link", "add", self.server_dev, "type", "veth", "peer", "name", self.client_dev),
                 ("ip", "link", "set", self.server_dev, "netns", s), ("ip", "link", "set", self.client_dev, "netns", c),
                 ("ip", "-n", s, "addr", "add", f"{self.server_ip}/30", "dev", self.server_dev),
                 ("ip", "-n", c, "addr", "add", f"{self.client_ip}/30", "dev", self.client_dev),
                 ("ip", "-n", s, "link", "set", self.server_dev, "up"),
                 ("ip", "-n", c, "link", "set", self.client_dev, "up"),
                 ("ip", "-n", s, "link", "set", "lo", "up"), ("ip", "-n", c, "link", "set", "lo", "up")]
        for step in steps:
            done = _run(*step)
            if done.returncode != 0:
                raise ConfigError(f"`{' '.join(step)}` failed: {done.stderr.strip()[:200]}")
        self._tbf("add", rate_bps)

    def _tbf(self, verb: str, rate_bps: float) -> None:
        rate = max(float(rate_bps), MIN_RATE_BPS)
        burst = max(3028, int(rate / 8 * BURST_S))
        done = _run("tc", "-n", self.client_ns, "qdisc", verb, "dev", self.client_dev, "root", "tbf",
                    "rate", f"{int(rate)}bit", "burst", str(burst), "limit", str(LIMIT_BYTES))
        if done.returncode != 0:
            raise ConfigError(f"tc qdisc {verb} tbf rate {int(rate)}bit failed: {done.stderr.strip()[:200]}")
        self.rate_bps = rate
        self.changes += 1

    def set_rate(self, rate_bps: float) -> None:
        """Change the uplink's rate now (``tc qdisc change``)."""
        with self._lock:
            self._tbf("change", rate_bps)

    def server_address(self, port: int) -> str:
        return f"{self.server_ip}:{port}"

    def qdisc_stats(self) -> str:
        return _run("tc", "-s", "-n", self.client_ns, "qdisc", "show", "dev", self.client_dev).stdout

    @contextlib.contextmanager
    def replay(self, trace, *, start: float | None = None, stop_after: float | None = None) -> Iterator[float]:
        """Step the rate along ``trace`` (looped) in a thread, from ``start`` (a ``time.monotonic()``; default
        now); yields the start. The rate is set at each of the trace's segment boundaries."""
        t0 = time.monotonic() if start is None else start
        halt = threading.Event()

        def step() -> None:
            k, loop = 0, 0
            while not halt.is_set():
                at = loop * trace.period + trace.times[k]
                if stop_after is not None and at > stop_after:
                    return
                wait = t0 + at - time.monotonic()
                if wait > 0 and halt.wait(wait):
                    return
                self.set_rate(trace.rates_bps[k])
                k += 1
                if k == len(trace.rates_bps):
                    k, loop = 0, loop + 1

        thread = threading.Thread(target=step, name="dyno-tbf-replay", daemon=True)
        thread.start()
        try:
            yield t0
        finally:
            halt.set()
            thread.join(5)

    def close(self) -> None:
        """Delete both namespaces (and so the veth pair and its qdisc)."""
        if not self._made:
            return
        self._made = False
        for namespace in (self.client_ns, self.server_ns):
            _run("ip", "netns", "del", namespace)

    def __enter__(self) -> "KernelLink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KernelLink({self.client_ns} -> {self.server_ns}, {self.rate_bps / 1e6:.3g} Mbit/s)"
