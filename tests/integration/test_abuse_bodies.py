"""Abuse with upload bodies, against a running server: 10,000 malformed uploads (each must be a
4xx, with bounded memory and nothing stored), and the special float values that are not abuse.

Helpers are in tests/support.py, the ``open_server`` fixture in tests/integration/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections import Counter
from pathlib import Path

import httpx
import pytest
from redis.cluster import RedisCluster

from dev.launch import ServerHandle
from telemeter import metrics_pb2, snappy
from telemeter.delimited import encode_varint, write_families
from tests.support import (
    DELIMITED,
    UPLOAD_HEADERS,
    authorize,
    encode_upload,
    gauge_family,
    new_id,
    now_ms,
    pair,
    pb_field,
    post_upload,
    stored,
    stored_text,
    upload_headers,
    valid_families,
)

pytestmark = pytest.mark.integration


FUZZ_CASES = 10_000
FUZZ_CONCURRENCY = 8
# A server decodes at most --max-concurrent-uploads (64) bodies of at most --limit-bytes
# (500 KiB, decompressed too) at once; the fuzzer keeps 8 in flight. Measured: RSS 83 MB before
# and after, peak +1.5 MB. Keeping what the 10,000 requests sent (7 MB compressed, far more
# decompressed) or leaking per request would show well above this.
RSS_GROWTH_LIMIT_KB = 32 * 1024
# Bodies over the server's --limit-bytes, still being sent while the 413 is on its way: the
# lingering close (docs/protocol.md) must let every one of them read its answer.
OVERSIZED = "body over --limit-bytes"
OVERSIZED_CASES = 30
OVERSIZED_BYTES = (600_000, 1_000_000, 3_000_000)


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in kB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


# ---- 10,000 malformed uploads ------------------------------------------------------------------

Case = tuple[str, bytes, dict[str, str]]
SNAPPY = UPLOAD_HEADERS
IDENTITY = {"Content-Type": DELIMITED}


def _chunk(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + len(payload).to_bytes(3, "little") + payload


def malformed_cases(cluster_id: str, seed: int = 7) -> list[Case]:
    """At least FUZZ_CASES uploads that must each be refused with a 4xx (seeded, repeatable).

    Mutations are structural on purpose: a random bit flip of a valid payload may still be a
    valid payload (in a help string, say), which the server would rightly store.
    """
    rng = random.Random(seed)
    raw = write_families(valid_families(cluster_id))
    framed = snappy.encode_framed(raw)
    assert len(raw) < 65536  # one chunk: no truncation point is a chunk boundary
    ident = len(snappy.STREAM_IDENTIFIER)
    me = pair("_id", cluster_id)
    cases: list[Case] = []

    def add(kind: str, body: bytes, headers: dict[str, str] = SNAPPY) -> None:
        cases.append((kind, body, headers))

    def families_body(*families: metrics_pb2.MetricFamily) -> bytes:
        return encode_upload(list(families))

    for _ in range(1800):  # random bytes, compressed or not
        body = rng.randbytes(rng.randint(1, 3000))
        add("random bytes", body, rng.choice([SNAPPY, IDENTITY]))
    for _ in range(800):  # a valid stream identifier, then garbage chunks
        add("random chunks", snappy.STREAM_IDENTIFIER + rng.randbytes(rng.randint(1, 2000)))
    for _ in range(1500):  # truncated frames (never the bare identifier: an empty stream)
        cut = rng.choice([rng.randint(1, ident - 1), rng.randint(ident + 1, len(framed) - 1)])
        add("truncated frame", framed[:cut])
    for _ in range(1500):  # corrupt frames: identifier, CRC or compressed data (not the header)
        at = rng.choice([rng.randrange(0, ident), rng.randrange(ident + 4, len(framed))])
        corrupt = bytearray(framed)
        corrupt[at] ^= rng.randint(1, 255)
        add("corrupt frame", bytes(corrupt))
    for _ in range(600):  # frames declaring a huge decompressed size
        declared = rng.choice([65537, 600_000, 10**9, 2**32 - 1, rng.randint(65537, 2**32 - 1)])
        chunk = _chunk(
            0x00, b"\0\0\0\0" + encode_varint(declared) + rng.randbytes(rng.randint(0, 64))
        )
        add("huge declared size", snappy.STREAM_IDENTIFIER + chunk)
    for _ in range(100):  # many chunks, each declaring the maximum 64 KiB: over the limit
        chunk = _chunk(0x00, b"\0\0\0\0" + encode_varint(65536) + b"\0\x01")
        add("chunks over the limit", snappy.STREAM_IDENTIFIER + chunk * rng.randint(9, 40))
    oversized = rng.randbytes(OVERSIZED_BYTES[-1])
    for i in range(OVERSIZED_CASES):  # bodies over --limit-bytes (500 KiB): a 413, never a reset
        add(
            OVERSIZED,
            oversized[: OVERSIZED_BYTES[i % len(OVERSIZED_BYTES)]],
            rng.choice([SNAPPY, IDENTITY]),
        )
    for _ in range(1200):  # protobuf with oversized varints and lengths
        headers = rng.choice([SNAPPY, IDENTITY])
        wrap = snappy.encode_framed if headers is SNAPPY else bytes
        choice = rng.randrange(5)
        if choice == 0:  # a length prefix far beyond the body
            data = encode_varint(rng.randint(len(raw) + 1, 2**63)) + raw
        elif choice == 1:  # an 11-byte varint
            data = b"\xff" * rng.randint(11, 20) + b"\x01" + raw
        elif choice == 2:  # a name field declaring 2**31 bytes
            msg = encode_varint(1 << 3 | 2) + encode_varint(rng.randint(2**20, 2**31)) + b"abc"
            data = encode_varint(len(msg)) + msg
        elif choice == 3:  # a type varint of 11+ bytes
            msg = pb_field(1, b"m") + bytes([3 << 3]) + b"\x80" * rng.randint(10, 16) + b"\x01"
            data = encode_varint(len(msg)) + msg
        else:  # a metric sub-message longer than its family
            msg = (
                pb_field(1, b"m")
                + encode_varint(4 << 3 | 2)
                + encode_varint(rng.randint(100, 2**28))
                + b"x"
            )
            data = encode_varint(len(msg)) + msg
        add("oversized varint/length", wrap(data), headers)
    for n in range(20):  # 100,000 tiny families (over --limit-series)
        tiny = pb_field(1, b"a" if n % 2 else b"ab")
        add("100k tiny families", snappy.encode_framed((encode_varint(len(tiny)) + tiny) * 100_000))
    for _ in range(40):  # 1 MB label values (over --limit-bytes once decompressed)
        big = pair("big", rng.choice("xyz") * (1 << 20))
        add("1 MB label value", families_body(gauge_family("m", [me, big])))
    for _ in range(200):  # label values just over 255 bytes
        long_value = "v" * rng.randint(256, 4096)
        add("long label value", families_body(gauge_family("m", [me, pair("l", long_value)])))
    for _ in range(500):  # duplicate label names
        name = rng.choice(["a", "job", "instance", "_id"])
        labels = [me, pair(name, "1"), pair(name, "2")] if name != "_id" else [me, me]
        rng.shuffle(labels)
        add("duplicate label names", families_body(gauge_family("m", labels)))
    for _ in range(600):  # invalid UTF-8 in a label value, a label name or a metric name
        junk = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        where = rng.randrange(3)
        if where == 0:
            family = gauge_family("m", [me, pair("l", b"ok" + junk)])
        elif where == 1:
            family = gauge_family("m", [me, pair(b"l" + junk, "v")])
        else:  # built on the wire: the name is not valid UTF-8
            metric = gauge_family("m", [me]).metric[0].SerializeToString()
            msg = (
                pb_field(1, b"m" + junk) + bytes([3 << 3, metrics_pb2.GAUGE]) + pb_field(4, metric)
            )
            add("invalid UTF-8", snappy.encode_framed(encode_varint(len(msg)) + msg))
            continue
        add("invalid UTF-8", families_body(family))
    for _ in range(700):  # other invalid series: names, missing values, timestamps, spoofing
        choice = rng.randrange(7)
        if choice == 0:
            body = families_body(gauge_family(rng.choice(["1m", "m-x", "m x", ""]), [me]))
        elif choice == 1:
            bad = rng.choice(["1a", "a-b", "a b", "", "__x-"])
            body = families_body(gauge_family("m", [me, pair(bad, "v")]))
        elif choice == 2:
            family = gauge_family("m", [me])
            family.metric[0].ClearField("timestamp_ms")
            body = families_body(family)
        elif choice == 3:
            body = families_body(gauge_family("m", [me], ts=now_ms() - 25 * 3600 * 1000))
        elif choice == 4:
            body = families_body(gauge_family("m", [pair("_id", new_id("spoof"))]))
        elif choice == 5:
            family = gauge_family("m", [me])
            family.metric[0].ClearField("gauge")
            family.metric[0].counter.value = 1  # a counter value in a gauge family
            body = families_body(family)
        else:
            labels = [me] + [pair(f"l{i}", "v") for i in range(rng.randint(65, 200))]
            body = families_body(gauge_family("m", labels))
        add("invalid series", body)
    valid = snappy.encode_framed(raw)
    types = [
        "text/plain", "application/json", "application/x-protobuf", "",
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily",
        "application/vnd.google.protobuf; proto=other.Message; encoding=delimited",
        "application/vnd.google.protobuf; encoding=text",
    ]  # fmt: skip
    encodings = ["gzip", "br", "deflate", "zstd", "snappy, gzip", "x-snappy-framed", "identity2"]
    for _ in range(500):  # wrong Content-Type or Content-Encoding, valid body
        if rng.random() < 0.5:
            content_type = rng.choice([*types, rng.randbytes(12).hex()])
            headers = {"Content-Type": content_type, "Content-Encoding": "snappy"}
            add("wrong content type", valid, headers)
        else:
            add(
                "wrong content encoding",
                valid,
                {"Content-Type": DELIMITED, "Content-Encoding": rng.choice(encodings)},
            )
    return cases


class RawConnection:
    """A minimal keep-alive HTTP/1.1 client connection.

    httpx costs ~5 ms of client CPU per request here, five times what the server spends
    refusing one; on two shared cores that would make the 10,000 requests take minutes.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST and return (status, body); raise ConnectionError if no answer came."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        # The server may answer (413) and close before reading everything.
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            await self.close()
            raise ConnectionError("connection closed without an answer")
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        answer = await reader.readexactly(length)
        if close:
            await self.close()
        return int(status_line.split()[1]), answer


