"""What a receiver accepts (``Expected``) and its checks of a frame's wire header (steps 1-5 of
``dyno.codec._receive``). It depends on the wire numbers and layouts alone (``_wire``, ``_compact``), so
the frame (``_meta``, ``_codec``) and the decoder (``_receive``) all import it and nothing imports back.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

from dyno.codec import _compact
from dyno.codec._wire import (
    ALLOWED_COMPRESSORS,
    COMPACT_VERSION,
    FLOAT_MODES,
    HEAD,
    MODES,
    QUANT_MODES,
    TAIL,
    Head,
    bits_problem,
    check_payload_size,
    meta_nbytes,
    read_head,
)
from dyno.errors import ConfigError, FrameError

__all__ = ["Expected"]


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a receiver accepts, typically taken from the plan for the cut it serves.

    ``shape`` must equal the frame's shape exactly; ``modes`` (None: any) lists the accepted modes;
    quantised frames must have ``min_bits <= bits <= max_bits``; ``per_channel`` (None: either)
    requires or forbids per-channel ranges; ``max_nbytes`` (None: no limit) caps ``Encoded.nbytes``.
    """

    shape: tuple[int, ...]
    modes: frozenset[str] | None = None
    max_bits: int = 16
    min_bits: int = 1
    per_channel: bool | None = None
    max_nbytes: int | None = None

    def __init__(self, shape: Any, modes: Any = None, max_bits: int = 16, *, min_bits: int = 1,
                 per_channel: bool | None = None, max_nbytes: int | None = None) -> None:
        set_ = object.__setattr__
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ConfigError(f"Expected.shape must be a sequence of ints, got {shape!r}") from None
        if any(d < 0 for d in shape):
            raise ConfigError(f"Expected.shape {shape} has a negative size")
        if modes is not None:
            if isinstance(modes, str):
                modes = (modes,)
            modes = frozenset(modes)
            unknown = modes - set(MODES)
            if unknown:
                raise ConfigError(f"unknown codec modes {sorted(unknown)}; known: {', '.join(MODES)}")
        if not (isinstance(min_bits, int) and isinstance(max_bits, int) and 1 <= min_bits <= max_bits <= 16):
            raise ConfigError(f"need 1 <= min_bits <= max_bits <= 16, got {min_bits}, {max_bits}")
        if max_nbytes is not None and (not isinstance(max_nbytes, int) or max_nbytes < 0):
            raise ConfigError(f"max_nbytes must be a non-negative int or None, got {max_nbytes!r}")
        set_(self, "shape", shape)
        set_(self, "modes", modes)
        set_(self, "max_bits", max_bits)
        set_(self, "min_bits", min_bits)
        set_(self, "per_channel", per_channel)
        set_(self, "max_nbytes", max_nbytes)

    # ------------------------------------------------------------------------------------- checks
    def check_wire(self, meta: bytes | memoryview, payload_nbytes: int | None = None) -> None:
        """FrameError unless metadata bytes ``meta`` (with a payload of ``payload_nbytes`` bytes, if
        given) can be a frame this receiver accepts, judged from the fixed-size header, the shape and
        the declared sizes alone (steps 1-5 of the module docstring). Reads at most
        9 + 4 * ndim + 4 bytes of ``meta`` (version 3: 6 + 5 * ndim + 5) and allocates nothing whose
        size the frame declares."""
        head = read_head(meta)
        self.check_head(head)
        if head.version >= COMPACT_VERSION:
            shape, offset = _compact.read_shape(head, meta)
            self.check_shape(shape)
            where = _compact.layout(head, meta, shape, offset)
            size, declared = where.size, where.payload_nbytes
            if len(meta) != size:
                raise FrameError(f"frame metadata is {len(meta)} bytes; its header says {size}")
        else:
            size = meta_nbytes(head.ndim, self.shape[0] if head.per_channel else None)
            if len(meta) != size:
                raise FrameError(f"frame metadata is {len(meta)} bytes; a frame of the expected shape "
                                 f"{self.shape} has {size}")
            self.check_shape(struct.unpack_from(f"<{head.ndim}I", meta, HEAD.size))
            declared = struct.unpack_from("<I", meta, size - TAIL.size)[0]
        bits = None if head.mode in FLOAT_MODES else head.bits
        check_payload_size(head.mode, head.compressor, bits, math.prod(self.shape), declared)
        self.check_nbytes(size + declared)
        if payload_nbytes is not None and payload_nbytes != declared:
            raise FrameError(f"payload is {payload_nbytes} bytes; the frame metadata says {declared} "
                             "(truncated or padded in transit)")

    def check_head(self, head: Head) -> None:
        """FrameError unless a frame's fixed-size header (``Head``) is one this receiver accepts."""
        if head.ndim != len(self.shape):
            raise FrameError(f"frame has {head.ndim} dimensions; the expected shape {self.shape} has "
                             f"{len(self.shape)}")
        if self.modes is not None and head.mode not in self.modes:
            raise FrameError(f"frame mode {head.mode!r} is not accepted here (accepted: "
                             f"{', '.join(sorted(self.modes))})")
        if head.compressor not in ALLOWED_COMPRESSORS[head.mode]:
            raise FrameError(f"compressor {head.compressor!r} is not valid for mode {head.mode!r}")
        if head.mode in QUANT_MODES and not self.min_bits <= head.bits <= self.max_bits:
            raise FrameError(f"frame has {head.bits} bits; accepted {self.min_bits}..{self.max_bits}")
        wrong = bits_problem(head.mode, head.bits)
        if wrong:
            raise FrameError(wrong)
        if head.per_channel and (head.mode not in QUANT_MODES or not self.shape):
            raise FrameError(f"per-channel ranges need a quantised mode and a channel axis "
                             f"(mode {head.mode!r}, expected shape {self.shape})")
        if self.per_channel is not None and head.per_channel != self.per_channel:
            raise FrameError(f"frame {'has' if head.per_channel else 'lacks'} per-channel ranges; "
                             f"this receiver wants {'them' if self.per_channel else 'one range'}")

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """FrameError unless ``shape`` is the expected shape."""
        if shape != self.shape:
            raise FrameError(f"frame shape {shape} does not match the expected {self.shape}")

    def check_nbytes(self, nbytes: int) -> None:
        """FrameError if a frame of ``nbytes`` (metadata and payload) exceeds ``max_nbytes``."""
        if self.max_nbytes is not None and nbytes > self.max_nbytes:
            raise FrameError(f"frame of {nbytes} bytes exceeds the limit of {self.max_nbytes}")
