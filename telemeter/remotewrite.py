"""Prometheus Remote-Write 1.0: the request an accepted upload is forwarded as.

A request is a ``prometheus.WriteRequest`` protobuf (``repeated TimeSeries timeseries = 1``;
``TimeSeries { repeated Label labels = 1; repeated Sample samples = 2; }``;
``Label { string name = 1; string value = 2; }``; ``Sample { double value = 1; int64 timestamp
= 2; }``), compressed with the snappy *block* format (not the framed format of ``/upload``), sent
with the headers of `HEADERS`. Each sample line the upload pass rendered becomes one series:
labels sorted by name, ``__name__`` among them, and one sample carrying the line's timestamp (the
server's, as ``/federate`` serves it). Because ``timeseries`` is a repeated field, the bytes of
several requests concatenated are one valid request: a batch is the concatenation of its entries.

`encode` runs the compiled encoder (`_remotewrite`); `encode_reference` is the same function
written plainly, the specification the tests hold the compiled one to. `decode` reads a request
back (tests, and the receive endpoint's checks).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from telemeter.delimited import encode_varint, read_varint
from telemeter.errors import InvalidPayload, TooLarge

Family = tuple[str, int, bytes]
Series = tuple[list[tuple[str, str]], list[tuple[float, int]]]

CONTENT_TYPE = "application/x-protobuf"
VERSION = "0.1.0"
HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": CONTENT_TYPE,
    "X-Prometheus-Remote-Write-Version": VERSION,
}

_LINE = re.compile(rb"([^{ ]+)(?:\{(.*)\})? (\S+) (-?\d+)")
_LABEL = re.compile(rb'([^=,"]+)="((?:[^"\\]|\\.)*)",?')
_LABELS = re.compile(rb'(?:[^=,"]+="(?:[^"\\]|\\.)*",?)*')
_UNESCAPE = re.compile(rb"\\(.)")
_DOUBLE = struct.Struct("<d")


def encode(families: Iterable[Family]) -> tuple[bytes, int]:
    """The uncompressed ``WriteRequest`` of rendered families, and its number of series."""
    from telemeter import _remotewrite

    data, series = _remotewrite.encode_write_request(list(families))
    return data, series


def _varint(value: int) -> bytes:
    return encode_varint(value & ((1 << 64) - 1))  # int64 on the wire: two's complement


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _unescape(value: bytes) -> bytes:
    return _UNESCAPE.sub(lambda m: b"\n" if m.group(1) == b"n" else m.group(1), value)


def encode_reference(families: Iterable[Family]) -> tuple[bytes, int]:
    """`encode`, written plainly over the text lines."""
    out = bytearray()
    series = 0
    for _, _, text in families:
        if text and not text.endswith(b"\n"):
            raise ValueError("sample lines must end with a newline")
        for line in text.split(b"\n")[:-1]:
            m = _LINE.fullmatch(line)
            if m is None or not _LABELS.fullmatch(m.group(2) or b""):
                raise ValueError(f"malformed sample line {line[:80]!r}")
            name, labels, value, ts = m.groups()
            pairs = [(b"__name__", name)]
            pairs += [(k, _unescape(v)) for k, v in _LABEL.findall(labels or b"")]
            body = b"".join(_field(1, _field(1, k) + _field(2, v)) for k, v in sorted(pairs))
            sample = b"\x09" + _DOUBLE.pack(float(value)) + b"\x10" + _varint(int(ts))
            out += _field(1, body + _field(2, sample))
            series += 1
    return bytes(out), series


def _fields(data: bytes | memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of a protobuf message: an int for varints, else the bytes."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        key, pos = read_varint(view, pos, "remote write")
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(view, pos, "remote write")
            yield number, value
            continue
        if wire == 1:
            size = 8
        elif wire == 2:
            size, pos = read_varint(view, pos, "remote write")
        elif wire == 5:
            size = 4
        else:
            raise InvalidPayload(f"unsupported wire type {wire} in the remote-write request")
        if pos + size > len(view):
            raise InvalidPayload("truncated field in the remote-write request")
        yield number, view[pos : pos + size]
        pos += size


def _text(value: int | memoryview) -> str:
    if isinstance(value, int):
        raise InvalidPayload("a label field has the wrong wire type")
    try:
        return bytes(value).decode()
    except UnicodeDecodeError as exc:
        raise InvalidPayload("a label is not valid UTF-8") from exc


def _sample(data: memoryview) -> tuple[float, int]:
    value, ts = 0.0, 0
    for number, field in _fields(data):
        if number == 1 and isinstance(field, memoryview) and len(field) == 8:
            (value,) = _DOUBLE.unpack(field)
        elif number == 2 and isinstance(field, int):
            ts = field - (1 << 64) if field >= 1 << 63 else field
    return value, ts


def decode(data: bytes) -> list[Series]:
    """The series of a ``WriteRequest``: (labels in wire order, [(value, timestamp ms)]).

    Metadata, exemplars, native histograms and unknown fields are skipped.
    """
    out: list[Series] = []
    for number, series in _fields(data):
        if number != 1 or isinstance(series, int):
            continue
        labels: list[tuple[str, str]] = []
        samples: list[tuple[float, int]] = []
        for n, field in _fields(series):
            if isinstance(field, int):
                continue
            if n == 1:
                pair = dict(_fields(field))
                labels.append(
                    (_text(pair.get(1, memoryview(b""))), _text(pair.get(2, memoryview(b""))))
                )
            elif n == 2:
                samples.append(_sample(field))
        out.append((labels, samples))
    return out


METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class ReceiveLimits:
    """What a received request may hold (the limits of ``/upload``, and a time window)."""

    partition_label: str
    cluster_id: str
    max_series: int
    max_labels: int
    max_length: int
    min_timestamp_ms: int
    max_timestamp_ms: int


def check_received(series: list[Series], limits: ReceiveLimits) -> None:
    """Refuse a received request that is not safe to store (InvalidPayload or TooLarge).

    Every series must carry the partition label with the authenticated cluster's ID, so that no
    cluster can write under another's; names must be valid and within the length limit, and
    every timestamp inside the window.
    """
    if len(series) > limits.max_series:
        raise TooLarge(f"more than {limits.max_series} series in one request")
    for labels, samples in series:
        if len(labels) > limits.max_labels:
            raise TooLarge(f"a series has more than {limits.max_labels} labels")
        names = dict(labels)
        if len(names) != len(labels):
            raise InvalidPayload("a series repeats a label name")
        name = names.get("__name__", "")
        if not METRIC_NAME.fullmatch(name):
            raise InvalidPayload(f"invalid metric name {name[:100]!r}")
        owner = names.get(limits.partition_label)
        if owner != limits.cluster_id:
            raise InvalidPayload(
                f"series {name[:100]} must carry {limits.partition_label}="
                f"{limits.cluster_id!r}, the authenticated cluster (got {str(owner)[:100]!r})"
            )
        for key, value in labels:
            if key != "__name__" and not LABEL_NAME.fullmatch(key):
                raise InvalidPayload(f"invalid label name {key[:100]!r}")
            if len(key) > limits.max_length or len(value) > limits.max_length:
                raise InvalidPayload(f"a label of {name[:100]} is longer than {limits.max_length}")
        for _, ts in samples:
            if not limits.min_timestamp_ms <= ts <= limits.max_timestamp_ms:
                raise InvalidPayload(f"a sample of {name[:100]} is outside the accepted window")


def encode_series(series: Iterable[Series]) -> bytes:
    """A ``WriteRequest`` of decoded series (labels sorted by name, as receivers want them)."""
    out = bytearray()
    for labels, samples in series:
        body = b"".join(
            _field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in sorted(labels)
        )
        for value, ts in samples:
            body += _field(2, b"\x09" + _DOUBLE.pack(value) + b"\x10" + _varint(ts))
        out += _field(1, body)
    return bytes(out)
