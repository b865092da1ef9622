"""Stored snapshots and their merge into one `/federate` answer."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Mapping
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import snapshot
from telemeter import metrics_pb2
from telemeter.delimited import read_families, write_families
from telemeter.exposition import TYPE_NAMES
from telemeter.selectors import Whitelist
from telemeter.textparse import parse_text
from telemeter.upload import PassConfig, process

GAUGE, COUNTER, SUMMARY, HISTOGRAM = (
    metrics_pb2.GAUGE,
    metrics_pb2.COUNTER,
    metrics_pb2.SUMMARY,
    metrics_pb2.HISTOGRAM,
)


def snap(cluster: str, families: Mapping[str, int], push: int = 1000) -> bytes:
    items = [
        (name, kind, f'{name}{{_id="{cluster}"}} 1 {push}\n'.encode())
        for name, kind in families.items()
    ]
    return snapshot.encode(push, len(items), items)


def _with_raw_length(value: bytes, delta: int) -> bytes:
    size = int.from_bytes(value[15:19], "big") + delta
    return value[:15] + size.to_bytes(4, "big") + value[19:]


def _table_and_texts_disagree() -> bytes:
    raw = b"\x00\x01\x01\x00\x01a\x00\x00\x00\x09a 1 1\n"  # says 9 bytes of text, has 6
    data = _raw_deflate(raw)
    return (
        b"TM3"
        + (5000).to_bytes(8, "big")
        + (1).to_bytes(4, "big")
        + len(raw).to_bytes(4, "big")
        + len(data).to_bytes(4, "big")
        + data
    )


def _raw_deflate(raw: bytes) -> bytes:
    stream = zlib.compressobj(1, zlib.DEFLATED, -15)
    return stream.compress(raw) + stream.flush()


def test_encode_decode_round_trip() -> None:
    value = snapshot.encode(1234, 2, [("a", GAUGE, b"a 1 1\n"), ("b", COUNTER, b"b 2 1\n")])
    decoded = snapshot.decode(value)
    assert decoded.push_time_ms == 1234 and decoded.series == 2
    assert [(f.name, f.kind, f.text) for f in decoded.families] == [
        ("a", GAUGE, b"a 1 1\n"),
        ("b", COUNTER, b"b 2 1\n"),
    ]


def test_encode_lays_out_the_family_table_then_the_texts() -> None:
    families = [("a", GAUGE, b"a 1 1\n"), ("\u00e9t\u00e9", 5, b""), ("b" * 300, COUNTER, b"b 2\n")]
    value = snapshot.encode(1, 2, families)
    raw = zlib.decompress(value[23:], -15)
    expected = len(families).to_bytes(2, "big")
    for name, kind, text in families:
        encoded = name.encode()
        expected += bytes([kind]) + len(encoded).to_bytes(2, "big") + encoded
        expected += len(text).to_bytes(4, "big")
    assert raw == expected + b"".join(text for _, _, text in families)


@pytest.mark.parametrize(
    "families",
    [
        [("n" * 65536, GAUGE, b"")],  # a name longer than its u16 length
        [("a", 256, b"")],  # a type that is not a byte
        [(f"f{i}", GAUGE, b"") for i in range(65536)],  # more families than the u16 count
    ],
)
def test_encode_refuses_what_does_not_fit(families: list[tuple[str, int, bytes]]) -> None:
    with pytest.raises(ValueError):
        snapshot.encode(1, 1, families)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"XX",
        b"TM3" + b"\x00" * 5,
        snapshot.encode(1, 1, [("a", 1, b"x")])[:-3],
        _with_raw_length(snapshot.encode(1, 1, [("a", 1, b"x")]), +1),
        b"TM2" + snapshot.encode(1, 1, [("a", 1, b"x")])[3:],
    ],
)
def test_corrupt_values_are_detected(value: bytes) -> None:
    with pytest.raises(snapshot.CorruptSnapshot):
        snapshot.decode(value)


def test_gzip_answer_is_one_member_equal_to_the_plain_answer() -> None:
    merged = snapshot.merge(
        [snap("x", {"a": GAUGE, "b": COUNTER}), snap("y", {"b": COUNTER, "c": GAUGE})]
    )
    plain = b"".join(snapshot.write_plain(merged))
    body = b"".join(snapshot.write_gzip(merged))
    first_member = zlib.decompressobj(31)  # reads only one member, like curl or httpx
    assert (
        first_member.decompress(body) == plain and first_member.eof and not first_member.unused_data
    )
    assert gzip.decompress(body) == plain
    assert plain.count(b"# TYPE b counter\n") == 1
    assert plain.index(b'b{_id="x"}') < plain.index(b'b{_id="y"}') < plain.index(b"# TYPE c")


def _text(merged: snapshot.Merged, name: str) -> bytes:
    return b"".join(bytes(text) for text in merged.families[name][1])


def test_type_conflicts() -> None:
    simple = snapshot.merge([snap("x", {"m": GAUGE}), snap("y", {"m": COUNTER})])
    assert simple.families["m"][0] == metrics_pb2.UNTYPED
    assert sorted(_text(simple, "m").splitlines()) == [b'm{_id="x"} 1 1000', b'm{_id="y"} 1 1000']
    complex_ = snapshot.merge([snap("x", {"m": SUMMARY}), snap("y", {"m": HISTOGRAM})])
    assert complex_.families["m"][0] == SUMMARY
    assert _text(complex_, "m") == b'm{_id="x"} 1 1000\n'
    assert complex_.conflicts == 1


def _reference_merge(values: list[bytes]) -> tuple[dict[str, tuple[int, list[bytes]]], int]:
    """The type rule, plainly: the type seen first decides what is served."""
    first: dict[str, int] = {}
    texts: dict[str, list[tuple[int, bytes]]] = {}
    for value in values:
        for family in snapshot.decode(value).families:
            first.setdefault(family.name, family.kind)
            texts.setdefault(family.name, []).append((family.kind, family.text))
    out, conflicts = {}, 0
    for name, kind in first.items():
        allowed = snapshot.SIMPLE if kind in snapshot.SIMPLE else (kind,)
        kept = [(k, t) for k, t in texts[name] if k in allowed]
        conflicts += len(texts[name]) - len(kept)
        served = kind if {k for k, _ in kept} == {kind} else snapshot.UNTYPED
        out[name] = (served, sorted(line for _, t in kept for line in t.splitlines()))
    return out, conflicts


def _served(merged: snapshot.Merged) -> dict[str, tuple[int, list[bytes]]]:
    """What is served per family: its type and its lines (in any order)."""
    return {
        name: (kind, sorted(b"".join(map(bytes, texts)).splitlines()))
        for name, (kind, texts) in merged.families.items()
    }


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from("abc"),
            st.sampled_from([GAUGE, COUNTER, metrics_pb2.UNTYPED, SUMMARY, HISTOGRAM]),
            max_size=3,
        ),
        min_size=1,
        max_size=200,
    )
)
def test_merge_follows_the_type_rule_with_or_without_threads(
    clusters: list[dict[str, int]],
) -> None:
    """Merged in two halves on two threads (from PARALLEL_MIN snapshots) or in one: the same
    families, types, lines and conflicts as the plain rule."""
    values = [snap(f"c{i}", fams) for i, fams in enumerate(clusters)]
    merged = snapshot.merge(values)
    expected, conflicts = _reference_merge(values)
    got = _served(merged)
    assert got == expected
    assert list(merged.families) == list(expected)  # families in the order first seen
    assert merged.conflicts == conflicts and merged.clusters == len(values)


def test_merge_skips_old_and_corrupt_values_whole() -> None:
    good, old = snap("x", {"a": GAUGE}, push=5000), snap("y", {"a": GAUGE}, push=1000)
    corrupt = [
        b"",
        b"XX",
        good[:-3],
        _with_raw_length(good, -1),
        _with_raw_length(good, +1),
        _with_raw_length(good, 1 << 30),  # more than MAX_RAW: never inflated
        b"TM2" + good[3:],
        good + b"!",
        _table_and_texts_disagree(),
    ]
    merged = snapshot.merge([good, old, *corrupt], oldest_ms=2000)
    assert (merged.clusters, merged.corrupt) == (1, len(corrupt))
    assert b"".join(snapshot.write_plain(merged)) == b'# TYPE a gauge\na{_id="x"} 1 5000\n'
    assert merged.series == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from("abcde"), st.sampled_from([GAUGE, COUNTER]), max_size=5),
        max_size=6,
    )
)
def test_gzip_always_matches_plain(clusters: list[dict[str, int]]) -> None:
    merged = snapshot.merge([snap(f"c{i}", fams) for i, fams in enumerate(clusters)])
    plain = b"".join(snapshot.write_plain(merged))
    assert zlib.decompressobj(31).decompress(b"".join(snapshot.write_gzip(merged))) == plain
    assert merged.clusters == len(clusters)


@pytest.mark.parametrize("count", [5, snapshot.PARALLEL_MIN, 301])
@pytest.mark.parametrize("seed", range(4))
def test_merge_in_halves_matches_the_rule_at_every_size(count: int, seed: int) -> None:
    rng = random.Random(seed)
    kinds = [GAUGE, COUNTER, metrics_pb2.UNTYPED, SUMMARY, HISTOGRAM]
    clusters = [
        {name: rng.choice(kinds) for name in rng.sample("abcdef", rng.randint(0, 4))}
        for _ in range(count)
    ]
    values = [snap(f"c{i}", fams) for i, fams in enumerate(clusters)]
    merged = snapshot.merge(values)
    expected, conflicts = _reference_merge(values)
    got = _served(merged)
    assert got == expected and merged.conflicts == conflicts
    plain = b"".join(snapshot.write_plain(merged))
    assert zlib.decompressobj(31).decompress(b"".join(snapshot.write_gzip(merged))) == plain


@pytest.mark.parametrize("chunk", [1, 64, 10**9])
def test_gzip_with_segments_is_one_member_equal_to_plain(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Texts compressed into segments during the merge (every text, some, or none), spliced
    into the gzip answer: still one gzip member, CRC included."""
    monkeypatch.setattr(snapshot, "CHUNK", chunk)
    monkeypatch.setattr(snapshot, "SPILL_ABOVE", 0)
    rng = random.Random(chunk)
    clusters = [{n: GAUGE for n in rng.sample("abcdefgh", 5)} for _ in range(80)]
    merged = snapshot.merge([snap(f"c{i}", fams) for i, fams in enumerate(clusters)])
    plain = b"".join(snapshot.write_plain(merged))
    assert len(plain) == snapshot.plain_length(merged)
    body = b"".join(snapshot.write_gzip(merged))
    first_member = zlib.decompressobj(31)
    assert first_member.decompress(body) == plain and first_member.eof
    assert not first_member.unused_data
    assert gzip.decompress(body) == plain  # checks the CRC-32 and the length


