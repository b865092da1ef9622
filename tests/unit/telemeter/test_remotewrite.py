"""The compiled Remote-Write encoder against its plain specification, and against the text."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings

from telemeter import metrics_pb2, remotewrite
from telemeter.delimited import write_families
from telemeter.errors import InvalidPayload, TooLarge
from telemeter.textparse import parse_text
from telemeter.upload import PassConfig, process
from tests.unit.telemeter.test_upload import DAY, KEEP_ALL, NOW, families, standard_upload


def rendered(fams: list[metrics_pb2.MetricFamily]) -> list[tuple[str, int, bytes]] | None:
    config = PassConfig(
        whitelist=KEEP_ALL,
        token_labels=(("_id", "c1"),),
        extra_labels=(("region", "eu"),),
        remote_write=True,
    )
    try:
        result = process(
            write_families(fams), config, now_ms=NOW, min_timestamp_ms=NOW - DAY, write_tail=b"t"
        )
    except (InvalidPayload, TooLarge):
        return None
    # The request the pass wrote from the decoded labels: that of its lines, then the tail.
    request, series = remotewrite.encode_reference(result.families)
    assert (result.write_request, result.write_series) == (request + b"t", series)
    return result.families


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fams=families())
def test_compiled_encoder_matches_the_reference_and_the_text(
    fams: list[metrics_pb2.MetricFamily],
) -> None:
    out = rendered(fams)
    if out is None:
        return
    fast = remotewrite.encode(out)
    assert fast == remotewrite.encode_reference(out)
    data, count = fast
    series = remotewrite.decode(data)
    text = b"".join(block for _, _, block in out).decode()
    parsed = [(f.name, m) for f in parse_text(text) for m in f.metric]
    assert count == len(series) == text.count("\n")
    for labels, samples in series:
        names = [k for k, _ in labels]
        assert names == sorted(names) and len(set(names)) == len(names)
        assert all(v for _, v in labels) and ("_id", "c1") in labels
        assert len(samples) == 1 and samples[0][1] == NOW
    # Series by series, the same labels and values as the text exposition says.
    for (labels, [(value, _)]), line in zip(series, text.split("\n")[:-1], strict=True):
        name = dict(labels)["__name__"]
        assert line.startswith(name)
        assert same(value, float(line.rsplit(" ", 2)[-2]))
    assert len(parsed) <= len(series)


def test_the_recorded_upload_becomes_226_series() -> None:
    config = PassConfig(whitelist=KEEP_ALL, token_labels=(("_id", "test"),), remote_write=True)
    result = process(standard_upload(), config, now_ms=NOW, min_timestamp_ms=0)
    out = result.families
    data, count = remotewrite.encode(out)
    assert (data, count) == remotewrite.encode_reference(out)
    assert (result.write_request, result.write_series) == (data, count)
    series = remotewrite.decode(data)
    assert count == len(series) == 226
    assert all(("_id", "test") in labels for labels, _ in series)
    # repeated fields concatenate: two requests' bytes are one request of both
    assert remotewrite.decode(data + data) == series + series


def test_escapes_are_undone() -> None:
    fams = [(b'm{a="q\\"x",b="back\\\\slash",c="new\\nline"} 1.5 1000\n')]
    [(labels, samples)] = remotewrite.decode(remotewrite.encode([("m", 3, fams[0])])[0])
    assert labels == [
        ("__name__", "m"), ("a", 'q"x'), ("b", "back\\slash"), ("c", "new\nline")
    ]  # fmt: skip
    assert samples == [(1.5, 1000)]


@pytest.mark.parametrize(
    "line", [b"m 1\n", b"m{a=1} 1 2\n", b'm{a="x} 1 2\n', b"m 1 2", b"m x 2\n", b"m 1 x\n"]
)
def test_malformed_lines_are_refused_by_both(line: bytes) -> None:
    with pytest.raises(ValueError):
        remotewrite.encode([("m", 3, line)])
    with pytest.raises(ValueError):
        remotewrite.encode_reference([("m", 3, line)])


def test_decode_refuses_truncated_input() -> None:
    data, _ = remotewrite.encode([("m", 3, b'm{a="b"} 1 2\n')])
    with pytest.raises(InvalidPayload):
        remotewrite.decode(data[:-3])
