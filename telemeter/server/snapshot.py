"""The stored form of a cluster's snapshot, and merging snapshots into one `/federate` answer.

A snapshot is rendered once, at upload, and served many times (ARCHITECTURE.md decision 4):
each family's sample lines (with ``_id`` and the server timestamp in place) are kept as one gzip
member. Concatenated gzip members are one valid gzip stream, so a gzip `/federate` answer is a
concatenation of stored blocks, grouped per family under a single ``# TYPE`` line; a plain answer
inflates the same blocks.

Layout of the stored value (all integers big-endian)::

    b"TM1" | push time ms (u64) | series (u32) | family count (u16) |
    per family: type (u8) | name length (u16) | name | block length (u32) | block
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from isal import isal_zlib

from telemeter.core import metrics_pb2
from telemeter.core.errors import TelemeterError
from telemeter.core.exposition import TYPE_NAMES, escape_label_value, format_value

MAGIC = b"TM1"
_HEAD = struct.Struct(">3sQIH")
_FAMILY = struct.Struct(">BH")
_SIZE = struct.Struct(">I")
GZIP_WBITS = 31
# ISA-L level 1: about 20x less CPU than zlib's default for a few percent more bytes.
GZIP_LEVEL = 1
PUSH_TIME_FAMILY = "telemeter_push_time_seconds"
# Sample lines of these types have one shape (`name{...} value ts`), so they can share a family
# under `untyped` when clusters disagree on the type.
_SIMPLE = {metrics_pb2.COUNTER, metrics_pb2.GAUGE, metrics_pb2.UNTYPED}


class CorruptSnapshot(TelemeterError):
    """A stored value is not a snapshot of this format (skipped by `/federate`, and counted)."""


@dataclass(frozen=True, slots=True)
class Family:
    """One family of a snapshot: its name, type and gzip block."""

    name: str
    kind: int
    block: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded snapshot: when it was pushed, how many series, and its families."""

    push_time_ms: int
    series: int
    families: list[Family]


def compress(text: bytes) -> bytes:
    """One gzip member of ``text``."""
    return isal_zlib.compress(text, GZIP_LEVEL, wbits=GZIP_WBITS)


def push_time_lines(partition_label: str, cluster_id: str, now_ms: int) -> bytes:
    """The per-cluster last-push-time series (ARCHITECTURE.md decision 11)."""
    labels = f'{partition_label}="{escape_label_value(cluster_id)}"'
    return f"{PUSH_TIME_FAMILY}{{{labels}}} {format_value(now_ms / 1000)} {now_ms}\n".encode()


def encode(push_time_ms: int, series: int, families: Iterable[tuple[str, int, bytes]]) -> bytes:
    """Build a stored snapshot from (name, type, sample lines) tuples, compressing each."""
    items = list(families)
    parts = [_HEAD.pack(MAGIC, push_time_ms, series, len(items))]
    for name, kind, lines in items:
        raw = name.encode()
        block = compress(lines)
        parts += [_FAMILY.pack(kind, len(raw)), raw, _SIZE.pack(len(block)), block]
    return b"".join(parts)


def decode(value: bytes) -> Snapshot:
    """Split a stored snapshot into its parts."""
    try:
        magic, push_time_ms, series, count = _HEAD.unpack_from(value, 0)
        if magic != MAGIC:
            raise CorruptSnapshot("not a telemeter snapshot")
        pos = _HEAD.size
        out: list[Family] = []
        for _ in range(count):
            kind, name_len = _FAMILY.unpack_from(value, pos)
            pos += _FAMILY.size
            name = value[pos : pos + name_len].decode()
            pos += name_len
            (block_len,) = _SIZE.unpack_from(value, pos)
            pos += _SIZE.size
            if pos + block_len > len(value):
                raise CorruptSnapshot("truncated family block")
            out.append(Family(name, kind, value[pos : pos + block_len]))
            pos += block_len
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptSnapshot(str(exc)) from exc
    if pos != len(value):
        raise CorruptSnapshot("trailing bytes after the last family")
    return Snapshot(push_time_ms, series, out)


@dataclass(slots=True)
class Merged:
    """Snapshots grouped per family, ready to be written as one exposition."""

    families: dict[str, tuple[int, list[bytes]]] = field(default_factory=dict)
    clusters: int = 0
    series: int = 0
    conflicts: int = 0


def merge(snapshots: Iterable[Snapshot]) -> Merged:
    """Group the families of many clusters by name, so each name is written once.

    When clusters disagree on a family's type: counters, gauges and untyped families are served
    together as ``untyped``; otherwise the blocks whose type differs from the first one seen are
    left out and counted in ``conflicts`` (the text would not be valid with both).
    """
    merged = Merged()
    for snap in snapshots:
        merged.clusters += 1
        merged.series += snap.series
        for fam in snap.families:
            entry = merged.families.get(fam.name)
            if entry is None:
                merged.families[fam.name] = (fam.kind, [fam.block])
            elif entry[0] == fam.kind:
                entry[1].append(fam.block)
            elif entry[0] in _SIMPLE and fam.kind in _SIMPLE:
                merged.families[fam.name] = (metrics_pb2.UNTYPED, entry[1])
                entry[1].append(fam.block)
            else:
                merged.conflicts += 1
    return merged


_TYPE_MEMBERS: dict[tuple[str, int], bytes] = {}


def _type_line(name: str, kind: int) -> bytes:
    return f"# TYPE {name} {TYPE_NAMES.get(kind, 'untyped')}\n".encode()


def _type_member(name: str, kind: int) -> bytes:
    # Family names repeat on every scrape: keep their compressed TYPE lines (bounded).
    key = (name, kind)
    member = _TYPE_MEMBERS.get(key)
    if member is None:
        member = compress(_type_line(name, kind))
        if len(_TYPE_MEMBERS) < 100_000:
            _TYPE_MEMBERS[key] = member
    return member


def write_gzip(merged: Merged) -> Iterator[bytes]:
    """The merged exposition as a gzip stream: stored members, one TYPE member per family."""
    for name, (kind, blocks) in merged.families.items():
        yield _type_member(name, kind) + b"".join(blocks)


def write_plain(merged: Merged) -> Iterator[bytes]:
    """The merged exposition as plain text (inflating the stored blocks)."""
    decompress = isal_zlib.decompress
    for name, (kind, blocks) in merged.families.items():
        yield _type_line(name, kind) + b"".join(decompress(b, wbits=GZIP_WBITS) for b in blocks)
