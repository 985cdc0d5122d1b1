"""encode / decode, the frame (``Encoded``), the receiver's expectations and the codec setting."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from dyno.codec import _image, _pack, _quant
from dyno.codec._meta import (
    FLOAT_MODES,
    IMAGE_MODES,
    MODES,
    QUANT_MODES,
    FrameMeta,
    dense_nbytes,
)
from dyno.errors import ConfigError, FrameError

__all__ = ["encode", "decode", "encode_with", "Encoded", "Expected", "CodecSpec"]

_FP16_MAX = 65504.0
_COMPRESSOR_OF_MODE = {"shuffle-lz4": "blosc2-lz4", "shuffle-zstd": "blosc2-zstd", "dense": "bitpack"}
_TORCH_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64",
                 torch.bfloat16: "bfloat16"}


def _source_dtype(x: object) -> str:
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if isinstance(x, torch.Tensor):
        name = _TORCH_DTYPES.get(x.dtype)
    elif isinstance(x, np.ndarray):
        name = x.dtype.name if x.dtype.name in ("float16", "float32", "float64") else None
    else:
        raise ConfigError(f"encode needs a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if name is None:
        raise ConfigError(f"encode needs a float16/32/64 (or bfloat16) tensor, got {x.dtype}; "
                          "images for mode jpeg/webp may also be uint8")
    return name


def _check_mode_bits(mode: object, bits: object) -> int | None:
    """The normalised bits for a mode, or ConfigError naming the problem."""
    if mode not in MODES:
        raise ConfigError(f"unknown codec mode {mode!r}; known: {', '.join(MODES)}")
    if mode in FLOAT_MODES:
        return None
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool):
        what = "bits" if mode in QUANT_MODES else "quality (bits=)"
        raise ConfigError(f"mode {mode!r} needs an int {what}, got {bits!r}")
    bits = int(bits)
    top = 16 if mode in QUANT_MODES else 100
    if not 1 <= bits <= top:
        what = "bits" if mode in QUANT_MODES else "quality"
        raise ConfigError(f"{what} {bits} is out of range 1..{top} for mode {mode!r}")
    return bits


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One encoded tensor: validated metadata plus the payload bytes.

    ``nbytes`` (metadata + payload) is the figure every byte count in dyno uses. On the wire the two
    parts travel either separately (``meta.to_bytes()``, ``payload`` -> ``from_parts``) or as one
    buffer (``to_bytes()`` -> ``from_bytes``).
    """

    meta: FrameMeta
    payload: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.meta, FrameMeta):
            raise FrameError(f"Encoded.meta must be a FrameMeta, got {type(self.meta).__name__}")
        if not isinstance(self.payload, bytes):
            raise FrameError(f"Encoded.payload must be bytes, got {type(self.payload).__name__}")

    @property
    def nbytes(self) -> int:
        return self.meta.nbytes + len(self.payload)

    @property
    def bits_per_value(self) -> float:
        """Bits on the wire, metadata included, per tensor value."""
        return 8 * self.nbytes / max(self.meta.numel, 1)

    def to_bytes(self) -> bytes:
        return self.meta.to_bytes() + self.payload

    @classmethod
    def from_parts(cls, meta_bytes: bytes | bytearray | memoryview, payload: bytes | bytearray | memoryview
                   ) -> Encoded:
        """The receiver's constructor: parses and validates the metadata; FrameError on garbage."""
        meta = FrameMeta.from_bytes(meta_bytes)
        if len(payload) != meta.payload_nbytes:
            raise FrameError(f"payload is {len(payload)} bytes; the frame metadata says "
                             f"{meta.payload_nbytes} (truncated or padded in transit)")
        return cls(meta, bytes(payload))

    @classmethod
    def from_bytes(cls, frame: bytes | bytearray | memoryview) -> Encoded:
        """Split one buffer (metadata then payload) and validate it as ``from_parts`` does."""
        view = memoryview(frame).cast("B")
        size = FrameMeta.wire_size(view)
        if len(view) < size:
            raise FrameError(f"frame of {len(view)} bytes is shorter than its {size}-byte metadata")
        return cls.from_parts(view[:size], view[size:])

    def __repr__(self) -> str:
        m = self.meta
        bits = "" if m.bits is None else f" bits={m.bits}"
        return (f"Encoded(mode={m.mode!r}{bits}, shape={m.shape}, compressor={m.compressor!r}, "
                f"nbytes={self.nbytes})")


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

    def check(self, enc: Encoded) -> None:
        """FrameError unless the frame's metadata is what this receiver accepts."""
        m = enc.meta
        if m.shape != self.shape:
            raise FrameError(f"frame shape {m.shape} does not match the expected {self.shape}")
        if self.modes is not None and m.mode not in self.modes:
            raise FrameError(f"frame mode {m.mode!r} is not accepted here (accepted: "
                             f"{', '.join(sorted(self.modes))})")
        if m.mode in QUANT_MODES and not self.min_bits <= m.quant_bits <= self.max_bits:
            raise FrameError(f"frame has {m.bits} bits; accepted {self.min_bits}..{self.max_bits}")
        if self.per_channel is not None and m.per_channel != self.per_channel:
            raise FrameError(f"frame {'has' if m.per_channel else 'lacks'} per-channel ranges; "
                             f"this receiver wants {'them' if self.per_channel else 'one range'}")
        if self.max_nbytes is not None and enc.nbytes > self.max_nbytes:
            raise FrameError(f"frame of {enc.nbytes} bytes exceeds the limit of {self.max_nbytes}")


