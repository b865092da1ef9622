"""Remote write with real processes: servers forwarding to a real Prometheus receiver
(``--web.enable-remote-write-receiver``) through the Redis Streams of their ring ranges.

Every push answered 200 must reach the receiver, in order, through a receiver outage and a
forwarding pod SIGKILLed with entries queued (docs/architecture.md, D13). Each upload carries a
gauge ``fault_seq`` holding its push number, so the receiver's samples say which pushes arrived.
"""

from __future__ import annotations

import http.server
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cramjam
import httpx
import pytest

from dev.launch import ServerHandle, start_server
from dev.ports import free_port
from dev.processes import ManagedProcess
from dev.prometheus import PrometheusHandle, find_prometheus, query, start_receiver
from telemeter import remotewrite
from tests.conftest import RedisClusterHandle
from tests.integration.test_faults import FAST_ARGS, seq_body
from tests.support import UPLOAD_HEADERS, authorize, chunks, empty_forward_queues, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

RATELIMIT_S = 1.0
FORWARD_ARGS = [
    *FAST_ARGS[2:],  # the fast ring, but keep a rate limit: one sample per cluster per second
    "--ratelimit", f"{RATELIMIT_S}s",
    "--forward-interval", "0.2s",
    "--forward-backoff-max", "1s",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _prometheus() -> None:
    if find_prometheus() is None:
        pytest.fail("prometheus is not installed: apt-get install prometheus")


def push(server: ServerHandle, jwt: str, cluster_id: str, seq: int) -> int:
    answer = httpx.post(
        f"{server.external}/upload",
        content=chunks(seq_body(cluster_id, seq)),
        headers={"Authorization": f"Bearer {jwt}", **UPLOAD_HEADERS},
        timeout=10,
    )
    return answer.status_code


def received(receiver: PrometheusHandle, cluster_id: str) -> list[int]:
    """The ``fault_seq`` values the receiver holds for a cluster, in timestamp order."""
    result = query(receiver.url, f'fault_seq{{_id="{cluster_id}"}}[1h]')
    return [int(float(v)) for r in result for _, v in r["values"]]


def missing(
    receiver: PrometheusHandle, acked: dict[str, list[int]], refused: dict[str, set[int]]
) -> str | None:
    """None when the receiver holds every acknowledged push of every cluster, in order; else what
    it holds of the clusters that differ. A push answered 503 may arrive too: its entry can be
    queued before its snapshot write failed (docs/operations.md, "At least once")."""
    late = {}
    for c, pushes in acked.items():
        got = received(receiver, c)
        extra = set(got) - set(pushes)
        if got != sorted(set(got)) or not set(pushes) <= set(got) or not extra <= refused[c]:
            late[c] = f"received {got}, acknowledged {pushes}, refused {sorted(refused[c])}"
    return None if not late else f"{len(late)} clusters incomplete: {late}"


def metric(server: ServerHandle, name: str) -> float:
    text = httpx.get(f"{server.internal}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_every_acknowledged_push_reaches_the_receiver_in_order_through_outage_and_crash(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path
) -> None:
    receiver = start_receiver(workdir=tmp_path / "receiver")
    address = receiver.url.removeprefix("http://")
    args = [*FORWARD_ARGS, "--forward-url", f"{receiver.url}/api/v1/write"]
    servers = [
        start_server(
            redis_url=redis_cluster.url,
            workdir=tmp_path,
            name=f"fw{i}",
            shared_key=signing_key,
            extra_args=args,
        )
        for i in range(2)
    ]
    clusters = [f"fw-{i}" for i in range(6)]
    acked: dict[str, list[int]] = {c: [] for c in clusters}
    refused: dict[str, set[int]] = {c: set() for c in clusters}
    jwts = {c: authorize(servers[0], c) for c in clusters}
    seq = 0
    try:

        def round_of_pushes(targets: list[ServerHandle]) -> None:
            nonlocal seq
            seq += 1
            for i, c in enumerate(clusters):
                code = push(targets[i % len(targets)], jwts[c], c, seq)
                if code == 200:
                    acked[c].append(seq)
                else:
                    assert code in (429, 503), code
                    refused[c].add(seq)
            time.sleep(RATELIMIT_S + 0.1)  # on purpose: wait out the rate-limit window

        for _ in range(3):
            round_of_pushes(servers)
        wait_for(
            lambda: missing(receiver, acked, refused),
            timeout=60,  # two servers and the receiver starting on a busy machine
            what="the first pushes at the receiver",
        )
        receiver.process.stop()  # the receiver is down for ~20 s while clusters push
        down_until = time.monotonic() + 20
        before = sum(len(v) for v in acked.values())
        while time.monotonic() < down_until:
            round_of_pushes(servers)
        assert sum(len(v) for v in acked.values()) - before >= 6 * 10  # all those pushes: 200
        assert metric(servers[1], "telemeter_forward_queue_length") > 0
        servers[0].process.send(signal.SIGKILL)  # a forwarding pod dies with entries queued
        for _ in range(3):
            round_of_pushes(servers[1:])
        receiver = start_receiver(workdir=tmp_path / "receiver", address=address)

        wait_for(
            lambda: missing(receiver, acked, refused),
            timeout=60,
            what="every acknowledged push at the receiver",
        )
        assert metric(servers[1], "telemeter_forward_samples_total") > 0
    finally:
        for server in servers:
            server.process.stop()
        receiver.process.stop()


# ---- a scripted receiver: 400 for one cluster's series, or 429 with Retry-After first ----------


class ScriptedReceiver(http.server.ThreadingHTTPServer):
    """A remote-write receiver answering by script, recording what it accepted."""

    def __init__(
        self,
        *,
        refuse_id: str | None = None,
        throttle_first: int = 0,
        throttle_tenant: str | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.refuse_id = refuse_id
        self.throttle_first = throttle_first
        self.throttle_tenant = throttle_tenant  # its first request gets 429
        self.requests: list[tuple[float, int, list[str]]] = []  # (time, status, the _ids)
        self.accepted: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/v1/write"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ScriptedReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        series = remotewrite.decode(bytes(cramjam.snappy.decompress_raw(body)))
        ids = [dict(labels).get("_id", "") for labels, _ in series]
        s = self.server
        with s.lock:
            s.headers_seen.append(dict(self.headers))
            tenant = self.headers.get("THANOS-TENANT")
            first = not any(tenant in ids for _, _, ids in s.requests)
            if len(s.requests) < s.throttle_first or (
                first and tenant is not None and tenant == s.throttle_tenant
            ):
                status = 429
            elif s.refuse_id is not None and s.refuse_id in ids:
                status = 400
            else:
                status = 204
                s.accepted += ids
            s.requests.append((time.monotonic(), status, sorted(set(ids))))
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "3")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_scripted(receiver: ScriptedReceiver) -> Iterator[ScriptedReceiver]:
    """Serve ``receiver`` in a thread while the generator is open (a fixture body)."""
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


@pytest.fixture
def scripted(request: pytest.FixtureRequest) -> Iterator[ScriptedReceiver]:
    yield from serve_scripted(ScriptedReceiver(**request.param))


def one_server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path, url: str, *extra: str
) -> ServerHandle:
    """A forwarding server whose receiver will see only this test's uploads."""
    empty_forward_queues(redis_cluster.startup_nodes, redis_cluster.password)
    return start_server(
        redis_url=redis_cluster.url,
        workdir=tmp_path,
        name="scripted",
        shared_key=signing_key,
        extra_args=[*FORWARD_ARGS, "--forward-url", url, *extra],
    )


