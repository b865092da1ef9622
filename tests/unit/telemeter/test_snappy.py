"""Tests of the snappy framed and block codecs (limits first, then inflate, one error type)."""

import contextlib
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemeter import snappy
from telemeter.errors import InvalidPayload, TooLarge
from telemeter.snappy import (
    STREAM_IDENTIFIER,
    concat_blocks,
    decode_block,
    decode_framed,
    encode_block,
    encode_framed,
)

TESTDATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata").resolve()
UPLOAD_BODY = TESTDATA / "wire" / "upload-body.snappy-framed"
MB = 1024 * 1024


def _chunk(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "little") + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _chunk_offsets(stream: bytes) -> list[int]:
    """Start offsets of every chunk of a well-formed stream, plus its end."""
    offsets = [0]
    while offsets[-1] < len(stream):
        pos = offsets[-1]
        offsets.append(pos + 4 + int.from_bytes(stream[pos + 1 : pos + 4], "little"))
    return offsets


def _mixed_data(size: int) -> bytes:
    """Half compressible, half random: the encoder emits both chunk types 0x00 and 0x01."""
    half = size // 2
    return (b'metric_name{label="value"} 1\n' * (half // 29 + 1))[:half] + os.urandom(size - half)


def test_mixed_stream_uses_both_data_chunk_types() -> None:
    stream = encode_framed(_mixed_data(300_000))
    kinds = {stream[pos] for pos in _chunk_offsets(stream)[:-1]}
    assert kinds == {0xFF, 0x00, 0x01}


@given(st.binary(max_size=4096))
def test_framed_round_trip(data: bytes) -> None:
    assert decode_framed(encode_framed(data), max_size=len(data)) == data


@given(st.binary(max_size=4096))
def test_block_round_trip(data: bytes) -> None:
    assert decode_block(encode_block(data), max_size=len(data)) == data


def test_blocks_in_the_reused_room_are_cramjams_bytes() -> None:
    """A block is what cramjam makes of the data, whatever the room held before (a larger
    block, so leftovers follow it there), and above the reused size as well."""
    import cramjam

    from telemeter.snappy import REUSED_BLOCK_BYTES

    for data in (_mixed_data(MB), b"small" * 10, b"", _mixed_data(REUSED_BLOCK_BYTES)):
        assert encode_block(data) == bytes(cramjam.snappy.compress_raw(data))
        assert encode_block(memoryview(data)) == bytes(cramjam.snappy.compress_raw(data))


def test_large_round_trips_span_many_chunks() -> None:
    data = _mixed_data(1 * MB)
    assert decode_framed(encode_framed(data), max_size=MB) == data
    assert decode_block(encode_block(data), max_size=MB) == data


def test_empty_stream_is_just_the_identifier() -> None:
    assert encode_framed(b"") == STREAM_IDENTIFIER
    assert decode_framed(STREAM_IDENTIFIER, max_size=0) == b""


def test_recorded_go_upload_decodes() -> None:
    if not UPLOAD_BODY.is_file():
        pytest.skip(f"shared test data absent: {UPLOAD_BODY}")
    body = UPLOAD_BODY.read_bytes()
    data = decode_framed(body, max_size=200 * 1024)
    assert len(data) == 74135
    with pytest.raises(TooLarge):
        decode_framed(body, max_size=len(data) - 1)
    assert decode_framed(body, max_size=len(data)) == data


def test_max_size_boundary_for_block() -> None:
    data = b"x" * 1000
    block = encode_block(data)
    assert decode_block(block, max_size=1000) == data
    with pytest.raises(TooLarge):
        decode_block(block, max_size=999)


def _assert_rejected_cheaply(call: Callable[[], object], error: type[Exception]) -> None:
    """``call()`` raises ``error`` within 0.5 s and with under 1 MiB of peak allocation."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(error):
            call()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < MB


def test_stream_declaring_100_mb_is_rejected_before_inflating() -> None:
    # Each chunk: a dummy CRC, a preamble declaring 65536 bytes, and one byte of "data".
    bomb_chunk = _chunk(0x00, b"\0\0\0\0" + _varint(65536) + b"\x00")
    stream = STREAM_IDENTIFIER + bomb_chunk * (100 * MB // 65536)
    assert len(stream) < 20_000
    _assert_rejected_cheaply(lambda: decode_framed(stream, max_size=10 * MB), TooLarge)


def test_chunk_declaring_more_than_64_kib_is_invalid() -> None:
    huge = STREAM_IDENTIFIER + _chunk(0x00, b"\0\0\0\0" + _varint(2**32 - 1) + b"\x00")
    _assert_rejected_cheaply(lambda: decode_framed(huge, max_size=2**40), InvalidPayload)
    just_over = STREAM_IDENTIFIER + _chunk(0x00, b"\0\0\0\0" + _varint(65537) + b"\x00")
    with pytest.raises(InvalidPayload, match="65536"):
        decode_framed(just_over, max_size=2**40)
    raw_over = STREAM_IDENTIFIER + _chunk(0x01, b"\0\0\0\0" + b"x" * 65537)
    with pytest.raises(InvalidPayload, match="65536"):
        decode_framed(raw_over, max_size=2**40)


def test_block_declaring_4_gib_is_rejected_before_inflating() -> None:
    block = _varint(2**32) + b"\x00"
    _assert_rejected_cheaply(lambda: decode_block(block, max_size=10 * MB), TooLarge)
    block = _varint(2**32 - 1) + b"\x00"
    _assert_rejected_cheaply(lambda: decode_block(block, max_size=10 * MB), TooLarge)


def test_block_preamble_over_32_bits_is_invalid_even_under_a_huge_limit() -> None:
    with pytest.raises(InvalidPayload, match="32 bits"):
        decode_block(_varint(2**32) + b"\x00", max_size=2**40)
    with pytest.raises(InvalidPayload, match="5 bytes"):
        decode_block(b"\x80\x80\x80\x80\x80\x01", max_size=2**40)


def test_chunk_inflating_to_less_than_declared_is_invalid() -> None:
    # A valid block for b"abc" whose preamble is rewritten to claim 10 bytes.
    block = encode_block(b"abc")
    lying = STREAM_IDENTIFIER + _chunk(0x00, b"\0\0\0\0" + _varint(10) + block[1:])
    with pytest.raises(InvalidPayload):
        decode_framed(lying, max_size=100)
    with pytest.raises(InvalidPayload):
        decode_block(_varint(10) + block[1:], max_size=100)


@pytest.mark.parametrize("data", [b"compressible " * 100, os.urandom(1000)], ids=["0x00", "0x01"])
@pytest.mark.parametrize("crc_byte", range(4))
def test_flipped_crc_is_detected(data: bytes, crc_byte: int) -> None:
    stream = bytearray(encode_framed(data))
    data_chunk = len(STREAM_IDENTIFIER)
    stream[data_chunk + 4 + crc_byte] ^= 0x01
    with pytest.raises(InvalidPayload, match="checksum"):
        decode_framed(bytes(stream), max_size=len(data))


def test_skippable_padding_and_repeated_identifier_are_accepted() -> None:
    first, second = b"first part " * 50, os.urandom(500)
    stream = (
        encode_framed(first)
        + _chunk(0xFE, b"\0" * 7)
        + _chunk(0x80, b"skip me")
        + _chunk(0xFD, b"")
        + encode_framed(second)  # starts with a second stream identifier
    )
    assert decode_framed(stream, max_size=len(first) + len(second)) == first + second


@pytest.mark.parametrize("kind", [0x02, 0x10, 0x7F])
def test_reserved_unskippable_chunk_is_invalid(kind: int) -> None:
    stream = encode_framed(b"data") + _chunk(kind, b"x")
    with pytest.raises(InvalidPayload, match="unskippable"):
        decode_framed(stream, max_size=100)


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        b"\x00\x05\x00\x00abcde",
        b"\xff\x06\x00\x00sNaPpX",
        STREAM_IDENTIFIER + b"\xff\x06\x00\x00sNaPpX",
        STREAM_IDENTIFIER + _chunk(0x00, b"\0\0\0\0"),  # no room for the preamble
        STREAM_IDENTIFIER + _chunk(0x01, b"\0\0\0"),  # no room for the CRC
        STREAM_IDENTIFIER + _chunk(0x00, b"\0\0\0\0\x80\x80"),  # truncated preamble
    ],
)
def test_malformed_streams_are_invalid(stream: bytes) -> None:
    with pytest.raises(InvalidPayload):
        decode_framed(stream, max_size=MB)


def test_truncation_is_detected_except_at_chunk_boundaries() -> None:
    data = _mixed_data(200_000)
    stream = encode_framed(data)
    boundaries = set(_chunk_offsets(stream))
    for cut in range(len(STREAM_IDENTIFIER), len(stream), 97):
        if cut in boundaries:
            # The framing format has no end marker: a cut between chunks is a shorter stream.
            assert data.startswith(decode_framed(stream[:cut], max_size=len(data)))
        else:
            with pytest.raises(InvalidPayload):
                decode_framed(stream[:cut], max_size=len(data))
    for cut in sorted(boundaries)[1:-1]:
        assert data.startswith(decode_framed(stream[:cut], max_size=len(data)))


def _decode_or_invalid(stream: bytes, max_size: int) -> None:
    """Decoding either succeeds within the limit or raises InvalidPayload (TooLarge included)."""
    try:
        out = decode_framed(stream, max_size=max_size)
    except InvalidPayload:
        return
    assert len(out) <= max_size


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_raise_only_invalid_payload(data: bytes, with_identifier: bool) -> None:
    _decode_or_invalid(STREAM_IDENTIFIER + data if with_identifier else data, 10_000)
    with contextlib.suppress(InvalidPayload):
        decode_block(data, max_size=10_000)


_VALID_STREAM = encode_framed(b'metric{a="b"} 1 1562168610163\n' * 40 + os.urandom(200))


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]),
            st.integers(min_value=0, max_value=len(_VALID_STREAM) - 1),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_streams_raise_only_invalid_payload(
    mutations: list[tuple[str, int, int]],
) -> None:
    stream = bytearray(_VALID_STREAM)
    for op, index, byte in mutations:
        index %= len(stream) or 1
        if op == "flip":
            stream[index] ^= byte or 1
        elif op == "insert":
            stream.insert(index, byte)
        elif stream:
            del stream[index]
    _decode_or_invalid(bytes(stream), 100_000)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=2000).map(lambda b: b * 40), max_size=6))
def test_joined_blocks_inflate_to_the_joined_contents(parts: list[bytes]) -> None:
    joined = concat_blocks([encode_block(p) for p in parts])
    assert decode_block(joined, max_size=1 << 20) == b"".join(parts)


def test_an_inflate_short_of_the_declared_size_is_invalid() -> None:
    """The output is a new bytes filled in place (never zeroed): one the decoder did not fill to
    its declared size is refused, never handed out."""

    def short(data: bytes, out: memoryview) -> int:
        out[:2] = b"ab"
        return 2

    with pytest.raises(InvalidPayload, match="fewer bytes than declared"):
        snappy._inflate_into(short, b"", 10, "block")
