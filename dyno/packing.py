"""How an activation is packed for the wire: a codec at a bit width (``Packing``), and the codec names.

The one home of the (codec, bits) pair and its label. The plan's options, the policies' decisions,
the profiles and every report name packings; the codec checks its modes against the same names.
Light on purpose (no torch, no numpy).

    Packing("shuffle-lz4", 4).label          # 'shuffle-lz4:4'
    Packing.parse("jpeg:90")                # Packing(codec='jpeg', bits=90): bits is the quality
    Packing("fp16").label                   # 'fp16'

``bits`` is the bit width (1..16; 1..8 for ``rans``) of a quantising codec, the image quality (1..100)
of ``jpeg`` and ``webp`` (the input cut only), and None for ``fp32``/``fp16``.

The quantising codecs (the coders of the same codes, so they share one accuracy per cut and width):
``shuffle-lz4`` (bit-shuffle + LZ4, the fastest), ``shuffle-zstd`` (bit-shuffle + Zstandard level 1),
``dense`` (exactly ``bits`` bits per value), ``centre-zstd`` (codes centred on the zero point,
bit-shuffle, Zstandard level 1), ``zstd`` (Zstandard on the codes' bytes) and ``rans`` (order-0 rANS:
the entropy of the codes). ``dyno.codec`` implements each under the same name (its ``MODES``).
"""

from __future__ import annotations

import dataclasses

from dyno.errors import ConfigError

__all__ = ["QUANT_CODECS", "FLOAT_CODECS", "IMAGE_CODECS", "CODECS", "BITS", "IMAGE_QUALITIES", "MAX_BITS",
           "LZ4", "Packing", "label", "problem", "max_bits"]

QUANT_CODECS: tuple[str, ...] = ("shuffle-lz4", "shuffle-zstd", "dense", "centre-zstd", "zstd", "rans")
#: The fast coder every plan lists at every width (the reference of the "LZ4 only" comparisons).
LZ4 = "shuffle-lz4"
#: The widest codes a quantising codec takes, where less than 16.
MAX_BITS: dict[str, int] = {"rans": 8}
FLOAT_CODECS: tuple[str, ...] = ("fp32", "fp16")
IMAGE_CODECS: tuple[str, ...] = ("jpeg", "webp")
#: Every codec, in the order plans list them.
CODECS: tuple[str, ...] = FLOAT_CODECS + QUANT_CODECS + IMAGE_CODECS
#: Bit widths of the quantising codecs.
BITS: tuple[int, ...] = tuple(range(1, 17))
#: Image qualities the offline analysis measures at the input cut.
IMAGE_QUALITIES: tuple[int, ...] = (30, 40, 50, 60, 70, 80, 90, 95)


def label(codec: str, bits: int | None) -> str:
    """``codec`` or ``codec:bits``: how plans, profiles and reports name a packing."""
    return codec if bits is None else f"{codec}:{bits}"


def max_bits(codec: str) -> int:
    """The widest bit width ``codec`` (a quantising codec) takes."""
    return MAX_BITS.get(codec, BITS[-1])


def problem(codec: object, bits: object) -> str | None:
    """What is wrong with the pair, or None if it names a valid packing (callers raise their own
    error type: a plan file says PlanError, an argument ConfigError)."""
    if codec not in CODECS:
        return f"unknown codec {codec!r}; known: {', '.join(CODECS)}"
    if codec in FLOAT_CODECS:
        return None if bits is None else f"{codec} takes no bits"
    top, what = (100, "image quality") if codec in IMAGE_CODECS else (max_bits(str(codec)), "bits")
    if not (isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= top):
        return f"{what} must be 1..{top} for {codec}, not {bits!r}"
    return None


@dataclasses.dataclass(frozen=True)
class Packing:
    """A codec at a bit width (quality for jpeg/webp; None for fp32/fp16). Validated on construction."""

    codec: str
    bits: int | None = None

    def __post_init__(self) -> None:
        wrong = problem(self.codec, self.bits)
        if wrong:
            raise ConfigError(wrong)

    @classmethod
    def parse(cls, text: str) -> Packing:
        """The inverse of ``label``: ``"shuffle-lz4:4"``, ``"jpeg:90"``, ``"fp16"``."""
        codec, sep, bits = text.strip().partition(":")
        if not sep:
            return cls(codec)
        try:
            return cls(codec, int(bits))
        except ValueError:
            raise ConfigError(f"cannot read packing {text!r}; use CODEC or CODEC:BITS, e.g. shuffle-lz4:4"
                              ) from None

    @property
    def label(self) -> str:
        return label(self.codec, self.bits)

    @property
    def is_image(self) -> bool:
        return self.codec in IMAGE_CODECS

    @property
    def is_quantised(self) -> bool:
        return self.codec in QUANT_CODECS

    @property
    def bits_per_value(self) -> float:
        """Bits per value before entropy coding: 32/16 for floats, 8 for an image's pixels."""
        if self.codec == "fp32":
            return 32.0
        if self.codec == "fp16":
            return 16.0
        return 8.0 if self.is_image else float(self.bits or 0)

    def __str__(self) -> str:
        return self.label
