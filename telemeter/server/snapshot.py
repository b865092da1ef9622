"""The stored form of a cluster's snapshot, and merging snapshots into one `/federate` answer.

A snapshot is rendered once, at upload, and served many times (ARCHITECTURE.md decision 4). Its
families' sample lines (with ``_id`` and the server timestamp in place) are stored behind a small
family table, the whole compressed as *one* raw deflate stream (ISA-L level 1: ~45 us and ~4.9 KB
for the standard payload). One stream per cluster compresses about twice as well as one
independent segment per family, because the label sets repeat across families.

`/federate` inflates each snapshot once (libdeflate, exact size known), appends each family's
text to that family's buffer (compiled, `_fastpass.merge_snapshots`), and writes every family
once under its ``# TYPE`` line: plain, or compressed as one gzip member by ISA-L as it is sent.

Layout of the stored value (integers big-endian)::

    b"TM3" | push time ms (u64) | series (u32) | raw length (u32) | deflate length (u32)
          | raw deflate of RAW
    RAW = family count (u16) | per family: type (u8) | name length (u16) | name | text length (u32)
          | the family texts, in table order
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from isal import isal_zlib

from telemeter.core._fastpass import inflate, merge_snapshots
from telemeter.core.errors import TelemeterError
from telemeter.core.exposition import TYPE_NAMES, escape_label_value, format_value

MAGIC = b"TM3"
_HEAD = struct.Struct(">3sQIII")
_COUNT = struct.Struct(">H")
_FAMILY = struct.Struct(">BH")
_TEXT = struct.Struct(">I")
DEFLATE_LEVEL = 1  # ISA-L level 1: several times less CPU than zlib's level 1, same size
RAW_DEFLATE = -15
GZIP = 31  # wbits of a gzip wrapper
# A stored snapshot never inflates to more than this (uploads are capped far below it).
MAX_RAW = 256 * 1024 * 1024
PUSH_TIME_FAMILY = "telemeter_push_time_seconds"


class CorruptSnapshot(TelemeterError):
    """A stored value is not a snapshot of this format (skipped by `/federate`, and counted)."""


@dataclass(frozen=True, slots=True)
class Family:
    """One family of a snapshot: its name, type and sample lines."""

    name: str
    kind: int
    text: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded snapshot: when it was pushed, how many series, and its families."""

    push_time_ms: int
    series: int
    families: list[Family]


def push_time_lines(partition_label: str, cluster_id: str, now_ms: int) -> bytes:
    """The per-cluster last-push-time series (ARCHITECTURE.md decision 11)."""
    labels = f'{partition_label}="{escape_label_value(cluster_id)}"'
    return f"{PUSH_TIME_FAMILY}{{{labels}}} {format_value(now_ms / 1000)} {now_ms}\n".encode()


def encode(push_time_ms: int, series: int, families: Iterable[tuple[str, int, bytes]]) -> bytes:
    """Build a stored snapshot from (name, type, sample lines) tuples."""
    items = list(families)
    parts = [_COUNT.pack(len(items))]
    for name, kind, lines in items:
        raw = name.encode()
        parts += [_FAMILY.pack(kind, len(raw)), raw, _TEXT.pack(len(lines))]
    parts += [lines for _, _, lines in items]
    raw = b"".join(parts)
    compressed = isal_zlib.compress(raw, DEFLATE_LEVEL, RAW_DEFLATE)
    return _HEAD.pack(MAGIC, push_time_ms, series, len(raw), len(compressed)) + compressed


def decode(value: bytes) -> Snapshot:
    """Split a stored snapshot into its families."""
    try:
        magic, push_time_ms, series, size, compressed = _HEAD.unpack_from(value, 0)
        if magic != MAGIC:
            raise CorruptSnapshot("not a telemeter snapshot")
        if _HEAD.size + compressed != len(value):
            raise CorruptSnapshot("truncated snapshot, or trailing bytes")
        if size > MAX_RAW:
            raise CorruptSnapshot("snapshot larger than the limit")
        raw = inflate(value, _HEAD.size, size)
        (count,) = _COUNT.unpack_from(raw, 0)
        pos = _COUNT.size
        table: list[tuple[str, int, int]] = []
        for _ in range(count):
            kind, name_len = _FAMILY.unpack_from(raw, pos)
            pos += _FAMILY.size
            name = raw[pos : pos + name_len].decode()
            (text_len,) = _TEXT.unpack_from(raw, pos + name_len)
            pos += name_len + _TEXT.size
            table.append((name, kind, text_len))
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise CorruptSnapshot(str(exc)) from exc
    out: list[Family] = []
    for name, kind, text_len in table:
        out.append(Family(name, kind, raw[pos : pos + text_len]))
        pos += text_len
    if pos != len(raw):
        raise CorruptSnapshot("the family table does not match the texts")
    return Snapshot(push_time_ms, series, out)


@dataclass(slots=True)
class Merged:
    """Snapshots grouped per family, ready to be written as one exposition.

    ``families`` maps a name to ``[kind, text]``: the family's lines from every cluster, in
    cluster order, in one buffer (`_fastpass.FamilyText`).
    """

    families: dict[str, list[Any]] = field(default_factory=dict)
    clusters: int = 0
    series: int = 0
    corrupt: int = 0
    conflicts: int = 0


def merge(values: list[bytes], *, oldest_ms: int = 0) -> Merged:
    """Group the families of many stored snapshots by name, so each name is written once.

    Runs compiled (`_fastpass.merge_snapshots`): there is no Python work per family per cluster.
    Snapshots pushed before ``oldest_ms`` are left out; values that do not parse are counted in
    ``corrupt``. When clusters disagree on a family's type: counters, gauges and untyped families
    are served together as ``untyped``; otherwise the texts whose type differs from the first
    one seen are left out and counted in ``conflicts`` (the text would not be valid with both).
    """
    families, clusters, series, corrupt, conflicts = merge_snapshots(
        values, oldest_ms, MAGIC, MAX_RAW
    )
    return Merged(families, clusters, series, corrupt, conflicts)


def _type_line(name: str, kind: int) -> bytes:
    return f"# TYPE {name} {TYPE_NAMES.get(kind, 'untyped')}\n".encode()


def write_plain(merged: Merged) -> Iterator[bytes | memoryview]:
    """The merged exposition as plain text (each family's buffer is sent without a copy)."""
    for name, (kind, text) in merged.families.items():
        yield _type_line(name, kind)
        yield memoryview(text)


def write_gzip(merged: Merged) -> Iterator[bytes]:
    """The merged exposition as one gzip member, compressed by ISA-L as it is written."""
    stream = isal_zlib.compressobj(DEFLATE_LEVEL, isal_zlib.DEFLATED, GZIP)
    for name, (kind, text) in merged.families.items():
        chunk = stream.compress(_type_line(name, kind)) + stream.compress(text)
        if chunk:
            yield chunk
    yield stream.flush()
