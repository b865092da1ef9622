"""The client transforms, anonymization, and the flag parsers, checked against the Go client."""

from collections import Counter
from pathlib import Path

import cramjam
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telemeter import metrics_pb2
from telemeter.clientpass import ClientPass, Cycle
from telemeter.delimited import write_families
from telemeter.transforms import (
    DAY_MS,
    DEFAULT_RENAMES,
    anonymize,
    parse_label_pairs,
    parse_renames,
    transform_families,
)

TESTDATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata").resolve()
NOW_MS = 1_700_000_000_000
HOUR_MS = 3600 * 1000


def _metric(
    ts: int = NOW_MS, *, kind: str = "gauge", extra: dict[str, str] | None = None, **labels: str
) -> metrics_pb2.Metric:
    """A metric with the given value field set; ``extra`` holds labels that are not identifiers."""
    metric = metrics_pb2.Metric(timestamp_ms=ts)
    for name, value in {**labels, **(extra or {})}.items():
        metric.label.add(name=name, value=value)
    getattr(metric, kind).SetInParent()
    return metric


def _family(
    name: str, *metrics: metrics_pb2.Metric, kind: metrics_pb2.MetricType = metrics_pb2.GAUGE
) -> metrics_pb2.MetricFamily:
    family = metrics_pb2.MetricFamily(name=name, help="help", type=kind)
    family.metric.extend(metrics)
    return family


def _run(
    families: list[metrics_pb2.MetricFamily],
    *,
    labels: dict[str, str] | None = None,
    renames: dict[str, str] | None = None,
    anonymize_labels: tuple[str, ...] = (),
    token_labels: dict[str, str] | None = None,
) -> tuple[list[metrics_pb2.MetricFamily], int]:
    result = transform_families(
        families,
        labels=labels or {},
        renames=renames or {},
        anonymize_labels=anonymize_labels,
        salt="s1",
        token_labels=token_labels or {},
        now_ms=NOW_MS,
    )
    # The compiled pass takes every case here (built by upb, so canonical): same body.
    fast = _compiled(
        write_families(families),
        labels=labels or {},
        renames=renames or {},
        anonymize_labels=anonymize_labels,
        token_labels=token_labels or {},
        now_ms=NOW_MS,
        max_age_ms=DAY_MS,
    )
    assert fast == write_families(result.families)
    return result.families, result.dropped


def _compiled(
    data: bytes,
    *,
    labels: dict[str, str],
    renames: dict[str, str],
    anonymize_labels: tuple[str, ...] | list[str],
    token_labels: dict[str, str],
    now_ms: int,
    max_age_ms: int,
) -> bytes:
    """The body of the compiled pass, which must cover ``data``."""
    transforms = ClientPass(
        labels=labels, renames=renames, anonymize_labels=anonymize_labels, salt="s1"
    )
    cycle = Cycle(token_labels, now_ms, max_families=10**6, max_age_ms=max_age_ms)
    out = transforms.compiled(data, cycle)
    assert out is not None, "the compiled pass fell back to the reference"
    return out.body


def _labels(metric: metrics_pb2.Metric) -> list[tuple[str, str]]:
    return [(pair.name, pair.value) for pair in metric.label]


# --- anonymize -----------------------------------------------------------------------------------


def test_anonymize_matches_the_go_client() -> None:
    # Vector taken from the recorded Go upload (salt "s1").
    assert anonymize("s1", "10.0.150.196:9099") == "bx5-9vHZu36u"


def test_anonymize_is_12_url_safe_chars_and_salted() -> None:
    value = anonymize("salt", "x" * 1000)
    assert len(value) == 12
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert anonymize("other", "x" * 1000) != value


# --- each transform ------------------------------------------------------------------------------


def test_labels_are_overwritten_in_place_or_appended() -> None:
    families, _ = _run(
        [_family("m", _metric(a="1", b="2"))], labels={"b": "new", "c": "3", "a": "A"}
    )
    assert _labels(families[0].metric[0]) == [("a", "A"), ("b", "new"), ("c", "3")]


def test_renames_use_exact_family_names() -> None:
    families, _ = _run(
        [_family("ALERTS", _metric()), _family("ALERTS_FOR_STATE", _metric())],
        renames=dict(DEFAULT_RENAMES),
    )
    assert [f.name for f in families] == ["alerts", "ALERTS_FOR_STATE"]
    assert families[0].help == "help"
    assert families[0].type == metrics_pb2.GAUGE


@pytest.mark.parametrize(
    "bad",
    [
        _metric(0),  # no timestamp
        _metric(NOW_MS - 25 * HOUR_MS),  # older than 24 h
        _metric(extra={"bad-name": "x"}),
        _metric(extra={"1x": "x"}),
        _metric(extra={"": "x"}),
        _metric(extra={"l" * 256: "x"}),
        _metric(a="v" * 256),
        _metric(kind="counter"),  # wrong value field for a gauge family
        _metric(kind="untyped"),
    ],
)
def test_invalid_samples_are_dropped_and_counted(bad: metrics_pb2.Metric) -> None:
    good = _metric(a="ok")
    families, dropped = _run([_family("m", good, bad)])
    assert dropped == 1
    assert [_labels(m) for m in families[0].metric] == [[("a", "ok")]]


