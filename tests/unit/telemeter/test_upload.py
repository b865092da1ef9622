"""The compiled upload pass against its plain-Python specification (docs/architecture.md, D12)."""

from __future__ import annotations

import contextlib
import math
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemeter import metrics_pb2, snappy
from telemeter.delimited import write_families
from telemeter.errors import InvalidPayload, TooLarge
from telemeter.selectors import Whitelist
from telemeter.upload import PassConfig, PassResult, process, process_reference
from tests.support import shared_file

NOW = int(time.time()) * 1000
DAY = 24 * 3600 * 1000
KEEP_ALL = Whitelist.from_strings(['{__name__=~".+"}'])

NAMES = ["up", "node_load1", "ALERTS", "cluster:cpu:sum", "a_b"]
LABELS = ["_id", "instance", "job", "le_x", "pod", "Zone", "a"]  # "Zone" sorts before "__name__"
VALUE_FIELDS: dict[int, str] = {
    metrics_pb2.COUNTER: "counter",
    metrics_pb2.GAUGE: "gauge",
    metrics_pb2.UNTYPED: "untyped",
    metrics_pb2.SUMMARY: "summary",
    metrics_pb2.HISTOGRAM: "histogram",
    metrics_pb2.GAUGE_HISTOGRAM: "histogram",
}

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**7), 10**7).map(float),
    st.sampled_from([0.0, -0.0, 1e6, 1e-5, 0.1, 2.41496064e10, 1e21]),
)
label_values = st.one_of(
    st.sampled_from(["", "c1", "a b", 'q"uote', "back\\slash", "new\nline", "ünï"]),
    st.text(max_size=20),
)


def set_value(draw: st.DrawFn, m: metrics_pb2.Metric, field: str) -> None:
    if field in ("counter", "gauge", "untyped"):
        getattr(m, field).value = draw(floats)
    elif field == "summary":
        m.summary.sample_count = draw(st.integers(0, 2**64 - 1))
        m.summary.sample_sum = draw(floats)
        for q in draw(st.lists(st.sampled_from([0.5, 0.9, 0.99]), max_size=3)):
            m.summary.quantile.add(quantile=q, value=draw(floats))
    else:
        m.histogram.sample_count = draw(st.integers(0, 1000))
        if draw(st.booleans()):
            m.histogram.sample_count_float = draw(floats)
        m.histogram.sample_sum = draw(floats)
        for ub in draw(st.lists(st.sampled_from([0.1, 1.0, 10.0, math.inf]), max_size=4)):
            m.histogram.bucket.add(upper_bound=ub, cumulative_count=draw(st.integers(0, 99)))


@st.composite
def metrics(draw: st.DrawFn, kind: int, ts: int) -> metrics_pb2.Metric:
    """A valid metric of the family type (corruptions are applied by `families`)."""
    m = metrics_pb2.Metric(timestamp_ms=ts)
    names = draw(st.lists(st.sampled_from(LABELS[1:]), max_size=4, unique=True))
    names.insert(draw(st.integers(0, len(names))), "_id")
    for name in names:
        m.label.add(name=name, value="c1" if name == "_id" else draw(label_values))
    set_value(draw, m, VALUE_FIELDS[kind])
    return m


CORRUPTIONS = [
    "no timestamp", "old timestamp", "unsorted", "duplicate label", "bad label name",
    "long value", "spoofed id", "missing id", "wrong value field", "bad family name",
    "long family name", "duplicate series", "duplicate reordered", "duplicate in a second family",
    "duplicate but the elided label",
]  # fmt: skip


