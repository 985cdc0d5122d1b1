"""The codec: CNN-ISPM packing of a split tensor (quantise, bit-shuffle, compress) and back.

It knows nothing about models or networks and does no I/O, so the simulator, the device client and
the cloud server run the very same code. One frame = ``FrameMeta`` (a small versioned binary struct)
plus a payload; ``Encoded.nbytes`` counts both, and is the figure every byte count in dyno uses.

    >>> import torch
    >>> from dyno.codec import encode, decode, Expected
    >>> x = torch.relu(torch.randn(32, 14, 14))
    >>> enc = encode(x, bits=4, mode="shuffle-lz4", nonnegative=True)
    >>> y = decode(enc, Expected(shape=(32, 14, 14)))
    >>> float(abs(torch.from_numpy(y) - x).max()) <= enc.meta.scale / 2 + 1e-6
    True

Modes (``MODES``): ``shuffle-lz4`` (default), ``shuffle-zstd``, ``dense`` (exactly b bits per value,
no entropy coder; the reference), ``fp16``/``fp32`` (baselines), ``jpeg``/``webp`` (the input cut).
A receiver of untrusted bytes calls ``decode_frame(meta, payload, expected)``: it checks the frame's
fixed-size header, shape and declared sizes against ``expected`` before it reads anything whose size
the frame declares, and returns only finite tensors (the order of its checks: ``dyno.codec._receive``).

Errors: ConfigError for bad arguments or tensors given to encode (NaN, infinity, wrong dtype);
FrameError for any frame that fails validation in ``decode_frame`` / decode / ``from_parts`` /
``from_bytes``.
"""

from dyno.codec._codec import CodecSpec, Encoded, encode, encode_with
from dyno.codec._meta import COMPRESSORS, FORMAT_VERSION, MODES, FrameMeta, dense_nbytes
from dyno.codec._pack import THREADS_THRESHOLD
from dyno.codec._receive import Expected, decode, decode_frame

__all__ = [
    "encode",
    "decode",
    "decode_frame",
    "encode_with",
    "Encoded",
    "FrameMeta",
    "Expected",
    "CodecSpec",
    "MODES",
    "COMPRESSORS",
    "FORMAT_VERSION",
    "THREADS_THRESHOLD",
    "dense_nbytes",
]
