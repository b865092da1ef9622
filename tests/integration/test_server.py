"""The server against real processes: the recorded Go upload, docs/protocol.md's status table, keys.

Every test runs real `telemeter-server` processes on the session's real Redis Cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from app import keys
from app.tokens import TokenIssuer, generate_signing_key
from dev.launch import ServerHandle, start_server
from telemeter import metrics_pb2, snappy
from telemeter.delimited import read_families, write_families
from tests.conftest import RedisClusterHandle
from tests.support import (
    DELIMITED,
    UPLOAD_HEADERS,
    authorize,
    encode_upload,
    federate,
    now_ms,
    series_of,
    shared_file,
    standard_families,
    stored,
    upload,
)

pytestmark = pytest.mark.integration


def new_id() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """One server without a rate limit, so each test can store a snapshot and then attack it."""
    handle = start_server(
        redis_url=redis_cluster.url,
        workdir=tmp_path_factory.mktemp("server"),
        name="status",
        shared_key=signing_key,
        extra_args=[
            "--ratelimit", "0s", "--elide-label", "prometheus_replica",
            "--ring-namespace", f"test-{uuid.uuid4().hex[:10]}",
        ],
    )  # fmt: skip
    handle.process.wait_http(handle.internal + "/healthz/ready")
    yield handle
    handle.process.stop()


def push_standard(server: ServerHandle, cluster_id: str) -> str:
    jwt = authorize(server, cluster_id)
    answer = upload(server, jwt, encode_upload(standard_families(cluster_id, now_ms())))
    assert answer.status_code == 200, answer.text
    return jwt


# ---- the recorded Go client upload -------------------------------------------------------


def recorded_upload() -> tuple[bytes, dict[str, str]]:
    """The Go client's captured body and headers (timestamps renewed once they pass 23 h)."""
    body = shared_file("wire", "upload-body.snappy-framed").read_bytes()
    headers: dict[str, str] = {}
    lines = shared_file("wire", "upload-request-headers.txt").read_text().splitlines()
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        if name.lower() not in ("host", "authorization", "transfer-encoding", "connection"):
            headers[name] = value
    families = read_families(snappy.decode_framed(body, max_size=1 << 22), max_families=100)
    newest = max(m.timestamp_ms for f in families for m in f.metric)
    if newest < now_ms() - 23 * 3600 * 1000:  # the server refuses samples older than 24 h
        for family in families:
            for metric in family.metric:
                metric.timestamp_ms = now_ms()
        body = snappy.encode_framed(write_families(families))
    return body, headers


def test_recorded_go_upload_is_accepted_and_federated(server: ServerHandle) -> None:
    body, headers = recorded_upload()
    assert headers["Content-Type"] == DELIMITED and headers["Content-Encoding"] == "snappy"
    jwt = authorize(server, "test")
    answer = upload(server, jwt, body, headers)  # chunked, no Content-Length, as recorded
    assert answer.status_code == 200, answer.text
    lines = series_of(federate(server), "test")
    assert len(lines) == 226 + 1  # the 226 metrics plus the cluster's push-time series
    assert sum(line.startswith("telemeter_push_time_seconds{") for line in lines) == 1
    assert not any("prometheus_replica=" in line for line in lines)  # --elide-label
    stamp = lines[0].rsplit(" ", 1)[1]
    assert stamp.endswith("000") and abs(int(stamp) - now_ms()) < 60_000  # server timestamps