def test_sample_with_two_value_fields_is_dropped() -> None:
    metric = _metric()
    metric.counter.value = 1.0
    families, dropped = _run([_family("m", metric)])
    assert (families, dropped) == ([], 1)


def test_sample_23_hours_old_is_kept() -> None:
    families, dropped = _run([_family("m", _metric(NOW_MS - 23 * HOUR_MS))])
    assert (len(families), dropped) == (1, 0)


@pytest.mark.parametrize(
    ("family_type", "kind"),
    [
        (metrics_pb2.COUNTER, "counter"),
        (metrics_pb2.GAUGE, "gauge"),
        (metrics_pb2.UNTYPED, "untyped"),
        (metrics_pb2.SUMMARY, "summary"),
        (metrics_pb2.HISTOGRAM, "histogram"),
        (metrics_pb2.GAUGE_HISTOGRAM, "histogram"),
    ],
)
def test_value_field_must_match_family_type(family_type: metrics_pb2.MetricType, kind: str) -> None:
    others = [k for k in ("counter", "gauge", "untyped", "summary", "histogram") if k != kind]
    metrics = [_metric(kind=kind, ok="1")] + [_metric(kind=other) for other in others]
    families, dropped = _run([_family("m", *metrics, kind=family_type)])
    assert dropped == 4
    assert [_labels(m) for m in families[0].metric] == [[("ok", "1")]]


def test_invalid_family_names_drop_every_sample() -> None:
    families, dropped = _run(
        [
            _family("bad-name", _metric(), _metric()),
            _family("", _metric()),
            _family("ok", _metric()),
        ]
    )
    assert [f.name for f in families] == ["ok"]
    assert dropped == 3


def test_rename_happens_before_validation() -> None:
    families, dropped = _run([_family("bad-name", _metric())], renames={"bad-name": "good"})
    assert ([f.name for f in families], dropped) == (["good"], 0)


def test_invalid_added_label_drops_everything() -> None:
    families, dropped = _run([_family("m", _metric(), _metric())], labels={"bad-name": "x"})
    assert (families, dropped) == ([], 2)


def test_added_label_replaces_an_invalid_value_before_validation() -> None:
    families, dropped = _run([_family("m", _metric(a="v" * 300))], labels={"a": "short"})
    assert dropped == 0
    assert _labels(families[0].metric[0]) == [("a", "short")]


def test_empty_families_are_dropped() -> None:
    families, dropped = _run(
        [_family("empty"), _family("all_old", _metric(1)), _family("m", _metric())]
    )
    assert [f.name for f in families] == ["m"]
    assert dropped == 1


def test_metrics_are_sorted_by_timestamp_stably() -> None:
    metrics = [
        _metric(NOW_MS - 5, i="0"),
        _metric(NOW_MS - 9, i="1"),
        _metric(NOW_MS - 5, i="2"),
        _metric(NOW_MS - 9, i="3"),
    ]
    families, _ = _run([_family("m", *metrics)])
    assert [m.label[0].value for m in families[0].metric] == ["1", "3", "0", "2"]


def test_anonymize_only_listed_non_empty_labels() -> None:
    families, _ = _run(
        [_family("m", _metric(instance="10.0.0.1:9100", pod="p", empty=""))],
        anonymize_labels=("instance", "empty", "absent"),
    )
    assert _labels(families[0].metric[0]) == [
        ("instance", anonymize("s1", "10.0.0.1:9100")),
        ("pod", "p"),
        ("empty", ""),
    ]


def test_order_labels_then_anonymize_then_token_labels() -> None:
    families, _ = _run(
        [_family("m", _metric(_id="spoofed"))],
        labels={"site": "s"},
        anonymize_labels=("site", "_id"),
        token_labels={"_id": "cluster-a"},
    )
    # --label values are anonymized; token labels come last and are never hashed.
    assert _labels(families[0].metric[0]) == [("_id", "cluster-a"), ("site", anonymize("s1", "s"))]


def test_input_is_not_mutated() -> None:
    source = [_family("ALERTS", _metric(NOW_MS - 1, instance="i"), _metric(NOW_MS - 2), _metric(0))]
    before = [f.SerializeToString() for f in source]
    families, _ = _run(
        source,
        labels={"x": "y"},
        renames={"ALERTS": "alerts"},
        anonymize_labels=("instance",),
        token_labels={"_id": "c"},
    )
    assert [f.SerializeToString() for f in source] == before
    assert families[0].name == "alerts"


def test_metric_payload_is_copied_whole() -> None:
    metric = _metric(kind="histogram")
    metric.histogram.sample_count = 3
    metric.histogram.bucket.add(cumulative_count=3, upper_bound=1.0)
    families, _ = _run([_family("h", metric, kind=metrics_pb2.HISTOGRAM)])
    assert families[0].metric[0].histogram == metric.histogram


# --- flag parsers --------------------------------------------------------------------------------


