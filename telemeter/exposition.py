"""Text exposition format 0.0.4: the bytes `/federate` serves.

The rendering rules here are the reference for the compiled pass (`_fastpass.pyx`), which must
produce the same bytes; `tests/unit/core/test_fastpass.py` checks the two against each other.

Stored blocks hold sample lines only; the `# TYPE` line is written once per family when blocks
of several clusters are merged (docs/architecture.md, D4). No `# HELP` lines are kept: the Go
server does not serve them either, and they would cost memory per cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from telemeter import metrics_pb2

# Type names of text format 0.0.4; a gauge histogram has no name there and is served as histogram.
TYPE_NAMES: dict[int, str] = {
    metrics_pb2.COUNTER: "counter",
    metrics_pb2.GAUGE: "gauge",
    metrics_pb2.SUMMARY: "summary",
    metrics_pb2.UNTYPED: "untyped",
    metrics_pb2.HISTOGRAM: "histogram",
    metrics_pb2.GAUGE_HISTOGRAM: "histogram",
}
# The one value field of a Metric that a family of each type carries (the client and the server
# check it): the same words as the text names, so the same table under its own name.
VALUE_FIELD = TYPE_NAMES
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def format_value(value: float) -> str:
    """Format a float as Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` does, as Prometheus writes it.

    The shortest digits that round-trip, in exponent form when the decimal exponent is < -4 or
    >= 6 (so ``593096``, ``1e+06`` and ``2.41496064e+10``, as in the recorded Go output).
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    digits, point = _shortest_digits(abs(value))
    exp = point - 1
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of a positive finite float and its decimal point position."""
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    point = len(whole) + (int(exponent) if exponent else 0)
    # Leading zeros of "0.000123" move the decimal point left.
    point -= len(whole + frac) - len((whole + frac).lstrip("0"))
    digits = digits.rstrip("0")
    return digits or "0", point


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels_prefix(metric: metrics_pb2.Metric) -> str:
    """``{a="b",c="d"`` without the closing brace, or "" when no label has a value."""
    parts = [
        f'{pair.name}="{escape_label_value(pair.value)}"' for pair in metric.label if pair.value
    ]
    return "{" + ",".join(parts) if parts else ""


def _line(name: str, prefix: str, extra: str, value: str, end: str) -> str:
    if extra:
        labels = prefix + "," + extra + "}" if prefix else "{" + extra + "}"
    else:
        labels = prefix + "}" if prefix else ""
    return f"{name}{labels} {value}{end}"


def _count(integer: int, floating: float) -> str:
    # client_model: the float count is used when it is set (> 0), as client_golang's expfmt does.
    return format_value(floating) if floating > 0 else str(integer)


def render_metric(name: str, kind: int, metric: metrics_pb2.Metric, prefix: str, end: str) -> str:
    """The sample lines of one metric of a family ``name`` of type ``kind``.

    ``prefix`` is its rendered labels without the closing brace (see `_labels_prefix`), ``end``
    what ends every line: the timestamp and the newline (``" 1700000000000\n"``), or ``"\n"``.
    """
    if kind in (metrics_pb2.COUNTER, metrics_pb2.GAUGE, metrics_pb2.UNTYPED):
        value = getattr(metric, VALUE_FIELD[kind]).value
        return _line(name, prefix, "", format_value(value), end)
    out: list[str] = []
    if kind == metrics_pb2.SUMMARY:
        s = metric.summary
        for q in s.quantile:
            extra = f'quantile="{format_value(q.quantile)}"'
            out.append(_line(name, prefix, extra, format_value(q.value), end))
        out.append(_line(name + "_sum", prefix, "", format_value(s.sample_sum), end))
        out.append(_line(name + "_count", prefix, "", str(s.sample_count), end))
        return "".join(out)
    h = metric.histogram
    has_inf = False
    for b in h.bucket:
        has_inf = has_inf or (math.isinf(b.upper_bound) and b.upper_bound > 0)
        extra = f'le="{format_value(b.upper_bound)}"'
        count = _count(b.cumulative_count, b.cumulative_count_float)
        out.append(_line(name + "_bucket", prefix, extra, count, end))
    count = _count(h.sample_count, h.sample_count_float)
    if not has_inf:
        out.append(_line(name + "_bucket", prefix, 'le="+Inf"', count, end))
    out.append(_line(name + "_sum", prefix, "", format_value(h.sample_sum), end))
    out.append(_line(name + "_count", prefix, "", count, end))
    return "".join(out)


def render_samples(family: metrics_pb2.MetricFamily) -> str:
    """Render the sample lines of one family (no ``# TYPE`` line), with each metric's timestamp.

    Empty label values mean "no label" and are omitted (docs/protocol.md section 4).
    """
    return "".join(
        render_metric(
            family.name,
            family.type,
            metric,
            _labels_prefix(metric),
            f" {metric.timestamp_ms}\n" if metric.HasField("timestamp_ms") else "\n",
        )
        for metric in family.metric
    )


def type_line(name: str, kind: int) -> str:
    """The ``# TYPE`` line of a family."""
    return f"# TYPE {name} {TYPE_NAMES.get(kind, 'untyped')}\n"


def render_text(families: Iterable[metrics_pb2.MetricFamily]) -> str:
    """Render families as one exposition text, each family name once (same-name blocks merged).

    When two families of one name disagree on their type, the first type is kept: the sample
    lines of counters, gauges and untyped families have the same shape, so the text stays valid.
    """
    merged: dict[str, tuple[int, list[str]]] = {}
    for family in families:
        entry = merged.setdefault(family.name, (family.type, []))
        entry[1].append(render_samples(family))
    return "".join(
        type_line(name, kind) + "".join(blocks) for name, (kind, blocks) in merged.items()
    )
