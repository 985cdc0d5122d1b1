"""The Ray path's other placements: :class:`RayServerProcess` (a child process, the shape of
``dyno.runtime.ServerProcess``) and :func:`serve_ray` (this process until SIGINT/SIGTERM: ``dyno serve
--ray``). Both connect to Ray, deploy, run the front, and on the way out drain and delete the application.

    with RayServerProcess(from_plan_file, "plan.json", "trained", config=ServerConfig(),
                          ray=RayConfig(replicas=2)) as cloud:
        ...                      # cloud.address, cloud.port, cloud.pid, cloud.info["replicas"]
        cloud.stop(grace=5)      # or kill(): SIGKILL to the child's process group (a local Ray with it)
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dyno.cloud.config import RayConfig
from dyno.cloud.harness import Front, connect, deploy, run_front, undeploy
from dyno.datafile import atomic_write
from dyno.plan import Plan
from dyno.runtime.config import ServerConfig
from dyno.runtime.harness import DEFAULT_GRACE, ServerProcess, ready_info

__all__ = ["RayServerProcess", "serve_ray", "front_info"]

log = logging.getLogger("dyno.cloud")


def front_info(front: Front, address: str) -> dict[str, Any]:
    """What a started Ray front reports: the embedded server's ready info, plus the application, its
    replicas up and their torch device."""
    return ready_info(front.server, address) | {
        "server": "ray", "app": front.watch.app, "replicas": front.watch.load.running, "device": front.device}


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _stop_on_signals(until: asyncio.Future, grace: float) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _settle, until, grace)


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
    ray_config = ray or RayConfig()

    def announce(front: Front) -> None:
        info = front_info(front, address)
        print(f"dyno serve: {plan.model} (plan {info['plan_hash'][:12]}) on {info['address']}: Ray Serve "
              f"application {info['app']}, {info['replicas']} replica(s) up on {info['device']}", flush=True)
        if ready_file is not None:
            atomic_write(ready_file, json.dumps(info))

    async def main() -> None:
        until = asyncio.get_running_loop().create_future()
        _stop_on_signals(until, grace)
        await _run(plan, model, config, ray_config, address=address, until=until, ready=announce)

    asyncio.run(main())


def _child(build: Callable[..., tuple[Plan, nn.Module]], args: tuple, config: ServerConfig | None,
           ray_config: RayConfig, threads: int, address: str, log_path: str | None,
           conn: multiprocessing.connection.Connection) -> None:
    """The child of a RayServerProcess: its own process group (``kill`` takes a local Ray with it)."""
    os.setsid()
    if log_path is not None:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    torch.set_num_threads(threads)
    try:
        plan, model = build(*args)
        asyncio.run(_serve_child(plan, model, config, ray_config, address, conn))
    except BaseException:
        text = traceback.format_exc(limit=8)
        print(text, file=sys.stderr, flush=True)
        try:
            conn.send(("error", text))
        except OSError:
            pass
        sys.exit(1)


async def _serve_child(plan: Plan, model: nn.Module, config: ServerConfig | None, ray_config: RayConfig,
                       address: str, conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    until = loop.create_future()
    _stop_on_signals(until, DEFAULT_GRACE)

    def on_message() -> None:  # ("stop", grace); end of file: the parent is gone
        loop.remove_reader(conn.fileno())
        try:
            _, grace = conn.recv()
        except (EOFError, OSError, ValueError):
            grace = DEFAULT_GRACE
        _settle(until, grace)

    loop.add_reader(conn.fileno(), on_message)
    await _run(plan, model, config, ray_config, address=address, until=until,
               ready=lambda front: conn.send(("ready", front_info(front, address))))


class RayServerProcess(ServerProcess):
    """The front and Ray's driver in a child process ("spawn"), the tails on Ray Serve: a
    ``dyno.runtime.ServerProcess`` in every attribute and method (``address``, ``port``,
    ``metrics_port``, ``pid``, ``info``, ``stop``, ``kill``, a context manager); ``info`` also says
    ``server: "ray"``, ``replicas`` and ``device``. ``build(*args) -> (plan, model)`` runs in the child
    (e.g. ``dyno.runtime.from_plan_file``); ``threads``: the front's torch threads."""

    def __init__(self, build: Callable[..., tuple[Plan, nn.Module]], *args: Any, config: ServerConfig | None = None,
                 ray: RayConfig | None = None, threads: int = 1, address: str = "127.0.0.1:0",
                 timeout: float = 180.0, log: str | Path | None = None):
        self.config = config or ServerConfig()
        self.ray_config = ray or RayConfig()
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_child, name="dyno-ray-front", daemon=True,
            args=(build, args, self.config, self.ray_config, threads, address, None if log is None else str(log),
                  child_conn))
        self.process.start()
        child_conn.close()
        self._stopped = False
        try:
            self.info = self._wait_ready(timeout)
        except BaseException:
            self.process.join(5)
            self.kill()
            raise
        self.address: str = self.info["address"]
        self.port: int = self.info["port"]
        self.metrics_port: int | None = self.info["metrics_port"]
        self.pid: int = self.info["pid"]

    def kill(self) -> None:
        """SIGKILL to the child's process group: the front, and a local Ray it started (a cluster given
        by ``RayConfig.address`` keeps the application: stop it, or start another of the same name)."""
        self._stopped = True
        pid = self.process.pid
        if self.process.is_alive() and pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.process.kill()
        self.process.join(10)
        self._conn.close()
