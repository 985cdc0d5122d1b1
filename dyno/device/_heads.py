"""Exported heads run by onnxruntime: one session per cut, made on first use, each file checked
against the manifest's sha256 before it is loaded. No torch."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from dyno.errors import ConfigError, PlanError
from dyno.manifest import HeadsManifest

__all__ = ["OrtHeads"]


class OrtHeads:
    """``run(cut_id, x)`` -> the activation at ``cut_id`` for ``x`` (N, C, H, W) float32, by onnxruntime.

    ``threads``: onnxruntime intra-op threads (default 1, the device's one core). ``plan``: refuse heads
    exported for another model, other weights or other cuts (``HeadsManifest.check_plan``). Cut 0 is the
    input itself; the last cut's head is the whole model (device-only runs and fallbacks).
    """

    def __init__(self, directory: str | os.PathLike, plan: Any = None, *, threads: int = 1):
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("the onnxruntime backend needs onnxruntime: pip install 'dyno[device]'") from None
        self._ort = onnxruntime
        self.directory = Path(directory)
        self.manifest = HeadsManifest.load(self.directory)
        if plan is not None:
            self.manifest.check_plan(plan)
            self.last = len(plan.cuts) - 1
        else:
            self.last = max(self.manifest.cuts)
        if self.last not in self.manifest.cuts:
            raise PlanError(f"the heads in {self.directory} do not include the whole model (cut {self.last}); "
                            "export every cut with `dyno export --plan PLAN`")
        self.threads = threads
        self._sessions: dict[tuple[int, bool], Any] = {}
        self._lock = threading.Lock()

    def has(self, cut_id: int) -> bool:
        return cut_id == 0 or cut_id in self.manifest.cuts

    def has_tail(self, cut_id: int) -> bool:
        """Whether the tail of ``cut_id`` was exported (``dyno export --tails``)."""
        return cut_id in self.manifest.cuts and bool(self.manifest.head(cut_id).tail_file)

    def session(self, cut_id: int, *, tail: bool = False) -> Any:
        key = (cut_id, tail)
        session = self._sessions.get(key)
        if session is None:
            with self._lock:
                session = self._sessions.get(key)
                if session is None:
                    options = self._ort.SessionOptions()
                    options.intra_op_num_threads = self.threads
                    options.inter_op_num_threads = 1
                    data = self.manifest.verified_file(self.directory, cut_id, tail=tail)
                    session = self._ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
                    self._sessions[key] = session
        return session

    def run_tail(self, cut_id: int, activation: np.ndarray) -> np.ndarray:
        """The logits from the activation at ``cut_id`` (its exported tail)."""
        return self.session(cut_id, tail=True).run(None, {"input": activation})[0]

    def run(self, cut_id: int, x: np.ndarray) -> np.ndarray:
        if cut_id == 0:
            return x
        return self.session(cut_id).run(None, {"input": x})[0]

    def head(self, cut_id: int):
        """The head of ``cut_id`` as a function of one array (for ``Device.run``)."""
        return lambda x: self.run(cut_id, x)

    def warm(self, cut_ids: list[int] | None = None) -> None:
        """Load the sessions of ``cut_ids`` (default all) now rather than on first use."""
        for cut_id in (self.manifest.cuts if cut_ids is None else cut_ids):
            self.session(cut_id)
