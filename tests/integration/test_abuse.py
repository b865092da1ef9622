"""Abuse, against running servers: malformed uploads, forged tokens, slow clients, internal paths
on the external listener, token-exchange bursts, and the rate limit across three pods.

Every test talks HTTP to real `telemeter-server` processes on the session's Redis Cluster; the
upstream authorization service is the real stand-in process behind a small counting proxy (a
Starlette app under uvicorn in a thread of this process), so the tests can count upstream calls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from redis.cluster import ClusterNode, RedisCluster
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import keys, snapshot
from app.tokens import AUDIENCES, ISSUER, LABELS_CLAIM, TokenIssuer, load_signing_key
from app.tokens import generate_signing_key as other_key
from dev.launch import ServerHandle, start_authorization_server, start_server
from dev.ports import free_port
from telemeter import metrics_pb2, snappy
from telemeter.delimited import write_families
from tests.conftest import RedisClusterHandle
from tests.support import DELIMITED, UPLOAD_HEADERS, encode_upload

pytestmark = pytest.mark.integration

RING_ARGS = ["--ring-heartbeat", "0.5s", "--ring-lease", "2s"]
FUZZ_CASES = 10_000
FUZZ_CONCURRENCY = 8
# A server decodes at most --max-concurrent-uploads (64) bodies of at most --limit-bytes
# (500 KiB, decompressed too) at once; the fuzzer keeps 8 in flight. Measured: RSS 83 MB before
# and after, peak +1.5 MB. Keeping what the 10,000 requests sent (7 MB compressed, far more
# decompressed) or leaking per request would show well above this.
RSS_GROWTH_LIMIT_KB = 32 * 1024


# ---- helpers ----------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time()) * 1000


def new_id(prefix: str = "abuse") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def pair(name: str | bytes, value: str | bytes) -> metrics_pb2.LabelPair:
    """A label pair; bytes are set through the wire format so invalid UTF-8 can be sent."""
    if isinstance(name, str) and isinstance(value, str):
        return metrics_pb2.LabelPair(name=name, value=value)
    raw_name = name.encode() if isinstance(name, str) else name
    raw_value = value.encode() if isinstance(value, str) else value
    wire = _field(1, raw_name) + _field(2, raw_value)
    out = metrics_pb2.LabelPair()
    out.ParseFromString(wire)  # proto2 strings: upb keeps the bytes as they are
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def gauge_family(
    name: str, labels: list[metrics_pb2.LabelPair], *, value: float = 1.0, ts: int | None = None
) -> metrics_pb2.MetricFamily:
    return metrics_pb2.MetricFamily(
        name=name,
        type=metrics_pb2.GAUGE,
        metric=[
            metrics_pb2.Metric(
                label=labels,
                gauge=metrics_pb2.Gauge(value=value),
                timestamp_ms=now_ms() if ts is None else ts,
            )
        ],
    )


def valid_families(cluster_id: str) -> list[metrics_pb2.MetricFamily]:
    """A small valid upload of ``cluster_id``: 3 families of 5 series."""
    families = []
    for f in range(3):
        family = metrics_pb2.MetricFamily(name=f"abuse_metric_{f}", type=metrics_pb2.COUNTER)
        for i in range(5):
            family.metric.add(
                label=[pair("_id", cluster_id), pair("instance", f"i{i}")],
                counter=metrics_pb2.Counter(value=float(i)),
                timestamp_ms=now_ms(),
            )
        families.append(family)
    return families


def upload_headers(jwt: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt}", **(UPLOAD_HEADERS if extra is None else extra)}


def authorize_at(server: ServerHandle, cluster_id: str, token: str = "x") -> httpx.Response:
    return httpx.post(
        f"{server.external}/authorize",
        params={"id": cluster_id},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def jwt_for(server: ServerHandle, cluster_id: str, token: str = "x") -> str:
    answer = authorize_at(server, cluster_id, token)
    assert answer.status_code == 200, answer.text
    value: str = answer.json()["token"]
    return value


def post_upload(
    server: ServerHandle, jwt: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{server.external}/upload", content=body, headers=upload_headers(jwt, headers), timeout=10
    )


def stored(rclient: RedisCluster, cluster_id: str) -> bytes | None:
    value = rclient.get(keys.snapshot_key(cluster_id))
    assert value is None or isinstance(value, bytes)
    return value


def stored_text(value: bytes) -> str:
    snap = snapshot.decode(value)
    return b"".join(f.text for f in snap.families).decode()


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in kB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def start_all(
    redis_url: str, workdir: Path, key: Path, specs: dict[str, list[str]]
) -> list[ServerHandle]:
    """Start servers in parallel and wait until each answers."""
    handles = [
        start_server(
            redis_url=redis_url,
            workdir=workdir,
            name=name,
            shared_key=key,
            extra_args=[*RING_ARGS, *args],
            wait=False,
        )
        for name, args in specs.items()
    ]
    try:
        for handle in handles:
            handle.process.wait_http(handle.external + "/healthz")
            handle.process.wait_http(handle.internal + "/healthz")
    except BaseException:
        for handle in handles:
            handle.process.stop()
        raise
    return handles


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rclient(redis_cluster: RedisClusterHandle) -> Iterator[RedisCluster]:
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes],  # type: ignore[no-untyped-call]
        password=redis_cluster.password,
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """A server without a rate limit, so every malformed body is actually decoded."""
    (handle,) = start_all(
        redis_cluster.url,
        tmp_path_factory.mktemp("abuse"),
        signing_key,
        {"abuse": ["--ratelimit", "0s"]},
    )
    yield handle
    handle.process.stop()


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
        chunk = _chunk(0x00, b"\0\0\0\0" + _varint(declared) + rng.randbytes(rng.randint(0, 64)))
        add("huge declared size", snappy.STREAM_IDENTIFIER + chunk)
    for _ in range(100):  # many chunks, each declaring the maximum 64 KiB: over the limit
        chunk = _chunk(0x00, b"\0\0\0\0" + _varint(65536) + b"\0\x01")
        add("chunks over the limit", snappy.STREAM_IDENTIFIER + chunk * rng.randint(9, 40))
    for _ in range(1200):  # protobuf with oversized varints and lengths
        headers = rng.choice([SNAPPY, IDENTITY])
        wrap = snappy.encode_framed if headers is SNAPPY else bytes
        choice = rng.randrange(5)
        if choice == 0:  # a length prefix far beyond the body
            data = _varint(rng.randint(len(raw) + 1, 2**63)) + raw
        elif choice == 1:  # an 11-byte varint
            data = b"\xff" * rng.randint(11, 20) + b"\x01" + raw
        elif choice == 2:  # a name field declaring 2**31 bytes
            msg = _varint(1 << 3 | 2) + _varint(rng.randint(2**20, 2**31)) + b"abc"
            data = _varint(len(msg)) + msg
        elif choice == 3:  # a type varint of 11+ bytes
            msg = _field(1, b"m") + bytes([3 << 3]) + b"\x80" * rng.randint(10, 16) + b"\x01"
            data = _varint(len(msg)) + msg
        else:  # a metric sub-message longer than its family
            msg = _field(1, b"m") + _varint(4 << 3 | 2) + _varint(rng.randint(100, 2**28)) + b"x"
            data = _varint(len(msg)) + msg
        add("oversized varint/length", wrap(data), headers)
    for n in range(20):  # 100,000 tiny families (over --limit-series)
        tiny = _field(1, b"a" if n % 2 else b"ab")
        add("100k tiny families", snappy.encode_framed((_varint(len(tiny)) + tiny) * 100_000))
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
            msg = _field(1, b"m" + junk) + bytes([3 << 3, metrics_pb2.GAUGE]) + _field(4, metric)
            add("invalid UTF-8", snappy.encode_framed(_varint(len(msg)) + msg))
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
    server: ServerHandle, rclient: RedisCluster
) -> None:
    cluster_id = new_id("fuzz")
    jwt = jwt_for(server, cluster_id)
    good = post_upload(server, jwt, encode_upload(valid_families(cluster_id)))
    assert good.status_code == 200, good.text
    before = stored(rclient, cluster_id)
    assert before is not None
    cases = malformed_cases(cluster_id)
    assert len(cases) >= FUZZ_CASES
    asyncio.run(_send_all(f"{server.external}/upload", jwt, cases[:200]))  # warm-up
    rss_before, _ = rss_kb(server.process.pid)

    results = asyncio.run(_send_all(f"{server.external}/upload", jwt, cases))

    rss_after, peak = rss_kb(server.process.pid)
    by_kind: dict[str, Counter[int]] = {}
    for kind, status, _ in results:
        by_kind.setdefault(kind, Counter())[status] += 1
    wrong = [(k, s, d) for k, s, d in results if not 400 <= s < 500]
    assert not wrong, f"{len(wrong)} answers outside 4xx, e.g. {wrong[:5]}; by kind {by_kind}"
    assert server.process.alive
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KB, (rss_before, rss_after, peak)
    assert peak - rss_before < 2 * RSS_GROWTH_LIMIT_KB, (rss_before, rss_after, peak)
    assert stored(rclient, cluster_id) == before  # nothing of it reached the stored snapshot
    log = server.process.log_path.read_text(errors="replace")
    assert "Traceback" not in log, server.process.log_tail(60)


def test_nan_and_inf_are_valid_samples(server: ServerHandle, rclient: RedisCluster) -> None:
    # NaN and +-Inf are valid Prometheus sample values, not abuse: stored and served as such.
    cluster_id = new_id("nan")
    jwt = jwt_for(server, cluster_id)
    me = pair("_id", cluster_id)
    families = [
        gauge_family(f"abuse_special_{i}", [me], value=value)
        for i, value in enumerate([float("nan"), float("inf"), float("-inf")])
    ]
    answer = post_upload(server, jwt, encode_upload(families))
    assert answer.status_code == 200, answer.text
    value = stored(rclient, cluster_id)
    assert value is not None
    text = stored_text(value)
    for i, shown in enumerate(["NaN", "+Inf", "-Inf"]):
        assert re.search(rf"^abuse_special_{i}\{{[^}}]*\}} {re.escape(shown)} \d+$", text, re.M), (
            text
        )


# ---- forged and misused tokens ----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(cluster_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": list(AUDIENCES),
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "sub": "attacker",
        LABELS_CLAIM: {"labels": {"_id": cluster_id}},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if secret is None else hmac.digest(secret, signing_input.encode(), "sha256")
    return f"{signing_input}.{_b64(signature)}"


def forged_token(attack: str, cluster_id: str, key_path: Path) -> str:
    """A token for ``cluster_id`` made by one of the attacks the verifier must refuse."""
    key = load_signing_key(key_path.read_bytes())
    signed = key.private_key
    if attack == "alg none":
        return _unsigned({"alg": "none", "typ": "JWT"}, _claims(cluster_id), None)
    if attack == "HS256 with the public key as secret":
        public_pem = key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return _unsigned({"alg": "HS256", "typ": "JWT"}, _claims(cluster_id), public_pem)
    if attack == "expired":
        issued = time.time() - 86400 - 3600  # past the 60 s leeway
        return TokenIssuer(key).issue(account_id="a", labels={"_id": cluster_id}, now=issued)
    if attack == "not yet valid":
        issued = time.time() + 3600
        return TokenIssuer(key).issue(account_id="a", labels={"_id": cluster_id}, now=issued)
    if attack == "signed by another key":
        return TokenIssuer(other_key()).issue(account_id="a", labels={"_id": cluster_id})
    overrides: dict[str, dict[str, Any]] = {
        "wrong issuer": {"iss": "evil.example"},
        "wrong audience": {"aud": ["someone-else"]},
        "no audience": {"aud": None},
        "no expiry": {"exp": None},
        "no cluster label": {LABELS_CLAIM: {"labels": {"other": cluster_id}}},
        "cluster label breaking the hash tag": {LABELS_CLAIM: {"labels": {"_id": "a}{b"}}},
        "labels not strings": {LABELS_CLAIM: {"labels": {"_id": 7}}},
    }
    return pyjwt.encode(
        _claims(cluster_id, **overrides[attack]), signed, algorithm="ES256", headers={"kid": ""}
    )


ATTACKS = [
    "alg none",
    "HS256 with the public key as secret",
    "expired",
    "not yet valid",
    "wrong issuer",
    "wrong audience",
    "no audience",
    "no expiry",
    "signed by another key",
    "no cluster label",
    "cluster label breaking the hash tag",
    "labels not strings",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_forged_token_is_401(
    attack: str, server: ServerHandle, rclient: RedisCluster, signing_key: Path
) -> None:
    cluster_id = new_id("jwt")
    real = jwt_for(server, cluster_id)
    assert post_upload(server, real, encode_upload(valid_families(cluster_id))).status_code == 200
    before = stored(rclient, cluster_id)
    token = forged_token(attack, cluster_id, signing_key)
    answer = post_upload(server, token, encode_upload(valid_families(cluster_id)))
    assert answer.status_code == 401, (answer.status_code, answer.text)
    assert stored(rclient, cluster_id) == before


def test_token_of_one_cluster_cannot_write_another(
    server: ServerHandle, rclient: RedisCluster
) -> None:
    a, b = new_id("tenant-a"), new_id("tenant-b")
    jwt_a, jwt_b = jwt_for(server, a), jwt_for(server, b)
    for cid, token in ((a, jwt_a), (b, jwt_b)):
        assert post_upload(server, token, encode_upload(valid_families(cid))).status_code == 200
    before = {cid: stored(rclient, cid) for cid in (a, b)}
    answer = post_upload(server, jwt_a, encode_upload(valid_families(b)))  # _id="B" with A's token
    assert answer.status_code in (400, 403), (answer.status_code, answer.text)
    assert {cid: stored(rclient, cid) for cid in (a, b)} == before


# ---- the external listener serves no internal endpoint ------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/federate", "/federate/", "//federate", "/./federate", "/%66ederate", "/FEDERATE",
        "/federate?match[]=up", "/metrics", "/metrics/", "/debug/ring", "/debug/pprof/",
        "/debug/vars", "/internal/federate", "/docs", "/openapi.json",
    ],
)  # fmt: skip
def test_internal_endpoints_are_not_on_the_external_listener(
    path: str, server: ServerHandle
) -> None:
    for method in ("GET", "POST"):
        answer = httpx.request(method, server.external + path, timeout=10)
        assert answer.status_code in (404, 405), (method, path, answer.status_code)
        assert "# TYPE" not in answer.text and "http_requests_total" not in answer.text
    assert httpx.get(server.internal + "/metrics").status_code == 200


# ---- slow clients -----------------------------------------------------------------------------

UPLOAD_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def slow_server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """A server with a 2 s upload timeout and only two upload slots."""
    args = ["--ratelimit", "0s", "--upload-timeout", f"{UPLOAD_TIMEOUT_S}s"]
    (handle,) = start_all(
        redis_cluster.url,
        tmp_path_factory.mktemp("slow"),
        signing_key,
        {"slow": [*args, "--max-concurrent-uploads", "2"]},
    )
    yield handle
    handle.process.stop()


async def _slow_upload(
    server: ServerHandle, jwt: str, *, trickle: bool, seconds: float = 8.0
) -> tuple[int, float]:
    """Send an upload whose body trickles in (10 bytes every 0.3 s) or stalls after 100 bytes;
    return the status the server answered with and when."""
    url = httpx.URL(server.external)
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    framing = "Transfer-Encoding: chunked" if trickle else "Content-Length: 50000"
    head = (
        f"POST /upload HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {jwt}\r\n"
        f"Content-Type: {DELIMITED}\r\nContent-Encoding: snappy\r\n{framing}\r\n\r\n"
    )
    started = time.monotonic()
    writer.write(head.encode())
    if not trickle:
        writer.write(b"\0" * 100)

    async def feed() -> None:
        while trickle:
            writer.write(b"a\r\n" + b"\0" * 10 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.3)

    feeder = asyncio.create_task(feed())
    try:
        async with asyncio.timeout(seconds):
            status_line = await reader.readline()
    finally:
        feeder.cancel()
        writer.close()
    return int(status_line.split()[1]), time.monotonic() - started


def test_slow_and_stalled_bodies_are_cut_off(slow_server: ServerHandle) -> None:
    jwt = jwt_for(slow_server, new_id("slow"))

    async def both() -> tuple[tuple[int, float], tuple[int, float]]:
        return await asyncio.gather(
            _slow_upload(slow_server, jwt, trickle=True),
            _slow_upload(slow_server, jwt, trickle=False),
        )

    for status, took in asyncio.run(both()):
        assert status == 408
        assert UPLOAD_TIMEOUT_S - 0.2 < took < UPLOAD_TIMEOUT_S + 2.5, took
    # Cut off means released: both upload slots are free again.
    cluster_id = new_id("after")
    answer = post_upload(
        slow_server, jwt_for(slow_server, cluster_id), encode_upload(valid_families(cluster_id))
    )
    assert answer.status_code == 200, answer.text


def test_stalled_uploads_do_not_hold_the_upload_slots(slow_server: ServerHandle) -> None:
    """As many stalled uploads as there are slots (2) must not turn honest uploads away."""
    jwt = jwt_for(slow_server, new_id("stall"))
    cluster_id = new_id("honest")
    body = encode_upload(valid_families(cluster_id))
    honest_jwt = jwt_for(slow_server, cluster_id)

    async def scenario() -> tuple[list[tuple[int, float]], int, float, float]:
        stalled = [
            asyncio.create_task(_slow_upload(slow_server, jwt, trickle=False)) for _ in range(2)
        ]
        await asyncio.sleep(0.3)  # both are in their body read now
        async with httpx.AsyncClient(timeout=10) as http:
            started = time.monotonic()
            health = await http.get(f"{slow_server.external}/healthz")
            health_s = time.monotonic() - started
            assert health.status_code == 200
            started = time.monotonic()
            answer = await http.post(
                f"{slow_server.external}/upload", content=body, headers=upload_headers(honest_jwt)
            )
            took = time.monotonic() - started
        return await asyncio.gather(*stalled), answer.status_code, took, health_s

    stalled, status, took, health_s = asyncio.run(scenario())
    assert [s for s, _ in stalled] == [408, 408]
    assert health_s < 0.5, "the event loop is blocked by slow clients"
    assert status == 200 and took < 1.0, (
        f"an honest upload got {status} after {took:.2f}s while two stalled bodies held the "
        "two upload slots"
    )


def test_a_request_head_that_never_finishes_is_cut_off(slow_server: ServerHandle) -> None:
    """Slowloris: a request line and one header, then silence. Such a connection must be
    closed by a timeout, like a stalled body, or enough of them exhaust the pod's sockets."""
    url = httpx.URL(slow_server.external)
    assert url.port is not None
    limit = UPLOAD_TIMEOUT_S + 3.0

    async def hang() -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(f"POST /upload HTTP/1.1\r\nHost: {url.host}\r\n".encode())
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                data = await reader.read(200)  # b"" (closed) or an error answer (408/400)
        except TimeoutError:
            data = b"(still open)"
        finally:
            writer.close()
        return data, time.monotonic() - started

    data, took = asyncio.run(hang())
    assert data != b"(still open)", (
        f"an unfinished request head still holds its connection after {took:.1f}s"
    )


