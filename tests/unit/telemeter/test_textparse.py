"""Tests of parsing text exposition 0.0.4 into MetricFamily messages."""

import contextlib
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemeter import metrics_pb2
from telemeter.errors import InvalidPayload
from telemeter.textparse import parse_text

TESTDATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata").resolve()
TIMESERIES = TESTDATA / "upstream" / "timeseries.txt"


@pytest.fixture(scope="module")
def timeseries() -> str:
    if not TIMESERIES.is_file():
        pytest.skip(f"shared test data absent: {TIMESERIES}")
    return TIMESERIES.read_text()


def _labels(metric: metrics_pb2.Metric) -> list[tuple[str, str]]:
    return [(label.name, label.value) for label in metric.label]


def test_timeseries_counts_and_types(timeseries: str) -> None:
    families = parse_text(timeseries)
    assert len(families) == 25
    assert sum(len(f.metric) for f in families) == 232
    types = {f.name: f.type for f in families}
    assert types.pop("node_uname_info") == metrics_pb2.GAUGE
    assert set(types.values()) == {metrics_pb2.UNTYPED}
    assert [f.name for f in families][:2] == ["ALERTS", "cluster:capacity_cpu_cores:sum"]


def test_timeseries_keeps_values_and_timestamps_in_order(timeseries: str) -> None:
    # Independent reading of the sample lines: what follows the last "}" is "value [timestamp]".
    expected = []
    for line in timeseries.splitlines():
        if line and not line.startswith("#"):
            value_and_ts = line[line.rindex("}") + 1 :].split()
            expected.append(
                (float(value_and_ts[0]), int(value_and_ts[1]) if len(value_and_ts) > 1 else None)
            )
    got = []
    for family in parse_text(timeseries):
        for metric in family.metric:
            value = metric.gauge.value if metric.HasField("gauge") else metric.untyped.value
            got.append((value, metric.timestamp_ms if metric.HasField("timestamp_ms") else None))
    assert got == expected
    assert (1.0, 1562168610163) in got
    assert sum(ts is None for _, ts in got) == 6  # node_uname_info has no timestamps


def test_timeseries_keeps_label_values_and_order(timeseries: str) -> None:
    families = {f.name: f for f in parse_text(timeseries)}
    assert _labels(families["ALERTS"].metric[0]) == [
        ("alertname", "Watchdog"),
        ("alertstate", "firing"),
        ("severity", "none"),
        ("instance", ""),
        ("prometheus", "openshift-monitoring/k8s"),
        ("prometheus_replica", "prometheus-k8s-0"),
    ]
    uname = dict(_labels(families["node_uname_info"].metric[0]))
    assert uname["version"] == "#1 SMP Sun Apr 28 09:21:22 UTC 2019"
    assert uname["domainname"] == "(none)"


def test_escaped_label_values_and_help() -> None:
    text = (
        "# HELP weird Help with a backslash \\\\ and a newline \\n here.\n"
        "# TYPE weird gauge\n"
        'weird{z="quote \\" backslash \\\\ newline \\n end",a="} , = #",m=""}'
        " -1.5e3 1700000000123\n"
    )
    [family] = parse_text(text)
    assert family.help == "Help with a backslash \\ and a newline \n here."
    [metric] = family.metric
    assert _labels(metric) == [
        ("z", 'quote " backslash \\ newline \n end'),
        ("a", "} , = #"),
        ("m", ""),
    ]
    assert metric.gauge.value == -1500.0
    assert metric.timestamp_ms == 1700000000123


def test_counter_names_are_those_of_the_text() -> None:
    text = (
        "# TYPE requests_total counter\n"
        'requests_total{code="200"} 10 1000\n'
        'requests_total{code="500"} 2 1000\n'
        "# TYPE restarts counter\n"
        "restarts 3 2000\n"
        "# TYPE errors counter\n"
        "errors 4\n"
        "# TYPE errors_total counter\n"
        "errors_total 5\n"
    )
    families = parse_text(text)
    assert [(f.name, f.type) for f in families] == [
        ("requests_total", metrics_pb2.COUNTER),
        ("restarts", metrics_pb2.COUNTER),
        ("errors", metrics_pb2.COUNTER),
        ("errors_total", metrics_pb2.COUNTER),
    ]
    assert [m.counter.value for f in families for m in f.metric] == [10, 2, 3, 4, 5]
    assert _labels(families[0].metric[1]) == [("code", "500")]


def test_types_and_untyped_samples() -> None:
    text = (
        "# TYPE a untyped\na 1\n"
        "# TYPE b unknown\nb 2\n"
        "# TYPE c gauge\nc NaN\n"
        'no_type_line{x="y"} +Inf 5\n'
        "# TYPE empty gauge\n"
    )
    families = parse_text(text)
    assert [(f.name, f.type) for f in families] == [
        ("a", metrics_pb2.UNTYPED),
        ("b", metrics_pb2.UNTYPED),
        ("c", metrics_pb2.GAUGE),
        ("no_type_line", metrics_pb2.UNTYPED),
    ]
    assert math.isnan(families[2].metric[0].gauge.value)
    assert families[3].metric[0].untyped.value == math.inf
    assert families[3].metric[0].timestamp_ms == 5
    assert not families[0].HasField("help")


SUMMARY_TEXT = """\
# HELP rpc_seconds RPC latency.
# TYPE rpc_seconds summary
rpc_seconds{service="a",quantile="0.5"} 0.25 1700000000000
rpc_seconds{service="a",quantile="0.99"} 1.5 1700000000000
rpc_seconds_sum{service="a"} 120.5 1700000000000
rpc_seconds_count{service="a"} 300 1700000000000
rpc_seconds{service="b",quantile="0.5"} 0.1 1700000000001
rpc_seconds{service="b",quantile="0.99"} NaN 1700000000001
rpc_seconds_sum{service="b"} 0 1700000000001
rpc_seconds_count{service="b"} 0 1700000000001
"""

