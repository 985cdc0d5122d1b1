"""Device-speed emulation: run device work (heads, encoding, fallback tails) k_d times slower.

Two mechanisms, both real compute on this machine's CPU:

- ``pad`` (default, deterministic, no privileges): run the work, measure its time t, then sleep until
  k_d * t has passed since it started. The CPU is free during the pad, as it would be for a separate
  device. t is the calling thread's *CPU* time when torch runs single-threaded (as the demo's device
  does): on a machine shared with other work, a run that waits 50 ms for a core would otherwise be
  padded to k_d * 50 ms. (A run still takes at least its wall time.) With several torch threads the
  work is not all on the calling thread, so t is wall time.
- ``cgroup``: move the calling (device) thread into a cgroup v1 ``cpu`` group whose CFS quota is
  1/k_d of one CPU (period k_d ms, quota 1 ms, i.e. at least the kernel's 1 ms minimum). Needs write
  access to ``/sys/fs/cgroup/cpu``; the group is removed on ``close()``. Coarser: a short head may
  run at full speed and the next one wait out the period; the average is k_d.

Tiers are absolute: a tier names the whole-model latency of the reference model (EfficientNet-Lite0,
one inference, from published figures) on the device (``TIER_MS``) and on the cloud (``CLOUD_MS``)::

    low = 49 ms (Raspberry Pi 4 CPU)   mid = 12 ms (Pixel 4 CPU)
    high = 3 ms (Jetson AGX Xavier class, ~2x the GPU server)   cloud gpu = 1.5 ms

A plan's profiles give the per-cut *shape*; the *scale* is ``tier_ms / reference_ms`` where
``reference_ms`` is the reference model's latency on the machine that profiled the plan
(``slowdown_for``). A tier faster than this machine cannot be emulated by slowing it down:
``Device.absolute`` then runs at native speed and says so (``requested`` keeps the wanted slowdown).

    device = Device.absolute("low", reference_ms=38.2)   # k_d = 49 / 38.2 = 1.28
    device = Device(slowdown=12.5, mode="cgroup")
    value, ms = device.run(head, x)        # ms is the emulated device time

``TIERS`` (33 / 8 / 2, relative to this machine) and ``Device.tier`` are the older relative tiers,
kept for callers that have not moved to absolute ones.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from dyno.errors import ConfigError

__all__ = ["TIERS", "TIER_MS", "CLOUD_MS", "REFERENCE_MODEL", "Device", "ProcessQuota", "cgroup_available",
           "reference_ms_override", "slowdown_for", "tier_ms"]

#: The model tier latencies are quoted for (its whole-model latency, one inference, one thread).
REFERENCE_MODEL = "efficientnet-lite0"
#: Device tiers: the reference model's latency on the device, ms (DESIGN.md, "Emulation").
TIER_MS: dict[str, float] = {"low": 49.0, "mid": 12.0, "high": 3.0}
#: Cloud tiers: the reference model's latency on the cloud, ms (the paper's GPU server).
CLOUD_MS: dict[str, float] = {"gpu": 1.5}
#: The older relative tiers: slowdowns against this machine (``Device.tier``).
TIERS: dict[str, float] = {"low": 33.0, "mid": 8.0, "high": 2.0}


def reference_ms_override() -> float | None:
    """``$DYNO_REFERENCE_MS``: the reference model's latency on a known machine, ms (None: not set)."""
    text = os.environ.get("DYNO_REFERENCE_MS")
    if not text:
        return None
    try:
        ms = float(text)
    except ValueError:
        raise ConfigError(f"$DYNO_REFERENCE_MS must be a latency in ms, got {text!r}") from None
    if not ms > 0:
        raise ConfigError(f"$DYNO_REFERENCE_MS must be > 0, got {text!r}")
    return ms


def tier_ms(tier: str | float) -> float:
    """The reference model's latency (ms) a device tier names; a number is taken as that latency."""
    if isinstance(tier, str) and tier in TIER_MS:
        return TIER_MS[tier]
    try:
        value = float(tier)
    except (TypeError, ValueError):
        raise ConfigError(f"unknown device tier {tier!r}; known: {', '.join(TIER_MS)} (reference-model "
                          "latencies in ms), or a latency in ms") from None
    if not (0 < value < 1e6):
        raise ConfigError(f"a tier's latency must be > 0 ms, got {tier!r}")
    return value


