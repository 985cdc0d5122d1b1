"""The cloud's compute for one plan: decode a batch of frames, stack them, run the cut's tail, take the
top-k of every row. No gRPC here; the server runs :meth:`Tails.run_batch` in its compute pool.

Decoding never trusts a frame: ``dyno.codec.decode_frame`` checks its header, shape and declared sizes
against the cut before it reads anything whose size the frame declares, and returns only finite
tensors; any failure is a ``FrameError`` for that request alone, and the rest of its batch runs
without it. The error is stored as a fresh ``FrameError`` with its (bounded) message only: a
traceback would keep the failed decode's locals - whatever the frame made it build - alive until the
whole batch is answered.

    tails = Tails(plan, splits)
    results = tails.run_batch(cut_id, requests)   # per request (classes, scores, logits or None) or its error
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from dyno import codec
from dyno.errors import FrameError
from dyno.plan import CutPlan, Plan
from dyno.runtime.config import DEFAULT_TOP_K
from dyno.runtime.proto import inference_pb2 as pb
from dyno.runtime.splits import Splits

__all__ = ["Tails", "MAX_ERROR_TEXT"]

#: A stored frame error keeps at most this much of its message.
MAX_ERROR_TEXT = 300


def _stored(error: FrameError) -> FrameError:
    """A frame error as a batch keeps it until every request is answered: its message (bounded) and
    nothing else - no traceback, cause or context, so nothing the failed decode built outlives it."""
    text = str(error)
    return FrameError(text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT - 3] + "...")


class Tails:
    """Batched tails of one plan's cuts (see the module docstring); safe to call from pool threads."""

    def __init__(self, plan: Plan, splits: Splits):
        self.plan, self.splits = plan, splits
        self._expected = {cut.id: codec.Expected(shape=tuple(cut.shape)) for cut in plan.cuts}

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

    def run_batch(self, cut_id: int, requests: Sequence[pb.Request]) -> list[Any]:
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
                results[i] = _stored(error)
        if not arrays:
            return results
        stacked = np.stack(arrays)  # a copy: decoded frames may be read-only views of the message
        with torch.inference_mode():
            logits = self.splits.tail(cut_id)(torch.from_numpy(stacked))
            logits = logits.float().reshape(logits.shape[0], -1)
            probs = torch.softmax(logits.double(), dim=1)
            k = min(max((requests[i].top_k or DEFAULT_TOP_K) for i in rows), probs.shape[1])
            scores, classes = torch.topk(probs, k, dim=1, sorted=True)
        logits_np, scores_np, classes_np = logits.numpy(), scores.numpy(), classes.numpy()
        for j, i in enumerate(rows):
            kk = min(requests[i].top_k or DEFAULT_TOP_K, k)
            results[i] = (classes_np[j, :kk].tolist(), scores_np[j, :kk].tolist(),
                          logits_np[j].tolist() if requests[i].want_logits else None)
        return results
