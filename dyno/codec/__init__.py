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

Modes (``MODES``): ``shuffle-lz4`` (default; bit-shuffle + LZ4, the fastest), ``shuffle-zstd``
(bit-shuffle + Zstandard level 1), ``centre-zstd`` (codes centred on the zero point, bit-shuffle,
Zstandard level 1: signed tensors too), ``zstd`` (Zstandard on the codes' bytes), ``rans`` (an order-0
rANS entropy coder, 1..8 bits), ``dense`` (exactly b bits per value, no entropy coder; the reference),
``fp16``/``fp32`` (baselines), ``jpeg``/``webp`` (the input cut). The quantiser is numpy's (torch is
never imported; encode takes numpy arrays and torch tensors alike). Encode writes frame version 3,
whose compact metadata (``dyno.codec._compact``: varints, lo = 0 as a flag) takes 15-25 bytes for a
CNN's tensors; frames of versions 1 and 2 (``dyno.codec._wire``, 29-37 bytes) still decode.
A receiver of untrusted bytes calls ``decode_frame(meta, payload, expected)``: it checks the frame's
fixed-size header, shape and declared sizes against ``expected`` before it reads anything whose size
the frame declares, and returns only finite tensors (the order of its checks: ``dyno.codec._receive``).

Errors: ConfigError for bad arguments or tensors given to encode (NaN, infinity, wrong dtype);
FrameError for any frame that fails validation in ``decode_frame`` / decode / ``from_parts`` /
``from_bytes``.
"""

from dyno.codec._codec import CodecSpec, Codes, Encoded, encode, encode_codes, encode_with, quantize_tensor
from dyno.codec._expected import Expected
from dyno.codec._meta import FrameMeta
from dyno.codec._pack import THREADS_THRESHOLD
from dyno.codec._receive import decode, decode_frame
from dyno.codec._wire import COMPRESSORS, FORMAT_VERSION, MAX_BITS, MODES, QUANT_MODES, VERSIONS, dense_nbytes

__all__ = [
    "encode",
    "decode",
    "decode_frame",
    "encode_with",
    "quantize_tensor",
    "encode_codes",
    "Codes",
    "Encoded",
    "FrameMeta",
    "Expected",
    "CodecSpec",
    "MODES",
    "QUANT_MODES",
    "MAX_BITS",
    "COMPRESSORS",
    "FORMAT_VERSION",
    "VERSIONS",
    "THREADS_THRESHOLD",
    "dense_nbytes",
]