def slowdown_for(tier: str | float, reference_ms: float) -> float:
    """k = tier latency / the reference model's latency on the machine that profiled the plan."""
    if not (reference_ms > 0):
        raise ConfigError(f"the reference latency must be > 0 ms, got {reference_ms!r}")
    return tier_ms(tier) / reference_ms
_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")


def cgroup_available() -> bool:
    """Whether a cgroup v1 cpu group can be made here (the controller is mounted and writable)."""
    return (_CGROUP_ROOT / "cpu.cfs_quota_us").exists() and os.access(_CGROUP_ROOT, os.W_OK)


class Device:
    """Runs callables as an emulated device ``slowdown`` times slower than this machine."""

    def __init__(self, slowdown: float = 1.0, *, mode: str = "pad"):
        if not (isinstance(slowdown, (int, float)) and 1.0 <= slowdown <= 1000):
            raise ConfigError(f"device slowdown must be in 1..1000, got {slowdown!r}")
        if mode not in ("pad", "cgroup", "quota"):
            raise ConfigError(f"device emulation mode must be 'pad', 'cgroup' or 'quota', got {mode!r}")
        if mode == "cgroup" and not cgroup_available():
            raise ConfigError("cgroup device emulation needs a writable cgroup v1 cpu controller at "
                              f"{_CGROUP_ROOT}; use mode='pad'")
        self.slowdown = float(slowdown)
        self.requested = float(slowdown)   # the slowdown the tier asked for (Device.absolute may clamp it)
        self.tier_name: str | None = None
        self.mode = mode
        self._group: Path | None = None
        self._members: set[int] = set()
        self._lock = threading.Lock()

    @classmethod
    def tier(cls, name: str | float, *, mode: str = "pad") -> "Device":
        """A device of a named tier (``low``/``mid``/``high``/``native``) or a numeric slowdown."""
        if name == "native":
            return cls(1.0, mode=mode)
        if isinstance(name, str) and name in TIERS:
            return cls(TIERS[name], mode=mode)
        try:
            return cls(float(name), mode=mode)
        except (TypeError, ValueError):
            raise ConfigError(f"unknown device tier {name!r}; known: {', '.join(TIERS)}, native, or a number "
                              ">= 1 (the slowdown k_d)") from None

    @classmethod
    def absolute(cls, tier: str | float, *, reference_ms: float, mode: str = "pad") -> "Device":
        """A device of an absolute tier (``TIER_MS`` name or a latency in ms) on a machine whose reference
        model takes ``reference_ms``. Faster than this machine: native speed (``requested`` < 1 says so)."""
        wanted = slowdown_for(tier, reference_ms)
        device = cls(max(1.0, wanted), mode=mode)
        device.requested = wanted
        device.tier_name = str(tier)
        return device

    @classmethod
    def named(cls, tier: str | float, *, reference_ms: Callable[[], float], mode: str = "pad") -> "Device":
        """The device a user names: an absolute tier (``TIER_MS``), ``native``, or a number (a slowdown
        against this machine). ``reference_ms`` is called only for an absolute tier: finding the
        reference model's latency may mean timing it."""
        if isinstance(tier, str) and tier in TIER_MS:
            return cls.absolute(tier, reference_ms=reference_ms(), mode=mode)
        return cls.tier(tier, mode=mode)

    @property
    def codec_slowdown(self) -> float:
        """How much slower than this machine the device runs the codec: padding slows the head runs
        only, a CPU quota everything the device thread (``cgroup``) or the whole client (``quota``) does,
        the encoding included, as a real slow device would."""
        return 1.0 if self.mode == "pad" else self.slowdown

    @property
    def description(self) -> str:
        how = {"pad": "padding each head run", "cgroup": "cgroup v1 CPU quota",
               "quota": "cgroup v1 CPU quota on the process"}[self.mode]
        text = f"k_d={self.slowdown:.3g} ({how})"
        if self.requested < 1.0:
            text += f"; the tier wants k_d={self.requested:.3g}, faster than this machine: run at native speed"
        return text

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
        """``fn(*args, **kwargs)`` as the device; returns (its value, emulated milliseconds)."""
        value, ms, _ = self.timed(fn, *args, **kwargs)
        return value, ms

    def timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
        """(value, emulated ms, the device's own ms). The last leaves out the time this process's other
        threads ran meanwhile, never below the work's CPU time times k_d: with one torch thread the
        client's network loop holding the GIL stretched the device's runs while it offloaded (2x at
        fmnist-resnet's 1.1 ms), and a device that timed them so believed itself slow and kept
        offloading. Other processes' load stays in: a busy device is slower. Without CPU timing (a
        cgroup quota, several torch threads) both are the wall time. ``quota``: the whole process is
        under a ``ProcessQuota`` already; the work runs at once and the device's time is its CPU time
        times k_d, the rate the quota holds it to (a 0.5 ms head fits in one 1 ms slice of quota and
        ran at full speed, so its wall time read the device as faster than this machine)."""
        if self.mode == "cgroup" and self.slowdown > 1:
            self._join()
        cpu = self.mode in ("pad", "quota") and _single_threaded()
        start = time.perf_counter()
        start_cpu, start_process = (time.thread_time(), time.process_time()) if cpu else (0.0, 0.0)
        value = fn(*args, **kwargs)
        elapsed = time.perf_counter() - start
        work = time.thread_time() - start_cpu if cpu else elapsed
        if self.mode == "pad" and self.slowdown > 1:
            _sleep_until(start + work * self.slowdown)
            elapsed = time.perf_counter() - start
        if not cpu:
            return value, elapsed * 1000, elapsed * 1000
        if self.mode == "quota":
            return value, max(elapsed, work * self.slowdown) * 1000, work * self.slowdown * 1000
        others = (time.process_time() - start_process) - (time.thread_time() - start_cpu)
        own = max(work * self.slowdown, elapsed - others)
        return value, elapsed * 1000, own * 1000

    def close(self) -> None:
        """Remove the cgroup (its threads go back to the root group)."""
        with self._lock:
            group, self._group = self._group, None
            members, self._members = self._members, set()
        if group is None:
            return
        for tid in members:
            try:
                (_CGROUP_ROOT / "tasks").write_text(str(tid))
            except OSError:
                pass  # the thread has exited
        try:
            group.rmdir()
        except OSError:
            pass

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Device(slowdown={self.slowdown:g}, mode={self.mode!r})"

    def _join(self) -> None:
        tid = threading.get_native_id()
        if tid in self._members:
            return
        with self._lock:
            if self._group is None:
                group = _CGROUP_ROOT / f"dyno-device-{os.getpid()}-{id(self):x}"
                group.mkdir(exist_ok=True)
                period_us = max(1000, int(round(1000 * self.slowdown)))
                (group / "cpu.cfs_period_us").write_text(str(period_us))
                (group / "cpu.cfs_quota_us").write_text(str(max(1000, int(period_us / self.slowdown))))
                self._group = group
            (self._group / "tasks").write_text(str(tid))
            self._members.add(tid)


