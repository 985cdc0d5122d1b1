"""Running the tails on Ray Serve behind dyno's gRPC front, in the runtime harness's three placements:

- :class:`RayServer`: the front on a loop in a background thread of this process (tests);
- :class:`RayServerProcess`: the front (and Ray's driver) in a child process, the same shape as
  ``dyno.runtime.ServerProcess`` (``address``, ``port``, ``pid``, ``info``, ``stop(grace)``, ``kill()``,
  a context manager), so that a benchmark can run against either;
- :func:`serve_ray`: in this process until SIGINT/SIGTERM (``dyno serve --ray``).

    with RayServer(plan, model, ServerConfig(), RayConfig(replicas=2)) as cloud:
        Client(plan, model, ClientConfig(server=cloud.address))

    with RayServerProcess(from_plan_file, "plan.json", "trained", ray=RayConfig(replicas=2)) as cloud:
        ...

Start: connect to Ray (``RayConfig.address``, else the instance this process runs, else a new local
one), deploy the application (one deployment, ``tails``, of the plan's model) and wait for its replicas,
then start the front. Stop: the front drains (accepted requests answered, by the replicas), then the
application is deleted (its replicas finish what they hold), then Ray is shut down if we started it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any, Awaitable, Callable

from grpc_health.v1 import health_pb2
from torch import nn

from dyno.cloud.config import INSTALL_HINT, RayConfig
from dyno.cloud.front import DeploymentLoad, RayTails, ReplicaWatch
from dyno.errors import ConfigError
from dyno.plan import Plan
from dyno.runtime.config import ServerConfig
from dyno.runtime.harness import DEFAULT_GRACE, LoopThread, ready_info
from dyno.runtime.server import SERVICE_NAME, Server
from dyno.runtime.splits import Splits

__all__ = ["RayServer", "connect", "deploy", "undeploy", "run_front", "front_info", "Front", "SERVE_ENV"]

log = logging.getLogger("dyno.cloud")

#: Ray settings for the front and the replicas, set before Ray is imported: a local instance this process
#: starts runs its workers (the replicas) at the front's priority (Ray's default nices them to 15: on a
#: machine they share with the front and the devices, they starved, missed the router's 0.1 s queue-length
#: probes, and the router backed off); autoscaling metrics every half second (Ray's default is 10 s, too
#: slow to follow a fleet); in a replica, a request's method runs on the replica's own event loop (no hop
#: to a user-code loop thread; the replica moves the compute itself to its one compute thread). On the
#: 2-core development machine the user-code hop and Ray's thread pool were about half of the Ray path's
#: cost per request (round-trip p50 over the embedded server's, unlocked development runs: ~5.2 ms with
#: Ray's defaults, ~2.2-3.2 ms with these).
SERVE_ENV = {"RAY_worker_niceness": "0",
             "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
             "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
             "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
             "RAY_SERVE_RUN_SYNC_IN_THREADPOOL": "0"}


#: Tries at starting a local Ray instance (``connect``).
LOCAL_START_ATTEMPTS = 2


def _ray() -> tuple[Any, Any]:
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray, serve


def connect(address: str | None) -> bool:
    """Connect this process to Ray: ``address`` (a running cluster), or the instance it already runs,
    or a new local one. True if this call started or joined Ray (and so should shut it down).

    A new local instance that misses Ray's fixed 30 s for its raylet to register ("The current node
    timed out during startup"; seen in CI on a 2-core machine) is started once more."""
    ray, _ = _ray()
    if ray.is_initialized():
        return False
    for _ in range(LOCAL_START_ATTEMPTS - 1 if address is None else 0):
        try:
            _init(ray, address)
            return True
        except Exception as error:  # Ray raises a bare Exception for the start-up timeout
            if "timed out during startup" not in str(error):
                raise
            log.warning("the local Ray instance did not start (%s); starting it again", str(error)[:120])
            ray.shutdown()
    _init(ray, address)
    return True


def _init(ray: Any, address: str | None) -> None:
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=False)


def _device(ray: Any, wanted: str) -> tuple[str, bool]:
    """(torch device for the replicas, whether each replica asks Ray for a GPU)."""
    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    if wanted == "cuda" and not gpus:
        raise ConfigError("--torch-device cuda: the Ray cluster has no GPU; use auto or cpu")
    return ("cuda", True) if wanted == "cuda" or (wanted == "auto" and gpus) else ("cpu", False)


def deploy(plan: Plan, model: nn.Module, ray_config: RayConfig, config: ServerConfig) -> tuple[Any, str]:
    """Deploy the plan's tails as the application ``ray_config.app_name(plan.model)`` and wait until its
    replicas are up; (its handle, the torch device of its replicas). Replaces an application of that name."""
    ray, serve = _ray()
    from dyno.cloud.replica import DEPLOYMENT, TailReplica

    device, gpus = _device(ray, ray_config.torch_device)
    options = ray_config.deployment_options(gpus=gpus)
    options["ray_actor_options"]["runtime_env"] = {"env_vars": dict(SERVE_ENV)}
    serve.start(proxy_location="Disabled")  # devices reach the tails through dyno's front, never Serve's proxies
    batching = config.batching
    app = serve.deployment(TailReplica, name=DEPLOYMENT, **options).bind(
        plan, model, device, ray_config.replica_threads, batching.max_batch, batching.max_wait_ms)
    handle = serve.run(app, name=ray_config.app_name(plan.model), route_prefix=None)
    return handle, device


