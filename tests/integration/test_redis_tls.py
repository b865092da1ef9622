"""Redis over TLS and as a least-privilege ACL user, with real processes (docs/operations.md,
"Redis over TLS and with an ACL user").

The module's cluster (3 primaries, 3 replicas) listens on TLS only, requires client
certificates, runs its bus and replication over TLS, and has the ``telemeter`` user of
`dev.redis_security.SERVER_ACL`, the rule docs/operations.md quotes. A server runs as that user
and goes through every path that touches Redis; then no node may have refused it anything (the
ACL LOG is empty: a missing command fails the test) and every command the rule allows must have
been run (so the rule lists no command the server does not need).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram
from redis.crc import key_slot

from app import keys, snapshot
from app.redis_tls import TLSConnection, client_context
from app.store import Store
from dev.launch import ServerHandle, start_authorization_server, start_server
from dev.redis_cluster import LocalRedisCluster
from dev.redis_security import SERVER_ACL, SERVER_USER, RedisSecurity
from telemeter import remotewrite
from tests.conftest import RedisClusterHandle, require_redis_server
from tests.e2e.test_forward import ScriptedReceiver, serve_scripted
from tests.integration.test_faults import seq_body, seqs_in
from tests.integration.test_receive import remotewrite_block, write_request
from tests.support import RING_ARGS, UPLOAD_HEADERS, authorize_at, federate, wait_for

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    base = tmp_path_factory.mktemp("redis-tls")
    security = RedisSecurity.create(
        base / "tls", admin_password=secrets.token_hex(8), server_password=secrets.token_hex(8)
    )
    cluster = LocalRedisCluster(
        base_dir=base / "redis", security=security, redis_server=require_redis_server()
    )
    with cluster:
        yield cluster


def security_of(cluster: LocalRedisCluster) -> RedisSecurity:
    assert cluster.security is not None
    return cluster.security


def allowed_commands() -> list[str]:
    """The commands the documented rule allows (``+cmd``, ``+cmd|sub``)."""
    return re.findall(r"\+([a-z|]+)", SERVER_ACL)


def denials(cluster: LocalRedisCluster) -> list[str]:
    """What any node refused (its ACL LOG), as ``port: user reason object``."""
    found = []
    for port in cluster.ports:
        with cluster.client(port) as admin:
            for entry in admin.execute_command("ACL", "LOG"):
                found.append(f"{port}: {entry['username']} {entry['reason']} {entry['object']}")
    return found


def command_calls(cluster: LocalRedisCluster) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, summed over the nodes."""
    calls: dict[str, int] = {}
    for port in cluster.ports:
        with cluster.client(port) as admin:
            stats = admin.info("commandstats")
        for name, value in stats.items():
            command = name.removeprefix("cmdstat_")
            calls[command] = calls.get(command, 0) + int(value["calls"])
    return calls


def push(server: ServerHandle, jwt: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.external}/upload",
        content=body,
        headers={"Authorization": f"Bearer {jwt}", **UPLOAD_HEADERS},
        timeout=15,
    )


def test_the_documented_rule_is_the_tested_one() -> None:
    assert SERVER_ACL in DOCS.read_text(), "docs/operations.md must quote SERVER_ACL exactly"