def corrupt(
    draw: st.DrawFn, fam: metrics_pb2.MetricFamily, how: str
) -> list[metrics_pb2.MetricFamily]:
    """Apply one fault to `fam`; returns the families to add to the upload."""
    if how == "bad family name":
        fam.name = draw(st.sampled_from(["", "9bad", "a-b"]))
    elif how == "long family name":
        fam.name = "m" * 256
    elif fam.metric and how.startswith("duplicate"):
        return duplicate(draw, fam, fam.metric[draw(st.integers(0, len(fam.metric) - 1))], how)
    elif fam.metric:
        corrupt_metric(draw, fam.metric[draw(st.integers(0, len(fam.metric) - 1))], how)
    return []


def corrupt_metric(draw: st.DrawFn, m: metrics_pb2.Metric, how: str) -> None:
    if how == "no timestamp":
        m.ClearField("timestamp_ms")
    elif how == "old timestamp":
        m.timestamp_ms = NOW - 2 * DAY
    elif how == "unsorted":
        m.timestamp_ms = NOW + 10_000
    elif how == "duplicate label":
        m.label.add(name=m.label[0].name, value="dup")
    elif how == "bad label name":
        m.label.add(name=draw(st.sampled_from(["", "bad-name", "1x", "é"])), value="v")
    elif how == "long value":
        m.label.add(name="long", value="x" * draw(st.sampled_from([255, 256])))
    elif how == "spoofed id":
        for pair in m.label:
            if pair.name == "_id":
                pair.value = "c2"
    elif how == "missing id":
        keep = [p for p in m.label if p.name != "_id"]
        del m.label[:]
        m.label.extend(keep)
    elif how == "wrong value field":
        for field in ("counter", "gauge", "untyped", "summary", "histogram"):
            m.ClearField(field)
        set_value(draw, m, draw(st.sampled_from(sorted(set(VALUE_FIELDS.values())))))


def duplicate(
    draw: st.DrawFn, fam: metrics_pb2.MetricFamily, m: metrics_pb2.Metric, how: str
) -> list[metrics_pb2.MetricFamily]:
    """Send the series of `m` again: the copy comes last, with the family's last timestamp."""
    copy = metrics_pb2.Metric()
    copy.CopyFrom(m)
    copy.timestamp_ms = fam.metric[-1].timestamp_ms
    set_value(draw, copy, VALUE_FIELDS[fam.type])
    if how == "duplicate reordered":
        pairs = [(p.name, p.value) for p in copy.label][::-1]
        del copy.label[:]
        for name, value in pairs:
            copy.label.add(name=name, value=value)
    elif how == "duplicate but the elided label":  # a duplicate only when pod is elided
        kept = [p for p in copy.label if p.name != "pod"]
        del copy.label[:]
        copy.label.extend(kept)
        copy.label.add(name="pod", value=draw(st.sampled_from(["", "other", "p"])))
    if how == "duplicate in a second family":
        second = metrics_pb2.MetricFamily(name=fam.name, type=fam.type)
        second.metric.append(copy)
        return [second]
    fam.metric.append(copy)
    return []


@st.composite
def families(draw: st.DrawFn) -> list[metrics_pb2.MetricFamily]:
    out = []
    # Mostly distinct names; a repeated name with another type is refused, as it should be.
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=4, unique=draw(st.booleans()))):
        kind = draw(st.sampled_from(list(VALUE_FIELDS)))
        fam = metrics_pb2.MetricFamily(name=name, help=draw(st.text(max_size=5)))
        fam.type = kind  # type: ignore[assignment]
        stamps = sorted(draw(st.lists(st.sampled_from([NOW - 1000, NOW, NOW + 5000]), max_size=4)))
        fam.metric.extend(draw(metrics(kind, ts)) for ts in stamps)
        out.append(fam)
    if out and draw(st.integers(0, 9)) < 4:  # about 40% of uploads carry one fault
        out += corrupt(draw, draw(st.sampled_from(out)), draw(st.sampled_from(CORRUPTIONS)))
    return out


whitelists = st.sampled_from(
    [
        KEEP_ALL,
        Whitelist([]),
        Whitelist.from_strings(["up", '{__name__="ALERTS"}']),
        Whitelist.from_strings(['{job="x"}', '{__name__=~"node_.*",instance!=""}']),
    ]
)


