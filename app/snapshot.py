"""The stored form of a cluster's snapshot, and merging snapshots into one `/federate` answer.

A snapshot is rendered once, at upload, and served many times (docs/architecture.md, D4). Its
families' sample lines (with ``_id`` and the server timestamp in place) are stored behind a small
family table, the whole compressed as *one* raw deflate stream (ISA-L level 1: ~45 us and ~4.9 KB
for the standard payload). One stream per cluster compresses about twice as well as one
independent segment per family, because the label sets repeat across families.

`/federate` inflates each snapshot once (libdeflate, exact size known), appends each family's
text to that family's buffer (compiled, `_snapshot.merge_snapshots`), and writes every family
once under its ``# TYPE`` line: plain, or as one gzip member. In a merge of more than
`SPILL_ABOVE` of text a family's buffer holds at most `CHUNK` bytes; each full chunk is
compressed into a segment (ISA-L), so the merge holds about the gzip answer, not the text: the
plain answer inflates the segments one at a time as it is sent, the gzip answer splices them
in (docs/architecture.md, "/federate"; docs/scale.md).

The layout of the stored value is defined once, in telemeter/_snapshot.pxd; the compiled module
packs, unpacks and merges it, and nothing here knows where a field is.
"""

from __future__ import annotations

import functools
import struct
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from isal import isal_zlib

from telemeter._snapshot import (
    crc32_combine,
    inflate_segment,
    merge_snapshots,
    pack_snapshot,
    raw_length,
    unpack_snapshot,
)
from telemeter.delimited import write_families
from telemeter.errors import TelemeterError
from telemeter.exposition import TYPE_NAMES, escape_label_value, format_value
from telemeter.textparse import family_from_lines

DEFLATE_LEVEL = 1  # ISA-L level 1: several times less CPU than zlib's level 1, same size
RAW_DEFLATE = -15
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
    """The per-cluster last-push-time series (docs/architecture.md, D11)."""
    labels = f'{partition_label}="{escape_label_value(cluster_id)}"'
    return f"{PUSH_TIME_FAMILY}{{{labels}}} {_sample(now_ms)}\n".encode()


@functools.lru_cache(maxsize=16)
def _sample(now_ms: int) -> str:
    # Uploads are stamped in whole seconds: the (slow, Go-exact) float formatting runs about once
    # a second, not once per upload.
    return f"{format_value(now_ms / 1000)} {now_ms}"


def encode(push_time_ms: int, series: int, families: Iterable[tuple[str, int, bytes]]) -> bytes:
    """Build a stored snapshot from (name, type, sample lines) tuples."""
    return pack_snapshot(push_time_ms, series, list(families), _compress)


def _compress(raw: bytes) -> bytes:
    return isal_zlib.compress(raw, DEFLATE_LEVEL, RAW_DEFLATE)


def decode(value: bytes) -> Snapshot:
    """Split a stored snapshot into its families."""
    try:
        push_time_ms, series, families = unpack_snapshot(value, MAX_RAW)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CorruptSnapshot(str(exc)) from exc
    return Snapshot(push_time_ms, series, [Family(*family) for family in families])


@dataclass(slots=True)
class Merged:
    """Snapshots grouped per family, ready to be written as one exposition.

    ``families`` maps a name to ``[kind, texts]``: the family's lines from every cluster, in a
    few buffers (`_snapshot.FamilyText`, one per type and per half of the snapshots).
    """

    families: dict[str, list[Any]] = field(default_factory=dict)
    clusters: int = 0
    series: int = 0
    corrupt: int = 0
    conflicts: int = 0


COUNTER, GAUGE, UNTYPED, HISTOGRAM, GAUGE_HISTOGRAM = 0, 1, 3, 4, 5  # MetricType values
SIMPLE = (COUNTER, GAUGE, UNTYPED)  # types served together, as untyped when they differ
# Below this many snapshots one thread merges them all; above, two halves merge in parallel
# (the compiled merge inflates and copies without the GIL).
PARALLEL_MIN = 64
# A merge of more text than this keeps at most CHUNK of a family's text (per type and half)
# uncompressed: the rest is compressed into segments as it comes, so the merge holds about the
# gzip answer. CHUNK trades the gzip answer's size for memory (docs/scale.md).
SPILL_ABOVE = 128 * 2**20
CHUNK = 512 * 1024
FINAL_BLOCK = b"\x03\x00"  # an empty final deflate block (fixed Huffman, end of block)
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge")


