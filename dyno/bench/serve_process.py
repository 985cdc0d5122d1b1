"""``dyno serve`` in a child process on a free loopback port (interim: the runtime's harness replaces it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from dyno.errors import RuntimeServiceError


class ServerProcess:
    """``dyno serve`` as a child process on a free loopback port; stopped with SIGTERM (graceful)."""

    def __init__(self, plan_path: str | Path, *, weights: str = "trained", threads: int = 1,
                 extra: Sequence[str] = (), timeout: float = 120.0):
        self._dir = tempfile.TemporaryDirectory(prefix="dyno-serve-")
        ready = Path(self._dir.name) / "ready.json"
        command = [sys.executable, "-m", "dyno", "serve", "--plan", str(plan_path), "--port", "0",
                   "--weights", weights, "--threads", str(threads), "--ready-file", str(ready), *extra]
        self.log_path = Path(self._dir.name) / "serve.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeServiceError("the demo server did not start:\n" + self.log_path.read_text()[-2000:])
            time.sleep(0.05)
        self.info = json.loads(ready.read_text())
        self.address = self.info["address"]

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()