def test_federate_is_valid_for_promtool_with_several_clusters(server: ServerHandle) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus"
    ids = [new_id() for _ in range(3)]
    for cluster_id in ids:
        push_standard(server, cluster_id)
    text = federate(server)
    for cluster_id in ids:
        assert len(series_of(text, cluster_id)) == 232 + 1
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines))  # every family once, merged across clusters
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    # promtool also prints lint advice (e.g. counters without _total) with a non-zero code;
    # parse errors are what must not happen.
    assert b"error while linting" not in check.stderr and b"parse" not in check.stderr.lower(), (
        check.stderr.decode()
    )
    gz = httpx.get(f"{server.internal}/federate", headers={"Accept-Encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip"
    assert len(series_of(gz.text, ids[0])) == 233  # one gzip member: any client reads it all


def test_protobuf_federate_when_asked(server: ServerHandle) -> None:
    cluster_id = new_id()
    push_standard(server, cluster_id)
    answer = httpx.get(f"{server.internal}/federate", headers={"Accept": DELIMITED})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith(
        "application/vnd.google.protobuf"
    )
    families = read_families(answer.content, max_families=100_000)
    ours = [
        m
        for f in families
        for m in f.metric
        if any(p.name == "_id" and p.value == cluster_id for p in m.label)
    ]
    assert len(ours) == 233


# ---- docs/protocol.md's status table: each row, and the stored snapshot stays untouched ----


def family(name: str, metrics: list[metrics_pb2.Metric]) -> metrics_pb2.MetricFamily:
    return metrics_pb2.MetricFamily(name=name, type=metrics_pb2.GAUGE, metric=metrics)


def gauge(labels: dict[str, str], ts: int | None, value: float = 1.0) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(
        label=[metrics_pb2.LabelPair(name=k, value=v) for k, v in labels.items()],
        gauge=metrics_pb2.Gauge(value=value),
    )
    if ts is not None:
        metric.timestamp_ms = ts
    return metric


BadBody = Callable[[str], bytes]


def _families(*fams: metrics_pb2.MetricFamily) -> bytes:
    return encode_upload(list(fams))


BAD_UPLOADS: dict[str, tuple[int, BadBody]] = {
    "undecodable snappy": (400, lambda cid: snappy.STREAM_IDENTIFIER + b"\x00\x08\x00\x00garbage!"),
    "undecodable protobuf": (400, lambda cid: snappy.encode_framed(b"\x0a\xff\xff\xff\xff\x0f")),
    "metric without timestamp": (
        400,
        lambda cid: _families(family("m", [gauge({"_id": cid}, None)])),
    ),
    "timestamps not in order": (
        400,
        lambda cid: _families(
            family(
                "m", [gauge({"_id": cid, "a": "1"}, now_ms()), gauge({"_id": cid}, now_ms() - 5000)]
            )
        ),
    ),
    "timestamp older than 24 h": (
        400,
        lambda cid: _families(family("m", [gauge({"_id": cid}, now_ms() - 25 * 3600 * 1000)])),
    ),
    "metric lacking the token label": (
        400,
        lambda cid: _families(family("m", [gauge({"a": "b"}, now_ms())])),
    ),
    "token label spoofing": (
        400,
        lambda cid: _families(family("m", [gauge({"_id": "other"}, now_ms())])),
    ),
    "label value longer than 255": (
        400,
        lambda cid: _families(family("m", [gauge({"_id": cid, "v": "x" * 256}, now_ms())])),
    ),
    "metric name longer than 255": (
        400,
        lambda cid: _families(family("m" * 256, [gauge({"_id": cid}, now_ms())])),
    ),
    "duplicate series": (
        400,
        lambda cid: _families(family("m", [gauge({"_id": cid}, now_ms())] * 2)),
    ),
    "duplicate series in two families of one name": (
        400,
        lambda cid: _families(*[family("m", [gauge({"_id": cid}, now_ms())])] * 2),
    ),
    "body larger than the limit": (413, lambda cid: b"\x00" * (600 * 1024)),
    "decompressed size over the limit": (
        413,
        lambda cid: snappy.encode_framed(b"\x00" * (2 * 1024 * 1024)),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_status_table_row(case: str, server: ServerHandle, rclient: RedisCluster) -> None:
    status, make_body = BAD_UPLOADS[case]
    cluster_id = new_id()
    jwt = push_standard(server, cluster_id)
    before = stored(rclient, cluster_id)
    assert before is not None
    answer = upload(server, jwt, make_body(cluster_id))
    assert answer.status_code == status, answer.text
    assert answer.text.strip(), "an error answer carries its reason"
    assert stored(rclient, cluster_id) == before
    assert len(series_of(federate(server), cluster_id)) == 233


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "text/plain", "Content-Encoding": "snappy"}, 415),
        ({"Content-Type": DELIMITED, "Content-Encoding": "br"}, 415),
        ({}, 415),
    ],
)
def test_wrong_content_type_or_encoding(
    headers: dict[str, str], status: int, server: ServerHandle, rclient: RedisCluster
) -> None:
    cluster_id = new_id()
    jwt = push_standard(server, cluster_id)
    before = stored(rclient, cluster_id)
    body = encode_upload(standard_families(cluster_id, now_ms()))
    assert upload(server, jwt, body, headers).status_code == status
    assert stored(rclient, cluster_id) == before


def test_uncompressed_upload_is_accepted(server: ServerHandle) -> None:
    cluster_id = new_id()
    jwt = authorize(server, cluster_id)
    raw = write_families(standard_families(cluster_id, now_ms()))
    answer = upload(server, jwt, raw, {"Content-Type": DELIMITED})
    assert answer.status_code == 200, answer.text
    assert len(series_of(federate(server), cluster_id)) == 233


