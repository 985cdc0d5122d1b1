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

Tiers, from published EfficientNet-Lite0 latencies against a server GPU (~1.5 ms)::

    low = 33 (Raspberry Pi 4 CPU)   mid = 8 (Pixel 4 CPU)   high = 2 (Jetson AGX Xavier)

    device = Device.tier("low")            # or Device(slowdown=12.5, mode="cgroup")
    value, ms = device.run(head, x)        # ms is the emulated device time
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from dyno.errors import ConfigError

__all__ = ["TIERS", "Device", "cgroup_available"]

#: Device tiers: slowdowns against the cloud (DESIGN.md, "Emulation"). ``native`` (1.0) is also accepted.
TIERS: dict[str, float] = {"low": 33.0, "mid": 8.0, "high": 2.0}
_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")


def cgroup_available() -> bool:
    """Whether a cgroup v1 cpu group can be made here (the controller is mounted and writable)."""
    return (_CGROUP_ROOT / "cpu.cfs_quota_us").exists() and os.access(_CGROUP_ROOT, os.W_OK)


class Device:
    """Runs callables as an emulated device ``slowdown`` times slower than this machine."""

    def __init__(self, slowdown: float = 1.0, *, mode: str = "pad"):
        if not (isinstance(slowdown, (int, float)) and 1.0 <= slowdown <= 1000):
            raise ConfigError(f"device slowdown must be in 1..1000, got {slowdown!r}")
        if mode not in ("pad", "cgroup"):
            raise ConfigError(f"device emulation mode must be 'pad' or 'cgroup', got {mode!r}")
        if mode == "cgroup" and not cgroup_available():
            raise ConfigError("cgroup device emulation needs a writable cgroup v1 cpu controller at "
                              f"{_CGROUP_ROOT}; use mode='pad'")
        self.slowdown = float(slowdown)
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

    @property
    def description(self) -> str:
        how = "padding each head run" if self.mode == "pad" else "cgroup v1 CPU quota"
        return f"k_d={self.slowdown:g} ({how})"

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
        """``fn(*args, **kwargs)`` as the device; returns (its value, emulated milliseconds)."""
        if self.mode == "cgroup" and self.slowdown > 1:
            self._join()
        cpu = self.mode == "pad" and _single_threaded()
        start, start_cpu = time.perf_counter(), time.thread_time() if cpu else 0.0
        value = fn(*args, **kwargs)
        elapsed = time.perf_counter() - start
        if self.mode == "pad" and self.slowdown > 1:
            work = time.thread_time() - start_cpu if cpu else elapsed
            _sleep_until(start + work * self.slowdown)
            elapsed = time.perf_counter() - start
        return value, elapsed * 1000

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