# ---- token exchange abuse, counted at the upstream ---------------------------------------------


class CountingProxy:
    """A real HTTP proxy (Starlette under uvicorn, in a thread) in front of the authorization
    stand-in, counting the calls per cluster id that reach the upstream."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: Counter[str] = Counter()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        self.calls[str(json.loads(body).get("cluster_id"))] += 1
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                self.upstream,
                content=body,
                headers={"Content-Type": request.headers.get("content-type", "")},
            )
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the counting proxy did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


AUTH_FAILURE_LIMIT = 5


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingProxy]:
    stand_in, url = start_authorization_server(
        workdir=tmp_path_factory.mktemp("auth"), tokens=["good"]
    )
    try:
        with CountingProxy(url) as proxy:
            yield proxy
    finally:
        stand_in.stop()


@pytest.fixture(scope="module")
def trio(
    redis_cluster: RedisClusterHandle,
    signing_key: Path,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: CountingProxy,
) -> Iterator[list[ServerHandle]]:
    """Three pods with the default rate limit, behind the counting proxy."""
    args = ["--authorize", upstream.url, "--auth-failure-limit", str(AUTH_FAILURE_LIMIT)]
    handles = start_all(
        redis_cluster.url,
        tmp_path_factory.mktemp("trio"),
        signing_key,
        {f"pod{i}": args for i in range(3)},
    )
    yield handles
    for handle in handles:
        handle.process.stop()


def test_bad_token_burst_is_throttled_and_upstream_sees_few_calls(
    trio: list[ServerHandle], upstream: CountingProxy
) -> None:
    victim = new_id("burst")
    concurrency = 8

    async def burst() -> list[httpx.Response]:
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30) as http:

            async def one(i: int) -> httpx.Response:
                async with semaphore:
                    return await http.post(
                        f"{trio[i % 3].external}/authorize",
                        params={"id": victim},
                        headers={"Authorization": f"Bearer bad-{i}"},
                    )

            return await asyncio.gather(*(one(i) for i in range(60)))

    answers = asyncio.run(burst())
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {401, 429}, statuses
    assert statuses[429] >= 60 - AUTH_FAILURE_LIMIT - concurrency, statuses
    assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status_code == 429)
    # Bounded upstream load: the limit, plus the requests already past the check when it tripped.
    assert upstream.calls[victim] <= AUTH_FAILURE_LIMIT + concurrency, upstream.calls[victim]
    throttled = 0
    for pod in trio:
        text = httpx.get(f"{pod.internal}/metrics").text
        found = re.search(
            r'^telemeter_authorizations_total\{result="throttled"\} (\S+)', text, re.M
        )
        throttled += int(float(found.group(1))) if found else 0
    assert throttled == statuses[429]
    # Another cluster is not throttled by the burst.
    assert authorize_at(trio[0], new_id("bystander"), "good").status_code == 200


def test_good_token_exchanges_are_cached_across_pods(
    trio: list[ServerHandle], upstream: CountingProxy
) -> None:
    cluster_id = new_id("cached")
    for i in range(12):
        answer = authorize_at(trio[i % 3], cluster_id, "good")
        assert answer.status_code == 200, answer.text
    assert upstream.calls[cluster_id] == 1


# ---- the rate limit with three pods ---------------------------------------------------------


def _numbered_body(cluster_id: str, n: int) -> bytes:
    return encode_upload([gauge_family("abuse_try", [pair("_id", cluster_id)], value=float(n))])


def test_rate_limit_holds_across_three_pods(
    trio: list[ServerHandle], rclient: RedisCluster
) -> None:
    ids = [new_id("limit") for _ in range(4)]
    jwts = {cid: jwt_for(trio[0], cid, "good") for cid in ids}

    async def race(round_: int) -> dict[str, list[tuple[int, int, str | None]]]:
        async with httpx.AsyncClient(timeout=30) as http:

            async def one(cid: str, n: int) -> tuple[int, int, str | None]:
                answer = await http.post(
                    f"{trio[n % 3].external}/upload",
                    content=_numbered_body(cid, round_ * 100 + n),
                    headers=upload_headers(jwts[cid]),
                )
                return round_ * 100 + n, answer.status_code, answer.headers.get("retry-after")

            results = await asyncio.gather(*(one(cid, n) for cid in ids for n in range(9)))
        return {cid: [r for i, r in enumerate(results) if i // 9 == k] for k, cid in enumerate(ids)}

    first = asyncio.run(race(0))
    for cid, answers in first.items():
        statuses = Counter(status for _, status, _ in answers)
        assert statuses == {200: 1, 429: 8}, (cid, answers)
        assert all(int(ra or 0) > 0 for _, status, ra in answers if status == 429)
        (winner,) = [n for n, status, _ in answers if status == 200]
        value = stored(rclient, cid)
        assert value is not None
        assert re.search(rf"^abuse_try\{{[^}}]*\}} {winner} ", stored_text(value), re.M)
    # Nine more pushes a moment later, on all three pods: the allowance is spent cluster-wide.
    second = asyncio.run(race(1))
    assert all(status == 429 for answers in second.values() for _, status, _ in answers)
