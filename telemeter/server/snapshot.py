"""The stored form of a cluster's snapshot, and merging snapshots into one `/federate` answer.

A snapshot is rendered once, at upload, and served many times (ARCHITECTURE.md decision 4). Each
family's sample lines (with ``_id`` and the server timestamp in place) are kept as one raw deflate
*segment*: the cluster's families are compressed by one deflate stream with a full flush after
each, so every segment is byte-aligned, ends with an empty stored block and refers to no earlier
data. Segments from any clusters, in any order, followed by a final empty block, form one valid
deflate stream. So a gzip `/federate` answer is a 10-byte header, the stored segments grouped per
family under one ``# TYPE`` line each, and a trailer whose CRC-32 is combined from the CRCs kept
with the segments: one gzip member (which every client reads, unlike concatenated members), with
no compression work per scrape. A plain answer inflates the same segments.

Layout of the stored value (integers big-endian)::

    b"TM2" | push time ms (u64) | series (u32) | family count (u16) |
    per family: type (u8) | name length (u16) | name |
                segment length (u32) | CRC-32 of the text (u32) | text length (u32) | segment
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import deflate
from isal import isal_zlib

from telemeter.core._fastpass import crc32_combine, merge_snapshots
from telemeter.core.errors import TelemeterError
from telemeter.core.exposition import TYPE_NAMES, escape_label_value, format_value

MAGIC = b"TM2"
_HEAD = struct.Struct(">3sQIH")
_FAMILY = struct.Struct(">BH")
_SEGMENT = struct.Struct(">III")
# ISA-L level 1: several times less CPU than zlib's level 1 for about the same size.
DEFLATE_LEVEL = 1
RAW_DEFLATE = -15
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime, unknown OS
FINAL_BLOCK = b"\x03\x00"  # an empty final block with fixed Huffman codes
PUSH_TIME_FAMILY = "telemeter_push_time_seconds"


class CorruptSnapshot(TelemeterError):
    """A stored value is not a snapshot of this format (skipped by `/federate`, and counted)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A family's text as a self-contained raw deflate segment, with the text's CRC and length."""

    data: bytes
    crc: int
    size: int


@dataclass(frozen=True, slots=True)
class Family:
    """One family of a snapshot."""

    name: str
    kind: int
    segment: Segment


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded snapshot: when it was pushed, how many series, and its families."""

    push_time_ms: int
    series: int
    families: list[Family]


class Compressor:
    """Cuts texts into independent deflate segments (one stream, a full flush after each)."""

    def __init__(self) -> None:
        self._stream = isal_zlib.compressobj(DEFLATE_LEVEL, isal_zlib.DEFLATED, RAW_DEFLATE)

    def segment(self, text: bytes) -> Segment:
        """The segment of ``text``."""
        data = self._stream.compress(text) + self._stream.flush(isal_zlib.Z_FULL_FLUSH)
        return Segment(data, zlib.crc32(text), len(text))


def inflate(segment: Segment) -> bytes:
    """The text of a segment."""
    return isal_zlib.decompress(segment.data + FINAL_BLOCK, wbits=RAW_DEFLATE)


def push_time_lines(partition_label: str, cluster_id: str, now_ms: int) -> bytes:
    """The per-cluster last-push-time series (ARCHITECTURE.md decision 11)."""
    labels = f'{partition_label}="{escape_label_value(cluster_id)}"'
    return f"{PUSH_TIME_FAMILY}{{{labels}}} {format_value(now_ms / 1000)} {now_ms}\n".encode()


def encode(push_time_ms: int, series: int, families: Iterable[tuple[str, int, bytes]]) -> bytes:
    """Build a stored snapshot from (name, type, sample lines) tuples, compressing each."""
    items = list(families)
    compressor = Compressor()
    parts = [_HEAD.pack(MAGIC, push_time_ms, series, len(items))]
    for name, kind, lines in items:
        raw = name.encode()
        seg = compressor.segment(lines)
        parts += [
            _FAMILY.pack(kind, len(raw)),
            raw,
            _SEGMENT.pack(len(seg.data), seg.crc, seg.size),
        ]
        parts.append(seg.data)
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
            seg_len, crc, size = _SEGMENT.unpack_from(value, pos)
            pos += _SEGMENT.size
            if pos + seg_len > len(value):
                raise CorruptSnapshot("truncated family segment")
            out.append(Family(name, kind, Segment(value[pos : pos + seg_len], crc, size)))
            pos += seg_len
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptSnapshot(str(exc)) from exc
    if pos != len(value):
        raise CorruptSnapshot("trailing bytes after the last family")
    return Snapshot(push_time_ms, series, out)


@dataclass(slots=True)
class Merged:
    """Snapshots grouped per family, ready to be written as one exposition.

    ``families`` maps a name to ``[kind, segments, crc, size]``: the family's deflate segments in
    cluster order, and the CRC-32 and length of their concatenated text.
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
    are served together as ``untyped``; otherwise the segments whose type differs from the first
    one seen are left out and counted in ``conflicts`` (the text would not be valid with both).
    """
    families, clusters, series, corrupt, conflicts = merge_snapshots(values, oldest_ms, MAGIC)
    return Merged(families, clusters, series, corrupt, conflicts)


def _type_line(name: str, kind: int) -> bytes:
    return f"# TYPE {name} {TYPE_NAMES.get(kind, 'untyped')}\n".encode()


_TYPE_SEGMENTS: dict[tuple[str, int], Segment] = {}


def _type_segment(name: str, kind: int) -> Segment:
    # Family names repeat on every scrape: keep their compressed TYPE lines (bounded).
    key = (name, kind)
    seg = _TYPE_SEGMENTS.get(key)
    if seg is None:
        seg = Compressor().segment(_type_line(name, kind))
        if len(_TYPE_SEGMENTS) < 100_000:
            _TYPE_SEGMENTS[key] = seg
    return seg


def write_gzip(merged: Merged) -> Iterator[bytes]:
    """The merged exposition as one gzip member: stored segments, no compression work."""
    yield GZIP_HEADER
    crc, size = 0, 0
    for name, (kind, segments, fam_crc, fam_size) in merged.families.items():
        head = _type_segment(name, kind)
        crc = crc32_combine(crc32_combine(crc, head.crc, head.size), fam_crc, fam_size)
        size += head.size + fam_size
        yield head.data + b"".join(segments)
    yield FINAL_BLOCK + struct.pack("<II", crc, size & 0xFFFFFFFF)


def write_plain(merged: Merged) -> Iterator[bytes | memoryview]:
    """The merged exposition as plain text: a family's segments inflate as one deflate stream.

    libdeflate inflates about three times faster than zlib or ISA-L here, and the exact output
    size is known from the stored lengths.
    """
    for name, (kind, segments, _, size) in merged.families.items():
        yield _type_line(name, kind)
        # A view of libdeflate's bytearray: the ASGI server sends it without a copy.
        yield memoryview(deflate.deflate_decompress(b"".join(segments) + FINAL_BLOCK, size))