def test_gzip_of_nothing_is_valid() -> None:
    assert gzip.decompress(b"".join(snapshot.write_gzip(snapshot.merge([])))) == b""


def test_push_time_series_as_go_writes_it() -> None:
    """Go's strconv 'g' formatting of the push time in seconds, then the time in ms."""
    for _ in range(2):  # the formatted sample is cached per second: the second call reuses it
        assert snapshot.push_time_lines("_id", 'c"1', 1764072000000) == (
            b'telemeter_push_time_seconds{_id="c\\"1"} 1.764072e+09 1764072000000\n'
        )
    assert snapshot.push_time_lines("cluster", "c2", 1764072001000) == (
        b'telemeter_push_time_seconds{cluster="c2"} 1.764072001e+09 1764072001000\n'
    )


def _uploaded(cluster: str, text: str, now: int) -> bytes:
    """A stored snapshot of a text exposition, rendered by the upload pass as at upload."""
    families = parse_text(text)
    for family in families:
        for metric in family.metric:
            metric.timestamp_ms = now
    config = PassConfig(whitelist=Whitelist.from_strings(['{__name__=~".+"}']), token_labels=())
    config = replace(config, extra_labels=(("_id", cluster),))
    result = process(write_families(families), config, now_ms=now, min_timestamp_ms=0)
    return snapshot.encode(now, result.kept, result.families)


