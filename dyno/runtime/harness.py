"""Running a server: one mechanism (create, start, report ready, wait for the word to stop, drain) in
three placements.

- :class:`ServerThread`: on an event loop in a background thread of this process (tests);
- :class:`ServerProcess`: in a child process with its own interpreter, as the cloud is (the demo, the
  runtime benchmark), built there by a picklable ``build(*args) -> (plan, model)``;
- :func:`serve`: in this process until SIGINT/SIGTERM (the ``dyno serve`` body).

    with ServerThread(plan, model, ServerConfig()) as running:
        Client(plan, model, server=running.address)

    with ServerProcess(from_plan_file, "plan.json", "trained", config=ServerConfig()) as cloud:
        Client(plan, model, server=cloud.address)
        cloud.kill()            # SIGKILL: no goodbye (or stop(grace=5): in-flight requests answered)

Every placement stops gracefully by default: new requests are refused, accepted ones answered, then
every stream ends with UNAVAILABLE (``Server.stop``); ``grace=None`` (or ``kill()``) stops at once.

The placements take what they run as a parameter, a *serve coroutine*
``serve(*args, address=..., until=..., ready=...)`` of :func:`run_server`'s shape (start, call
``ready(started)``, await ``until`` for the grace, stop): :class:`LoopThread` and :func:`serve_until_signal`
run any such coroutine, :class:`ServerProcess` any :class:`Serving` (a module-level serve coroutine and
data arguments, pickled into the child). The embedded server is one use of them; ``dyno.cloud``'s Ray
front (``RayServer``, ``RayServerProcess``, ``serve_ray``) is another.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Self

import torch
from torch import nn

from dyno.datafile import atomic_write
from dyno.errors import RuntimeServiceError
from dyno.plan import Plan
from dyno.runtime.config import ServerConfig
from dyno.runtime.server import Server, create_server
from dyno.runtime.splits import Splits

__all__ = ["ServerThread", "ServerProcess", "LoopThread", "Serving", "serve", "serve_until_signal", "run_server",
           "ready_info", "from_plan_file"]

DEFAULT_GRACE = 5.0
#: A serve coroutine function, :func:`run_server`'s shape: ``serve(*args, address=, until=, ready=)``.
ServeCoroutine = Callable[..., Coroutine[Any, Any, None]]
log = logging.getLogger("dyno.server")


async def run_server(plan: Plan, model: nn.Module, config: ServerConfig | None, *, address: str,
                     until: Awaitable[float | None], ready: Callable[[Server], None],
                     splits: Splits | None = None, warm: bool = True) -> None:
    """The one mechanism: create and start a server, call ``ready(server)``, wait for ``until`` to give
    the grace (seconds; None: at once), then stop (draining for that long). Runs on the caller's loop."""
    server, _ = create_server(plan, model, config, address=address, splits=splits)
    grace: float | None = None
    try:
        await server.start(warm=warm)
        ready(server)
        grace = await until
    finally:
        await server.stop(grace)


def _bound(address: str, port: int) -> str:
    """``address`` with the port the server was given (``127.0.0.1:0`` -> ``127.0.0.1:PORT``)."""
    return f"{address.rsplit(':', 1)[0]}:{port}"


def ready_info(server: Server, address: str) -> dict[str, Any]:
    """What a started server reports (``dyno serve --ready-file`` writes it as JSON)."""
    return {"address": _bound(address, server.port), "port": server.port, "metrics_port": server.metrics_port,
            "pid": os.getpid(), "model": server.plan.model, "plan_hash": server.plan_hash,
            "served_cuts": sorted(server.served)}


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _stop_on_signals(until: asyncio.Future, grace: float) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _settle, until, grace)


# ---------------------------------------------------------------------------------------- serve


def serve_until_signal(serve_coroutine: ServeCoroutine, *args: Any, address: str,
                       ready: Callable[[Any], None], grace: float = DEFAULT_GRACE) -> None:
    """Run ``serve_coroutine(*args, address=, until=, ready=)`` in this process until SIGINT/SIGTERM,
    which stop it with ``grace`` seconds to drain."""

    async def main() -> None:
        until = asyncio.get_running_loop().create_future()
        _stop_on_signals(until, grace)
        await serve_coroutine(*args, address=address, until=until, ready=ready)

    asyncio.run(main())