def merge(values: list[bytes], *, oldest_ms: int = 0) -> Merged:
    """Group the families of many stored snapshots by name, so each name is written once.

    Runs compiled (`_snapshot.merge_snapshots`), with no Python work per family per cluster; the
    second half of the snapshots is merged on a worker thread meanwhile. Snapshots pushed before
    ``oldest_ms`` are left out; values that do not parse are counted in ``corrupt``. When clusters
    disagree on a family's type, the type seen first decides: if it is a counter, gauge or
    untyped, every counter, gauge and untyped text is served, as ``untyped`` when they differ;
    otherwise only the texts of that type are. Texts left out are counted in ``conflicts`` (the
    exposition would not be valid with both).
    """
    chunk = CHUNK if raw_length(values) > SPILL_ABOVE else MAX_RAW
    if len(values) < PARALLEL_MIN:
        parts = [merge_snapshots(values, oldest_ms, MAX_RAW, chunk, _segment)]
    else:
        half = len(values) // 2
        second = _POOL.submit(merge_snapshots, values[half:], oldest_ms, MAX_RAW, chunk, _segment)
        parts = [merge_snapshots(values[:half], oldest_ms, MAX_RAW, chunk, _segment)]
        parts.append(second.result())
    merged = Merged()
    grouped: dict[str, list[Any]] = {}  # name -> [first kind, texts per kind]
    for families, clusters, series, corrupt in parts:
        merged.clusters += clusters
        merged.series += series
        merged.corrupt += corrupt
        for name, texts in families.items():
            entry = grouped.get(name)
            if entry is None:
                grouped[name] = entry = [texts[-1], [[] for _ in texts[:-1]]]
            for kind, text in enumerate(texts[:-1]):
                if text is not None:
                    entry[1][kind].append(text)
    for name, (first, by_kind) in grouped.items():
        kinds = SIMPLE if first in SIMPLE else (first,)
        present = [k for k in kinds if by_kind[k]]
        kind = first if present == [first] else UNTYPED
        merged.families[name] = [kind, [text for k in kinds for text in by_kind[k]]]
        merged.conflicts += sum(
            text.clusters for k, texts in enumerate(by_kind) if k not in kinds for text in texts
        )
    return merged


def _segment(text: memoryview) -> bytes:
    """A chunk of a family's text as raw deflate that inflates alone and splices into a longer
    stream: ending with a sync flush, then an empty final block (ISA-L releases the GIL)."""
    stream = isal_zlib.compressobj(DEFLATE_LEVEL, isal_zlib.DEFLATED, RAW_DEFLATE)
    return stream.compress(text) + stream.flush(isal_zlib.Z_SYNC_FLUSH) + FINAL_BLOCK


def _type_line(name: str, kind: int) -> bytes:
    return f"# TYPE {name} {TYPE_NAMES.get(kind, 'untyped')}\n".encode()


def plain_length(merged: Merged) -> int:
    """The length of the plain answer (sent with a ``Content-Length``)."""
    return sum(
        len(_type_line(name, kind)) + sum(map(len, texts))
        for name, (kind, texts) in merged.families.items()
    )


def write_plain(merged: Merged) -> Iterator[bytes | memoryview]:
    """The merged exposition as plain text, a segment's text at a time (tails without a copy)."""
    for name, (kind, texts) in merged.families.items():
        yield _type_line(name, kind)
        for text in texts:
            for data, size, _ in text.segments:
                yield inflate_segment(data, size)
            tail = memoryview(text)
            if len(tail):
                yield tail


def write_protobuf(merged: Merged) -> bytes:
    """The merged families as delimited protobuf, built from each family's name, type and
    lines (no text exposition written and parsed back), one family's text inflated at a time.
    Raises InvalidPayload when a stored text is not made of sample lines. A gauge histogram is
    answered as a histogram, as in text."""
    return write_families(
        family_from_lines(
            name, HISTOGRAM if kind == GAUGE_HISTOGRAM else kind, b"".join(map(bytes, texts))
        )
        for name, (kind, texts) in merged.families.items()
    )


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime, unknown OS
# Below this much text in the tails one thread compresses them all for a gzip answer.
PARALLEL_GZIP_MIN = 4 * 1024 * 1024


def write_gzip(merged: Merged) -> Iterator[bytes]:
    """The merged exposition as one gzip member, a family at a time.

    The tails are compressed into segments too (two halves on two threads for a large answer),
    then every segment is spliced in as it is (without its final block) after a full flush of
    the stream that compresses the type lines, so neither refers to the other's data. The
    trailer's CRC-32 is combined from the segments' CRCs and those of the type lines.
    """
    _seal([text for _, texts in merged.families.values() for text in texts])
    stream = isal_zlib.compressobj(DEFLATE_LEVEL, isal_zlib.DEFLATED, RAW_DEFLATE)
    crc = size = 0
    yield GZIP_HEADER
    for name, (kind, texts) in merged.families.items():
        line = _type_line(name, kind)
        out: list[bytes | memoryview] = [
            stream.compress(line),
            stream.flush(isal_zlib.Z_FULL_FLUSH),
        ]
        crc, size = isal_zlib.crc32(line, crc), size + len(line)
        for text in texts:
            for data, length, data_crc in text.segments:
                out.append(memoryview(data)[: -len(FINAL_BLOCK)])
                crc, size = crc32_combine(crc, data_crc, length), size + length
        yield b"".join(out)
    yield stream.flush(isal_zlib.Z_FINISH) + struct.pack("<II", crc, size & 0xFFFFFFFF)


def _seal(texts: list[Any]) -> None:
    """Compress every text's tail into a segment; the second half (by size) on a worker."""
    ends = list(accumulate(len(memoryview(text)) for text in texts))
    if not ends or ends[-1] < PARALLEL_GZIP_MIN:
        cut = len(texts)
    else:
        cut = bisect_left(ends, ends[-1] / 2) + 1
    later = _POOL.submit(_seal_each, texts[cut:]) if cut < len(texts) else None
    _seal_each(texts[:cut])
    if later is not None:
        later.result()


def _seal_each(texts: list[Any]) -> None:
    for text in texts:
        text.seal(_segment)
