"""Snappy codecs: the framed (stream) format of uploads and the block format of remote write.

docs/protocol.md section 3: an upload body is a snappy *framed* stream (it starts with the stream
identifier ``ff 06 00 00 73 4e 61 50 70 59``); Prometheus remote write uses the snappy *block*
format. The two are not interchangeable.

Decompression is a classic amplification target, so both decoders read the sizes the input
*declares* and enforce ``max_size`` before inflating a single byte: a framed stream is walked
chunk by chunk without inflating, a block's varint preamble is read first. cramjam does the
inflating and checks each chunk's masked CRC-32C; its exceptions are translated here, once, into
:class:`~telemeter.errors.InvalidPayload`.

Framing format reference: https://github.com/google/snappy/blob/main/framing_format.txt
"""

import logging
import threading
from collections.abc import Callable

import cramjam

from telemeter import _framed
from telemeter.errors import InvalidPayload, TooLarge

# Blocks up to this size are compressed into a buffer kept per thread (see encode_block).
REUSED_BLOCK_BYTES = 4 * 2**20
_block_room = threading.local()

__all__ = [
    "STREAM_IDENTIFIER",
    "concat_blocks",
    "decode_block",
    "decode_framed",
    "encode_block",
    "encode_framed",
]

logger = logging.getLogger(__name__)

STREAM_IDENTIFIER: bytes = _framed.STREAM_IDENTIFIER
"""The first chunk of every framed stream (type 0xff, length 6, ``sNaPpY``)."""


def _reason(exc: Exception) -> str:
    """A short reason for a cramjam error (its messages already start with "snappy: ")."""
    return "snappy: " + str(exc).removeprefix("snappy: ")


def decode_framed(data: bytes, *, max_size: int) -> bytes:
    """Inflate a snappy framed stream of at most ``max_size`` uncompressed bytes.

    Raises TooLarge if the chunks declare more than ``max_size`` bytes (checked before inflating)
    and InvalidPayload if the stream is malformed or a chunk fails its CRC-32C check.
    """
    total = _framed.framed_size(data, max_size)  # the chunks walked, in C
    # The output buffer has exactly the declared size: a chunk that inflates to more than it
    # declared makes cramjam fail instead of growing memory.
    return _inflate_into(cramjam.snappy.decompress_into, data, total, "stream")


def encode_framed(data: bytes) -> bytes:
    """Compress ``data`` into a snappy framed stream (with CRC-32C per chunk)."""
    if not data:
        # cramjam writes nothing for empty input; a valid stream still starts with the identifier.
        return STREAM_IDENTIFIER
    return bytes(cramjam.snappy.compress(data))


def decode_block(data: bytes, *, max_size: int) -> bytes:
    """Inflate one snappy block (remote write) of at most ``max_size`` uncompressed bytes.

    The varint preamble (the uncompressed length) is checked against ``max_size`` before
    inflating: TooLarge if it exceeds it, InvalidPayload if the block is malformed.
    """
    declared, _ = _framed.block_preamble(data)
    if declared > max_size:
        raise TooLarge(f"snappy: block declares {declared} bytes, more than {max_size}")
    if declared >= 1 << 32:  # the preamble is a uint32 (format_description.txt)
        raise InvalidPayload("snappy: length preamble overflows 32 bits")
    return _inflate_into(cramjam.snappy.decompress_raw_into, data, declared, "block")


def _inflate_into(
    inflate: Callable[[bytes, memoryview], int], data: bytes, size: int, what: str
) -> bytes:
    """Inflate into a new bytes of exactly the declared ``size`` (a ``what`` of snappy), filled
    in place: neither zeroed first nor copied after (~150 KB of memory traffic a standard
    upload)."""
    try:
        out, written = _framed.inflate_fresh(inflate, data, size)
    except cramjam.DecompressionError as exc:
        raise InvalidPayload(_reason(exc)) from None
    if written != size:  # the rest of out was never written: it is dropped here
        raise InvalidPayload(f"snappy: {what} inflates to fewer bytes than declared")
    return out


def encode_block(data: bytes | memoryview) -> bytes:
    """Compress ``data`` into one snappy block (the format of remote write).

    Into room kept per thread: cramjam zeroes a fresh output before writing it, ~100 KB for a
    standard upload's request (~10 us a forwarded upload in the server, docs/benchmarks.md).
    """
    need = 32 + len(data) + len(data) // 6  # snappy's bound on a block's size
    if need > REUSED_BLOCK_BYTES:
        return bytes(cramjam.snappy.compress_raw(data))
    room: bytearray | None = getattr(_block_room, "buffer", None)
    if room is None or len(room) < need:
        room = _block_room.buffer = bytearray(need)
    size = cramjam.snappy.compress_raw_into(data, room)
    return bytes(memoryview(room)[:size])


def concat_blocks(blocks: list[bytes]) -> bytes:
    """One snappy block that inflates to the concatenation of ``blocks``' contents, without
    inflating them: a block is a length preamble then elements whose copies refer only to bytes
    the same block wrote, so the elements of consecutive blocks can follow one new preamble.
    (Remote write: ``timeseries`` is a repeated field, so joined requests are one request.)"""
    total = 0
    parts = []
    for block in blocks:
        length, width = _framed.block_preamble(block)
        total += length
        parts.append(memoryview(block)[width:])
    head = bytearray()
    while total >= 0x80:
        head.append((total & 0x7F) | 0x80)
        total >>= 7
    head.append(total)
    return b"".join([bytes(head), *parts])
