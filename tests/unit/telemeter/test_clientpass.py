"""The client's compiled pass against its reference: the same body, or the reference's error.

Families built with upb (what Prometheus writes: canonical) must be taken by the compiled pass;
arbitrary bytes may fall back, but whatever the compiled pass answers must be the reference's
answer, and where the reference raises the compiled pass must not answer.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemeter import metrics_pb2
from telemeter.clientpass import ClientPass, Cycle, Transformed
from telemeter.delimited import encode_varint, write_families
from telemeter.errors import InvalidPayload

NOW_MS = 1_700_000_000_000
HOUR_MS = 3600 * 1000
TYPES: list[metrics_pb2.MetricType] = [
    metrics_pb2.COUNTER,
    metrics_pb2.GAUGE,
    metrics_pb2.SUMMARY,
    metrics_pb2.UNTYPED,
    metrics_pb2.HISTOGRAM,
    metrics_pb2.GAUGE_HISTOGRAM,
]
KINDS = ("counter", "gauge", "summary", "untyped", "histogram")

names = st.one_of(
    st.sampled_from(["up", "job", "instance", "_id", "a:b", "ALERTS", "x" * 256, "1bad", ""]),
    st.text(min_size=0, max_size=12),
)
values = st.one_of(
    st.sampled_from(["", "10.0.0.1:9090", "é" * 255, "é" * 256, "x" * 256]),
    st.text(max_size=12),
)
timestamps = st.sampled_from([0, NOW_MS, NOW_MS - 1, NOW_MS - 23 * HOUR_MS, NOW_MS - 25 * HOUR_MS])
floats = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def metrics(draw: st.DrawFn) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric()
    for name, value in draw(st.lists(st.tuples(names, values), max_size=4)):
        pair = metric.label.add()
        if draw(st.booleans()) or name:
            pair.name = name
        if draw(st.booleans()) or value:
            pair.value = value
    for kind in draw(st.lists(st.sampled_from(KINDS), min_size=0, max_size=2, unique=True)):
        field = getattr(metric, kind)
        field.SetInParent()
        if kind in ("counter", "gauge", "untyped") and draw(st.booleans()):
            field.value = draw(floats)
        elif kind == "summary":
            field.sample_count = draw(st.integers(0, 2**64 - 1))
            for _ in range(draw(st.integers(0, 2))):
                field.quantile.add(quantile=draw(floats), value=draw(floats))
        elif kind == "histogram":
            field.sample_sum = draw(floats)
            if draw(st.booleans()):
                field.sample_count_float = draw(floats)
            for _ in range(draw(st.integers(0, 2))):
                field.bucket.add(cumulative_count=draw(st.integers(0, 9)), upper_bound=draw(floats))
    stamp = draw(timestamps)
    if stamp:
        metric.timestamp_ms = stamp
    return metric


@st.composite
def families(draw: st.DrawFn) -> list[metrics_pb2.MetricFamily]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        family = metrics_pb2.MetricFamily(type=draw(st.sampled_from(TYPES)))
        family.metric.extend(draw(st.lists(metrics(), max_size=4)))
        if draw(st.booleans()):
            family.name = draw(names)
        if draw(st.booleans()):
            family.help = draw(st.text(max_size=8))
        out.append(family)
    return out


configs = st.fixed_dictionaries(
    {
        "labels": st.dictionaries(
            st.sampled_from(["job", "cluster", "bad-name"]), values, max_size=2
        ),
        "renames": st.dictionaries(st.sampled_from(["up", "ALERTS"]), names, max_size=2),
        "anonymize_labels": st.lists(st.sampled_from(["instance", "job", "cluster"]), max_size=2),
    }
)
tokens = st.dictionaries(st.sampled_from(["_id", "job"]), values, max_size=2)


def _both(
    data: bytes, config: dict[str, Any], token_labels: dict[str, str]
) -> tuple[Transformed | None, Transformed | Exception]:
    transforms = ClientPass(salt="salt", **config)
    cycle = Cycle(token_labels=token_labels, now_ms=NOW_MS, max_families=16)
    fast = transforms.compiled(data, cycle)
    try:
        reference: Transformed | Exception = transforms.reference(data, cycle)
    except InvalidPayload as exc:
        reference = exc
    return fast, reference


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(families(), configs, tokens)
def test_canonical_input_takes_the_compiled_pass(
    source: list[metrics_pb2.MetricFamily], config: dict[str, Any], token_labels: dict[str, str]
) -> None:
    fast, reference = _both(write_families(source), config, token_labels)
    assert fast is not None, "the compiled pass fell back on upb's own output"
    assert fast == reference


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """upb output with bytes flipped, cut, inserted or a field appended."""
    data = bytearray(write_families(draw(families())))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged(), configs, tokens)
def test_damaged_input_gets_the_reference_answer(
    data: bytes, config: dict[str, Any], token_labels: dict[str, str]
) -> None:
    fast, reference = _both(data, config, token_labels)
    if isinstance(reference, Exception):
        assert fast is None, f"compiled pass answered where the reference raised {reference!r}"
    elif fast is not None:
        assert fast == reference


def _family(metric: bytes, *, kind: metrics_pb2.MetricType = metrics_pb2.GAUGE) -> bytes:
    family = metrics_pb2.MetricFamily(name="m", type=kind).SerializeToString()
    family += b"\x22" + encode_varint(len(metric)) + metric
    return encode_varint(len(family)) + family


TS = b"\x30" + encode_varint(NOW_MS)


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("unknown metric field", _family(b"\x12\x00" + TS + b"\x40\x01")),
        ("value sub-message twice (upb merges)", _family(b"\x12\x00\x12\x00" + TS)),
        ("gauge value in a longer varint tag", _family(b"\x12\x0a\x89\x00" + bytes(8) + TS)),
        ("fields out of order in a bucket", _family(
            b"\x3a\x0e\x1a\x0c\x11" + bytes(8) + b"\x08\x01" + TS, kind=metrics_pb2.HISTOGRAM
        )),
        ("unknown enum type", bytes([4]) + b"\x18\x07\x0a\x01m"),
        ("label name not UTF-8", _family(b"\x0a\x04\x0a\x02\xff\xfe\x12\x00" + TS)),
    ],
)  # fmt: skip
def test_uncovered_input_falls_back_to_the_same_answer(case: str, data: bytes) -> None:
    fast, reference = _both(data, {"labels": {}, "renames": {}, "anonymize_labels": []}, {})
    assert fast is None, case
    assert isinstance(reference, Transformed | Exception)


def test_prometheus_answer_is_covered() -> None:
    """A gauge, a summary and a histogram as a Go client library writes them."""
    metric = metrics_pb2.Metric(timestamp_ms=NOW_MS)
    metric.label.add(name="instance", value="10.0.0.1:9090")
    metric.summary.sample_count = 3
    metric.summary.quantile.add(quantile=0.5, value=1.0)
    source = [metrics_pb2.MetricFamily(name="s", type=metrics_pb2.SUMMARY, metric=[metric])]
    config: dict[str, Any] = {"labels": {}, "renames": {}, "anonymize_labels": ["instance"]}
    fast, reference = _both(write_families(source), config, {"_id": "c1"})
    assert fast is not None and fast == reference
    assert fast.families == 1 and fast.scraped == 1 and fast.dropped == 0
    assert b"10.0.0.1" not in fast.body and b"c1" in fast.body
