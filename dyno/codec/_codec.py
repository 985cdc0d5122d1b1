"""encode, the frame (``Encoded``) and the codec setting; the receiver's side is ``_receive``."""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from dyno.codec import _coders, _image, _pack, _quant
from dyno.codec._meta import FrameMeta
from dyno.codec._wire import (
    FLOAT_MODES,
    IMAGE_MODES,
    MAX_BITS,
    MODES,
    QUANT_MODES,
    byte_view,
    check_payload_size,
    dense_nbytes,
)
from dyno.errors import ConfigError, FrameError

if TYPE_CHECKING:
    import torch

    from dyno.codec._expected import Expected

__all__ = ["encode", "encode_with", "Encoded", "CodecSpec", "Codes", "quantize_tensor", "encode_codes"]

_FP16_MAX = 65504.0
#: What each quantised mode's coder writes (it falls back to ``bitpack`` when that is not smaller).
COMPRESSOR_OF_MODE = {"shuffle-lz4": "blosc2-lz4", "shuffle-zstd": "blosc2-zstd", "centre-zstd": "blosc2-zstd",
                      "zstd": "zstd", "rans": "rans", "dense": "bitpack"}
_SOURCE_DTYPES = ("float32", "float16", "float64", "bfloat16")


def _source_dtype(x: object) -> str:
    """The name of ``x``'s dtype (numpy or torch, the latter by duck typing: torch is never imported)."""
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        name = x.dtype.name
    elif type(x).__module__.startswith("torch") and hasattr(x, "dtype"):
        name = str(x.dtype).removeprefix("torch.")
    else:
        raise ConfigError(f"encode needs a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if name not in _SOURCE_DTYPES or (name == "bfloat16" and isinstance(x, np.ndarray)):
        raise ConfigError(f"encode needs a float16/32/64 (or bfloat16) tensor, got {getattr(x, 'dtype', None)}; "
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
    top = MAX_BITS.get(mode, 16) if mode in QUANT_MODES else 100
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
        return _encode_float(_source_dtype(x), _quant.as_float32_array(x), mode)
    assert checked is not None  # _check_mode_bits returns an int for every mode but fp16/fp32
    if mode in IMAGE_MODES:
        payload, dtype, shape, lo, hi = _image.encode_image(x, checked, mode, nonnegative, clip)
        if not _quant.decodes_finite(lo, hi, 8):
            raise _overflow(f"image range [{lo}, {hi}]", 8)
        meta = FrameMeta(mode=mode, bits=checked, shape=shape, dtype=dtype, lo=lo, hi=hi,
                         compressor=mode, payload_nbytes=len(payload))
        return Encoded(meta.with_crc(payload), payload)
    return _encode_quantized(_source_dtype(x), _quant.as_float32_array(x), checked, mode, nonnegative, clip,
                             per_channel, nthreads)


def half(values: np.ndarray) -> np.ndarray:
    """float32 -> float16 (round to nearest even): torch's kernel when the process has torch already
    (several times faster than numpy's), numpy's otherwise; both give the same bits."""
    torch = sys.modules.get("torch")
    if torch is not None and values.flags.c_contiguous:
        return torch.from_numpy(values).to(torch.float16).numpy()
    return values.astype(np.float16)


def _encode_float(dtype: str, array: np.ndarray, mode: str) -> Encoded:
    """An fp16/fp32 frame of ``array`` (float32, contiguous; ``dtype`` what encode was given): the values."""
    shape = tuple(array.shape)
    if array.size:
        mn, mx = float(array.min()), float(array.max())  # NaN and inf propagate
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise ConfigError("cannot encode a tensor holding NaN or infinite values")
        if mode == "fp16" and max(-mn, mx) > _FP16_MAX:
            raise ConfigError("tensor values overflow float16 (|x| > 65504); use fp32 or a quantised mode")
    values = half(array) if mode == "fp16" else array
    payload = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
    meta = FrameMeta(mode=mode, bits=None, shape=shape, dtype=dtype, compressor="raw",
                     payload_nbytes=len(payload))
    return Encoded(meta.with_crc(payload), payload)


def _encode_quantized(dtype: str, x: np.ndarray, bits: int, mode: str, nonnegative: bool,
                      clip: tuple[float, float] | None, per_channel: bool, nthreads: int | None) -> Encoded:
    """A quantised frame of ``x``: ISQuant codes, then the mode's coder (or dense packing)."""
    if not per_channel:
        return encode_codes(_quantize_tensor(dtype, x, bits, nonnegative, clip, None), mode, nthreads)
    if x.ndim == 0:
        raise ConfigError("per-channel ranges need a tensor with at least one axis")
    lo_c, hi_c = _quant.channel_ranges(x, nonnegative, clip)
    if not _quant.channels_decode_finite(lo_c, hi_c, bits):
        raise _overflow("a channel's range", bits)
    codes = _quant.quantize_per_channel(x, lo_c, hi_c, bits)
    table = tuple(zip(lo_c.tolist(), hi_c.tolist()))
    zero_points = _quant.channel_grids(lo_c, hi_c, bits)[1].astype(np.int64)
    payload, compressor = pack_codes(codes, bits, mode, nthreads, zero_points)
    meta = FrameMeta(mode=mode, bits=bits, shape=tuple(x.shape), dtype=dtype, lo=0.0, hi=0.0, channel_ranges=table,
                     compressor=compressor, payload_nbytes=len(payload))
    return Encoded(meta.with_crc(payload), payload)


@dataclasses.dataclass(frozen=True)
class Codes:
    """A tensor quantised per tensor once, for packing with several coders (:func:`encode_codes`):
    the flat codes, the tensor's own ``span`` (min, max) and the frame's fields."""

    codes: np.ndarray
    bits: int
    shape: tuple[int, ...]
    dtype: str
    lo: float
    hi: float
    span: tuple[float, float]


def quantize_tensor(x: torch.Tensor | np.ndarray, bits: int, *, nonnegative: bool = False,
                    clip: tuple[float, float] | None = None, span: tuple[float, float] | None = None) -> Codes:
    """The codes ``encode`` sends for ``x`` at ``bits`` (per tensor); ``span``: ``x``'s (min, max)
    when known (``Codes.span`` of an earlier call on the same ``x``), saving a pass.
    ``encode_codes(quantize_tensor(x, b, ...), mode)`` is ``encode(x, b, mode, ...)``, byte for byte."""
    checked = _check_mode_bits("dense", bits)
    assert checked is not None
    return _quantize_tensor(_source_dtype(x), _quant.as_float32_array(x), checked, nonnegative, clip, span)


def _quantize_tensor(dtype: str, x: np.ndarray, bits: int, nonnegative: bool, clip: tuple[float, float] | None,
                     span: tuple[float, float] | None) -> Codes:
    span = _quant.minmax(x) if span is None else span
    lo, hi = _quant.span_range(span, nonnegative, clip)
    if not _quant.decodes_finite(lo, hi, bits):
        raise _overflow(f"tensor range [{lo}, {hi}]", bits)
    codes = _quant.quantize(x.reshape(-1), lo, hi, bits, span)
    return Codes(codes=codes, bits=bits, shape=tuple(x.shape), dtype=dtype, lo=lo, hi=hi, span=span)


def encode_codes(q: Codes, mode: str, nthreads: int | None = None) -> Encoded:
    """The frame of codes from :func:`quantize_tensor` in the quantised ``mode`` (its coder, or dense
    packing when that is not smaller)."""
    if mode not in QUANT_MODES:
        raise ConfigError(f"encode_codes needs a quantised mode ({', '.join(QUANT_MODES)}), not {mode!r}")
    _check_mode_bits(mode, q.bits)
    zero_point = _quant.grid(q.lo, q.hi, q.bits).zero_point
    payload, compressor = pack_codes(q.codes, q.bits, mode, nthreads, zero_point)
    meta = FrameMeta(mode=mode, bits=q.bits, shape=q.shape, dtype=q.dtype, lo=q.lo, hi=q.hi,
                     compressor=compressor, payload_nbytes=len(payload))
    return Encoded(meta.with_crc(payload), payload)


def _overflow(what: str, bits: int) -> ConfigError:
    return ConfigError(f"{what} at {bits} bits would decode beyond float32 (infinite values at the "
                       "receiver); narrow it with clip=")


def pack_codes(codes: np.ndarray, bits: int, mode: str, nthreads: int | None = None,
               zero_points: np.ndarray | int = 0) -> tuple[bytes, str]:
    """(payload, compressor) of flat codes in ``mode``: its coder's output when that is smaller than
    dense packing (and a size the receiver accepts), else dense packing."""
    compressor = COMPRESSOR_OF_MODE[mode]
    dense = dense_nbytes(codes.size, bits)
    payload = None
    if compressor.startswith("blosc2"):
        if dense > 32:  # a blosc2 chunk has a 32-byte header: never smaller than that
            centre = mode == "centre-zstd"
            payload = _pack.blosc2_compress(_coders.fold(codes, zero_points, bits) if centre else codes,
                                            compressor, nthreads, _coders.CENTRE_ZSTD_LEVEL if centre else None)
    elif compressor == "zstd" and codes.size:
        payload = _coders.zstd_compress(codes)
    elif compressor == "rans" and codes.size:
        payload = _coders.rans_encode(codes, bits)
    if payload is not None and len(payload) < dense:
        try:
            check_payload_size(mode, compressor, bits, codes.size, len(payload))
            return payload, compressor
        except FrameError:
            pass
    return _pack.pack_dense(codes, bits), "bitpack"


def encode_with(x: torch.Tensor | np.ndarray, spec: CodecSpec, *, nonnegative: bool = False,
                clip: tuple[float, float] | None = None, nthreads: int | None = None) -> Encoded:
    """``encode`` with the mode, bits and per-channel choice of a CodecSpec."""
    if not isinstance(spec, CodecSpec):
        raise ConfigError(f"encode_with needs a CodecSpec, got {type(spec).__name__}")
    return encode(x, spec.bits, spec.mode, nonnegative=nonnegative, clip=clip,
                  per_channel=spec.per_channel, nthreads=nthreads)
