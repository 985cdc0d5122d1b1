"""The frame metadata (``FrameMeta``): a small, versioned, strictly validated binary struct.

Its wire layouts, the mode/compressor/dtype numbers and the versions are in ``dyno.codec._wire`` (versions 1
and 2) and ``dyno.codec._compact`` (version 3, what encode writes). The
crc32 is an integrity check against corruption and truncation (and it keeps garbage away from blosc2,
zstd, rANS and Pillow); it is not authentication, which is the transport's job.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
import zlib
from typing import TYPE_CHECKING, Any

from dyno.codec import _compact
from dyno.codec._wire import (
    ALLOWED_COMPRESSORS,
    COMPACT_VERSION,
    COMPRESSORS,
    DTYPES,
    FLAG_PER_CHANNEL,
    FLOAT_MODES,
    FORMAT_VERSION,
    HEAD,
    IMAGE_MODES,
    MAGIC,
    MAX_NDIM,
    MODES,
    QUANT_MODES,
    TAIL,
    VERSIONS,
    Head,
    bits_problem,
    byte_view,
    check_payload_size,
    meta_nbytes,
    read_head,
    required_version,
)
from dyno.errors import FrameError

if TYPE_CHECKING:
    from dyno.codec._expected import Expected

__all__ = ["FrameMeta"]

_F32 = struct.Struct("<f")


def _f32(value: float) -> float:
    """The float32 nearest to value, as a Python float (what the wire can carry)."""
    return _F32.unpack(_F32.pack(value))[0]


def _finite32(value: Any, what: str) -> float:
    """``value`` as the float32 the wire carries; FrameError unless it is a finite number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise FrameError(f"{what} must be a float, got {value!r}")
    result = _f32(float(value)) if math.isfinite(value) else math.nan
    if not math.isfinite(result):
        raise FrameError(f"{what} = {value!r} is not a finite float32")
    return result


def _channel_table(ranges: Any, channels: int) -> tuple[tuple[float, float], ...]:
    try:
        table = tuple((_finite32(a, "channel lo"), _finite32(b, "channel hi")) for a, b in ranges)
    except (TypeError, ValueError):
        raise FrameError("channel_ranges must be a sequence of (lo, hi) pairs") from None
    if len(table) != channels:
        raise FrameError(f"{len(table)} channel ranges for {channels} channels")
    for c, (a, b) in enumerate(table):
        if a > b:
            raise FrameError(f"channel {c}: range lo {a} is above hi {b}")
    return table