@pytest.mark.parametrize("auth", ["", "Basic abc", "Bearer not-a-jwt", "Bearer other-key"])
def test_no_or_invalid_jwt_is_401(auth: str, server: ServerHandle, rclient: RedisCluster) -> None:
    cluster_id = new_id()
    push_standard(server, cluster_id)
    before = stored(rclient, cluster_id)
    if auth == "Bearer other-key":  # a well-formed token signed by a key the server does not know
        jwt = TokenIssuer(generate_signing_key()).issue(account_id="x", labels={"_id": cluster_id})
        auth = f"Bearer {jwt}"
    headers = {**UPLOAD_HEADERS, **({"Authorization": auth} if auth else {})}
    body = encode_upload(standard_families(cluster_id, now_ms()))
    answer = httpx.post(f"{server.external}/upload", content=body, headers=headers)
    assert answer.status_code == 401, answer.text
    assert stored(rclient, cluster_id) == before


def test_store_failure_is_503_with_retry_after(start_servers: Callable[..., ServerHandle]) -> None:
    dead = start_servers("dead", redis_url="redis://127.0.0.1:1", ready=False)  # nothing there
    cluster_id = new_id()
    jwt = authorize(dead, cluster_id)  # stub authorization needs no Redis
    answer = upload(dead, jwt, encode_upload(standard_families(cluster_id, now_ms())))
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) > 0
    assert httpx.get(f"{dead.external}/healthz/ready").status_code == 503
    assert httpx.get(f"{dead.external}/healthz").status_code == 200


# ---- rate limit and tokens across replicas -----------------------------------------------------


def test_token_and_rate_limit_hold_across_two_servers(
    start_servers: Callable[..., ServerHandle], rclient: RedisCluster
) -> None:
    a = start_servers("a")
    b = start_servers("b")
    cluster_id = new_id()
    jwt = authorize(a, cluster_id)  # issued by a, used at b: replicas share --shared-key
    body = encode_upload(standard_families(cluster_id, now_ms()))
    first = upload(b, jwt, body)
    assert first.status_code == 200, first.text
    before = stored(rclient, cluster_id)
    second = upload(a, jwt, body)  # the other replica: the limit is cluster-wide
    assert second.status_code == 429
    assert 0 < int(second.headers["Retry-After"]) <= 270
    assert stored(rclient, cluster_id) == before
    assert upload(b, jwt, body).status_code == 429


def test_rejected_upload_does_not_consume_the_allowance(
    start_servers: Callable[..., ServerHandle],
) -> None:
    srv = start_servers("allowance")
    cluster_id = new_id()
    jwt = authorize(srv, cluster_id)
    bad = _families(family("m", [gauge({"_id": cluster_id}, None)]))
    assert upload(srv, jwt, bad).status_code == 400
    good = encode_upload(standard_families(cluster_id, now_ms()))
    assert upload(srv, jwt, good).status_code == 200


# ---- keys ---------------------------------------------------------------------------------------


def test_every_key_of_a_cluster_carries_its_hash_tag(
    start_servers: Callable[..., ServerHandle],
    redis_cluster: RedisClusterHandle,
    tmp_path: Path,
) -> None:
    from dev.launch import start_authorization_server

    stand_in, url = start_authorization_server(workdir=tmp_path, tokens=["good"])
    try:
        srv = start_servers("keys", authorize=url)
        cluster_id = new_id()
        jwt = authorize(srv, cluster_id, token="good")
        assert (
            upload(srv, jwt, encode_upload(standard_families(cluster_id, now_ms()))).status_code
            == 200
        )
        bad = httpx.post(
            f"{srv.external}/authorize",
            params={"id": cluster_id},
            headers={"Authorization": "Bearer wrong"},
        )
        assert bad.status_code == 401
    finally:
        stand_in.stop()
    found: list[bytes] = []
    for host, port in redis_cluster.startup_nodes:
        node = redis.Redis(host=host, port=port, password=redis_cluster.password)
        found += [k for k in node.scan_iter(match=f"*{cluster_id}*") if isinstance(k, bytes)]
        node.close()
    names = {k.decode() for k in found}
    index = keys.index_key(keys.cluster_range(cluster_id))
    assert {keys.snapshot_key(cluster_id), keys.ratelimit_key(cluster_id)} <= names
    assert any(":auth:" in n for n in names) and keys.auth_failures_key(cluster_id) in names
    tag_slot = key_slot(f"{{{cluster_id}}}".encode())
    for key in found:
        assert f"{{{cluster_id}}}".encode() in key
        assert key_slot(key) == tag_slot
    assert index not in names  # the shared index holds ids as members, not in key names


