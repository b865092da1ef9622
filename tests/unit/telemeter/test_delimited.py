"""Tests of varint-delimited MetricFamily reading and writing."""

import contextlib
from pathlib import Path

import pytest

# The encoder pbutil-style writers use; private and missing from the stubs, but a fine oracle.
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]
from hypothesis import given
from hypothesis import strategies as st

from telemeter import metrics_pb2
from telemeter.delimited import check_upb, iter_delimited, read_families, write_families
from telemeter.errors import InvalidPayload, TooLarge
from telemeter.snappy import decode_framed

TESTDATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata").resolve()
UPLOAD_BODY = TESTDATA / "wire" / "upload-body.snappy-framed"


@pytest.fixture(scope="module")
def go_upload() -> bytes:
    """The decompressed body of the recorded Go client upload."""
    if not UPLOAD_BODY.is_file():
        pytest.skip(f"shared test data absent: {UPLOAD_BODY}")
    return decode_framed(UPLOAD_BODY.read_bytes(), max_size=1024 * 1024)


def _family(name: str, *values: float) -> metrics_pb2.MetricFamily:
    family = metrics_pb2.MetricFamily(name=name, help="h", type=metrics_pb2.GAUGE)
    for i, value in enumerate(values):
        metric = family.metric.add(timestamp_ms=1_700_000_000_000 + i)
        metric.label.add(name="_id", value="c1")
        metric.gauge.value = value
    return family


def test_check_upb_passes_on_this_install() -> None:
    check_upb()


def test_recorded_go_upload(go_upload: bytes) -> None:
    families = read_families(go_upload, max_families=1000)
    assert len(families) == 24
    assert sum(len(f.metric) for f in families) == 226
    assert all(f.type == metrics_pb2.UNTYPED for f in families)
    for family in families:
        for metric in family.metric:
            assert ("_id", "test") in [(label.name, label.value) for label in metric.label]
            assert metric.HasField("untyped")
            assert metric.HasField("timestamp_ms")


def test_recorded_go_upload_round_trips_byte_for_byte(go_upload: bytes) -> None:
    assert write_families(read_families(go_upload, max_families=24)) == go_upload


def test_too_many_families(go_upload: bytes) -> None:
    with pytest.raises(TooLarge, match="23"):
        read_families(go_upload, max_families=23)


@given(st.lists(st.lists(st.floats(allow_nan=False), max_size=5), max_size=10))
def test_round_trip(values: list[list[float]]) -> None:
    families = [_family(f"metric_{i}", *v) for i, v in enumerate(values)]
    data = write_families(families)
    assert read_families(data, max_families=len(families)) == families


@given(st.lists(st.binary(max_size=300), max_size=10))
def test_framing_matches_protobufs_varint_encoder(messages: list[bytes]) -> None:
    data = b"".join(_VarintBytes(len(m)) + m for m in messages)
    assert [bytes(view) for view in iter_delimited(data)] == messages


def test_write_uses_multi_byte_varints() -> None:
    family = _family("m", *range(1000))
    payload = family.SerializeToString()
    assert len(payload) > 16383  # a 3-byte length prefix
    assert write_families([family]) == _VarintBytes(len(payload)) + payload


def test_empty_payload_has_no_families() -> None:
    assert read_families(b"", max_families=0) == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80", "truncated"),
        (b"\x05ab", "past the end"),
        (b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\xff" * 11, "longer than 10 bytes"),
        (b"\xff" * 9 + b"\x01", "past the end"),  # 10 bytes: a valid, huge length
    ],
)
def test_bad_framing(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidPayload, match=reason):
        list(iter_delimited(data))
    with pytest.raises(InvalidPayload, match=reason):
        read_families(data, max_families=10)


def test_undecodable_message_is_invalid_payload() -> None:
    good = write_families([_family("ok", 1.0)])
    bad = b"\x02\x0a\x05"  # a string field claiming 5 bytes of a 0-byte remainder
    with pytest.raises(InvalidPayload, match="metric family 1"):
        read_families(good + bad, max_families=10)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_invalid_payload(data: bytes) -> None:
    with contextlib.suppress(InvalidPayload):
        read_families(data, max_families=5)
