"""Dense arrays as flat views in memory order, for the codec's block-by-block kernels."""

from __future__ import annotations

import numpy as np

__all__ = ["dense", "restore"]


def dense(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...] | None] | None:
    """``(flat, order)``: a 1-D view of ``x``'s elements in memory order and the axis order that made it
    C-contiguous (None: already was), when ``x`` is dense (e.g. a channels-last sample); else None."""
    if x.flags.c_contiguous:
        return x.reshape(-1), None
    order = tuple(sorted(range(x.ndim), key=lambda a: -abs(x.strides[a])))
    y = x.transpose(order)
    return (y.reshape(-1), order) if y.flags.c_contiguous else None


def restore(flat: np.ndarray, shape: tuple[int, ...], order: tuple[int, ...] | None) -> np.ndarray:
    """``flat`` (memory order) as an array of ``shape`` laid out as the one ``dense`` flattened."""
    if order is None:
        return flat.reshape(shape)
    inverse = tuple(sorted(range(len(order)), key=lambda a: order[a]))
    return flat.reshape([shape[a] for a in order]).transpose(inverse)