def run_both(data: bytes, config: PassConfig) -> tuple[object, object]:
    results: list[object] = []
    for fn in (process, process_reference):
        try:
            results.append(fn(data, config, now_ms=NOW, min_timestamp_ms=NOW - DAY))
        except (InvalidPayload, TooLarge) as exc:
            # The reasons of the two differ in wording, except for a duplicate series.
            results.append((type(exc), str(exc) if "duplicate series" in str(exc) else None))
    return results[0], results[1]


def as_tuple(result: object) -> object:
    if isinstance(result, PassResult):
        return (
            result.families, result.received, result.kept, result.past, result.future,
            result.write_request, result.write_series,
        )  # fmt: skip
    return result


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fams=families(),
    whitelist=whitelists,
    extra=st.sampled_from([(), (("region", "eu"),), (("job", "override"), ("empty", ""))]),
    elide=st.sampled_from([frozenset(), frozenset({"pod"}), frozenset({"job", "region"})]),
    max_labels=st.sampled_from([64, 3]),
    remote_write=st.booleans(),
)
def test_compiled_pass_matches_the_reference(
    fams: list[metrics_pb2.MetricFamily],
    whitelist: Whitelist,
    extra: tuple[tuple[str, str], ...],
    elide: frozenset[str],
    max_labels: int,
    remote_write: bool,
) -> None:
    config = PassConfig(
        whitelist=whitelist,
        token_labels=(("_id", "c1"),),
        extra_labels=extra,
        elide_labels=elide,
        max_series=14,
        max_labels=max_labels,
        remote_write=remote_write,
    )
    fast, ref = run_both(write_families(fams), config)
    assert as_tuple(fast) == as_tuple(ref)


def standard_upload() -> bytes:
    body = shared_file("wire", "upload-body.snappy-framed").read_bytes()
    return snappy.decode_framed(body, max_size=1 << 22)


def test_recorded_go_upload_renders_identically() -> None:
    config = PassConfig(whitelist=KEEP_ALL, token_labels=(("_id", "test"),))
    fast = process(standard_upload(), config, now_ms=NOW, min_timestamp_ms=0)
    ref = process_reference(standard_upload(), config, now_ms=NOW, min_timestamp_ms=0)
    assert as_tuple(fast) == as_tuple(ref)
    assert fast.received == fast.kept == 226 and len(fast.families) == 24
    text = b"".join(block for _, _, block in fast.families).decode()
    assert text.count("\n") == 226 and text.count('_id="test"') == 226
    assert f" {NOW}\n" in text and 'instance=""' not in text  # empty values are not printed


def test_whitelist_filters_and_counts_received() -> None:
    config = PassConfig(
        whitelist=Whitelist.from_strings(['{__name__="up"}']), token_labels=(("_id", "test"),)
    )
    result = process(standard_upload(), config, now_ms=NOW, min_timestamp_ms=0)
    assert result.received == 226 and result.kept == 75  # the payload has 75 `up` series
    assert [name for name, _, _ in result.families] == ["up"]


def test_empty_whitelist_drops_everything_but_still_validates() -> None:
    config = PassConfig(whitelist=Whitelist([]), token_labels=(("_id", "spoof"),))
    with pytest.raises(InvalidPayload, match="lacks the label _id=spoof"):
        process(standard_upload(), config, now_ms=NOW, min_timestamp_ms=0)


