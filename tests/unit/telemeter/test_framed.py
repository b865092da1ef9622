"""The client's snappy framed-stream encoder: what it writes reads back, and it writes what Go
writes."""

from pathlib import Path

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemeter._framed import encode_framed
from telemeter.snappy import STREAM_IDENTIFIER, decode_framed

GOLDEN = Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata" / "wire"

# Random bytes do not compress (uncompressed chunks); repeated words do (copies of every length
# and distance); more than 64 KiB makes several chunks.
data = st.one_of(
    st.binary(max_size=2000),
    st.lists(st.sampled_from([b"up", b'{job="node"}', b"\x00", b"instance", b"x" * 70])).map(
        b"".join
    ),
    st.integers(60000, 200000).map(
        lambda n: (b"metric_name_%d " * (n // 16)) % tuple(range(n // 16))
    ),
)


@settings(max_examples=300, deadline=None)
@given(data)
def test_streams_read_back(payload: bytes) -> None:
    stream = encode_framed(payload)
    assert stream.startswith(STREAM_IDENTIFIER)
    assert bytes(cramjam.snappy.decompress(stream)) == payload
    assert decode_framed(stream, max_size=len(payload) + 1) == payload


def test_a_large_payload_is_compressed_in_chunks() -> None:
    payload = b"".join(b'up{instance="10.0.0.%d:9100"} 1\n' % (i % 256) for i in range(10000))
    stream = encode_framed(payload)
    assert len(stream) < len(payload) // 5
    assert bytes(cramjam.snappy.decompress(stream)) == payload


def test_it_writes_the_recorded_go_upload_byte_for_byte() -> None:
    path = GOLDEN / "upload-body.snappy-framed"
    if not path.is_file():
        pytest.skip(f"shared test data not found at {path}")
    recorded = path.read_bytes()
    assert encode_framed(bytes(cramjam.snappy.decompress(recorded))) == recorded
