"""Parse the text exposition format 0.0.4 into MetricFamily messages.

This is what a Prometheus ``/federate`` answers when it answers text (docs/protocol.md section 1).
Line parsing (labels, escapes, values) is prometheus_client's; this module turns its families
back into the protobuf data model: ms timestamps, ``_bucket``/``_sum``/``_count`` and quantile
samples regrouped into Summary and Histogram messages, label order kept as written.
prometheus_client's errors are translated here, once, into
:class:`~telemeter.errors.InvalidPayload`.

`family_from_lines` reads the one form the upload pass writes (sample lines only, name and type
known): the protobuf `/federate` answer is built with it from the stored family texts.
"""

import logging
import math
import re
from collections.abc import Iterable
from typing import NamedTuple

from prometheus_client.metrics_core import Metric as ClientFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Timestamp

from telemeter import metrics_pb2
from telemeter.errors import InvalidPayload

__all__ = ["family_from_lines", "parse_text"]

logger = logging.getLogger(__name__)

# prometheus_client reports "untyped" as "unknown"; the other OpenMetrics-only types (info,
# stateset, gaugehistogram) do not exist in text format 0.0.4 and are refused.
_TYPES = {
    "counter": metrics_pb2.COUNTER,
    "gauge": metrics_pb2.GAUGE,
    "unknown": metrics_pb2.UNTYPED,
    "untyped": metrics_pb2.UNTYPED,
    "summary": metrics_pb2.SUMMARY,
    "histogram": metrics_pb2.HISTOGRAM,
}

# The names of `# TYPE <name> counter` lines, in order. `[^\S\n]` is whitespace within a line.
_COUNTER_TYPE_LINE = re.compile(
    r"^[^\S\n]*#[^\S\n]+TYPE[^\S\n]+(\S+)[^\S\n]+counter[^\S\n]*$", re.M
)

# What prometheus_client's parser raises on malformed text (it has no exception class of its
# own); OverflowError/ValueError also cover timestamps and counts that do not fit the protobuf.
_PARSE_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError)

_Labels = dict[str, str]


