"""How the tails run on Ray Serve: replicas or autoscaling, where, on what device (``RayConfig``).

    RayConfig(replicas=2)                                  # a fixed number of replicas
    RayConfig(autoscale=(1, 4), target_ongoing=2)          # Ray Serve's autoscaler on ongoing requests
    RayConfig(address="10.0.0.5:6379", torch_device="auto")  # a running cluster, GPUs where it has them

No Ray import here: ``import dyno.cloud`` works without Ray installed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dyno.errors import ConfigError
from dyno.runtime.tails import TORCH_DEVICES

__all__ = ["RayConfig", "parse_autoscale", "INSTALL_HINT", "BATCH_IN"]

INSTALL_HINT = "Ray Serve is not installed: pip install 'dyno[ray]' (ray[serve]==2.60.0)"
#: Where batches form: in dyno's front (one deployment call per batch) or in the replicas (@serve.batch).
BATCH_IN = ("front", "replica")


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN,MAX"`` -> (MIN, MAX); ConfigError unless 0 <= MIN <= MAX, MAX >= 1."""
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"autoscale must be MIN,MAX (two whole numbers), got {text!r}") from None
    if not 0 <= low <= high or high < 1:
        raise ConfigError(f"autoscale MIN,MAX needs 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return low, high


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Where and how the tails run on Ray Serve (see ``dyno.cloud``).

    - ``replicas``: a fixed number of replicas; or ``autoscale``: (min, max) replicas, scaled by Ray
      Serve on ``target_ongoing`` requests (batches) in flight per replica, after ``upscale_delay_s``
      / ``downscale_delay_s`` of sustained change, averaged over ``look_back_s``.
    - ``address``: a running cluster (``ray start --head`` prints it; "auto": the one on this node);
      None: a local Ray instance is started (or the one this process already runs is used).
    - ``torch_device``: cpu | cuda | auto (a GPU per replica where the cluster has GPUs).
    - ``replica_threads``: torch threads per replica; ``replica_cpus``: CPUs Ray reserves per replica.
    - ``max_ongoing``: batches in flight per replica: the front keeps at most (max replicas x
      ``max_ongoing``) batches in flight (a replica computes one at a time, the rest queue in it). Ray
      Serve's own limit per replica is that whole number, so that it never binds: with it at
      ``max_ongoing``, a batch sent the moment the last one's answer landed found the replica still
      counting that one, was rejected, and Ray Serve's router probed and backed off (stalls of ~1 s).
    - ``batch_in``: "front" (dyno's batcher in the front, one deployment call per batch) or "replica"
      (one call per request, batched in the replica by ``@serve.batch``; the design not chosen: one
      handle call per request, where the front makes one per batch; side by side in
      ``dyno bench-runtime --what scale-out --batch-in replica``).
    - ``app``: the Serve application's name (None: ``dyno-<model>``); ``timeout_s``: the longest a
      batch may take on the deployment (then it fails, and its devices finish on their own);
      ``retries``: a batch whose replica died is sent again this many times.
    """

    replicas: int | None = None
    autoscale: tuple[int, int] | None = None
    target_ongoing: float = 2.0
    address: str | None = None
    torch_device: str = "cpu"
    replica_threads: int = 1
    replica_cpus: float = 1.0
    max_ongoing: int = 2
    batch_in: str = "front"
    app: str | None = None
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    look_back_s: float = 5.0
    timeout_s: float = 30.0
    retries: int = 2

    def __post_init__(self) -> None:
        self._check_scale()
        if self.torch_device not in TORCH_DEVICES:
            raise ConfigError(f"RayConfig.torch_device must be one of {', '.join(TORCH_DEVICES)}, "
                              f"got {self.torch_device!r}")
        if self.batch_in not in BATCH_IN:
            raise ConfigError(f"RayConfig.batch_in must be one of {', '.join(BATCH_IN)}, got {self.batch_in!r}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ConfigError(f"RayConfig.address must be host:port, 'auto' or None, got {self.address!r}")
        self._check_numbers()

    def _check_scale(self) -> None:
        if self.replicas is not None and self.autoscale is not None:
            raise ConfigError("RayConfig: give replicas or autoscale, not both")
        if self.replicas is None and self.autoscale is None:
            object.__setattr__(self, "replicas", 1)
        if self.replicas is not None and not _int_in(self.replicas, 1, 4096):
            raise ConfigError(f"RayConfig.replicas must be an int in 1..4096, got {self.replicas!r}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not (_int_in(low, 0, 4096) and _int_in(high, 1, 4096) and low <= high):
                raise ConfigError("RayConfig.autoscale must be (min, max) with 0 <= min <= max, "
                                  f"got {self.autoscale!r}")
            object.__setattr__(self, "autoscale", (low, high))

    def _check_numbers(self) -> None:
        for name in ("replica_threads", "max_ongoing"):
            if not _int_in(getattr(self, name), 1, 1024):
                raise ConfigError(f"RayConfig.{name} must be an int in 1..1024, got {getattr(self, name)!r}")
        if not _int_in(self.retries, 0, 10):
            raise ConfigError(f"RayConfig.retries must be an int in 0..10, got {self.retries!r}")
        for name in ("target_ongoing", "timeout_s", "look_back_s"):
            if not _positive(getattr(self, name)):
                raise ConfigError(f"RayConfig.{name} must be a number > 0, got {getattr(self, name)!r}")
        for name in ("upscale_delay_s", "downscale_delay_s", "replica_cpus"):
            value = getattr(self, name)
            if not (_positive(value) or value == 0):
                raise ConfigError(f"RayConfig.{name} must be a number >= 0, got {value!r}")

    @property
    def max_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale is not None else int(self.replicas or 1)

    @property
    def in_flight(self) -> int:
        """Batches the front keeps in flight to the deployment at most (its batcher's workers)."""
        return self.max_replicas * self.max_ongoing

    def app_name(self, model: str) -> str:
        return self.app or f"dyno-{model}"

    def deployment_options(self, *, gpus: bool) -> dict[str, Any]:
        """``serve.deployment`` options: replicas or autoscaling, per-replica resources and queue."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": 1 if gpus else 0},
            # the front bounds what is in flight (``in_flight``): a replica taking all of it never
            # rejects a batch, so the router never falls back to probing and backing off
            "max_ongoing_requests": self.in_flight if self.batch_in == "front" else 256,
            "graceful_shutdown_timeout_s": self.timeout_s,
            "logging_config": {"enable_access_log": False, "log_level": "WARNING"},  # no log line per batch
        }
        if self.autoscale is None:
            options["num_replicas"] = self.replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.autoscale[0], "max_replicas": self.autoscale[1],
                "target_ongoing_requests": self.target_ongoing, "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s, "look_back_period_s": self.look_back_s}
        return options