def test_rendering_of_summary_histogram_and_special_values() -> None:
    summary = metrics_pb2.MetricFamily(name="rpc", type=metrics_pb2.SUMMARY)
    m = summary.metric.add(timestamp_ms=NOW)
    m.label.add(name="_id", value="c1")
    m.summary.sample_count = 7
    m.summary.sample_sum = 1.5e6
    m.summary.quantile.add(quantile=0.5, value=float("nan"))
    hist = metrics_pb2.MetricFamily(name="lat", type=metrics_pb2.HISTOGRAM)
    h = hist.metric.add(timestamp_ms=NOW)
    h.label.add(name="_id", value='c"1')
    h.histogram.sample_count = 3
    h.histogram.sample_sum = -0.0
    h.histogram.bucket.add(upper_bound=0.25, cumulative_count=1)
    config = PassConfig(whitelist=KEEP_ALL, token_labels=())
    data = write_families([summary, hist])
    result = process(data, config, now_ms=NOW, min_timestamp_ms=0)
    text = b"".join(block for _, _, block in result.families).decode()
    assert text == (
        f'rpc{{_id="c1",quantile="0.5"}} NaN {NOW}\n'
        f'rpc_sum{{_id="c1"}} 1.5e+06 {NOW}\n'
        f'rpc_count{{_id="c1"}} 7 {NOW}\n'
        f'lat_bucket{{_id="c\\"1",le="0.25"}} 1 {NOW}\n'
        f'lat_bucket{{_id="c\\"1",le="+Inf"}} 3 {NOW}\n'
        f'lat_sum{{_id="c\\"1"}} -0 {NOW}\n'
        f'lat_count{{_id="c\\"1"}} 3 {NOW}\n'
    )
    assert as_tuple(result) == as_tuple(
        process_reference(data, config, now_ms=NOW, min_timestamp_ms=0)
    )


def raw_label_metric(name: bytes, value: bytes) -> bytes:
    """A one-family upload whose single label has raw (possibly invalid UTF-8) bytes."""

    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    pair = field(1, name) + field(2, value)
    gauge = field(2, b"\x09" + b"\x00" * 8)
    ts = bytes([6 << 3]) + bytes([0x01])
    metric = field(1, pair) + gauge + ts
    fam = field(1, b"m") + bytes([3 << 3, 1]) + field(4, metric)
    return bytes([len(fam)]) + fam


@pytest.mark.parametrize(
    "name,value", [(b"ok", b"\xff\xfe"), (b"\xff", b"v"), (b"ok", b"\xed\xa0\x80")]
)
def test_invalid_utf8_is_refused_by_both(name: bytes, value: bytes) -> None:
    config = PassConfig(whitelist=KEEP_ALL, token_labels=())
    for fn in (process, process_reference):
        with pytest.raises(InvalidPayload):
            fn(raw_label_metric(name, value), config, now_ms=NOW, min_timestamp_ms=0)


@pytest.mark.parametrize("special", [b"\\", b'"', b"\n", "é".encode(), b"\xff", b"\xed\xa0\x80"])
def test_label_values_are_scanned_at_every_position(special: bytes) -> None:
    # The compiled pass checks a value eight bytes at a time, then byte by byte: a byte to
    # escape, a non-ASCII character or invalid UTF-8 must be seen wherever it falls.
    config = PassConfig(whitelist=KEEP_ALL, token_labels=())
    for pos in range(26):
        value = b"v" * pos + special + b"w" * (25 - pos)
        results = []
        for fn in (process, process_reference):
            try:
                result = fn(raw_label_metric(b"l", value), config, now_ms=NOW, min_timestamp_ms=0)
                results.append(as_tuple(result))
            except InvalidPayload as exc:
                results.append(("refused", "not valid UTF-8" in str(exc)))
        assert results[0] == results[1], (special, pos)
        assert (results[0] == ("refused", True)) == (special in (b"\xff", b"\xed\xa0\x80"))


def test_limits_are_too_large() -> None:
    config = PassConfig(whitelist=KEEP_ALL, token_labels=(("_id", "test"),), max_series=100)
    with pytest.raises(TooLarge):
        process(standard_upload(), config, now_ms=NOW, min_timestamp_ms=0)
    tiny = write_families([metrics_pb2.MetricFamily(name=f"f{i}") for i in range(101)])
    with pytest.raises(TooLarge, match="families"):
        process(tiny, config, now_ms=NOW, min_timestamp_ms=0)