@dataclasses.dataclass(frozen=True)
class CodecSpec:
    """A codec setting: mode, bits (quality for jpeg/webp; None for fp16/fp32), per-channel ranges.

    >>> CodecSpec("shuffle-lz4", 4)
    CodecSpec(mode='shuffle-lz4', bits=4, per_channel=False)
    >>> CodecSpec.from_dict(CodecSpec("fp16").to_dict())
    CodecSpec(mode='fp16', bits=None, per_channel=False)
    """

    mode: str = "shuffle-lz4"
    bits: int | None = 8
    per_channel: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_mode_bits(self.mode, self.bits))
        if not isinstance(self.per_channel, bool):
            raise ConfigError(f"per_channel must be a bool, got {self.per_channel!r}")
        if self.per_channel and self.mode not in QUANT_MODES:
            raise ConfigError(f"per-channel ranges need a quantised mode, not {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecSpec:
        if not isinstance(data, dict) or set(data) - {"mode", "bits", "per_channel"}:
            raise ConfigError(f"a codec spec is a dict of mode, bits, per_channel; got {data!r}")
        return cls(**data)


# ------------------------------------------------------------------------------------------ encode
def encode(x: torch.Tensor | np.ndarray, bits: int | None = 8, mode: str = "shuffle-lz4",
           nonnegative: bool = False, clip: tuple[float, float] | None = None, per_channel: bool = False,
           *, quality: int | None = None, nthreads: int | None = None) -> Encoded:
    """Encode one tensor (any shape) into a frame.

    - quantised modes (``shuffle-lz4``, ``shuffle-zstd``, ``dense``): ISQuant to ``bits`` (1..16)
      over the tensor's own range (``[0, max]`` with ``nonnegative``; intersected with ``clip`` if
      given, values outside clamped), per tensor or per entry of axis 0 (``per_channel``); then
      bit-shuffle + blosc2 LZ4/Zstandard, or dense packing. A shuffle mode sends dense packing instead
      whenever blosc2 would not be smaller, so it never costs more than ``bits`` bits per value.
    - ``fp16``/``fp32``: the values as they are (``bits`` ignored).
    - ``jpeg``/``webp``: an image (see ``dyno.codec._image``) at quality ``bits`` (or ``quality=``).

    ``nthreads`` sets blosc2's threads (default: 1 below ``THREADS_THRESHOLD`` bytes of codes).
    Raises ConfigError for a bad argument or a tensor holding NaN or infinity.

    >>> enc = encode(torch.relu(torch.randn(16, 8, 8)), bits=4, nonnegative=True)
    >>> decode(enc, Expected(shape=(16, 8, 8))).shape
    (16, 8, 8)
    """
    if quality is not None:
        if mode not in IMAGE_MODES:
            raise ConfigError(f"quality= is for jpeg/webp, not mode {mode!r}; use bits=")
        bits = quality
    checked = _check_mode_bits(mode, bits)
    if per_channel and mode not in QUANT_MODES:
        raise ConfigError(f"per-channel ranges need a quantised mode, not {mode!r}")
    if mode in FLOAT_MODES:
        return _encode_float(_source_dtype(x), _quant.as_float32_tensor(x), mode)
    assert checked is not None  # _check_mode_bits returns an int for every mode but fp16/fp32
    if mode in IMAGE_MODES:
        payload, dtype, shape, lo, hi = _image.encode_image(x, checked, mode, nonnegative, clip)
        meta = FrameMeta(mode=mode, bits=checked, shape=shape, dtype=dtype, lo=lo, hi=hi,
                         compressor=mode, payload_nbytes=len(payload))
        return Encoded(meta.with_crc(payload), payload)
    return _encode_quantized(_source_dtype(x), _quant.as_float32_tensor(x), checked, mode, nonnegative, clip,
                             per_channel, nthreads)


def _encode_float(dtype: str, t: torch.Tensor, mode: str) -> Encoded:
    """An fp16/fp32 frame of ``t`` (float32, contiguous; ``dtype`` what encode was given): the values."""
    shape = tuple(t.shape)
    if t.numel():
        mn, mx = (float(v) for v in torch.aminmax(t))  # one pass; NaN and inf propagate
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise ConfigError("cannot encode a tensor holding NaN or infinite values")
        if mode == "fp16" and max(-mn, mx) > _FP16_MAX:
            raise ConfigError("tensor values overflow float16 (|x| > 65504); use fp32 or a quantised mode")
    values = t.to(torch.float16) if mode == "fp16" else t
    array = values.numpy()
    payload = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    meta = FrameMeta(mode=mode, bits=None, shape=shape, dtype=dtype, compressor="raw",
                     payload_nbytes=len(payload))
    return Encoded(meta.with_crc(payload), payload)


def _encode_quantized(dtype: str, t: torch.Tensor, bits: int, mode: str, nonnegative: bool,
                      clip: tuple[float, float] | None, per_channel: bool, nthreads: int | None) -> Encoded:
    """A quantised frame of ``t``: ISQuant codes, bit-shuffled and compressed or densely packed."""
    shape = tuple(t.shape)
    lo = hi = 0.0
    table = None
    if per_channel:
        if t.ndim == 0:
            raise ConfigError("per-channel ranges need a tensor with at least one axis")
        lo_c, hi_c = _quant.channel_ranges(t, nonnegative, clip)
        codes = _quant.quantize_per_channel(t, lo_c, hi_c, bits)
        table = tuple(zip(lo_c.tolist(), hi_c.tolist()))
    else:
        lo, hi = _quant.tensor_range(t, nonnegative, clip)
        codes = _quant.quantize(t, lo, hi, bits)
    payload, compressor = _pack_codes(codes, bits, mode, nthreads)
    meta = FrameMeta(mode=mode, bits=bits, shape=shape, dtype=dtype, lo=lo, hi=hi,
                     channel_ranges=table, compressor=compressor, payload_nbytes=len(payload))
    return Encoded(meta.with_crc(payload), payload)


def _pack_codes(codes: np.ndarray, bits: int, mode: str, nthreads: int | None) -> tuple[bytes, str]:
    compressor = _COMPRESSOR_OF_MODE[mode]
    if compressor != "bitpack":
        dense = dense_nbytes(codes.size, bits)
        if dense > 32:  # a blosc2 chunk has a 32-byte header: never smaller than that
            payload = _pack.blosc2_compress(codes, compressor, nthreads)
            if len(payload) < dense:
                return payload, compressor
    return _pack.pack_dense(codes, bits), "bitpack"


def encode_with(x: torch.Tensor | np.ndarray, spec: CodecSpec, *, nonnegative: bool = False,
                clip: tuple[float, float] | None = None, nthreads: int | None = None) -> Encoded:
    """``encode`` with the mode, bits and per-channel choice of a CodecSpec."""
    if not isinstance(spec, CodecSpec):
        raise ConfigError(f"encode_with needs a CodecSpec, got {type(spec).__name__}")
    return encode(x, spec.bits, spec.mode, nonnegative=nonnegative, clip=clip,
                  per_channel=spec.per_channel, nthreads=nthreads)


# ------------------------------------------------------------------------------------------ decode
def decode(enc: Encoded, expected: Expected, *, nthreads: int | None = None) -> np.ndarray:
    """Validate a frame against what the receiver expects, then decode it to float32 of that shape.

    Order: the metadata against ``expected`` (shape, mode, bits, per-channel, size), the payload
    length, the crc32 of metadata and payload, the compressor's own header (blosc2: sizes, typesize,
    codec, filters; images: format, size, mode) - all before any buffer is allocated - then decoding,
    then (blosc2 codes below 8 bits) that no code exceeds ``2**bits - 1``. Every failure raises
    FrameError; nothing else escapes, and no allocation exceeds the expected tensor's.
    """
    if not isinstance(expected, Expected):
        raise ConfigError(f"decode needs an Expected, got {type(expected).__name__}")
    if not isinstance(enc, Encoded):
        raise FrameError(f"decode needs an Encoded frame, got {type(enc).__name__}")
    expected.check(enc)
    meta, payload = enc.meta, enc.payload
    if len(payload) != meta.payload_nbytes:
        raise FrameError(f"payload is {len(payload)} bytes; the frame metadata says {meta.payload_nbytes}")
    if meta.checksum(payload) != meta.crc32:
        raise FrameError("frame checksum mismatch: the metadata or payload was corrupted in transit")
    n = meta.numel
    shape = meta.shape
    if meta.mode in FLOAT_MODES:
        if meta.mode == "fp32":
            return np.frombuffer(payload, "<f4", count=n).astype(np.float32).reshape(shape)
        half = np.frombuffer(payload, "<f2", count=n).copy()  # writable, for torch's fast conversion
        return torch.from_numpy(half).to(torch.float32).numpy().reshape(shape)
    if meta.mode in IMAGE_MODES:
        return _image.decode_image(payload, meta.mode, meta.dtype, shape, meta.lo, meta.hi)

    bits = meta.quant_bits
    if n == 0:
        return np.zeros(shape, np.float32)
    if meta.compressor == "bitpack":
        codes = _pack.unpack_dense(payload, bits, n)
    else:
        codes = _pack.blosc2_decompress(payload, meta.compressor, bits, n, nthreads)
        if bits not in (8, 16) and int(codes.max()) >> bits:
            raise FrameError(f"frame holds codes above {(1 << bits) - 1}, impossible at {bits} bits")
    if meta.per_channel:
        ranges = np.asarray(meta.channel_ranges, np.float32).reshape(-1, 2)
        values = _quant.dequantize_per_channel(codes, np.ascontiguousarray(ranges[:, 0]),
                                               np.ascontiguousarray(ranges[:, 1]), bits)
    else:
        values = _quant.dequantize(codes, meta.lo, meta.hi, bits)
    return values.reshape(shape)
