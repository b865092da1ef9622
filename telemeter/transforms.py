"""The client's transforms of scraped families before upload (docs/protocol.md section 3).

Order, as in the Go telemeter-client: ``--label`` pairs -> ``--rename`` of families -> drop invalid
samples -> drop empty families -> sort each family by timestamp -> anonymize label values ->
token labels (those the server's ``/authorize`` answer asked for). The input is never mutated.
"""

import base64
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from telemeter import metrics_pb2
from telemeter._clientpass import Transforms
from telemeter.delimited import read_families, write_families
from telemeter.errors import InvalidPayload
from telemeter.exposition import VALUE_FIELD

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


@dataclass(frozen=True, slots=True)
class Transformed:
    """An upload body (delimited MetricFamily messages) and what the transforms did."""

    body: bytes
    families: int
    scraped: int  # samples in the scraped families
    dropped: int  # of those, dropped as invalid


class ClientPass:
    """The transforms of one configuration, from a delimited ``/federate`` answer to the body.

    The compiled pass (`telemeter._clientpass`) runs where it covers the input, which is what
    Prometheus writes; elsewhere :meth:`reference` runs, so the body is the same either way
    (docs/architecture.md, "The client's pass").
    """

    def __init__(
        self,
        *,
        labels: Mapping[str, str],
        renames: Mapping[str, str],
        anonymize_labels: Sequence[str],
        salt: str,
    ) -> None:
        self.labels, self.renames, self.salt = dict(labels), dict(renames), salt
        self.anonymize_labels = tuple(anonymize_labels)
        labels_ok = all(_label_ok(name, value) for name, value in labels.items())
        self._fast = Transforms(self.renames, self.labels, self.anonymize_labels, salt, labels_ok)

    def run(
        self,
        data: bytes,
        *,
        token_labels: Mapping[str, str],
        now_ms: int,
        max_families: int,
        max_age_ms: int = DAY_MS,
    ) -> Transformed:
        """Transform ``data``; raise InvalidPayload or TooLarge as :func:`read_families` does."""
        fast = self.compiled(
            data,
            token_labels=token_labels,
            now_ms=now_ms,
            max_families=max_families,
            max_age_ms=max_age_ms,
        )
        if fast is not None:
            return fast
        return self.reference(
            data,
            token_labels=token_labels,
            now_ms=now_ms,
            max_families=max_families,
            max_age_ms=max_age_ms,
        )

    def compiled(
        self,
        data: bytes,
        *,
        token_labels: Mapping[str, str],
        now_ms: int,
        max_families: int,
        max_age_ms: int = DAY_MS,
    ) -> Transformed | None:
        """The compiled pass alone: None where it does not cover ``data``."""
        out = self._fast.run(data, token_labels, now_ms, max_age_ms, max_families)
        return None if out is None else Transformed(*out)

    def reference(
        self,
        data: bytes,
        *,
        token_labels: Mapping[str, str],
        now_ms: int,
        max_families: int,
        max_age_ms: int = DAY_MS,
    ) -> Transformed:
        """The specification of :meth:`run`: decode, :func:`transform_families`, encode."""
        families = read_families(data, max_families=max_families)
        result = transform_families(
            families,
            labels=self.labels,
            renames=self.renames,
            anonymize_labels=self.anonymize_labels,
            salt=self.salt,
            token_labels=token_labels,
            now_ms=now_ms,
            max_age_ms=max_age_ms,
        )
        return Transformed(
            body=write_families(result.families),
            families=len(result.families),
            scraped=sum(len(family.metric) for family in families),
            dropped=result.dropped,
        )


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
    min_ms = now_ms - max_age_ms
    hashed = frozenset(anonymize_labels)
    # Added labels are part of every sample: if one is invalid, every sample is.
    added_ok = all(_label_ok(name, value) for name, value in labels.items())
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


def _label_ok(name: str, value: str) -> bool:
    return _name_ok(name, _LABEL_NAME) and len(value) <= _MAX_NAME_OR_VALUE


def _sample_ok(
    metric: metrics_pb2.Metric, *, expected: str | None, min_ms: int, overridden: Mapping[str, str]
) -> bool:
    # timestamp_ms == 0 is "no timestamp", as in the Go client (proto2 default).
    if metric.timestamp_ms == 0 or metric.timestamp_ms < min_ms:
        return False
    # Labels about to be overwritten by --label are judged by their new (checked) values.
    if not all(
        _text(pair.name) in overridden or _label_ok(pair.name, _text(pair.value))
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