async def _send_all(url: str, jwt: str, cases: list[Case]) -> list[tuple[str, int, str]]:
    """POST every case over FUZZ_CONCURRENCY keep-alive connections; (kind, status, detail).

    A status of -1 means no answer at all (the connection broke), which is a failure too.
    """
    target = httpx.URL(url)
    assert target.host and target.port
    results: list[tuple[str, int, str]] = []
    pending = iter(cases)

    async def worker() -> None:
        conn = RawConnection(target.host, target.port or 80)
        try:
            for kind, body, headers in pending:
                try:
                    status, answer = await conn.post(
                        target.raw_path.decode(), body, upload_headers(jwt, headers)
                    )
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    results.append((kind, -1, repr(exc)))
                    await conn.close()
                    continue
                results.append((kind, status, answer[:200].decode(errors="replace")))
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(FUZZ_CONCURRENCY)))
    return results


def test_ten_thousand_malformed_uploads_are_refused(
    open_server: ServerHandle, rclient: RedisCluster
) -> None:
    cluster_id = new_id("fuzz")
    jwt = authorize(open_server, cluster_id)
    good = post_upload(open_server, jwt, encode_upload(valid_families(cluster_id)))
    assert good.status_code == 200, good.text
    before = stored(rclient, cluster_id)
    assert before is not None
    cases = malformed_cases(cluster_id)
    assert len(cases) >= FUZZ_CASES
    asyncio.run(_send_all(f"{open_server.external}/upload", jwt, cases[:200]))  # warm-up
    rss_before, _ = rss_kb(open_server.process.pid)

    results = asyncio.run(_send_all(f"{open_server.external}/upload", jwt, cases))

    rss_after, peak = rss_kb(open_server.process.pid)
    by_kind: dict[str, Counter[int]] = {}
    for kind, status, _ in results:
        by_kind.setdefault(kind, Counter())[status] += 1
    wrong = [(k, s, d) for k, s, d in results if not 400 <= s < 500]
    assert not wrong, f"{len(wrong)} answers outside 4xx, e.g. {wrong[:5]}; by kind {by_kind}"
    assert by_kind[OVERSIZED] == Counter({413: OVERSIZED_CASES}), by_kind[OVERSIZED]
    assert open_server.process.alive
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KB, (rss_before, rss_after, peak)
    assert peak - rss_before < 2 * RSS_GROWTH_LIMIT_KB, (rss_before, rss_after, peak)
    assert stored(rclient, cluster_id) == before  # nothing of it reached the stored snapshot
    log = open_server.process.log_path.read_text(errors="replace")
    assert "Traceback" not in log, open_server.process.log_tail(60)


def test_nan_and_inf_are_valid_samples(open_server: ServerHandle, rclient: RedisCluster) -> None:
    # NaN and +-Inf are valid Prometheus sample values, not abuse: stored and served as such.
    cluster_id = new_id("nan")
    jwt = authorize(open_server, cluster_id)
    me = pair("_id", cluster_id)
    families = [
        gauge_family(f"abuse_special_{i}", [me], value=value)
        for i, value in enumerate([float("nan"), float("inf"), float("-inf")])
    ]
    answer = post_upload(open_server, jwt, encode_upload(families))
    assert answer.status_code == 200, answer.text
    value = stored(rclient, cluster_id)
    assert value is not None
    text = stored_text(value)
    for i, shown in enumerate(["NaN", "+Inf", "-Inf"]):
        assert re.search(rf"^abuse_special_{i}\{{[^}}]*\}} {re.escape(shown)} \d+$", text, re.M), (
            text
        )
