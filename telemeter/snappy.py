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

STREAM_IDENTIFIER = b"\xff\x06\x00\x00sNaPpY"
"""The first chunk of every framed stream (type 0xff, length 6, ``sNaPpY``)."""

_CHUNK_HEADER_LEN = 4  # 1 byte type + 3 bytes little-endian length
_CRC_LEN = 4
# framing_format.txt 4.2/4.3: a data chunk never holds more than 65536 uncompressed bytes.
_MAX_CHUNK_DATA = 65536

_COMPRESSED = 0x00
_UNCOMPRESSED = 0x01
_PADDING = 0xFE
_STREAM_ID = 0xFF
_FIRST_SKIPPABLE = 0x80  # 0x80-0xfd: reserved skippable; 0x02-0x7f: reserved unskippable


def _read_preamble(data: bytes, pos: int, end: int) -> int:
    """Read a block's length preamble: a base-128 varint of at most 5 bytes at ``data[pos:end]``.

    The caller checks the value against its limit (which also rules out values >= 2**32).
    """
    value = 0
    for i in range(5):
        if pos + i >= end:
            raise InvalidPayload("snappy: truncated length preamble")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value
    raise InvalidPayload("snappy: length preamble longer than 5 bytes")


def _reason(exc: Exception) -> str:
    """A short reason for a cramjam error (its messages already start with "snappy: ")."""
    return "snappy: " + str(exc).removeprefix("snappy: ")


def _declared_framed_size(data: bytes, *, max_size: int) -> int:
    """Walk the chunks of a framed stream without inflating; return the declared total size.

    Raises TooLarge as soon as the running total exceeds ``max_size`` and InvalidPayload for any
    structural error (missing identifier, truncated chunk, bad chunk length, unskippable chunk).
    """
    if not data.startswith(STREAM_IDENTIFIER):
        raise InvalidPayload("snappy: missing stream identifier")
    total = 0
    pos = 0
    size = len(data)
    while pos < size:
        if pos + _CHUNK_HEADER_LEN > size:
            raise InvalidPayload("snappy: truncated chunk header")
        kind = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 4], "little")
        body = pos + _CHUNK_HEADER_LEN
        end = body + length
        if end > size:
            raise InvalidPayload("snappy: truncated chunk")
        if kind == _COMPRESSED:
            if length < _CRC_LEN + 1:
                raise InvalidPayload("snappy: compressed chunk too short")
            declared = _read_preamble(data, body + _CRC_LEN, end)
        elif kind == _UNCOMPRESSED:
            if length < _CRC_LEN:
                raise InvalidPayload("snappy: uncompressed chunk too short")
            declared = length - _CRC_LEN
        elif kind == _STREAM_ID:
            if data[pos:end] != STREAM_IDENTIFIER:
                raise InvalidPayload("snappy: bad stream identifier")
            declared = 0
        elif kind == _PADDING or kind >= _FIRST_SKIPPABLE:
            declared = 0
        else:
            raise InvalidPayload(f"snappy: reserved unskippable chunk type 0x{kind:02x}")
        if declared > _MAX_CHUNK_DATA:
            raise InvalidPayload("snappy: chunk declares more than 65536 bytes")
        total += declared
        if total > max_size:
            raise TooLarge(f"snappy: stream declares more than {max_size} bytes")
        pos = end
    return total


def decode_framed(data: bytes, *, max_size: int) -> bytes:
    """Inflate a snappy framed stream of at most ``max_size`` uncompressed bytes.

    Raises TooLarge if the chunks declare more than ``max_size`` bytes (checked before inflating)
    and InvalidPayload if the stream is malformed or a chunk fails its CRC-32C check.
    """
    total = _declared_framed_size(data, max_size=max_size)
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
    declared = _read_preamble(data, 0, len(data))
    if declared > max_size:
        raise TooLarge(f"snappy: block declares {declared} bytes, more than {max_size}")
    if declared >= 1 << 32:  # the preamble is a uint32 (format_description.txt)
        raise InvalidPayload("snappy: length preamble overflows 32 bits")
    return _inflate_into(cramjam.snappy.decompress_raw_into, data, declared, "block")


def _inflate_into(
    inflate: Callable[[bytes, bytearray], int], data: bytes, size: int, what: str
) -> bytes:
    """Inflate into a buffer of exactly the declared ``size`` (a ``what`` of snappy)."""
    out = bytearray(size)
    try:
        written = inflate(data, out)
    except cramjam.DecompressionError as exc:
        raise InvalidPayload(_reason(exc)) from None
    if written != size:
        raise InvalidPayload(f"snappy: {what} inflates to fewer bytes than declared")
    return bytes(out)


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


def _preamble_size(data: bytes) -> tuple[int, int]:
    """A block's declared length and the bytes its preamble takes."""
    value = _read_preamble(data, 0, len(data))
    width = 1
    while data[width - 1] >= 0x80:
        width += 1
    return value, width


def concat_blocks(blocks: list[bytes]) -> bytes:
    """One snappy block that inflates to the concatenation of ``blocks``' contents, without
    inflating them: a block is a length preamble then elements whose copies refer only to bytes
    the same block wrote, so the elements of consecutive blocks can follow one new preamble.
    (Remote write: ``timeseries`` is a repeated field, so joined requests are one request.)"""
    total = 0
    parts = []
    for block in blocks:
        length, width = _preamble_size(block)
        total += length
        parts.append(memoryview(block)[width:])
    head = bytearray()
    while total >= 0x80:
        head.append((total & 0x7F) | 0x80)
        total >>= 7
    head.append(total)
    return b"".join([bytes(head), *parts])
