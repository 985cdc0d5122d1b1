"""encode, the frame (``Encoded``) and the codec setting; the receiver's side is ``_receive``."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dyno.codec import _image, _pack, _quant
from dyno.codec._meta import (
    FLOAT_MODES,
    IMAGE_MODES,
    MODES,
    QUANT_MODES,
    FrameMeta,
    byte_view,
    dense_nbytes,
)
from dyno.errors import ConfigError, FrameError

if TYPE_CHECKING:
    from dyno.codec._receive import Expected

__all__ = ["encode", "encode_with", "Encoded", "CodecSpec"]

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
    def from_parts(cls, meta_bytes: bytes | bytearray | memoryview, payload: bytes | bytearray | memoryview,
                   *, expected: Expected | None = None) -> Encoded:
        """The receiver's constructor: parses and validates the metadata; FrameError on garbage.

        With ``expected``, metadata and payload length are first checked against it from the header's
        fixed-size part, shape and declared sizes (``Expected.check_wire``): nothing whose size the
        frame declares is parsed or copied unless the receiver accepts that size.
        """
        meta_view = byte_view(meta_bytes, "frame metadata")
        payload_view = byte_view(payload, "frame payload")
        if expected is not None:
            expected.check_wire(meta_view, len(payload_view))
        meta = FrameMeta.from_bytes(meta_view)
        if len(payload_view) != meta.payload_nbytes:
            raise FrameError(f"payload is {len(payload_view)} bytes; the frame metadata says "
                             f"{meta.payload_nbytes} (truncated or padded in transit)")
        return cls(meta, bytes(payload_view))

    @classmethod
    def from_bytes(cls, frame: bytes | bytearray | memoryview, *, expected: Expected | None = None) -> Encoded:
        """Split one buffer (metadata then payload) and validate it as ``from_parts`` does."""
        view = memoryview(byte_view(frame, "frame"))
        size = FrameMeta.wire_size(view)
        if len(view) < size:
            raise FrameError(f"frame of {len(view)} bytes is shorter than its {size}-byte metadata")
        return cls.from_parts(view[:size], view[size:], expected=expected)

    def __repr__(self) -> str:
        m = self.meta
        bits = "" if m.bits is None else f" bits={m.bits}"
        return (f"Encoded(mode={m.mode!r}{bits}, shape={m.shape}, compressor={m.compressor!r}, "
                f"nbytes={self.nbytes})")


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
    Raises ConfigError for a bad argument, a tensor holding NaN or infinity, or a range whose grid
    would decode beyond float32 (a range reaching to within a step of +-3.4e38: narrow it with clip=).

    >>> from dyno.codec import Expected, decode
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
        if not _quant.decodes_finite(lo, hi, 8):
            raise _overflow(f"image range [{lo}, {hi}]", 8)
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
        if not _quant.channels_decode_finite(lo_c.numpy(), hi_c.numpy(), bits):
            raise _overflow("a channel's range", bits)
        codes = _quant.quantize_per_channel(t, lo_c, hi_c, bits)
        table = tuple(zip(lo_c.tolist(), hi_c.tolist()))
    else:
        lo, hi = _quant.tensor_range(t, nonnegative, clip)
        if not _quant.decodes_finite(lo, hi, bits):
            raise _overflow(f"tensor range [{lo}, {hi}]", bits)
        codes = _quant.quantize(t, lo, hi, bits)
    payload, compressor = _pack_codes(codes, bits, mode, nthreads)
    meta = FrameMeta(mode=mode, bits=bits, shape=shape, dtype=dtype, lo=lo, hi=hi,
                     channel_ranges=table, compressor=compressor, payload_nbytes=len(payload))
    return Encoded(meta.with_crc(payload), payload)


def _overflow(what: str, bits: int) -> ConfigError:
    return ConfigError(f"{what} at {bits} bits would decode beyond float32 (infinite values at the "
                       "receiver); narrow it with clip=")


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