def serve(plan: Plan, model: nn.Module, config: ServerConfig | None = None, *,
          address: str = "127.0.0.1:50051", ready_file: str | Path | None = None,
          grace: float = DEFAULT_GRACE) -> None:
    """Run a server until SIGINT/SIGTERM, then stop gracefully (the ``dyno serve`` body). Logs a
    warning (``ServerConfig.exposure_warning``) when other machines can reach it without TLS or token."""
    warning = (config or ServerConfig()).exposure_warning(address)
    if warning:
        log.warning("%s", warning)

    def announce(server: Server) -> None:
        info = ready_info(server, address)
        url = server.config.metrics_url(server.metrics_port) if server.metrics_port else None
        print(f"dyno serve: {plan.model} (plan {server.plan_hash[:12]}) on {info['address']}"
              + (f", metrics on {url}" if url else ""), flush=True)
        if ready_file is not None:
            atomic_write(ready_file, json.dumps(info))

    serve_until_signal(run_server, plan, model, config, address=address, ready=announce, grace=grace)


# ---------------------------------------------------------------------------------------- thread


class LoopThread:
    """A serve coroutine on its own event loop in a background thread, for synchronous callers:
    ``serve_coroutine(*args, address=, until=, ready=, **kwargs)`` (:func:`run_server`'s shape). The
    constructor returns once it has called ``ready(started)`` (``self.started``), or raises why it ended
    before; ``stop(grace)`` gives ``until`` the grace and waits for the coroutine to end."""

    def __init__(self, serve_coroutine: ServeCoroutine, *args: Any, address: str,
                 name: str = "dyno-server-loop", **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._until: asyncio.Future = self.call(self._future())
        started: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._running = asyncio.run_coroutine_threadsafe(
            serve_coroutine(*args, address=address, until=self._until, ready=started.set_result, **kwargs),
            self._loop)
        either: list[concurrent.futures.Future[Any]] = [started, self._running]
        concurrent.futures.wait(either, return_when=concurrent.futures.FIRST_COMPLETED)
        if not started.done():
            self._close_loop()
            self._running.result()  # raises why the server did not start
            raise RuntimeServiceError("the server stopped before it started")
        self.started: Any = started.result()
        self._stopped = False

    @staticmethod
    async def _future() -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    def call(self, coroutine: Any, timeout: float | None = 60) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, grace: float | None = DEFAULT_GRACE) -> None:
        """Stop the server, draining for up to ``grace`` seconds (None: at once)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._loop.call_soon_threadsafe(_settle, self._until, grace)
            self._running.result((grace or 0) + 30)
        finally:
            self._close_loop()

    def kill(self) -> None:
        """Stop at once: in-flight requests are dropped, as if the process had died."""
        self.stop(grace=None)

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)


class ServerThread(LoopThread):
    """A server on its own event loop in a background thread, for synchronous callers.

        with ServerThread(plan, model, config) as running:
            client = Client(plan, model, server=running.address)
        running.stop(grace=0)      # or kill(): stop at once, dropping in-flight work
    """

    def __init__(self, plan: Plan, model: nn.Module, config: ServerConfig | None = None, *,
                 address: str = "127.0.0.1:0", splits: Splits | None = None, warm: bool = True):
        super().__init__(run_server, plan, model, config, address=address, splits=splits, warm=warm)
        self.server: Server = self.started
        self.server.cpu = None   # this process is its callers' too: its CPU per request would count theirs
        self.port = self.server.port
        self.address = _bound(address, self.port)

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    @property
    def metrics_url(self) -> str | None:
        return self.server.config.metrics_url(self.server.metrics_port)


# ---------------------------------------------------------------------------------------- process


def from_plan_file(plan_path: str | Path, weights: str = "trained") -> tuple[Plan, nn.Module]:
    """A builder for :class:`ServerProcess`: the plan file and its zoo model with ``weights``
    (trained | random | trained-or-random | a path), refusing a plan made for other weights (as
    ``dyno serve`` does)."""
    from dyno import zoo  # the only place the runtime knows the zoo: a builder, run in the child

    plan = Plan.load(plan_path)
    model = zoo.load_model(plan.model, weights=weights)
    Plan.load(plan_path, model=model)  # refuse a plan made for other weights
    return plan, model


@dataclasses.dataclass(frozen=True)
class Serving:
    """What a :class:`ServerProcess` child serves; pickled into it, so module-level functions and data.

    ``serve(plan, model, config, *args, address=, until=, ready=)``: the serve coroutine
    (:func:`run_server`'s shape); ``report(started, address) -> dict``: the ready info the parent gets
    (``ServerProcess.info``) from what ``serve`` passed to ``ready``; ``name``: the child process's name;
    ``own_group``: the child leads a process group of its own, and ``kill`` sends SIGKILL to the whole
    group (what the child started goes with it)."""

    serve: ServeCoroutine = run_server
    report: Callable[[Any, str], dict[str, Any]] = ready_info
    args: tuple = ()
    name: str = "dyno-server"
    own_group: bool = False


def _child(serving: Serving, build: Callable[..., tuple[Plan, nn.Module]], args: tuple,
           config: ServerConfig | None, threads: int, address: str, log: str | None,
           conn: multiprocessing.connection.Connection) -> None:
    """The child process of a ServerProcess: build, serve, report through ``conn``, stop when told."""
    if serving.own_group:
        os.setsid()
    if log is not None:  # the child's stdout and stderr go to the log file
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    torch.set_num_threads(threads)
    try:
        plan, model = build(*args)
        asyncio.run(_serve_child(serving, plan, model, config, address, conn))
    except BaseException:
        text = traceback.format_exc(limit=8)
        print(text, file=sys.stderr, flush=True)
        try:
            conn.send(("error", text))
        except OSError:
            pass  # the parent is gone
        sys.exit(1)


async def _serve_child(serving: Serving, plan: Plan, model: nn.Module, config: ServerConfig | None, address: str,
                       conn: multiprocessing.connection.Connection) -> None:
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
    await serving.serve(plan, model, config, *serving.args, address=address, until=until,
                        ready=lambda started: conn.send(("ready", serving.report(started, address))))


class ServerProcess:
    """A server in a child process ("spawn": its own interpreter, as the cloud is).

    ``build(*args) -> (plan, model)`` runs in the child: a module-level function (it is pickled by
    name), e.g. :func:`from_plan_file`. ``threads`` is the child's torch intra-op threads; ``log``
    a file for the child's stdout and stderr (default: this process's); ``serving`` what the child
    serves (default: the embedded server, :func:`run_server`). Attributes: ``address``, ``port``,
    ``metrics_port``, ``metrics_url``, ``pid``, ``info`` (as ``dyno serve --ready-file``).

        with ServerProcess(from_plan_file, "plan.json", "trained", config=ServerConfig()) as cloud:
            ...
    """

    def __init__(self, build: Callable[..., tuple[Plan, nn.Module]], *args: Any,
                 config: ServerConfig | None = None, threads: int = 1, address: str = "127.0.0.1:0",
                 timeout: float = 120.0, log: str | Path | None = None, serving: Serving | None = None):
        self.config = config or ServerConfig()
        self.serving = serving = serving or Serving()
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_child, name=serving.name, daemon=True,
            args=(serving, build, args, self.config, threads, address, None if log is None else str(log),
                  child_conn))
        self.process.start()
        child_conn.close()
        self._stopped = False
        try:
            self.info = self._wait_ready(timeout)
        except BaseException:
            self.process.join(5)  # a child that failed is on its way out
            self.kill()
            raise
        self.address: str = self.info["address"]
        self.port: int = self.info["port"]
        self.metrics_port: int | None = self.info["metrics_port"]
        self.pid: int = self.info["pid"]

    def _wait_ready(self, timeout: float) -> dict[str, Any]:
        ready = multiprocessing.connection.wait([self._conn, self.process.sentinel], timeout)
        if self._conn in ready:
            try:
                kind, value = self._conn.recv()
            except EOFError:
                kind, value = "error", f"it exited with code {self.process.exitcode}"
            if kind == "ready":
                return value
            raise RuntimeServiceError(f"the server process did not start: {value}")
        if ready:
            raise RuntimeServiceError(f"the server process exited with code {self.process.exitcode} "
                                      "before it started")
        raise RuntimeServiceError(f"the server process did not start within {timeout:g} s")

    @property
    def metrics_url(self) -> str | None:
        return self.config.metrics_url(self.metrics_port)

    def stop(self, grace: float | None = DEFAULT_GRACE) -> None:
        """Stop the server as SIGTERM does: refuse new requests, answer the accepted ones for up to
        ``grace`` seconds (None: at once), then exit. Kills the child if it does not exit in time."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._conn.send(("stop", grace))
        except OSError:
            pass  # it is gone already
        self.process.join((grace or 0) + 30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        self._conn.close()

    def kill(self) -> None:
        """SIGKILL: no goodbye; in-flight requests are lost to the server (clients fall back). To the
        child's process group if it leads one (``Serving.own_group``)."""
        self._stopped = True
        pid = self.process.pid
        if self.process.is_alive():
            try:
                if self.serving.own_group and pid is not None:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    self.process.kill()
            except (ProcessLookupError, PermissionError):
                self.process.kill()
        self.process.join(10)
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)