@dataclasses.dataclass(frozen=True, kw_only=True)
class FrameMeta:
    """Everything the receiver needs to decode a payload, and nothing else.

    ``bits`` is the number of bits per code for the quantised modes (``shuffle-lz4``,
    ``shuffle-zstd``, ``dense``: 1..16), the quality for ``jpeg``/``webp`` (1..100), and None for
    ``fp16``/``fp32``. ``shape`` is the shape of the tensor given to encode; ``dtype`` its dtype
    (decode always returns float32). Values map to codes over ``[lo, hi]`` (see
    ``dyno.codec._quant.Grid``); with per-channel ranges ``channel_ranges`` holds one ``(lo, hi)`` per
    entry of axis 0 and ``lo``/``hi`` are 0. ``compressor`` names what made the payload (one of
    ``COMPRESSORS``, allowed for the mode), ``payload_nbytes`` its length and ``crc32`` the checksum of
    the metadata bytes before it followed by the payload. ``version`` (None: ``FORMAT_VERSION``, the
    compact layout) picks the layout ``to_bytes`` writes; 1 or 2 write the older ones, when they carry
    the mode and compressor.

    Construction validates every field on its own and against the others, and raises FrameError.
    """

    version: int | None = None
    mode: str
    bits: int | None
    shape: tuple[int, ...]
    dtype: str = "float32"
    lo: float = 0.0
    hi: float = 0.0
    channel_ranges: tuple[tuple[float, float], ...] | None = None
    compressor: str
    payload_nbytes: int
    crc32: int = 0

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        if self.mode not in MODES:
            raise FrameError(f"unknown codec mode {self.mode!r}; known: {', '.join(MODES)}")
        try:
            shape = tuple(int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise FrameError(f"frame shape must be a tuple of ints, got {self.shape!r}") from None
        if len(shape) > MAX_NDIM or any(d < 0 or d > 0xFFFFFFFF for d in shape):
            raise FrameError(f"frame shape {shape} is invalid (at most {MAX_NDIM} dims of 0..2**32-1)")
        set_("shape", shape)
        if self.dtype not in DTYPES:
            raise FrameError(f"unknown frame dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        if self.compressor not in ALLOWED_COMPRESSORS[self.mode]:
            raise FrameError(f"compressor {self.compressor!r} is not valid for mode {self.mode!r} "
                             f"(allowed: {', '.join(sorted(ALLOWED_COMPRESSORS[self.mode]))})")
        least = required_version(self.mode, self.compressor)
        if self.version is None:
            set_("version", FORMAT_VERSION)
        elif (not isinstance(self.version, int) or isinstance(self.version, bool) or self.version not in VERSIONS
              or self.version < least):
            raise FrameError(f"frame version {self.version!r} is invalid for mode {self.mode!r} with "
                             f"{self.compressor!r} (the oldest that carries it is {least}; this dyno reads "
                             f"{', '.join(map(str, VERSIONS))} and writes {FORMAT_VERSION})")
        self._check_bits()
        self._check_ranges(set_)
        if not isinstance(self.payload_nbytes, int) or not 0 <= self.payload_nbytes <= 0xFFFFFFFF:
            raise FrameError(f"payload size {self.payload_nbytes!r} is out of range")
        if not isinstance(self.crc32, int) or not 0 <= self.crc32 <= 0xFFFFFFFF:
            raise FrameError(f"crc32 {self.crc32!r} is out of range")
        check_payload_size(self.mode, self.compressor, self.bits, self.numel, self.payload_nbytes)

    def _check_bits(self) -> None:
        bits = self.bits
        if self.mode in FLOAT_MODES:
            if bits is not None:
                raise FrameError(f"mode {self.mode!r} carries no bit width, got bits={bits!r}")
            return
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise FrameError(f"bits must be an int for mode {self.mode!r}, got {bits!r}")
        wrong = bits_problem(self.mode, bits)
        if wrong:
            raise FrameError(wrong)
        if self.mode in IMAGE_MODES:
            if self.dtype == "uint8":
                ok = len(self.shape) == 2 or (len(self.shape) == 3 and self.shape[2] in (1, 3))
                layout = "(H, W), (H, W, 1) or (H, W, 3)"
            else:
                ok = len(self.shape) == 2 or (len(self.shape) == 3 and self.shape[0] in (1, 3))
                layout = "(H, W), (1, H, W) or (3, H, W)"
            if not ok or 0 in self.shape:
                raise FrameError(f"image frame of dtype {self.dtype} must have shape {layout} with no "
                                 f"empty axis, got {self.shape}")

    def _check_ranges(self, set_: Any) -> None:
        lo, hi = _finite32(self.lo, "range lo"), _finite32(self.hi, "range hi")
        set_("lo", lo)
        set_("hi", hi)
        if self.channel_ranges is None:
            if lo > hi:
                raise FrameError(f"range lo {lo} is above hi {hi}")
            if self.mode in FLOAT_MODES and (lo, hi) != (0.0, 0.0):
                raise FrameError(f"mode {self.mode!r} carries no range, got ({lo}, {hi})")
            if self.mode in IMAGE_MODES and self.dtype == "uint8" and (lo, hi) != (0.0, 255.0):
                raise FrameError(f"a uint8 image frame has range (0, 255), got ({lo}, {hi})")
            return
        if self.mode not in QUANT_MODES:
            raise FrameError(f"per-channel ranges are only valid for quantised modes, not {self.mode!r}")
        if not self.shape:
            raise FrameError("per-channel ranges need a tensor with at least one axis")
        if (lo, hi) != (0.0, 0.0):
            raise FrameError("a per-channel frame keeps its ranges in channel_ranges; lo and hi must be 0")
        set_("channel_ranges", _channel_table(self.channel_ranges, self.shape[0]))

    # ----------------------------------------------------------------------------------- properties
    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def per_channel(self) -> bool:
        return self.channel_ranges is not None

    @property
    def quant_bits(self) -> int:
        """``bits`` of a quantised frame (or the quality of an image frame): an int there, as
        construction checked; only fp16/fp32 frames have None."""
        assert self.bits is not None, f"mode {self.mode!r} carries no bit width"
        return self.bits

    @property
    def scale(self) -> float:
        """Quantisation step of a per-tensor quantised (or float image) frame."""
        from dyno.codec._quant import grid

        if self.per_channel or self.mode in FLOAT_MODES:
            raise FrameError(f"a {'per-channel' if self.per_channel else self.mode} frame has no "
                             "single quantisation step")
        return grid(self.lo, self.hi, 8 if self.mode in IMAGE_MODES else self.quant_bits).scale

    @property
    def nbytes(self) -> int:
        """Length of ``to_bytes()``."""
        return len(self._bytes)

    # ---------------------------------------------------------------------------------- wire format
    def to_bytes(self) -> bytes:
        return self._bytes

    @functools.cached_property
    def _bytes(self) -> bytes:
        return self.unsigned_bytes() + struct.pack("<I", self.crc32)

    def unsigned_bytes(self) -> bytes:
        """The wire bytes without the trailing crc32 (what the checksum covers, before the payload)."""
        return self._unsigned

    @functools.cached_property
    def _unsigned(self) -> bytes:  # packed once: encode checksums, sizes and sends the same bytes
        if (self.version or FORMAT_VERSION) >= COMPACT_VERSION:
            return _compact.pack_unsigned(self)
        head = HEAD.pack(MAGIC, self.version, MODES.index(self.mode), self.bits or 0,
                          FLAG_PER_CHANNEL if self.per_channel else 0, DTYPES.index(self.dtype),
                          COMPRESSORS.index(self.compressor), len(self.shape))
        shape = struct.pack(f"<{len(self.shape)}I", *self.shape)
        if self.channel_ranges is not None:
            flat = [v for pair in self.channel_ranges for v in pair]
            ranges = struct.pack(f"<{len(flat)}f", *flat)
        else:
            ranges = struct.pack("<2f", self.lo, self.hi)
        return head + shape + ranges + struct.pack("<I", self.payload_nbytes)

    def with_crc(self, payload: bytes | memoryview) -> FrameMeta:
        """This metadata with ``crc32`` set for ``payload`` (every other field as validated here)."""
        crc = self.checksum(payload)  # packs (and caches) the unsigned bytes, which the copy keeps
        sealed = object.__new__(FrameMeta)
        sealed.__dict__.update(self.__dict__)
        sealed.__dict__.pop("_bytes", None)
        object.__setattr__(sealed, "crc32", crc)
        return sealed

    def checksum(self, payload: bytes | memoryview) -> int:
        return zlib.crc32(payload, zlib.crc32(self.unsigned_bytes()))

    @staticmethod
    def wire_size(prefix: bytes | memoryview) -> int:
        """Length of the metadata that starts ``prefix`` (a frame's first bytes), from its header.

        Versions 1 and 2 need the fixed 9-byte header, plus the first shape entry for per-channel
        frames; version 3 its head, shape and payload size (``_compact.layout``).
        """
        head = read_head(prefix)
        if head.version >= COMPACT_VERSION:
            return _compact.layout(head, prefix).size
        return _wire_size(head, prefix)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, *, expected: Expected | None = None
                   ) -> FrameMeta:
        """Parse and validate metadata bytes (exactly, no trailing bytes); FrameError on any garbage.

        With ``expected`` (the receiver's ``Expected``) the bytes are first checked against it from the
        fixed-size header, the shape and the declared sizes (``Expected.check_wire``), so nothing whose
        size the frame declares is parsed unless the receiver would accept that size.
        """
        data = byte_view(data, "frame metadata")
        if expected is not None:
            expected.check_wire(data)
        head = read_head(data)
        fields = _compact.parse(head, data) if head.version >= COMPACT_VERSION else _parse_v12(head, data)
        bits = None if head.mode in FLOAT_MODES and head.bits == 0 else head.bits
        return cls(version=head.version, mode=head.mode, bits=bits, dtype=head.dtype, compressor=head.compressor,
                   **fields)


def _parse_v12(head: Head, data: bytes | memoryview) -> dict[str, Any]:
    """The fields (shape, ranges, payload_nbytes, crc32) of exactly one version-1/2 metadata ``data``."""
    size = _wire_size(head, data)
    if len(data) != size:
        raise FrameError(f"frame metadata is {len(data)} bytes; its header says {size}")
    offset = HEAD.size
    shape = struct.unpack_from(f"<{head.ndim}I", data, offset)
    offset += 4 * head.ndim
    lo = hi = 0.0
    table = None
    if head.per_channel:
        flat = struct.unpack_from(f"<{2 * shape[0]}f", data, offset)
        table = tuple(zip(flat[0::2], flat[1::2]))
        offset += 8 * shape[0]
    else:
        lo, hi = struct.unpack_from("<2f", data, offset)
        offset += 8
    payload_nbytes, crc = TAIL.unpack_from(data, offset)
    return {"shape": shape, "lo": lo, "hi": hi, "channel_ranges": table, "payload_nbytes": payload_nbytes,
            "crc32": crc}


def _wire_size(head: Head, prefix: bytes | memoryview) -> int:
    """Metadata length (versions 1 and 2) declared by ``head`` (read from ``prefix``): per-channel frames
    declare it in their first shape entry, which this reads (4 bytes) but does not trust."""
    if not head.per_channel:
        return meta_nbytes(head.ndim, None)
    if head.ndim == 0:
        raise FrameError("per-channel frame without a channel axis")
    if len(prefix) < HEAD.size + 4:
        raise FrameError("frame truncated inside its shape")
    return meta_nbytes(head.ndim, struct.unpack_from("<I", prefix, HEAD.size)[0])