def undeploy(app: str, *, started: bool) -> None:
    """Delete the application (its replicas finish what they hold); shut Ray down if we ``started`` it."""
    ray, serve = _ray()
    try:
        serve.delete(app)
    except Exception as error:  # the cluster may be gone already
        log.warning("deleting Serve application %s: %s", app, str(error)[:200])
    if started:  # disconnect; a local instance this process started goes with it (Serve on a cluster stays)
        ray.shutdown()


@dataclasses.dataclass
class Front:
    """A started front: the gRPC server, its runner (the deployment's load) and the replica watch."""

    server: Server
    runner: RayTails
    watch: ReplicaWatch
    device: str


async def _set_health(server: Server, running: int) -> None:
    if server.draining:
        return
    status = health_pb2.HealthCheckResponse.SERVING if running else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):
        await server.health.set(service, status)


def _seed_costs(server: Server, handle: Any, timeout_s: float) -> None:
    """Admission's first compute estimates, as one replica measured them."""
    for cut_id, seconds in handle.costs.remote().result(timeout_s=timeout_s).items():
        if cut_id in server.served:
            server.admission.costs.observe(cut_id, 1, seconds)


def _replica_metrics(server: Server, load: DeploymentLoad) -> Any:
    """The front's own metrics beside the server's: ``dyno_replicas`` (running now, a gauge) and
    ``dyno_replica_compute_seconds_total`` (the replicas' compute, without the trip to them); the gauge."""
    registry = server.metrics.registry
    compute = registry.counter("dyno_replica_compute_seconds_total",
                               "Tail compute time on the replicas, without the trip from the front")
    load.on_busy = lambda seconds: compute.inc(max(0.0, seconds))
    return registry.gauge("dyno_replicas", "Replicas of the tails deployment running now")


async def run_front(plan: Plan, model: nn.Module, config: ServerConfig | None, ray_config: RayConfig, handle: Any,
                    device: str, *, address: str, until: Awaitable[float | None], ready: Callable[[Front], None],
                    splits: Splits | None = None) -> None:
    """The front on the caller's loop: a dyno server whose batches run on the deployment behind ``handle``;
    ``ready(front)`` once it serves; stops (draining for the grace ``until`` gives) when ``until`` is done."""
    from dyno.cloud.replica import DEPLOYMENT

    loop = asyncio.get_running_loop()
    config = config or ServerConfig()
    config = dataclasses.replace(config, batching=dataclasses.replace(config.batching, workers=ray_config.in_flight))
    load = DeploymentLoad()
    runner = RayTails(plan, handle, ray_config, load)
    server = Server(plan, model, config, splits=splits, runner=runner)
    replicas_gauge = _replica_metrics(server, load)
    server.bind(address)

    def on_change(running: int) -> None:  # in the watch's thread
        replicas_gauge.set(running)
        asyncio.run_coroutine_threadsafe(_set_health(server, running), loop)

    watch = ReplicaWatch(ray_config.app_name(plan.model), DEPLOYMENT, load, on_change=on_change)
    grace: float | None = None
    try:
        await server.start(warm=False)
        await loop.run_in_executor(None, _seed_costs, server, handle, ray_config.timeout_s)
        await loop.run_in_executor(None, watch.start)
        ready(Front(server, runner, watch, device))
        grace = await until
    finally:
        watch.stop()
        await server.stop(grace)
        await runner.close()   # its router's tasks live on this loop: stop them before the loop stops


def front_info(front: Front, address: str) -> dict[str, Any]:
    """What a started Ray front reports: the embedded server's ready info, plus the application, its
    replicas up and their torch device."""
    return ready_info(front.server, address) | {
        "server": "ray", "app": front.watch.app, "replicas": front.watch.load.running, "device": front.device}


class RayServer(LoopThread):
    """The front on its own loop in a background thread, the tails on Ray Serve (module docstring): the
    runtime's ``LoopThread`` running :func:`run_front`. Attributes: ``address``, ``port``, ``metrics_port``,
    ``info`` (:func:`front_info`), ``server``, ``runner`` (the deployment's load), ``watch`` (its replicas
    over time), ``app``, ``handle``, ``device``."""

    def __init__(self, plan: Plan, model: nn.Module, config: ServerConfig | None = None,
                 ray: RayConfig | None = None, *, address: str = "127.0.0.1:0", splits: Splits | None = None):
        self.ray_config = ray or RayConfig()
        self.app = self.ray_config.app_name(plan.model)
        self._started = connect(self.ray_config.address)
        try:
            self.handle, device = deploy(plan, model, self.ray_config, config or ServerConfig())
            super().__init__(run_front, plan, model, config, self.ray_config, self.handle, device, address=address,
                             splits=splits, name="dyno-ray-front")
        except BaseException:
            undeploy(self.app, started=self._started)
            raise
        front: Front = self.started
        self.server, self.runner, self.watch, self.device = front.server, front.runner, front.watch, front.device
        self.info = front_info(front, address)
        self.address: str = self.info["address"]
        self.port: int = self.server.port
        self.metrics_port = self.server.metrics_port

    def replicas(self) -> int:
        """Replicas running now (asks Ray Serve)."""
        return self.watch.poll()

    def stop(self, grace: float | None = DEFAULT_GRACE) -> None:
        """Drain the front for up to ``grace`` seconds (None: at once), then delete the application."""
        if self._stopped:
            return
        try:
            super().stop(grace)
        finally:
            undeploy(self.app, started=self._started)