PROTOBUF_TEXT = """# TYPE http_requests_total counter
http_requests_total{code="200",path="/a\\\\b"} 1027
http_requests_total{code="500",path="q\\"uote\\nline \u2028sep"} 3
# TYPE temp gauge
temp 21.5
temp{where="out"} NaN
# TYPE rpc summary
rpc{quantile="0.5"} 0.25
rpc{quantile="0.99"} +Inf
rpc_sum 1.5e+06
rpc_count 7
# TYPE lat histogram
lat_bucket{le="0.1"} 1
lat_bucket{le="+Inf"} 3
lat_sum -0
lat_count 3
# TYPE plain untyped
plain{a="1"} -1e-07
"""


def test_protobuf_answer_is_the_text_answer_parsed() -> None:
    values = [
        _uploaded("c1", PROTOBUF_TEXT, 5000),
        _uploaded("c2", PROTOBUF_TEXT.replace("temp gauge", "temp counter"), 6000),
    ]
    merged = snapshot.merge(values)
    assert snapshot.write_protobuf(merged) == write_families(
        parse_text(b"".join(snapshot.write_plain(merged)))
    )
    assert read_families(snapshot.write_protobuf(merged), max_families=100)[0].name == (
        "http_requests_total"
    )


def _reference_answer(values: list[bytes]) -> bytes:
    """The plain answer, plainly: families in the order first seen, each under one ``# TYPE``
    line; its texts per served type (counter, gauge, untyped for the simple ones), each type's
    in the order of the snapshots."""
    first: dict[str, int] = {}
    texts: dict[str, list[tuple[int, bytes]]] = {}
    for value in values:
        for family in snapshot.decode(value).families:
            first.setdefault(family.name, family.kind)
            texts.setdefault(family.name, []).append((family.kind, family.text))
    out = []
    for name, kind in first.items():
        allowed = snapshot.SIMPLE if kind in snapshot.SIMPLE else (kind,)
        kept = {k for k, _ in texts[name] if k in allowed}
        served = kind if kept == {kind} else snapshot.UNTYPED
        out.append(f"# TYPE {name} {TYPE_NAMES.get(served, 'untyped')}\n".encode())
        out += [text for k in allowed for kk, text in texts[name] if kk == k]
    return b"".join(out)