def test_malformed_bytes_only_raise_our_errors() -> None:
    data = standard_upload()
    config = PassConfig(whitelist=KEEP_ALL, token_labels=(("_id", "test"),))
    rng = random.Random(7)
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(mutated))
            mutated[pos] = rng.randrange(256)
        cut = rng.choice([len(mutated), rng.randrange(len(mutated))])
        with contextlib.suppress(InvalidPayload, TooLarge):
            process(bytes(mutated[:cut]), config, now_ms=NOW, min_timestamp_ms=0)
    for _ in range(2000):
        blob = rng.randbytes(rng.randint(0, 300))
        with contextlib.suppress(InvalidPayload, TooLarge):
            process(blob, config, now_ms=NOW, min_timestamp_ms=0)


SAME_NAMES_CASES = {
    "same names": ([("_id", "c1"), ("job", "b"), ("pod", "q")], None),
    "spoofed id": ([("_id", "c2"), ("job", "b"), ("pod", "q")], InvalidPayload),
    "sorted duplicate": ([("_id", "c1"), ("job", "b"), ("job", "c")], InvalidPayload),
    "long value": ([("_id", "c1"), ("job", "b" * 256), ("pod", "q")], InvalidPayload),
    "other order": ([("pod", "q"), ("_id", "c1"), ("job", "b")], None),
}


@pytest.mark.parametrize("case", sorted(SAME_NAMES_CASES))
def test_metrics_with_the_label_names_of_the_one_before(case: str) -> None:
    """The pass checks label names once for a run of metrics with the same names: the values,
    the required labels, elision and extra labels must still apply to every metric (here of
    two families: in one, the two would be a duplicate series)."""
    labels, error = SAME_NAMES_CASES[case]
    fams = [metrics_pb2.MetricFamily(name=name, type=metrics_pb2.GAUGE) for name in ("m", "n")]
    for fam, pairs in zip(fams, ([("_id", "c1"), ("job", "a"), ("pod", "p")], labels), strict=True):
        m = fam.metric.add(timestamp_ms=NOW)
        m.gauge.value = 1
        for name, value in pairs:
            m.label.add(name=name, value=value)
    config = PassConfig(
        whitelist=KEEP_ALL,
        token_labels=(("_id", "c1"),),
        extra_labels=(("job", "override"),),
        elide_labels=frozenset({"pod"}),
    )
    fast, ref = run_both(write_families(fams), config)
    assert as_tuple(fast) == as_tuple(ref)
    if error is not None:
        assert fast == (error, None)
    else:
        assert isinstance(fast, PassResult)
        text = b"".join(block for _, _, block in fast.families).decode()
        line = f'{{_id="c1",job="override"}} 1 {NOW}\n'
        assert text == "m" + line + "n" + line


def gauge(name: str, *labels: list[tuple[str, str]], kind: int = metrics_pb2.GAUGE) -> bytes:
    """One family (a gauge unless told) with a metric of each label list, in that order."""
    fam = metrics_pb2.MetricFamily(name=name)
    fam.type = kind  # type: ignore[assignment]
    for pairs in labels:
        m = fam.metric.add(timestamp_ms=NOW)
        if kind == metrics_pb2.SUMMARY:
            m.summary.sample_count = 1
        elif kind == metrics_pb2.HISTOGRAM:
            m.histogram.sample_count = 1
        else:
            m.gauge.value = 1
        for label, value in pairs:
            m.label.add(name=label, value=value)
    return write_families([fam])


def refusal(data: bytes, config: PassConfig) -> str | None:
    """The reason both implementations give (they must agree), or None when accepted."""
    reasons: list[str | None] = []
    for fn in (process, process_reference):
        try:
            fn(data, config, now_ms=NOW, min_timestamp_ms=0)
            reasons.append(None)
        except InvalidPayload as exc:
            assert not isinstance(exc, TooLarge)
            reasons.append(str(exc))
    assert reasons[0] == reasons[1]
    return reasons[0]


