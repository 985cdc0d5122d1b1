"""The cloud's compute for one plan: decode a batch of frames, stack them, run the cut's tail, take the
top-k of every row. No gRPC here; the server runs :meth:`Tails.run_batch` in its compute pool.

Decoding never trusts a frame: ``dyno.codec.decode_frame`` checks its header, shape and declared sizes
against the cut before it reads anything whose size the frame declares, and returns only finite
tensors; any failure is a ``FrameError`` for that request alone, and the rest of its batch runs
without it. The error is stored as a fresh ``FrameError`` with its (bounded) message only: a
traceback would keep the failed decode's locals - whatever the frame made it build - alive until the
whole batch is answered.

    tails = Tails(plan, splits)                   # device="cuda" | "cpu" | "auto"
    results = tails.run_batch(cut_id, requests)   # per request (classes, scores, logits or None) or its error

On a GPU (``device="cuda"``, or ``"auto"`` where one is present) each tail is copied to the device once,
and each decoded batch is moved there once, as one stacked tensor; only the outputs come back.

The server runs batches through a :class:`BatchRunner`: ``Tails`` in its own process, or a stand-in
that forwards the batches elsewhere (``dyno.cloud``: replicas of a Ray Serve deployment) and says what
load the replies report. Requests are read only through ``meta``, ``payload``, ``top_k`` and
``want_logits`` (:class:`FrameLike`): a ``dyno.v1`` Request or a plain :class:`Frame`.
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Any, Awaitable, NamedTuple, Protocol, Sequence

import numpy as np
import torch

from dyno import codec
from dyno.errors import ConfigError, FrameError
from dyno.plan import CutPlan, Plan
from dyno.runtime.config import DEFAULT_TOP_K
from dyno.runtime.splits import Splits

if TYPE_CHECKING:
    from dyno.runtime.config import ServerConfig

__all__ = ["Tails", "BatchRunner", "Frame", "FrameLike", "MAX_ERROR_TEXT", "TORCH_DEVICES", "resolve_device",
           "stored_error"]

#: A stored frame error keeps at most this much of its message.
MAX_ERROR_TEXT = 300
#: What ``device`` may name: a CPU, a CUDA GPU, or a GPU where one is present.
TORCH_DEVICES = ("cpu", "cuda", "auto")


class FrameLike(Protocol):
    """What a tail reads of a request (a ``dyno.v1`` Request has it all)."""

    @property
    def meta(self) -> bytes: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def top_k(self) -> int: ...
    @property
    def want_logits(self) -> bool: ...


class Frame(NamedTuple):
    """A request's frame and its options as plain data (what crosses to a replica, never a pickled tensor)."""

    meta: bytes
    payload: bytes
    top_k: int = 0
    want_logits: bool = False


class BatchRunner(Protocol):
    """What the server runs batches with (``Server(..., runner=...)``; default: :class:`Tails`)."""

    def run_batch(self, cut_id: int, requests: Sequence[Any]) -> list[Any] | Awaitable[list[Any]]:
        """Per request (classes, scores, logits or None) or the exception it alone failed with; a
        coroutine function is awaited on the server's loop, any other is run in its compute threads."""
        ...

    def cloud_signal(self, config: ServerConfig, load: float) -> tuple[float, float, float]:
        """(load, headroom, pressure) for a reply, given the load the server's batcher measured."""
        ...


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"`` (ConfigError where there is none) or ``"auto"`` (CUDA where present)."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"torch device must be one of {', '.join(TORCH_DEVICES)}, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("torch device 'cuda' asked for, but torch sees no CUDA device here; use 'auto' or 'cpu'")
    return torch.device(name)


def stored_error(error: FrameError) -> FrameError:
    """A frame error as a batch keeps it until every request is answered: its message (bounded) and
    nothing else - no traceback, cause or context, so nothing the failed decode built outlives it."""
    text = str(error)
    return FrameError(text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT - 3] + "...")