@pytest.mark.parametrize("scripted", [{"refuse_id": "rw-bad"}], indirect=True)
def test_an_entry_refused_with_400_loses_nothing_else_of_its_batch(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path, scripted: ScriptedReceiver
) -> None:
    # One tenant for all, one request at a time and a slow poll, so that the three uploads go
    # out as one batch.
    server = one_server(
        redis_cluster, signing_key, tmp_path, scripted.url,
        "--tenant-id", "fleet", "--tenant-header", "X-Scope-OrgID", "--forward-interval", "3s",
        "--forward-concurrency", "1",
    )  # fmt: skip
    try:
        for c in ("rw-good1", "rw-bad", "rw-good2"):
            assert push(server, authorize(server, c), c, 1) == 200
        wait_for(
            lambda: (
                None
                if {"rw-good1", "rw-good2"} <= set(scripted.accepted)
                else str(scripted.requests)
            ),
            timeout=30,
            what="the good entries at the receiver",
        )
        assert "rw-bad" not in scripted.accepted
        assert any(status == 400 and len(ids) > 1 for _, status, ids in scripted.requests)
        wait_for(
            lambda: None if metric(server, "telemeter_forward_dropped_samples_total") else "0",
            timeout=10,
            what="the dropped samples counted",
        )
        seen = scripted.headers_seen[0]
        assert seen["X-Scope-OrgID"] == "fleet" and seen["Content-Encoding"] == "snappy"
        assert seen["Content-Type"] == "application/x-protobuf"
        assert seen["X-Prometheus-Remote-Write-Version"] == "0.1.0"
        assert seen["User-Agent"].startswith("telemeter-server/")
    finally:
        server.process.stop()


