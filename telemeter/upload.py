"""The upload pass: validate, filter, transform and render one cluster's pushed families.

`process` runs the compiled single pass (`_fastpass`, docs/architecture.md D12) over the raw,
decompressed, varint-delimited MetricFamily bytes. `process_reference` is the same function
written plainly over upb messages; it is the specification, and the tests check that the two
agree on generated inputs.

What is checked (docs/protocol.md section 3, "What the Go server checks"), in this order, per family
and then per metric, so both implementations report the first problem the same way:

- the number of families and of metrics is within ``max_series`` (413);
- a family's name is a valid metric name of at most ``max_label_length`` bytes;
- every label name is valid and at most ``max_label_length`` bytes, every value at most that
  many bytes and valid UTF-8, no label name appears twice, at most ``max_labels`` labels;
- the metric has a timestamp, not older than ``min_timestamp_ms``, and the timestamps of a
  family do not decrease;
- every token label (e.g. ``_id``) is present with the token's value (no spoofing);
- the metric carries the value field of its family's type.

Then: families whose name the whitelist rejects are dropped whole (decided once per family),
other series are filtered by the whitelist on their incoming labels, elided labels are removed,
``extra_labels`` are added (replacing a label of the same name), a series kept twice (the same
name and the same rendered labels, in any order: a summary or histogram is one series of its
labels, and two families of the same name are one family) is refused, every timestamp is
replaced by the server's receive time, and the sample lines are rendered in the text format of
`telemeter.exposition`. With ``remote_write``, the same lines are also written as a
Remote-Write ``WriteRequest`` (`telemeter.remotewrite.encode_reference` of the lines is its
specification; the compiled pass writes it from the decoded labels, `_rwpass.pxd`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from telemeter import metrics_pb2
from telemeter.delimited import read_families
from telemeter.errors import InvalidPayload, TooLarge
from telemeter.exposition import VALUE_FIELD, escape_label_value, render_metric
from telemeter.remotewrite import encode_reference

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# Family decisions of the whitelist (telemeter.selectors.Decision has the same values).
DROP, KEEP, PER_SERIES = 0, 1, 2


class SeriesFilter(Protocol):
    """What the pass needs of a whitelist (`telemeter.selectors.Whitelist` is one)."""

    @property
    def decisions(self) -> Mapping[str, int]:
        """Decisions already made, by family name: the compiled pass looks here before calling
        family_decision (an empty mapping is fine)."""

    def family_decision(self, name: str) -> int: ...

    def matches(self, name: str, labels: dict[str, str]) -> bool: ...


@dataclass(frozen=True, slots=True)
class PassConfig:
    """Everything the pass needs besides the bytes; built once per cluster token."""

    whitelist: SeriesFilter
    token_labels: tuple[tuple[str, str], ...]
    extra_labels: tuple[tuple[str, str], ...] = ()
    elide_labels: frozenset[str] = frozenset()
    max_series: int = 10_000
    max_labels: int = 64
    max_label_length: int = 255
    remote_write: bool = False  # also write the Remote-Write request of the rendered lines


@dataclass(slots=True)
class PassResult:
    """The rendered families of one upload and what the pass counted."""

    families: list[tuple[str, int, bytes]] = field(default_factory=list)
    # With remote_write: the WriteRequest of the families' lines (telemeter.remotewrite) and
    # its number of series.
    write_request: bytes | memoryview = b""  # the compiled pass's, over its own buffer
    write_series: int = 0
    received: int = 0
    kept: int = 0
    past: int = 0
    future: int = 0


def process(
    data: bytes, config: PassConfig, *, now_ms: int, min_timestamp_ms: int, write_tail: bytes = b""
) -> PassResult:
    """Run the compiled pass (see the module docstring); raises InvalidPayload or TooLarge.

    ``write_tail`` (encoded series) ends the WriteRequest of ``remote_write``: the server's
    push-time series, without copying the request again.
    """
    from telemeter import _fastpass

    result: PassResult = _fastpass.process(
        data, config, now_ms, min_timestamp_ms, PassResult, write_tail
    )
    return result


def _check_label_pairs(metric: metrics_pb2.Metric, config: PassConfig, family: str) -> None:
    if len(metric.label) > config.max_labels:
        raise TooLarge(f"a metric of family {family} has more than {config.max_labels} labels")
    seen: set[str] = set()
    limit = config.max_label_length
    for pair in metric.label:
        name: str | bytes = pair.name
        # upb hands invalid UTF-8 of proto2 string fields through as bytes.
        if isinstance(name, bytes) or len(name) > limit or not LABEL_NAME.fullmatch(name):
            raise InvalidPayload(f"family {family} has an invalid label name {name[:64]!r}")
        raw: str | bytes = pair.value
        if isinstance(raw, bytes):
            raise InvalidPayload(f"label {name} of family {family} is not valid UTF-8")
        value = raw.encode()
        if len(value) > limit:
            raise InvalidPayload(f"label {name} of family {family} is longer than {limit} bytes")
        if name in seen:
            raise InvalidPayload(f"label {name} appears twice in a metric of family {family}")
        seen.add(name)


def _rendered_labels(metric: metrics_pb2.Metric, config: PassConfig) -> list[str]:
    """The labels a series is rendered with (`name="value"`), in rendering order."""
    extra = dict(config.extra_labels)
    parts: list[str] = []
    for pair in metric.label:
        if pair.name in config.elide_labels:
            continue
        value = extra.pop(pair.name) if pair.name in extra else pair.value
        if value:
            parts.append(f'{pair.name}="{escape_label_value(value)}"')
    parts.extend(
        f'{k}="{escape_label_value(v)}"' for k, v in config.extra_labels if k in extra and v
    )
    return parts


def _joined(parts: list[str]) -> str:
    return "{" + ",".join(parts) if parts else ""


MAX_SHOWN = 200  # bytes of a duplicate series shown in the reason


def duplicate_series(key: bytes) -> InvalidPayload:
    """The error for a series kept twice; `key` is its name and rendered labels, unclosed."""
    shown = key + b"}" if b"{" in key else key
    text = shown[:MAX_SHOWN].decode("utf-8", "ignore") + ("..." if len(shown) > MAX_SHOWN else "")
    return InvalidPayload(f"duplicate series {text}")


def same_series(a: bytes, b: bytes, config: PassConfig) -> bool:
    """Whether two encoded metrics (of families of the same name) are rendered with the same
    labels, in any order (the compiled pass asks when their hashes are the same)."""
    labels_a = _rendered_labels(metrics_pb2.Metric.FromString(a), config)
    return frozenset(labels_a) == frozenset(
        _rendered_labels(metrics_pb2.Metric.FromString(b), config)
    )


def process_reference(
    data: bytes, config: PassConfig, *, now_ms: int, min_timestamp_ms: int, write_tail: bytes = b""
) -> PassResult:
    """The plain-Python specification of `process` (same result, same errors, slower)."""
    families = read_families(data, max_families=config.max_series)
    result = PassResult()
    ts = f" {now_ms}\n"
    out: dict[str, tuple[int, list[str]]] = {}
    types: dict[str, int] = {}
    seen: set[tuple[str, frozenset[str]]] = set()  # the series kept so far: name and labels
    for family in families:
        name = family.name
        if (
            isinstance(name, bytes)
            or len(name) > config.max_label_length
            or not METRIC_NAME.fullmatch(name)
        ):
            raise InvalidPayload(f"invalid metric name {name[:64]!r}")
        if not family.metric:
            continue  # empty families are dropped, as the Go server does
        kind = family.type
        if types.setdefault(name, kind) != kind:
            raise InvalidPayload(f"family {name} appears twice with different types")
        decision = config.whitelist.family_decision(name)
        last_ts: int | None = None
        lines: list[str] = []
        for metric in family.metric:
            result.received += 1
            if result.received > config.max_series:
                raise TooLarge(f"more than {config.max_series} metrics in one upload")
            _check_label_pairs(metric, config, name)
            if not metric.HasField("timestamp_ms"):
                raise InvalidPayload(f"a metric of family {name} has no timestamp")
            stamp = metric.timestamp_ms
            if stamp < min_timestamp_ms:
                raise InvalidPayload(f"a metric of family {name} is older than the limit")
            if last_ts is not None and stamp < last_ts:
                raise InvalidPayload(f"metrics of family {name} are not in timestamp order")
            last_ts = stamp
            labels = {pair.name: pair.value for pair in metric.label}
            for key, value in config.token_labels:
                if labels.get(key) != value:
                    raise InvalidPayload(f"a metric of family {name} lacks the label {key}={value}")
            if not metric.HasField(VALUE_FIELD[kind]):
                raise InvalidPayload(f"a metric of family {name} has no {VALUE_FIELD[kind]} value")
            if decision == DROP or (
                decision == PER_SERIES and not config.whitelist.matches(name, labels)
            ):
                continue
            result.kept += 1
            if stamp < now_ms:
                result.past += 1
            elif stamp > now_ms:
                result.future += 1
            parts = _rendered_labels(metric, config)
            series = (name, frozenset(parts))
            if series in seen:
                raise duplicate_series((name + _joined(parts)).encode())
            seen.add(series)
            lines.append(render_metric(name, kind, metric, _joined(parts), ts))
        if lines:
            out.setdefault(name, (kind, []))[1].extend(lines)
    result.families = [(n, k, "".join(lines).encode()) for n, (k, lines) in out.items()]
    if config.remote_write:
        result.write_request, result.write_series = encode_reference(result.families)
        result.write_request += write_tail
    return result