def test_every_path_works_over_tls_as_the_least_privilege_user(
    secure: LocalRedisCluster, signing_key: Path, tmp_path: Path
) -> None:
    cluster, security = secure, security_of(secure)
    cid = f"tls-{secrets.token_hex(4)}"
    # An index entry whose snapshot is long gone, for /federate to prune (ZREM).
    ghost = f"ghost-{secrets.token_hex(4)}"
    index = keys.index_key(keys.cluster_range(ghost))
    with cluster.client(cluster.primary_for_slot(key_slot(index.encode()))) as admin:
        admin.zadd(index, {ghost: int(time.time() * 1000) - 10 * keys.INDEX_PRUNE_GRACE_MS})
    for port in cluster.ports:  # from here on, only the server's commands are counted
        with cluster.client(port) as admin:
            admin.execute_command("ACL", "LOG", "RESET")
            admin.config_resetstat()

    auth, auth_url = start_authorization_server(workdir=tmp_path, tokens=["good"])
    with contextlib.ExitStack() as stack:
        stack.callback(auth.stop)
        receiver = stack.enter_context(
            contextlib.contextmanager(serve_scripted)(ScriptedReceiver())
        )
        args = [
            *security.server_args(tmp_path / "redis-password"), *RING_ARGS,
            "--ratelimit", "2s", "--forward-url", receiver.url, "--forward-interval", "0.2s",
        ]  # fmt: skip
        server = start_server(
            redis_url=cluster.url,
            workdir=tmp_path,
            name="tls",
            shared_key=signing_key,
            authorize=auth_url,
            extra_args=args,
        )
        stack.callback(server.process.stop)
        server.process.wait_http(server.internal + "/healthz/ready")

        # Token exchange: refused (counted per cluster), accepted, accepted from the cache.
        assert authorize_at(server, cid, "bad").status_code == 401
        answer = authorize_at(server, cid, "good")
        assert answer.status_code == 200, answer.text
        assert authorize_at(server, cid, "good").status_code == 200
        jwt = answer.json()["token"]

        # An upload, queued for remote write; the next one is rate limited and taken back.
        assert push(server, jwt, seq_body(cid, 1)).status_code == 200
        limited = push(server, jwt, seq_body(cid, 2))
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0

        def served() -> str | None:
            return None if seqs_in(federate(server)).get(cid) == 1 else "not in /federate"

        wait_for(served, timeout=15, what="the upload in /federate")

        # Remote write received, then both requests forwarded.
        received = httpx.post(
            f"{server.external}/metrics/v1/receive",
            content=remotewrite_block(write_request(cid)),
            headers={"Authorization": f"Bearer {jwt}", **remotewrite.HEADERS},
            timeout=10,
        )
        assert received.status_code == 204, received.text

        def forwarded() -> str | None:
            with receiver.lock:
                count = receiver.accepted.count(cid)
            return None if count >= 1 + 3 else f"{count} series of {cid} at the receiver"

        wait_for(forwarded, timeout=15, what="both requests forwarded")

        def pruned() -> str | None:
            federate(server)
            with cluster.client(cluster.primary_for_slot(key_slot(index.encode()))) as admin:
                return None if admin.zscore(index, ghost) is None else "still indexed"

        wait_for(pruned, timeout=15, what="the stale index entry pruned")
        assert server.process.stop() == 0  # SIGTERM: the ring's leases are released
        log = server.process.log_path.read_text()
        assert "Traceback" not in log and "ring left" in log, log[-3000:]

    assert denials(cluster) == []
    calls = command_calls(cluster)
    unused = [c for c in allowed_commands() if calls.get(c, 0) == 0]
    assert unused == [], f"allowed but never run: {unused}; run: {sorted(calls)}"


def test_a_wrong_password_is_a_clear_not_ready(
    secure: LocalRedisCluster, signing_key: Path, tmp_path: Path
) -> None:
    security = security_of(secure)
    args = security.server_args(tmp_path / "redis-password")
    (tmp_path / "redis-password").write_text("not-the-password\n")
    server = start_server(
        redis_url=secure.url,
        workdir=tmp_path,
        name="wrongpass",
        shared_key=signing_key,
        extra_args=[*args, *RING_ARGS, "--redis-timeout", "1s"],
    )
    try:
        began = time.monotonic()
        ready = httpx.get(f"{server.internal}/healthz/ready", timeout=10)
        assert ready.status_code == 503 and "redis" in ready.text
        assert time.monotonic() - began < 5  # an answer, not a hang
        jwt = authorize_at(server, "tls-wrongpass").json()["token"]  # no Redis needed (stub)
        answer = push(server, jwt, seq_body("tls-wrongpass", 1))
        assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0
        wait_for(
            lambda: (
                None
                if "invalid username-password pair" in server.process.log_path.read_text()
                else "no such log line"
            ),
            timeout=10,
            what="the refused credentials in the log",
        )
    finally:
        server.process.stop()
    with secure.client(secure.ports[0]) as admin:  # the refusals are in the ACL LOG too
        entries = admin.execute_command("ACL", "LOG")
    assert any(e["reason"] == "auth" and e["username"] == SERVER_USER for e in entries), entries