def parse_text(text: str | bytes) -> list[metrics_pb2.MetricFamily]:
    """Parse text exposition 0.0.4 into MetricFamily messages, in the order of the text.

    Sample timestamps are kept (ms), HELP is kept, families without samples are dropped.
    Raises InvalidPayload if the text does not parse.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPayload("text: not valid UTF-8") from None
    counter_names: list[str] = _COUNTER_TYPE_LINE.findall(text)
    families: list[metrics_pb2.MetricFamily] = []
    try:
        for parsed in text_string_to_metric_families(text):
            if parsed.samples:
                families.append(_to_family(parsed, counter_names))
    except _PARSE_ERRORS as exc:
        raise InvalidPayload(f"text: {exc or 'malformed text'}"[:200]) from None
    return families


def _counter_name(parsed: ClientFamily, counter_names: list[str]) -> str:
    """The family name of a counter as written in its ``# TYPE`` line.

    prometheus_client strips ``_total`` from a counter's name and appends it to sample names
    that lack it, so ``foo_total`` and ``foo`` come out alike; but /federate writes
    ``# TYPE foo_total counter`` then ``foo_total{...}`` and the name must survive unchanged.
    Counter families come out in the order of their TYPE lines, so the next matching line is it.
    """
    for index, declared in enumerate(counter_names):
        if declared.removesuffix("_total") == parsed.name:
            del counter_names[: index + 1]
            return declared
    # No such line (a quoted UTF-8 name, say): keep the sample name and the remaining lines.
    return str(parsed.samples[0].name)


def _timestamp_ms(seconds: float | Timestamp | None) -> int | None:
    # prometheus_client divides the written ms by 1000; rounding restores them exactly for any
    # realistic time (float precision suffices up to ~10**15 ms).
    return None if seconds is None else round(float(seconds) * 1000)


def _new_metric(labels: _Labels, ms: int | None) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric()
    for name, value in labels.items():
        metric.label.add(name=name, value=value)
    if ms is not None:
        metric.timestamp_ms = ms
    return metric


def _to_family(parsed: ClientFamily, counter_names: list[str]) -> metrics_pb2.MetricFamily:
    kind = _TYPES.get(parsed.type)
    if kind is None:
        raise InvalidPayload(f"text: type {parsed.type!r} of {parsed.name} is not in format 0.0.4")
    samples = [
        _Sample(s.name, s.labels, float(s.value), _timestamp_ms(s.timestamp))
        for s in parsed.samples
    ]
    if kind == metrics_pb2.SUMMARY or kind == metrics_pb2.HISTOGRAM:
        name = parsed.name
    elif kind == metrics_pb2.COUNTER:
        name = _counter_name(parsed, counter_names)
    else:
        name = parsed.samples[0].name
    family = _family(name, kind, samples)
    if parsed.documentation:
        family.help = parsed.documentation
    return family


class _Sample(NamedTuple):
    name: str
    labels: _Labels
    value: float
    timestamp_ms: int | None


def _family(name: str, kind: int, samples: Iterable[_Sample]) -> metrics_pb2.MetricFamily:
    """A MetricFamily of the given name and type from its samples."""
    family = metrics_pb2.MetricFamily(name=name, type=metrics_pb2.MetricType.Name(kind))
    if kind == metrics_pb2.SUMMARY or kind == metrics_pb2.HISTOGRAM:
        family.metric.extend(_grouped_metrics(name, samples, kind))
        return family
    for sample in samples:
        metric = _new_metric(sample.labels, sample.timestamp_ms)
        if kind == metrics_pb2.COUNTER:
            metric.counter.value = sample.value
        elif kind == metrics_pb2.GAUGE:
            metric.gauge.value = sample.value
        else:
            metric.untyped.value = sample.value
        family.metric.append(metric)
    return family


# A sample line as the upload pass renders it (telemeter.exposition): name, labels (values
# escaped), value, timestamp in ms; nothing else, no comments.
_LINE = re.compile(
    r'([^{\s]+)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? (\S+) (-?[0-9]+)'
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def family_from_lines(name: str, kind: int, lines: bytes) -> metrics_pb2.MetricFamily:
    """A MetricFamily from sample lines as the upload pass renders them (a stored snapshot's
    family text), its name and type given: the protobuf `/federate` answer is built from the
    merged texts with no ``# TYPE`` line written and parsed back. Raises InvalidPayload when a
    line is not of that form."""
    samples: list[_Sample] = []
    # Split on newlines only: a label value may hold other line separators (U+2028, ...).
    for line in lines.decode().split("\n"):
        if not line:
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise InvalidPayload(f"text: not a sample line: {line[:100]!r}")
        sample_name, labels, value, ms = match.groups()
        pairs = {k: _unescape(v) for k, v in _LABEL.findall(labels)} if labels else {}
        samples.append(_Sample(sample_name, pairs, float(value), int(ms)))
    try:
        return _family(name, kind, samples)
    except (ValueError, OverflowError) as exc:
        raise InvalidPayload(f"text: {exc}"[:200]) from None


def _uint_count(value: float) -> int | None:
    """``value`` as a uint64 count, or None if it is not a non-negative integer that fits."""
    if math.isfinite(value) and value >= 0 and value == int(value) and value < 2**64:
        return int(value)
    return None


def _grouped_metrics(name: str, samples: Iterable[_Sample], kind: int) -> list[metrics_pb2.Metric]:
    """Regroup the samples of a summary or histogram into one Metric per label set.

    The ``quantile`` / ``le`` label moves into the Quantile / Bucket; the other labels identify
    the metric (compared regardless of order, written in the order first seen).
    """
    special = "quantile" if kind == metrics_pb2.SUMMARY else "le"
    metrics: dict[frozenset[tuple[str, str]], metrics_pb2.Metric] = {}
    for sample in samples:
        labels = dict(sample.labels)
        bound = labels.pop(special, None)
        key = frozenset(labels.items())
        metric = metrics.get(key)
        if metric is None:
            metric = metrics[key] = _new_metric(labels, sample.timestamp_ms)
        suffix = sample.name[len(name) :]
        value = sample.value
        if kind == metrics_pb2.SUMMARY:
            _add_summary_sample(metric.summary, suffix, bound, value)
        else:
            _add_histogram_sample(metric.histogram, suffix, bound, value)
    return list(metrics.values())


def _add_summary_sample(
    summary: metrics_pb2.Summary, suffix: str, quantile: str | None, value: float
) -> None:
    if suffix == "_sum":
        summary.sample_sum = value
    elif suffix == "_count":
        count = _uint_count(value)
        if count is None:
            raise InvalidPayload(f"text: summary count {value} is not a non-negative integer")
        summary.sample_count = count
    elif quantile is None:
        raise InvalidPayload("text: summary sample without a quantile label")
    else:
        summary.quantile.add(quantile=float(quantile), value=value)


def _add_histogram_sample(
    histogram: metrics_pb2.Histogram, suffix: str, upper_bound: str | None, value: float
) -> None:
    count = _uint_count(value)
    if suffix == "_sum":
        histogram.sample_sum = value
    elif suffix == "_count":
        if count is None:
            histogram.sample_count_float = value
        else:
            histogram.sample_count = count
    elif upper_bound is None:
        raise InvalidPayload("text: histogram bucket without an le label")
    else:
        bucket = histogram.bucket.add(upper_bound=float(upper_bound))
        if count is None:
            bucket.cumulative_count_float = value
        else:
            bucket.cumulative_count = count
