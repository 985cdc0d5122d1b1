"""A local Ray instance for the tests, started in a fresh process and joined by address.

Twice in CI, ``ray.init()`` in pytest's own process, late in the suite, never started the raylet: the GCS,
monitor and log monitor had started, the raylet wrote no log at all, and ``ray.init`` gave up after its
fixed 30 s ("The current node timed out during startup"). Ray forks the raylet with a ``preexec_fn``,
which Python documents as unsafe in a process with threads, and by then pytest's process carries native
ones (gRPC's and torch's: 11 when counted there): the likely cause, though three runs of the suite's first
half and test_ray did not reproduce it. A fresh process has no such threads, and it tries again if Ray's
start-up still times out.

    with local_head(num_cpus=8) as address:
        ray.init(address=address)

Run as ``python ray_head.py NUM_CPUS``: starts Ray, prints its GCS address, holds it until stdin closes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Iterator

ATTEMPTS = 3
# a Ray that ray.init() starts makes an authentication token only its own driver holds; the tests' driver
# joins from another process, so this head runs without one (it lives as long as one test module)
ENV = {"RAY_AUTH_MODE": "disabled"}


def _serve(num_cpus: int) -> None:
    import ray

    for attempt in range(1, ATTEMPTS + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            break
        except Exception as error:  # Ray's start-up timeout is a bare Exception
            ray.shutdown()
            print(f"ray start-up, attempt {attempt} of {ATTEMPTS}: {error}", file=sys.stderr, flush=True)
            if attempt == ATTEMPTS:
                raise
    print(ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.read()
    ray.shutdown()


@contextlib.contextmanager
def local_head(num_cpus: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """A local Ray head in a child process; yields its address; stops it on exit. ``env``: extra
    environment for Ray's processes (the raylet reads its settings from there)."""
    child_env = dict(os.environ, **ENV, **(env or {}))
    with subprocess.Popen([sys.executable, __file__, str(num_cpus)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=child_env) as head:
        assert head.stdin is not None and head.stdout is not None
        address = head.stdout.readline().strip()
        if not address:
            head.wait(60)
            raise RuntimeError(f"the Ray head exited with {head.returncode} before giving its address")
        try:
            yield address
        finally:
            head.stdin.close()
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                head.kill()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