def test_plaintext_to_a_tls_port_fails_clearly(
    secure: LocalRedisCluster, signing_key: Path, tmp_path: Path
) -> None:
    security = security_of(secure)
    args = security.server_args(tmp_path / "redis-password")
    plain = secure.url.replace("rediss://", "redis://")
    argv = [*args[:4], *RING_ARGS]  # the user and password, no TLS files (refused with redis://)
    server = start_server(
        redis_url=plain, workdir=tmp_path, name="plain", shared_key=signing_key, extra_args=argv
    )
    try:
        ready = httpx.get(f"{server.internal}/healthz/ready", timeout=10)
        assert ready.status_code == 503
        wait_for(
            lambda: None if "rediss://" in server.process.log_path.read_text() else "no hint",
            timeout=10,
            what="the TLS hint in the log",
        )
    finally:
        server.process.stop()


def test_both_paths_speak_tls_to_every_node_redirections_included(
    secure: LocalRedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    security = security_of(secure)
    certs = security.certs
    store = Store(
        nodes=secure.startup_nodes,
        username=SERVER_USER,
        password=security.server_password,
        ttl_ms=60_000,
        ratelimit_ms=0,
        latency=Histogram("t", "t", ["op"], registry=CollectorRegistry()),
        tls=client_context(
            ca_file=certs.ca, client_crt=certs.client_crt, client_key=certs.client_key
        ),
    )
    clusters = [f"tls-{secrets.token_hex(4)}" for _ in range(12)]
    value = snapshot.encode(1000, 1, [("m", 1, b"m 1 1000\n")])

    async def main() -> tuple[list[int], Any, Any]:
        try:
            # The bare RESP connections (a failure there would be retried by the cluster
            # client, and logged).
            saved = await asyncio.gather(
                *(store.save_snapshot(c, value, now_ms=1000) for c in clusters)
            )
            client = await store.client()
            key = keys.snapshot_key(clusters[0])
            slot = key_slot(key.encode())
            owner = client.nodes_manager.slots_cache[slot][0]
            other = next(n for n in client.get_primaries() if n.name != owner.name)
            # Forget the owner and send its slot elsewhere: the answer is MOVED to a node the
            # client has to create anew, from its shared connection arguments.
            del client.nodes_manager.nodes_cache[owner.name]
            client.nodes_manager.slots_cache[slot] = [other]
            assert await client.get(key) == value
            moved_to = client.nodes_manager.slots_cache[slot][0]
            return saved, owner, moved_to
        finally:
            await store.close()

    with caplog.at_level("INFO", logger="app.store"):
        saved, owner, moved_to = asyncio.run(main())
    assert saved == [0] * len(clusters)
    assert not [r for r in caplog.records if "retrying via the cluster" in r.getMessage()]
    assert moved_to.name == owner.name and moved_to is not owner
    assert moved_to.connection_class is TLSConnection


def test_tls_to_a_plaintext_port_fails_clearly(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path
) -> None:
    tls_url = ",".join(f"rediss://{h}:{p}" for h, p in redis_cluster.startup_nodes)
    server = start_server(
        redis_url=tls_url,
        workdir=tmp_path,
        name="tls-to-plain",
        shared_key=signing_key,
        extra_args=[*RING_ARGS, "--redis-timeout", "1s"],
    )
    try:
        assert httpx.get(f"{server.internal}/healthz/ready", timeout=10).status_code == 503
        wait_for(
            lambda: None if "meant to be redis://" in server.process.log_path.read_text() else "",
            timeout=10,
            what="the plaintext hint in the log",
        )
    finally:
        server.process.stop()