class Tails:
    """Batched tails of one plan's cuts (see the module docstring); safe to call from pool threads."""

    def __init__(self, plan: Plan, splits: Splits, *, device: str | torch.device = "cpu"):
        self.plan, self.splits = plan, splits
        self.device = resolve_device(device)
        self._expected = {cut.id: codec.Expected(shape=tuple(cut.shape)) for cut in plan.cuts}
        self._moved: dict[int, torch.nn.Module] = {}
        self._lock = threading.Lock()

    def tail(self, cut_id: int) -> torch.nn.Module:
        """The cut's tail on this device (a copy, made once, off the CPU: the model stays where it is)."""
        if self.device.type == "cpu":
            return self.splits.tail(cut_id)
        moved = self._moved.get(cut_id)
        if moved is None:
            with self._lock:
                moved = self._moved.get(cut_id)
                if moved is None:
                    moved = self._moved[cut_id] = copy.deepcopy(self.splits.tail(cut_id)).to(self.device)
        return moved

    def check(self, cut: CutPlan, meta: bytes, payload: bytes) -> None:
        """The frame's header, shape and declared sizes against ``cut`` (``Expected.check_wire``: reads
        a few bytes, allocates nothing the frame sizes); FrameError if wrong. ``decode`` does it too."""
        self._expected[cut.id].check_wire(meta, len(payload))

    def decode(self, cut: CutPlan, meta: bytes, payload: bytes) -> np.ndarray:
        """Validate and decode one frame for ``cut`` (``codec.decode_frame``). FrameError on anything wrong."""
        try:
            array = codec.decode_frame(meta, payload, self._expected[cut.id])
        except FrameError:
            raise
        except Exception as error:  # the codec promises FrameError; never let a frame crash us
            raise FrameError(f"undecodable frame: {type(error).__name__}: {error}") from error
        array = np.asarray(array, dtype=np.float32)
        if array.shape != tuple(cut.shape):
            raise FrameError(f"frame decodes to shape {array.shape}, cut {cut.id} expects {tuple(cut.shape)}")
        return array

    def cloud_signal(self, config: ServerConfig, load: float) -> tuple[float, float, float]:
        """(load, headroom, pressure): this process's batcher load, priced by ``config.cloud_signal``."""
        return (load, *config.cloud_signal(load))

    def run_batch(self, cut_id: int, requests: Sequence[FrameLike]) -> list[Any]:
        """Decode every frame (a bad one fails alone), stack, run the tail, take top-k per row.
        Returns per request (classes, scores, logits or None) or the FrameError it failed with."""
        cut = self.plan.cuts[cut_id]
        results: list[Any] = [None] * len(requests)
        arrays, rows = [], []
        for i, request in enumerate(requests):
            try:
                arrays.append(self.decode(cut, request.meta, request.payload))
                rows.append(i)
            except FrameError as error:
                results[i] = stored_error(error)
        if not arrays:
            return results
        stacked = np.stack(arrays)  # a copy: decoded frames may be read-only views of the message
        k = max((requests[i].top_k or DEFAULT_TOP_K) for i in rows)
        logits_np, scores_np, classes_np = self._forward(cut_id, stacked, k)
        for j, i in enumerate(rows):
            kk = min(requests[i].top_k or DEFAULT_TOP_K, scores_np.shape[1])
            results[i] = (classes_np[j, :kk].tolist(), scores_np[j, :kk].tolist(),
                          logits_np[j].tolist() if requests[i].want_logits else None)
        return results

    def _forward(self, cut_id: int, stacked: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tail on one stacked batch (moved to the device once): logits, top-k scores and classes."""
        with torch.inference_mode():
            batch = torch.from_numpy(stacked)
            if self.device.type != "cpu":
                batch = batch.to(self.device, non_blocking=True)
            logits = self.tail(cut_id)(batch)
            logits = logits.float().reshape(logits.shape[0], -1)
            probs = torch.softmax(logits.double(), dim=1)
            scores, classes = torch.topk(probs, min(k, probs.shape[1]), dim=1, sorted=True)
            return logits.cpu().numpy(), scores.cpu().numpy(), classes.cpu().numpy()