def rejects(server: ServerHandle) -> dict[str, float]:
    text = httpx.get(f"{server.internal}/metrics").text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("telemeter_upload_rejects_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def test_self_metrics_count_rejects_by_reason(server: ServerHandle) -> None:
    cluster_id = new_id()
    jwt = authorize(server, cluster_id)
    before = rejects(server)
    assert (
        upload(server, jwt, BAD_UPLOADS["metric without timestamp"][1](cluster_id)).status_code
        == 400
    )
    assert upload(server, jwt, b"\x00" * (600 * 1024)).status_code == 413
    assert upload(server, "not-a-jwt", b"").status_code == 401
    after = rejects(server)
    for reason in ("invalid", "too_large", "unauthorized"):
        assert after.get(reason, 0) == before.get(reason, 0) + 1, reason
    metrics = httpx.get(f"{server.internal}/metrics").text
    for name in ("http_requests_total", "telemeter_redis_duration_seconds", "telemeter_partitions"):
        assert name in metrics


def test_duplicate_series_is_refused_naming_it(server: ServerHandle, rclient: RedisCluster) -> None:
    cluster_id = new_id()
    jwt = push_standard(server, cluster_id)
    before, counted = stored(rclient, cluster_id), rejects(server)
    now = now_ms()
    for metrics in (  # the same labels in another order, or differing in an elided one
        [gauge({"_id": cluster_id, "job": "x"}, now), gauge({"job": "x", "_id": cluster_id}, now)],
        [
            gauge({"_id": cluster_id, "job": "x", "prometheus_replica": "a"}, now),
            gauge({"_id": cluster_id, "job": "x", "prometheus_replica": "b"}, now),
        ],
    ):
        answer = upload(
            server,
            jwt,
            _families(family("up", [gauge({"_id": cluster_id}, now)]), family("up", metrics)),
        )
        assert answer.status_code == 400, answer.text
        # The second one is named, as it would be rendered (prometheus_replica elided).
        shown = "".join(
            f'{k}="{v}",'
            for k, v in ((p.name, p.value) for p in metrics[1].label)
            if k != "prometheus_replica"
        )
        assert answer.text == f"duplicate series up{{{shown[:-1]}}}\n"
    assert stored(rclient, cluster_id) == before
    assert len(series_of(federate(server), cluster_id)) == 233
    assert rejects(server).get("invalid", 0) == counted.get("invalid", 0) + 2


# ---- HTTP details of the upload path (answered straight from the parser) -----------------------


def _raw_exchange(
    server: ServerHandle, chunks: list[bytes], *, replies: int, end: bytes = b""
) -> bytes:
    """Send ``chunks`` on one connection, reading after each, until ``replies`` answers came
    and what came ends with ``end``."""
    import socket

    url = httpx.URL(server.external)
    assert url.host and url.port
    received = b""
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
            received += sock.recv(65536)
        while received.count(b"HTTP/1.1 ") < replies or not received.endswith(end):
            more = sock.recv(65536)
            if not more:
                break
            received += more
    return received


def _upload_head(server: ServerHandle, jwt: str, body: bytes, *extra: str) -> bytes:
    lines = [
        "POST /upload HTTP/1.1",
        f"Host: {httpx.URL(server.external).host}",
        f"Authorization: Bearer {jwt}",
        *(f"{name}: {value}" for name, value in UPLOAD_HEADERS.items()),
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_expect_100_continue_is_answered(server: ServerHandle) -> None:
    """curl sends `Expect: 100-continue` for larger bodies and waits for the interim answer."""
    cluster_id = new_id()
    jwt = authorize(server, cluster_id)
    body = encode_upload(standard_families(cluster_id, now_ms()))
    got = _raw_exchange(
        server, [_upload_head(server, jwt, body, "Expect: 100-continue"), body], replies=2
    )
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), got[:200]
    assert b"HTTP/1.1 200 OK" in got


def test_uploads_keep_the_connection_alive_and_pipeline(server: ServerHandle) -> None:
    """Two uploads and a health check pipelined on one connection: answered in order."""
    cluster_id = new_id()
    jwt = authorize(server, cluster_id)
    body = encode_upload(standard_families(cluster_id, now_ms()))
    host = httpx.URL(server.external).host
    health = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    one = _upload_head(server, jwt, body) + body
    got = _raw_exchange(server, [one + one + health], replies=3, end=b"ok\n")
    statuses = [line for line in got.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert statuses == [b"HTTP/1.1 200 OK"] * 3, got[:500]
    assert got.endswith(b"\r\n\r\nok\n")  # the health answer came last