def _single_threaded() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return True
    return torch.get_num_threads() == 1


def _sleep_until(deadline: float) -> None:
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        time.sleep(left if left > 0.002 else left / 2)


class ProcessQuota:
    """This whole process (every thread, now and later) slowed by a cgroup v1 CPU quota of 1/``slowdown``
    of one CPU: how ``dyno bench`` slows a device client process. Join before starting threads;
    ``close()`` moves the process back to the root group and removes the group.

        with ProcessQuota(1.28):
            ...run the client...
    """

    def __init__(self, slowdown: float) -> None:
        if not (isinstance(slowdown, (int, float)) and 1.0 <= slowdown <= 1000):
            raise ConfigError(f"a CPU quota's slowdown must be in 1..1000, got {slowdown!r}")
        if not cgroup_available():
            raise ConfigError(f"a CPU quota needs a writable cgroup v1 cpu controller at {_CGROUP_ROOT}")
        self.slowdown = float(slowdown)
        self.group: Path | None = _CGROUP_ROOT / f"dyno-process-{os.getpid()}"
        self.group.mkdir(exist_ok=True)
        # 1 ms of CPU per k ms (the kernel's least quota): with 10 ms periods a 1 ms head ran at full speed
        # and the throttling came in chunks, so timed heads read as native while the rate was 1/k
        period_us = max(1000, int(round(1000 * self.slowdown)))
        (self.group / "cpu.cfs_period_us").write_text(str(period_us))
        (self.group / "cpu.cfs_quota_us").write_text(str(max(1000, int(period_us / self.slowdown))))
        (self.group / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> None:
        group, self.group = self.group, None
        if group is None:
            return
        try:
            (_CGROUP_ROOT / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            pass
        try:
            group.rmdir()
        except OSError:
            pass

    def __enter__(self) -> "ProcessQuota":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
