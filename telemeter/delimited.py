"""Varint-delimited protobuf: the body format of uploads (after snappy) and of /federate.

Each message is preceded by its length as a base-128 varint, as written by Go's
``pbutil.WriteDelimited`` (docs/protocol.md section 3). The messages are
``io.prometheus.client.MetricFamily``; protobuf's own errors are translated here, once, into
:class:`~telemeter.errors.InvalidPayload`.
"""

import logging
from collections.abc import Iterable, Iterator

from google.protobuf.internal import api_implementation
from google.protobuf.message import DecodeError

from telemeter import metrics_pb2
from telemeter.errors import InvalidPayload, TooLarge

__all__ = ["check_upb", "iter_delimited", "read_families", "write_families"]

logger = logging.getLogger(__name__)

_MAX_VARINT_LEN = 10  # a uint64 takes at most 10 base-128 digits


def check_upb() -> None:
    """Raise RuntimeError unless protobuf runs on its fast upb backend.

    The pure-Python backend is tens of times slower and would break the performance budget
    (docs/architecture.md); the server calls this at start-up rather than degrade silently.
    """
    backend = api_implementation.Type()
    if backend != "upb":
        raise RuntimeError(f"protobuf backend is {backend!r}, the upb backend is required")


def encode_varint(value: int) -> bytes:
    """Encode a non-negative int as a base-128 varint (like protobuf's ``_VarintBytes``)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(view: bytes | memoryview, pos: int, what: str) -> tuple[int, int]:
    """The base-128 varint at ``pos`` and the position after it; InvalidPayload naming ``what``
    when it is truncated or longer than 10 bytes."""
    value = shift = 0
    while True:
        if pos >= len(view):
            raise InvalidPayload(f"{what}: truncated varint")
        if shift >= 7 * _MAX_VARINT_LEN:
            raise InvalidPayload(f"{what}: varint longer than 10 bytes")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def iter_delimited(data: bytes) -> Iterator[memoryview]:
    """Yield the messages of a varint-length-prefixed stream as zero-copy views of ``data``.

    Raises InvalidPayload (when reached) for a truncated varint, a varint longer than 10 bytes
    or a length that runs past the end of ``data``.
    """
    view = memoryview(data)
    size = len(view)
    pos = 0
    while pos < size:
        length, pos = read_varint(view, pos, "delimited: length")
        end = pos + length
        if end > size:
            raise InvalidPayload("delimited: message length runs past the end of the payload")
        yield view[pos:end]
        pos = end


def read_families(data: bytes, *, max_families: int) -> list[metrics_pb2.MetricFamily]:
    """Parse varint-delimited MetricFamily messages.

    Raises TooLarge if there are more than ``max_families`` messages (before parsing the one
    over the limit) and InvalidPayload if the framing or a message is malformed.
    """
    families: list[metrics_pb2.MetricFamily] = []
    for message in iter_delimited(data):
        if len(families) >= max_families:
            raise TooLarge(f"delimited: more than {max_families} metric families")
        family = metrics_pb2.MetricFamily()
        try:
            # upb reads any buffer; the stub says bytes, and a copy would cost ~25% of the parse.
            family.ParseFromString(message)  # type: ignore[arg-type]
        except DecodeError:
            raise InvalidPayload(
                f"delimited: metric family {len(families)} is not a valid protobuf message"
            ) from None
        families.append(family)
    return families


def write_families(families: Iterable[metrics_pb2.MetricFamily]) -> bytes:
    """Serialize MetricFamily messages, each preceded by its varint length."""
    parts: list[bytes] = []
    for family in families:
        payload = family.SerializeToString()
        parts.append(encode_varint(len(payload)))
        parts.append(payload)
    return b"".join(parts)
