"""What an offloaded frame costs on the uplink beyond its codec's bytes.

The plan's option bytes are the codec's meta and payload. On the link each request also carries its
protobuf envelope (``dyno/runtime/proto/inference.proto``: request id, model name, plan hash, cut,
top-k, the fields' tags and lengths), gRPC's 5-byte length prefix, HTTP/2's 9-byte DATA frame header,
and per TCP segment the Ethernet, IPv4 and TCP headers that a token bucket filter counts. For
fmnist-resnet's 770-byte JPEG inputs that is 170 bytes more (22%); a model that priced the link at the
codec's bytes alone was that much optimistic about input offloading. The performance model, the
simulator's link, the emulated link and the client's bandwidth estimate all count these wire bytes.

    on_the_wire(option.bytes, envelope=request_envelope(plan.model))   # the link's bytes per frame
    on_the_wire(request.ByteSize())                                    # the same, from the real message
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

__all__ = ["GRPC_FRAMING_BYTES", "SEGMENT_BYTES", "PACKET_HEADER_BYTES", "request_envelope", "on_the_wire"]

GRPC_FRAMING_BYTES = 5 + 9    # gRPC's length prefix, HTTP/2's DATA frame header
SEGMENT_BYTES = 1448          # TCP payload per packet: a 1500-byte MTU less IPv4, TCP and timestamp headers
PACKET_HEADER_BYTES = 66      # Ethernet 14 + IPv4 20 + TCP 20 + the timestamp option 12

Size = TypeVar("Size", float, np.ndarray)


def request_envelope(model: str, plan_hash_chars: int = 64) -> int:
    """Bytes of a request besides its codec's meta and payload: model name and plan hash (a tag and a
    length byte each), a request id below 2**28 (tag + 4), cut and top-k (2 each), the tags and length
    prefixes of meta (2) and payload (3)."""
    return (2 + len(model.encode())) + (2 + plan_hash_chars) + 5 + 2 + 2 + 2 + 3


def on_the_wire(nbytes: Size, envelope: int = 0) -> Size:
    """Bytes on the link for a gRPC message of ``nbytes`` (+ ``envelope`` if ``nbytes`` is the codec's
    bytes alone): the framing, and the packet headers of every TCP segment it fills."""
    framed = nbytes + envelope + GRPC_FRAMING_BYTES
    return framed + PACKET_HEADER_BYTES * np.ceil(framed / SEGMENT_BYTES)