@pytest.mark.parametrize("scripted", [{"throttle_first": 1}], indirect=True)
def test_a_429_retry_after_is_honoured(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path, scripted: ScriptedReceiver
) -> None:
    server = one_server(redis_cluster, signing_key, tmp_path, scripted.url)
    try:
        assert push(server, authorize(server, "rw-429"), "rw-429", 1) == 200
        wait_for(
            lambda: None if "rw-429" in scripted.accepted else str(scripted.requests),
            timeout=30,
            what="the entry accepted after the 429",
        )
        (t429, status, _), (t_ok, ok, _) = scripted.requests[:2]
        assert (status, ok) == (429, 204)
        assert t_ok - t429 >= 2.9  # Retry-After: 3, not the 1 s backoff cap
        # Its tenant is the cluster's own (no --tenant-id), in the Thanos header.
        assert scripted.headers_seen[0]["THANOS-TENANT"] == "rw-429"
    finally:
        server.process.stop()


@pytest.mark.parametrize("scripted", [{"throttle_tenant": "rw-slow"}], indirect=True)
def test_a_throttled_tenant_waits_alone(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path, scripted: ScriptedReceiver
) -> None:
    # The receiver throttles one tenant (429, Retry-After: 3); the others must not wait with it.
    server = one_server(redis_cluster, signing_key, tmp_path, scripted.url)
    try:
        assert push(server, authorize(server, "rw-slow"), "rw-slow", 1) == 200
        wait_for(
            lambda: None if scripted.requests else "no request yet",
            timeout=30,
            what="the throttled tenant's first request",
        )
        for c in ("rw-fast1", "rw-fast2"):
            assert push(server, authorize(server, c), c, 1) == 200
        wait_for(
            lambda: None if {"rw-fast1", "rw-fast2", "rw-slow"} <= set(scripted.accepted) else "",
            timeout=30,
            what="every tenant's entry accepted",
        )
        times = {ids[0]: (t, status) for t, status, ids in scripted.requests if status == 204}
        t429 = next(t for t, status, ids in scripted.requests if status == 429)
        assert max(times["rw-fast1"][0], times["rw-fast2"][0]) - t429 < 2.5  # did not wait 3 s
        assert times["rw-slow"][0] - t429 >= 2.9  # its Retry-After, honoured
    finally:
        server.process.stop()


def test_a_cluster_prometheus_remote_writes_through_us_to_the_central_receiver(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path
) -> None:
    central = start_receiver(workdir=tmp_path / "central")
    server = start_server(
        redis_url=redis_cluster.url,
        workdir=tmp_path,
        name="rw-front",
        shared_key=signing_key,
        extra_args=[*FORWARD_ARGS, "--forward-url", f"{central.url}/api/v1/write"],
    )
    jwt = authorize(server, "rw-prom")
    address = f"127.0.0.1:{free_port()}"
    config = {
        "global": {"scrape_interval": "1s", "external_labels": {"_id": "rw-prom"}},
        "scrape_configs": [{"job_name": "self", "static_configs": [{"targets": [address]}]}],
        "remote_write": [
            {
                "url": f"{server.external}/metrics/v1/receive",
                "authorization": {"type": "Bearer", "credentials": jwt},
                "queue_config": {"batch_send_deadline": "1s", "min_backoff": "100ms"},
            }
        ],
    }
    workdir = tmp_path / "cluster-prometheus"
    workdir.mkdir()
    (workdir / "prometheus.yml").write_text(json.dumps(config))
    binary = find_prometheus()
    assert binary is not None
    cluster_prometheus = ManagedProcess(
        "cluster-prometheus",
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={address}",
        ],
        log_path=workdir / "prometheus.log",
    ).start()
    try:
        wait_for(
            lambda: None if query(central.url, 'up{_id="rw-prom",job="self"}') else "no series yet",
            timeout=60,
            what="the cluster's series at the central receiver",
        )
        # Every series of the cluster Prometheus (job "self") arrived with its _id, and none
        # under another. (The receiver may also get entries other tests left queued in the
        # shared Redis: the forward queue outlives the servers that filled it.)
        assert query(central.url, 'count({job="self",_id!="rw-prom"})') == []
        assert query(central.url, 'count({job="self",_id="rw-prom"})') != []
    finally:
        cluster_prometheus.stop()
        server.process.stop()
        central.process.stop()
