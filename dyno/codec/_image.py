"""The input cut as a real cloud-only app sends it: a JPEG or WebP of the image (Pillow).

Accepted images and what decode returns (float32 either way, shape as given):

- uint8, channels last: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``; decode gives the pixel values
  0..255 in the same layout.
- float, channels first: ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``, e.g. in [0, 1] or a preprocessed
  tensor; it is first mapped onto 0..255 by the same 8-bit ISQuant range as the other modes (its own
  min/max, or ``[0, max]``, or clipped), and decode maps the pixels back to that range.

Decoding opens the image lazily, checks its format, size and mode against the frame (which decode
checked against the expected shape) and only then decodes the pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dyno.codec import _quant
from dyno.errors import ConfigError, FrameError

__all__ = ["encode_image", "decode_image"]

_FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}


def _hwc_uint8(x: object, nonnegative: bool, clip: object) -> tuple[np.ndarray, str, tuple, float, float]:
    """(pixels HxWxC uint8, source dtype name, source shape, lo, hi)."""
    if type(x).__module__.startswith("torch") and str(getattr(x, "dtype", "")) == "torch.uint8":
        x = x.detach().cpu().numpy()  # type: ignore[attr-defined]
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        shape = x.shape
        if not (x.ndim == 2 or (x.ndim == 3 and shape[2] in (1, 3))) or 0 in shape:
            raise ConfigError(f"a uint8 image must be (H, W), (H, W, 1) or (H, W, 3), got {shape}")
        pixels = np.ascontiguousarray(x.reshape(shape[0], shape[1], -1))
        return pixels, "uint8", shape, 0.0, 255.0
    t = _quant.as_float32_array(x)
    shape = tuple(t.shape)
    if not (t.ndim == 2 or (t.ndim == 3 and shape[0] in (1, 3))) or 0 in shape:
        raise ConfigError(f"a float image must be (H, W), (1, H, W) or (3, H, W), got {shape}")
    lo, hi = _quant.tensor_range(t, nonnegative, clip)
    codes = _quant.quantize(t.reshape(-1), lo, hi, 8).reshape(-1, shape[-2], shape[-1])
    pixels = np.ascontiguousarray(codes.transpose(1, 2, 0))
    dtype = str(getattr(x, "dtype", "float32")).removeprefix("torch.")
    return pixels, dtype, shape, lo, hi


def encode_image(x: object, quality: int, mode: str, nonnegative: bool = False, clip: object = None
                 ) -> tuple[bytes, str, tuple, float, float]:
    """(payload, dtype name, shape, lo, hi) of an image written by Pillow at ``quality`` (1..100)."""
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ConfigError(f"{mode} quality must be an int in 1..100 (pass it as bits=), got {quality!r}")
    pixels, dtype, shape, lo, hi = _hwc_uint8(x, nonnegative, clip)
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels,
                            mode="L" if pixels.shape[2] == 1 else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=_FORMATS[mode], quality=quality)
    return buffer.getvalue(), dtype, shape, lo, hi


def decode_image(payload: bytes, mode: str, dtype: str, shape: tuple[int, ...], lo: float, hi: float
                 ) -> np.ndarray:
    """Float32 array of ``shape`` from an image payload; FrameError if it is not that image."""
    channels_last = dtype == "uint8"
    if len(shape) == 2:
        height, width, channels = shape[0], shape[1], 1
    elif channels_last:
        height, width, channels = shape
    else:
        channels, height, width = shape
    want_mode = "L" if channels == 1 else "RGB"
    try:
        # Pillow's lazy open reads only the header; the size is checked before any pixel is decoded.
        # (A header claiming > 2 * Image.MAX_IMAGE_PIXELS raises DecompressionBombError here.)
        with Image.open(io.BytesIO(payload), formats=[_FORMATS[mode]]) as image:
            if image.size != (width, height):
                raise FrameError(f"{mode} image is {image.size[0]}x{image.size[1]}, want {width}x{height}")
            if image.mode not in ("L", "RGB", "RGBA"):
                raise FrameError(f"{mode} image has mode {image.mode!r}, want {want_mode!r}")
            image.load()
            pixels = np.asarray(image if image.mode == want_mode else image.convert(want_mode))
    except FrameError:
        raise
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files
        raise FrameError(f"{mode} payload is not a valid image: {type(error).__name__}: {error}") from error
    if pixels.shape[:2] != (height, width) or pixels.dtype != np.uint8:
        raise FrameError(f"{mode} image decoded to {pixels.shape} {pixels.dtype}, want {shape}")
    pixels = pixels.reshape(height, width, channels)
    if channels_last:
        return pixels.astype(np.float32).reshape(shape)
    codes = np.ascontiguousarray(pixels.transpose(2, 0, 1)).reshape(-1)
    return _quant.dequantize(codes, lo, hi, 8).reshape(shape)