@pytest.mark.parametrize("chunk", [1, 700, None])
def test_streamed_answers_equal_the_reference_merge(
    chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many clusters of several families, merged in halves with texts compressed into segments
    of ``chunk`` bytes (None: the defaults, under which so little text is not compressed): the
    plain answer (sent a segment at a time), the gzip one and the protobuf one are those of the
    reference merge, byte for byte."""
    if chunk is not None:
        monkeypatch.setattr(snapshot, "CHUNK", chunk)
        monkeypatch.setattr(snapshot, "SPILL_ABOVE", 0)
    values = []
    for i in range(150):
        text = PROTOBUF_TEXT.replace("temp gauge", "temp counter") if i % 7 == 3 else PROTOBUF_TEXT
        values.append(_uploaded(f"c{i}", text if i % 5 else text + "# TYPE x gauge\nx 1\n", i))
    merged = snapshot.merge(values)
    expected = _reference_answer(values)
    pieces = list(snapshot.write_plain(merged))
    assert b"".join(pieces) == expected and snapshot.plain_length(merged) == len(expected)
    spilled = any(text.segments for _, texts in merged.families.values() for text in texts)
    assert spilled == (chunk is not None)
    if chunk is not None:
        assert max(map(len, pieces)) <= chunk + 200  # sent a segment (and one text) at a time
    assert gzip.decompress(b"".join(snapshot.write_gzip(merged))) == expected
    assert snapshot.write_protobuf(merged) == write_families(parse_text(expected))