C1 = PassConfig(whitelist=KEEP_ALL, token_labels=(("_id", "c1"),))
UP = [("_id", "c1"), ("job", "x")]


def test_a_series_sent_twice_is_refused_naming_it() -> None:
    assert refusal(gauge("up", UP, UP), C1) == 'duplicate series up{_id="c1",job="x"}'
    assert refusal(gauge("up", UP, [("_id", "c1"), ("job", "y")]), C1) is None
    # The same labels in another order are the same series; the reason shows the second.
    reordered = gauge("up", UP, UP[::-1])
    assert refusal(reordered, C1) == 'duplicate series up{job="x",_id="c1"}'
    # A label with an empty value is no label.
    assert refusal(gauge("up", UP, [*UP, ("pod", "")]), C1) is not None
    assert refusal(gauge("up", [("_id", "c1")], [("_id", "c1")]), C1) == (
        'duplicate series up{_id="c1"}'
    )


def test_two_families_of_one_name_are_one_family() -> None:
    assert refusal(gauge("up", UP) + gauge("up", UP), C1) == 'duplicate series up{_id="c1",job="x"}'
    merged = process(gauge("up", UP) + gauge("up", UP[:1]), C1, now_ms=NOW, min_timestamp_ms=0)
    assert [(name, block.count(b"\n")) for name, _, block in merged.families] == [("up", 2)]
    assert refusal(gauge("up", UP) + gauge("down", UP), C1) is None


@pytest.mark.parametrize("kind", [metrics_pb2.SUMMARY, metrics_pb2.HISTOGRAM])
def test_a_summary_or_histogram_is_one_series_of_its_labels(kind: int) -> None:
    assert refusal(gauge("rpc", UP, UP, kind=kind), C1) == 'duplicate series rpc{_id="c1",job="x"}'
    assert refusal(gauge("rpc", UP, [("_id", "c1")], kind=kind), C1) is None


def test_duplicates_after_the_transforms() -> None:
    a, b = [*UP, ("pod", "p1")], [*UP, ("pod", "p2")]
    assert refusal(gauge("up", a, b), C1) is None
    elided = PassConfig(
        whitelist=KEEP_ALL, token_labels=C1.token_labels, elide_labels=frozenset({"pod"})
    )
    assert refusal(gauge("up", a, b), elided) == 'duplicate series up{_id="c1",job="x"}'
    override = PassConfig(whitelist=KEEP_ALL, token_labels=(), extra_labels=(("pod", "fixed"),))
    assert refusal(gauge("up", a, b), override) == (
        'duplicate series up{_id="c1",job="x",pod="fixed"}'
    )
    # Series the whitelist drops are never stored: sent twice, they are not refused.
    only_down = PassConfig(whitelist=Whitelist.from_strings(["down"]), token_labels=())
    assert refusal(gauge("up", UP, UP), only_down) is None


def test_the_reason_is_bounded() -> None:
    long = [("_id", "c1"), ("a", "é" * 120), ("b", "x" * 200)]
    reason = refusal(gauge("up", long, long), C1)
    assert reason is not None and reason.startswith('duplicate series up{_id="c1",a="é')
    assert reason.endswith("...") and len(reason.encode()) <= len("duplicate series ") + 203


def test_many_series_are_not_taken_for_duplicates() -> None:
    series = [[("_id", "c1"), ("i", str(i)), ("j", str(i % 7))] for i in range(5000)]
    config = PassConfig(whitelist=KEEP_ALL, token_labels=C1.token_labels, max_series=10_000)
    assert refusal(gauge("m", *series), config) is None
    assert refusal(gauge("m", *series, series[1234]), config) == (
        'duplicate series m{_id="c1",i="1234",j="2"}'
    )