def test_parse_label_pairs() -> None:
    assert parse_label_pairs(["a=b", "c=d=e", "empty=", "a=z"]) == {
        "a": "z",
        "c": "d=e",
        "empty": "",
    }
    assert parse_label_pairs([]) == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [("novalue", "key=value"), ("=v", "not a valid label name"), ("a-b=v", "'a-b'")],
)
def test_parse_label_pairs_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        parse_label_pairs([text])
    assert repr(text) in str(info.value)


def test_parse_renames() -> None:
    assert parse_renames(["ALERTS=alerts", "a:b=c_d"]) == {"ALERTS": "alerts", "a:b": "c_d"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [("ALERTS", "old=new"), ("=x", "not a valid metric name"), ("x=", "''"), ("x=a-b", "'a-b'")],
)
def test_parse_renames_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_renames([text])


# --- against the recorded Go client upload -------------------------------------------------------


def _testdata(*parts: str) -> Path:
    path = TESTDATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"shared test data not found at {path} (../shared/testdata next to the repo)")
    return path


def _recorded_upload() -> list[metrics_pb2.MetricFamily]:
    """Families of the Go client's upload: framed snappy of varint-delimited MetricFamily."""
    raw = bytes(
        cramjam.snappy.decompress(_testdata("wire", "upload-body.snappy-framed").read_bytes())
    )
    families = []
    pos = 0
    while pos < len(raw):
        size = shift = 0
        while True:
            byte = raw[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        families.append(metrics_pb2.MetricFamily.FromString(raw[pos : pos + size]))
        pos += size
    return families


def _source_families() -> list[metrics_pb2.MetricFamily]:
    """The scraped /federate text as untyped protobuf families (what the Go client decoded)."""
    text = _testdata("upstream", "timeseries.txt").read_text()
    families = []
    for parsed in text_string_to_metric_families(text):
        family = metrics_pb2.MetricFamily(name=parsed.name, type=metrics_pb2.UNTYPED)
        for sample in parsed.samples:
            # A sample without timestamp (node_uname_info has none) keeps the proto2 default 0.
            stamp = 0 if sample.timestamp is None else round(float(sample.timestamp) * 1000)
            metric = family.metric.add(timestamp_ms=stamp)
            metric.untyped.value = sample.value
            for name, value in sample.labels.items():
                metric.label.add(name=name, value=value)
        families.append(family)
    return families


def _key(family: str, metric: metrics_pb2.Metric) -> tuple[str, frozenset[tuple[str, str]]]:
    """A series identity that survives the upload: name and labels except instance and _id."""
    rest = {
        (p.name, p.value) for p in metric.label if p.name not in ("instance", "_id") and p.value
    }
    return family, frozenset(rest)


def test_anonymize_matches_recorded_go_upload() -> None:
    recorded = [(_key(f.name, m), m) for f in _recorded_upload() for m in f.metric]
    source = [(_key(f.name, m), m) for f in _source_families() for m in f.metric]
    # Series told apart only by their instance cannot be paired: leave them out.
    counts = Counter(key for key, _ in recorded) + Counter(key for key, _ in source)
    uploaded = {key: dict(_labels(m))["instance"] for key, m in recorded if counts[key] == 2}
    checked = 0
    for key, metric in source:
        source_instance = dict(_labels(metric)).get("instance", "")
        if source_instance and key in uploaded:
            assert anonymize("s1", source_instance) == uploaded[key], key
            checked += 1
    assert checked >= 100  # the cluster-version-operator alone has 124 such series


def test_transform_reproduces_recorded_go_upload() -> None:
    # The recording harness rewrote the (weeks apart) timestamps to its own "now": compare
    # series, not timestamps, and let every timestamped sample through the age check.
    source = _source_families()
    newest = max(m.timestamp_ms for f in source for m in f.metric)
    result = transform_families(
        source,
        labels={},
        renames=dict(DEFAULT_RENAMES),
        anonymize_labels=["instance"],
        salt="s1",
        token_labels={"_id": "test"},
        now_ms=newest,
        max_age_ms=newest,
    )
    fast = _compiled(
        write_families(source),
        labels={},
        renames=dict(DEFAULT_RENAMES),
        anonymize_labels=["instance"],
        token_labels={"_id": "test"},
        now_ms=newest,
        max_age_ms=newest,
    )
    assert fast == write_families(result.families)
    recorded = _recorded_upload()
    # The 6 node_uname_info samples carry no timestamp: the Go client dropped them too.
    assert result.dropped == 6
    assert "node_uname_info" not in {f.name for f in result.families}

    def series(
        families: list[metrics_pb2.MetricFamily],
    ) -> Counter[tuple[str, tuple[tuple[str, str], ...]]]:
        return Counter((f.name, tuple(_labels(m))) for f in families for m in f.metric)

    # Same series with the same label order (Go appends _id last) and the same families (Go's
    # text decoder yields families in map order, so their order is not comparable).
    assert series(result.families) == series(recorded)
    assert sorted(f.name for f in result.families) == sorted(f.name for f in recorded)
