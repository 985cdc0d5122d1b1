"""Cloud scale-out: the tails of a plan as a Ray Serve application, behind dyno's own gRPC front.

Devices speak ``dyno.v1`` to the front exactly as to the embedded server (``dyno.runtime.Server``): the
front is that server - token, TLS, admission limits, per-cut batching, streams, health, metrics - with
one part swapped: its batches run on the replicas of a Ray Serve deployment (``dyno.cloud.front``)
instead of in its own process. Why a front rather than Ray Serve's gRPC proxy: see README (Ray).

    from dyno.cloud import RayConfig, RayServer, RayServerProcess, serve_ray

    with RayServer(plan, model, ServerConfig(), RayConfig(autoscale=(1, 4))) as cloud:
        Client(plan, model, ClientConfig(server=cloud.address))

Modules: ``config`` (``RayConfig``), ``replica`` (the deployment's class; imports Ray), ``front`` (the
runner the front's server batches with, the deployment's load and replicas), ``harness``
(``RayServer``), ``process`` (``RayServerProcess``, ``serve_ray``), ``measure`` (the figures of the
README, ``python -m dyno.cloud.measure``). Ray is an optional dependency (``pip install 'dyno[ray]'``):
nothing here imports it until a server starts.
"""

from dyno.cloud.config import RayConfig, parse_autoscale
from dyno.cloud.harness import RayServer
from dyno.cloud.process import RayServerProcess, serve_ray

__all__ = ["RayConfig", "RayServer", "RayServerProcess", "parse_autoscale", "serve_ray"]
