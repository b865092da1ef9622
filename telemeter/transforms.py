"""The client's transforms of scraped families before upload (docs/protocol.md section 3).

Order, as in the Go telemeter-client: ``--label`` pairs -> ``--rename`` of families -> drop invalid
samples -> drop empty families -> sort each family by timestamp -> anonymize label values ->
token labels (those the server's ``/authorize`` answer asked for). The input is never mutated.

Nothing here imports protobuf at module level: the client imports this module for its flag
parsers and runs the compiled pass (`telemeter.clientpass`); protobuf is loaded when the
reference runs (docs/architecture.md, "The client's footprint").
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from telemeter.errors import InvalidPayload

if TYPE_CHECKING:
    from telemeter import metrics_pb2

logger = logging.getLogger(__name__)

# What the Go client renames when no --rename flag is given.
DEFAULT_RENAMES: Mapping[str, str] = {"ALERTS": "alerts"}
DAY_MS = 24 * 3600 * 1000

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# The server refuses longer names and values with a 400 for the whole upload, so such a sample is
# dropped here instead (the Go client cut the offending label, which can merge two series).
_MAX_NAME_OR_VALUE = 255
_VALUE_FIELDS = ("counter", "gauge", "summary", "untyped", "histogram")


@dataclass(frozen=True, slots=True)
class TransformResult:
    """The families to upload and how many samples (metrics) were dropped as invalid."""

    families: list[metrics_pb2.MetricFamily]
    dropped: int


def anonymize(salt: str, value: str) -> str:
    """The Go client's label value hash: base64url, unpadded, of ``sha256(salt + value)[:9]``."""
    digest = hashlib.sha256((salt + value).encode()).digest()
    return base64.urlsafe_b64encode(digest[:9]).decode("ascii")  # 9 bytes: never padded


def transform_families(
    families: Iterable[metrics_pb2.MetricFamily],
    *,
    labels: Mapping[str, str],
    renames: Mapping[str, str],
    anonymize_labels: Sequence[str],
    salt: str,
    token_labels: Mapping[str, str],
    now_ms: int,
    max_age_ms: int = DAY_MS,
) -> TransformResult:
    """Apply the client transforms in the Go order; return new families and the drop count.

    A sample is dropped when it has no timestamp, is older than ``now_ms - max_age_ms``, has an
    invalid metric or label name (or one over 255 characters, or a value over 255 characters), or
    carries a value field other than the one its family type calls for.
    """
    from telemeter import metrics_pb2
    from telemeter.exposition import VALUE_FIELD

    min_ms = now_ms - max_age_ms
    hashed = frozenset(anonymize_labels)
    # Added labels are part of every sample: if one is invalid, every sample is.
    added_ok = all(label_ok(name, value) for name, value in labels.items())
    out: list[metrics_pb2.MetricFamily] = []
    dropped = 0
    for source in families:
        name = _text(source.name)
        name = renames.get(name, name)
        if added_ok and _name_ok(name, _METRIC_NAME):
            expected = VALUE_FIELD.get(source.type)
            valid = [
                m
                for m in source.metric
                if _sample_ok(m, expected=expected, min_ms=min_ms, overridden=labels)
            ]
        else:
            valid = []
        dropped += len(source.metric) - len(valid)
        if not valid:
            continue
        # Stable, so samples with equal timestamps keep the order Prometheus gave them.
        valid.sort(key=lambda m: m.timestamp_ms)
        family = metrics_pb2.MetricFamily(name=name, help=_text(source.help), type=source.type)
        for metric in valid:
            copy = family.metric.add()
            copy.CopyFrom(metric)
            _set_labels(copy, labels)
            _anonymize(copy, salt=salt, names=hashed)
            _set_labels(copy, token_labels)
        out.append(family)
    if dropped:
        logger.debug("transform dropped=%d families=%d", dropped, len(out))
    return TransformResult(families=out, dropped=dropped)


def parse_label_pairs(texts: Sequence[str]) -> dict[str, str]:
    """Parse ``--label key=value`` flags (later ones win); raise ``ValueError`` on bad input."""
    return _parse_pairs(texts, "label", "key=value", _LABEL_NAME, "label", check_value=False)


def parse_renames(texts: Sequence[str]) -> dict[str, str]:
    """Parse ``--rename old=new`` flags (exact family names); raise ``ValueError`` on bad input."""
    return _parse_pairs(texts, "rename", "old=new", _METRIC_NAME, "metric", check_value=True)


def _parse_pairs(
    texts: Sequence[str],
    flag: str,
    form: str,
    pattern: re.Pattern[str],
    kind: str,
    *,
    check_value: bool,
) -> dict[str, str]:
    """``name=value`` flags as a dict (later ones win), names (and values) checked by pattern."""
    pairs: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"{flag} {text!r} must be of the form {form}")
        for name in (key, value) if check_value else (key,):
            if not _name_ok(name, pattern):
                raise ValueError(f"{flag} {text!r}: {name!r} is not a valid {kind} name")
        pairs[key] = value
    return pairs


def _text(value: str | bytes) -> str:
    """A string field as upb gives it: bytes when it is not valid UTF-8."""
    if isinstance(value, bytes):
        raise InvalidPayload(f"{value[:64]!r} is not valid UTF-8")
    return value


def _name_ok(name: str, pattern: re.Pattern[str]) -> bool:
    return len(name) <= _MAX_NAME_OR_VALUE and pattern.fullmatch(name) is not None


def label_ok(name: str, value: str) -> bool:
    return _name_ok(name, _LABEL_NAME) and len(value) <= _MAX_NAME_OR_VALUE


def _sample_ok(
    metric: metrics_pb2.Metric, *, expected: str | None, min_ms: int, overridden: Mapping[str, str]
) -> bool:
    # timestamp_ms == 0 is "no timestamp", as in the Go client (proto2 default).
    if metric.timestamp_ms == 0 or metric.timestamp_ms < min_ms:
        return False
    # Labels about to be overwritten by --label are judged by their new (checked) values.
    if not all(
        _text(pair.name) in overridden or label_ok(pair.name, _text(pair.value))
        for pair in metric.label
    ):
        return False
    present = [f for f in _VALUE_FIELDS if metric.HasField(f)]
    return present == [expected]


def _set_labels(metric: metrics_pb2.Metric, values: Mapping[str, str]) -> None:
    """Overwrite labels of these names in place, append the missing ones (Go's appendLabels)."""
    if not values:
        return
    seen: set[str] = set()
    for pair in metric.label:
        if pair.name in values:
            pair.value = values[pair.name]
            seen.add(pair.name)
    for name, value in values.items():
        if name not in seen:
            metric.label.add(name=name, value=value)


def _anonymize(metric: metrics_pb2.Metric, *, salt: str, names: frozenset[str]) -> None:
    if not names:
        return
    for pair in metric.label:
        # Empty values mean "no label" in Prometheus: hashing them would invent a value.
        if pair.value and pair.name in names:
            pair.value = anonymize(salt, pair.value)