HISTOGRAM_TEXT = """\
# HELP size_bytes Sizes.
# TYPE size_bytes histogram
size_bytes_bucket{le="0.5",path="/x"} 1 1700000000000
size_bytes_bucket{le="1",path="/x"} 3 1700000000000
size_bytes_bucket{le="+Inf",path="/x"} 4 1700000000000
size_bytes_sum{path="/x"} 7.25 1700000000000
size_bytes_count{path="/x"} 4 1700000000000
"""


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value == int(value) else repr(value)


def _render(family: metrics_pb2.MetricFamily) -> str:
    """A minimal text writer for summaries and histograms, to check the round trip."""

    def line(suffix: str, metric: metrics_pb2.Metric, value: float, extra: str = "") -> str:
        pairs = [f'{label.name}="{label.value}"' for label in metric.label]
        if extra:
            pairs.insert(0 if extra.startswith("le=") else len(pairs), extra)
        return f"{family.name}{suffix}{{{','.join(pairs)}}} {_fmt(value)} {metric.timestamp_ms}"

    kind = "summary" if family.type == metrics_pb2.SUMMARY else "histogram"
    out = [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {kind}"]
    for metric in family.metric:
        if family.type == metrics_pb2.SUMMARY:
            for q in metric.summary.quantile:
                out.append(line("", metric, q.value, f'quantile="{_fmt(q.quantile)}"'))
            out.append(line("_sum", metric, metric.summary.sample_sum))
            out.append(line("_count", metric, metric.summary.sample_count))
        else:
            for b in metric.histogram.bucket:
                le = f'le="{_fmt(b.upper_bound)}"'
                out.append(line("_bucket", metric, b.cumulative_count, le))
            out.append(line("_sum", metric, metric.histogram.sample_sum))
            out.append(line("_count", metric, metric.histogram.sample_count))
    return "\n".join(out) + "\n"


def test_summary() -> None:
    [family] = parse_text(SUMMARY_TEXT)
    assert (family.name, family.type, family.help) == (
        "rpc_seconds",
        metrics_pb2.SUMMARY,
        "RPC latency.",
    )
    a, b = family.metric
    assert _labels(a) == [("service", "a")]
    assert a.timestamp_ms == 1700000000000
    assert [(q.quantile, q.value) for q in a.summary.quantile] == [(0.5, 0.25), (0.99, 1.5)]
    assert (a.summary.sample_sum, a.summary.sample_count) == (120.5, 300)
    assert math.isnan(b.summary.quantile[1].value)
    assert b.summary.HasField("sample_count") and b.summary.sample_count == 0
    assert _render(family) == SUMMARY_TEXT


def test_histogram() -> None:
    [family] = parse_text(HISTOGRAM_TEXT)
    assert (family.name, family.type) == ("size_bytes", metrics_pb2.HISTOGRAM)
    [metric] = family.metric
    assert _labels(metric) == [("path", "/x")]
    buckets = [(b.upper_bound, b.cumulative_count) for b in metric.histogram.bucket]
    assert buckets == [(0.5, 1), (1.0, 3), (math.inf, 4)]
    assert (metric.histogram.sample_sum, metric.histogram.sample_count) == (7.25, 4)
    assert _render(family) == HISTOGRAM_TEXT


def test_histogram_with_fractional_counts_uses_float_fields() -> None:
    text = '# TYPE h histogram\nh_bucket{le="+Inf"} 2.5\nh_sum 3\nh_count 2.5\n'
    [family] = parse_text(text)
    histogram = family.metric[0].histogram
    assert histogram.bucket[0].cumulative_count_float == 2.5
    assert not histogram.bucket[0].HasField("cumulative_count")
    assert histogram.sample_count_float == 2.5


def test_bytes_input_is_utf8() -> None:
    [family] = parse_text('m{v="caf\u00e9"} 1\n'.encode())
    assert _labels(family.metric[0]) == [("v", "caf\u00e9")]
    with pytest.raises(InvalidPayload, match="UTF-8"):
        parse_text(b'm{v="\xff"} 1\n')


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "<html><body>502 Bad Gateway</body></html>",
        'foo{a="b} 1',
        'foo{a="b",a="c"} 1',
        "foo{} one",
        "{} 1",
        "foo 1 NaN",
        "# TYPE foo info\nfoo 1",
        "# TYPE foo\n",
        "# TYPE h histogram\nh_bucket 1",
        '# TYPE h histogram\nh_bucket{le="x"} 1',
        "# TYPE s summary\ns 1",
        "# TYPE s summary\ns_count -1",
        "# TYPE s summary\ns_count 1.5",
    ],
)
def test_garbage_is_invalid_payload(text: str) -> None:
    with pytest.raises(InvalidPayload):
        parse_text(text)


_TOKENS = st.sampled_from(
    [
        *'ab_:{}=",# \n\\01.e+-',
        *("TYPE", "HELP", "counter", "summary", "histogram", "quantile", "le"),
        *("_bucket", "_sum", "_count", "_total", "Inf", "NaN"),
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_TOKENS, max_size=40).map("".join))
def test_random_text_raises_only_invalid_payload(text: str) -> None:
    with contextlib.suppress(InvalidPayload):
        parse_text(text)


def test_counter_with_quoted_name_keeps_later_counter_names() -> None:
    text = '# TYPE "odd.name" counter\n{"odd.name"} 1\n# TYPE later counter\nlater 2\n'
    families = parse_text(text)
    assert [f.name for f in families] == ["odd.name_total", "later"]
