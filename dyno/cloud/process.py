"""The Ray path's other placements, the runtime harness's given the Ray serve coroutine (:func:`_run`):
:class:`RayServerProcess` (a ``dyno.runtime.ServerProcess``) and :func:`serve_ray` (this process until
SIGINT/SIGTERM: ``dyno serve --ray``). Both connect to Ray, deploy, run the front, and on the way out drain
and delete the application.

    with RayServerProcess(from_plan_file, "plan.json", "trained", config=ServerConfig(),
                          ray=RayConfig(replicas=2)) as cloud:
        ...                      # cloud.address, cloud.port, cloud.pid, cloud.info["replicas"]
        cloud.stop(grace=5)      # or kill(): SIGKILL to the child's process group (a local Ray with it)
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

from torch import nn

from dyno.cloud.config import RayConfig
from dyno.cloud.harness import Front, connect, deploy, front_info, run_front, undeploy
from dyno.datafile import atomic_write
from dyno.plan import Plan
from dyno.runtime.config import ServerConfig
from dyno.runtime.harness import DEFAULT_GRACE, ServerProcess, Serving, serve_until_signal

__all__ = ["RayServerProcess", "serve_ray", "front_info"]


async def _run(plan: Plan, model: nn.Module, config: ServerConfig | None, ray_config: RayConfig, *,
               address: str, until: asyncio.Future, ready: Callable[[Front], None]) -> None:
    """Connect, deploy, run the front until ``until``; then drain, delete the application, disconnect."""
    loop = asyncio.get_running_loop()
    started = await loop.run_in_executor(None, connect, ray_config.address)
    try:
        handle, device = await loop.run_in_executor(None, deploy, plan, model, ray_config, config or ServerConfig())
        await run_front(plan, model, config, ray_config, handle, device, address=address, until=until, ready=ready)
    finally:
        await loop.run_in_executor(None, lambda: undeploy(ray_config.app_name(plan.model), started=started))


def serve_ray(plan: Plan, model: nn.Module, config: ServerConfig | None = None, ray: RayConfig | None = None, *,
              address: str = "127.0.0.1:50051", ready_file: str | Path | None = None,
              grace: float = DEFAULT_GRACE) -> None:
    """``dyno serve --ray``: serve until SIGINT/SIGTERM, then drain for up to ``grace`` seconds."""

    def announce(front: Front) -> None:
        info = front_info(front, address)
        print(f"dyno serve: {plan.model} (plan {info['plan_hash'][:12]}) on {info['address']}: Ray Serve "
              f"application {info['app']}, {info['replicas']} replica(s) up on {info['device']}", flush=True)
        if ready_file is not None:
            atomic_write(ready_file, json.dumps(info))

    serve_until_signal(_run, plan, model, config, ray or RayConfig(), address=address, ready=announce, grace=grace)


class RayServerProcess(ServerProcess):
    """The front and Ray's driver in a child process ("spawn"), the tails on Ray Serve: a
    ``dyno.runtime.ServerProcess`` serving :func:`_run` (``address``, ``port``, ``metrics_port``, ``pid``,
    ``info``, ``stop``, ``kill``, a context manager); ``info`` also says ``server: "ray"``, ``app``,
    ``replicas`` and ``device``. ``build(*args) -> (plan, model)`` runs in the child (e.g.
    ``dyno.runtime.from_plan_file``); ``threads``: the front's torch threads. The child leads its own
    process group: ``kill`` takes a local Ray it started with it (a cluster given by
    ``RayConfig.address`` keeps the application: stop it, or start another of the same name)."""

    def __init__(self, build: Callable[..., tuple[Plan, nn.Module]], *args: Any, config: ServerConfig | None = None,
                 ray: RayConfig | None = None, threads: int = 1, address: str = "127.0.0.1:0",
                 timeout: float = 180.0, log: str | Path | None = None):
        self.ray_config = ray or RayConfig()
        serving = Serving(_run, front_info, (self.ray_config,), name="dyno-ray-front", own_group=True)
        super().__init__(build, *args, config=config, threads=threads, address=address, timeout=timeout, log=log,
                         serving=serving)
