"""Cloud scale-out: the tails of a plan as a Ray Serve application, behind dyno's own gRPC front.

Devices speak ``dyno.v1`` to the front exactly as to the embedded server (``dyno.runtime.Server``): the
front is that server - token, TLS, admission limits, per-cut batching, streams, health, metrics - with
one part swapped: its batches run on the replicas of a Ray Serve deployment (``dyno.cloud.front``)
instead of in its own process. Why a front rather than Ray Serve's gRPC proxy: ``dyno.v1.Inference/Infer``
is a bidirectional stream (a device pipelines its requests on one stream and replies come back as they
finish), which Ray Serve's gRPC proxy does not carry (unary and server streaming only); and the token,
TLS, admission limits and frame checks stay in one place, the same for both ways to serve.

    from dyno.cloud import RayConfig, RayServer, RayServerProcess, serve_ray

    with RayServer(plan, model, ServerConfig(), RayConfig(autoscale=(1, 4))) as cloud:
        Client(plan, model, ClientConfig(server=cloud.address))

Modules: ``config`` (``RayConfig``), ``replica`` (the deployment's class; imports Ray), ``front`` (the
runner the front's server batches with, the deployment's load and replicas), ``harness``
(``RayServer``), ``process`` (``RayServerProcess``, ``serve_ray``). The figures (the Ray path's overhead,
scaling, autoscaling) come from ``dyno bench-runtime --what scale-out | autoscale`` (``dyno.bench``).
Ray is an optional dependency (``pip install 'dyno[ray]'``):
nothing here imports it until a server starts.
"""

from dyno.cloud.config import RayConfig, parse_autoscale
from dyno.cloud.harness import RayServer
from dyno.cloud.process import RayServerProcess, serve_ray

__all__ = ["RayConfig", "RayServer", "RayServerProcess", "parse_autoscale", "serve_ray"]
