"""Faults, with real processes: a server SIGKILLed under load, a Redis primary SIGKILLed, the whole
Redis Cluster stopped and started again from its AOF, Redis absent when a server starts.

The Redis tests destroy nodes, so each starts its OWN `LocalRedisCluster` (short node timeout) in
a tmp dir and stops it in a ``finally``; only the server-kill test uses the shared cluster.
Servers run with ``--ratelimit 0s`` (every push is stored) and short ring times, so a dead pod's
ranges move within a couple of seconds (docs/architecture.md I5) and the tests run in seconds.

What each upload carries: one gauge ``fault_seq`` whose value is the client's push number, so a
``/federate`` or a stored snapshot tells exactly which acknowledged push it holds (I6).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from app import keys
from dev.launch import ServerHandle, start_server
from dev.redis_cluster import LocalRedisCluster
from telemeter import metrics_pb2
from tests.conftest import RedisClusterHandle, require_redis_server
from tests.support import UPLOAD_HEADERS, authorize, encode_upload, stored_text, wait_for

pytestmark = pytest.mark.integration

FAST_ARGS = [
    "--ratelimit", "0s",
    "--ring-heartbeat", "0.5s",
    "--ring-lease", "2s",
    "--redis-timeout", "1s",
]  # fmt: skip
SEQ_LINE = re.compile(r'^fault_seq\{[^}]*_id="([^"]+)"[^}]*\} (\S+)', re.MULTILINE)


# ---- helpers --------------------------------------------------------------------------------


def seq_body(cluster_id: str, seq: int) -> bytes:
    """A small valid upload of ``cluster_id`` whose ``fault_seq`` gauge is ``seq``."""
    now_ms = int(time.time()) * 1000
    families = [
        metrics_pb2.MetricFamily(
            name="fault_seq",
            type=metrics_pb2.GAUGE,
            metric=[
                metrics_pb2.Metric(
                    label=[metrics_pb2.LabelPair(name="_id", value=cluster_id)],
                    gauge=metrics_pb2.Gauge(value=float(seq)),
                    timestamp_ms=now_ms,
                )
            ],
        ),
        metrics_pb2.MetricFamily(
            name="fault_up",
            type=metrics_pb2.COUNTER,
            metric=[
                metrics_pb2.Metric(
                    label=[
                        metrics_pb2.LabelPair(name="_id", value=cluster_id),
                        metrics_pb2.LabelPair(name="job", value=f"j{i}"),
                    ],
                    counter=metrics_pb2.Counter(value=float(i)),
                    timestamp_ms=now_ms,
                )
                for i in range(20)
            ],
        ),
    ]
    return encode_upload(families)


def seqs_in(text: str) -> dict[str, int]:
    """``fault_seq`` per cluster id in an exposition text."""
    return {cid: int(float(value)) for cid, value in SEQ_LINE.findall(text)}


def federate_union(servers: list[ServerHandle]) -> str:
    """The union of every live pod's ``/federate`` (the ring splits the clusters between pods)."""
    texts = []
    for server in servers:
        if server.process.alive:
            answer = httpx.get(f"{server.internal}/federate", timeout=10)
            if answer.status_code == 200:
                texts.append(answer.text)
    return "\n".join(texts)


def push(server: ServerHandle, jwt: str, body: bytes, *, timeout: float = 15) -> httpx.Response:
    """One upload."""
    return httpx.post(
        f"{server.external}/upload",
        content=body,
        headers={"Authorization": f"Bearer {jwt}", **UPLOAD_HEADERS},
        timeout=timeout,
    )


def ring_failures(server: ServerHandle) -> float:
    """The server's count of failed ring heartbeats."""
    text = httpx.get(f"{server.internal}/metrics", timeout=5).text
    found = re.search(r"^telemeter_ring_renew_failures_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@contextlib.contextmanager
def own_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A private 3-primary, 3-replica cluster with a 1 s node timeout, always stopped."""
    cluster = LocalRedisCluster(
        base_dir=tmp_path / "redis",
        redis_server=require_redis_server(),
        node_timeout_ms=1000,
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def servers_on(
    url: str,
    tmp_path: Path,
    signing_key: Path,
    names: list[str],
    *,
    wait: bool = True,
    extra_args: tuple[str, ...] = (),
) -> Iterator[list[ServerHandle]]:
    """Start servers (in parallel) on ``url``; every one is stopped on exit."""
    started = [
        start_server(
            redis_url=url,
            workdir=tmp_path,
            name=name,
            shared_key=signing_key,
            extra_args=[*FAST_ARGS, *extra_args],
            wait=False,
        )
        for name in names
    ]
    try:
        if wait:
            for handle in started:
                handle.process.wait_http(handle.external + "/healthz")
                handle.process.wait_http(handle.internal + "/healthz")
        yield started
    finally:
        for handle in started:
            handle.process.stop()


def crashed(handle: ServerHandle) -> str:
    """Why a server's log shows a crash, or "" (an unhandled exception is a crash too)."""
    text = handle.process.log_path.read_text(errors="replace")
    return "Traceback" if "Traceback" in text else ""


# ---- a server SIGKILLed while clusters push ------------------------------------------------------


@dataclass
class PushStats:
    """What the simulated clients saw."""

    last_ok: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    gave_up: list[str] = field(default_factory=list)
    answered_by_victim: int = 0
    most_attempts: int = 0


async def _client_loop(
    cluster_id: str,
    index: int,
    servers: list[ServerHandle],
    jwt: str,
    stats: PushStats,
    stop: asyncio.Event,
    http: httpx.AsyncClient,
) -> None:
    """Push, like the real client: retry the same payload with a short backoff on any failure,
    moving to the next pod each attempt (what a load balancer does for a refused connection)."""
    seq = 0
    while not stop.is_set():
        seq += 1
        body = seq_body(cluster_id, seq)
        for attempt in range(8):
            server = servers[(index + seq + attempt) % len(servers)]
            try:
                answer = await http.post(
                    f"{server.external}/upload",
                    content=body,
                    headers={"Authorization": f"Bearer {jwt}", **UPLOAD_HEADERS},
                )
            except httpx.TransportError:
                stats.transport_errors += 1
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            stats.statuses[answer.status_code] = stats.statuses.get(answer.status_code, 0) + 1
            if answer.status_code == 200:
                stats.last_ok[cluster_id] = seq
                stats.most_attempts = max(stats.most_attempts, attempt + 1)
                if server is servers[0]:
                    stats.answered_by_victim += 1
                break
            await asyncio.sleep(0.05 * (attempt + 1))
        else:
            stats.gave_up.append(f"{cluster_id}#{seq}")
            return
        await asyncio.sleep(0.02)


async def _push_and_kill(
    servers: list[ServerHandle], jwts: dict[str, str], *, kill_after: float, run_for: float
) -> PushStats:
    stats = PushStats()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=10, limits=limits) as http:
        tasks = [
            asyncio.create_task(_client_loop(cid, i, servers, jwt, stats, stop, http))
            for i, (cid, jwt) in enumerate(sorted(jwts.items()))
        ]
        await asyncio.sleep(kill_after)
        before_kill = stats.answered_by_victim
        servers[0].process.send(signal.SIGKILL)  # mid-flight: uploads are in progress now
        await asyncio.sleep(run_for)
        stop.set()
        await asyncio.gather(*tasks)
    assert before_kill > 0, "the victim pod answered no upload before it was killed"
    return stats


def test_sigkill_a_server_while_clusters_push(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path
) -> None:
    with servers_on(redis_cluster.url, tmp_path, signing_key, ["victim", "survivor"]) as pods:
        victim, survivor = pods
        ids = [f"kill-{i:02d}-{time.time_ns() % 10**9}" for i in range(24)]
        jwts = {cid: authorize(survivor, cid) for cid in ids}
        stats = asyncio.run(_push_and_kill(pods, jwts, kill_after=2.0, run_for=3.0))
        assert not victim.process.alive
        # Retries absorb the crash: every push was eventually acknowledged, and the only
        # failures were refused or cut connections, never an error status.
        assert stats.gave_up == [], stats
        assert set(stats.statuses) == {200}, stats.statuses
        # The round-robin "load balancer" keeps offering the dead pod, so a push needs at most
        # one retry: the next attempt lands on the survivor.
        assert stats.transport_errors > 0 and stats.most_attempts <= 2, stats
        assert set(stats.last_ok) == set(ids)

        # I5 + I6: once the victim's leases run out, the survivor serves every cluster, each
        # with exactly the last push answered 200 (retries resend the same payload).
        def all_visible() -> str | None:
            seen = seqs_in(federate_union([survivor]))
            wrong = {c: (seen.get(c), s) for c, s in stats.last_ok.items() if seen.get(c) != s}
            return f"(federated, acknowledged) differ: {wrong}" if wrong else None

        wait_for(all_visible, timeout=15, what="every acknowledged push in /federate")
        assert survivor.process.alive and not crashed(survivor)


# ---- the Redis primary of a busy slot SIGKILLed ------------------------------------------


def _ids_on(
    cluster: LocalRedisCluster, prefix: str, *, primary: int, same: bool, n: int
) -> list[str]:
    """``n`` cluster ids whose slot is (``same``) or is not on the node ``primary``."""
    found = []
    for i in range(10_000):
        cid = f"{prefix}-{i}"
        on = cluster.primary_for_slot(key_slot(keys.snapshot_key(cid).encode())) == primary
        if on == same:
            found.append(cid)
            if len(found) == n:
                return found
    raise AssertionError("no cluster ids found")


def test_sigkill_the_primary_of_a_busy_slot(signing_key: Path, tmp_path: Path) -> None:
    with (
        own_cluster(tmp_path) as cluster,
        servers_on(cluster.url, tmp_path, signing_key, ["failover"]) as (server,),
    ):
        probe = _ids_on(cluster, "busy", primary=-1, same=False, n=1)[0]
        primary = cluster.primary_for_slot(key_slot(keys.snapshot_key(probe).encode()))
        busy = _ids_on(cluster, "busy", primary=primary, same=True, n=1)[0]
        others = _ids_on(cluster, "other", primary=primary, same=False, n=8)
        jwts = {cid: authorize(server, cid) for cid in [busy, *others]}
        for cid, jwt in jwts.items():
            answer = push(server, jwt, seq_body(cid, 0))
            assert answer.status_code == 200, answer.text
        with cluster.client(primary) as conn:
            conn.execute_command("WAIT", 1, 2000)  # the replica has every acknowledged push

        cluster.kill_node(primary)
        killed_at = time.monotonic()
        reader = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes if p != primary],  # type: ignore[no-untyped-call]
        )
        busy_answers: list[tuple[float, int]] = []
        other_failures: list[str] = []
        seq = 0
        ok_in_a_row = 0
        try:
            while ok_in_a_row < 3:
                assert time.monotonic() - killed_at < 30, f"no recovery: {busy_answers}"
                seq += 1
                # No other slot is affected: the other clusters first, right after the kill.
                for cid in others:
                    other = push(server, jwts[cid], seq_body(cid, seq))
                    if other.status_code != 200:
                        other_failures.append(
                            f"{cid} (slot {key_slot(keys.snapshot_key(cid).encode())}) at "
                            f"{time.monotonic() - killed_at:.2f}s: "
                            f"{other.status_code} {other.text.strip()}"
                        )
                answer = push(server, jwts[busy], seq_body(busy, seq))
                busy_answers.append((round(time.monotonic() - killed_at, 2), answer.status_code))
                assert answer.status_code in (200, 503), (answer.status_code, answer.text)
                if answer.status_code == 503:
                    ok_in_a_row = 0
                    assert int(answer.headers["Retry-After"]) > 0
                    time.sleep(0.2)
                else:
                    ok_in_a_row += 1
                    # Never 200 unstored: the new primary holds exactly this push.
                    value = reader.get(keys.snapshot_key(busy))
                    assert isinstance(value, bytes), "200 answered, nothing stored"
                    assert seqs_in(stored_text(value)) == {busy: seq}
        finally:
            reader.close()
        assert not other_failures, (
            f"clusters on live primaries failed: {other_failures[:8]}; busy: {busy_answers}"
        )
        assert cluster.primary_for_slot(key_slot(keys.snapshot_key(busy).encode())) != primary
        assert server.process.alive and not crashed(server)


# ---- every Redis node stopped, started again from its AOF; Redis absent at server start ---------


def test_full_redis_restart_from_aof_and_servers_without_redis(
    signing_key: Path, tmp_path: Path
) -> None:
    with own_cluster(tmp_path) as cluster, contextlib.ExitStack() as stack:
        (first,) = stack.enter_context(servers_on(cluster.url, tmp_path, signing_key, ["before"]))
        ids = [f"aof-{i:02d}" for i in range(20)]
        jwts = {cid: authorize(first, cid) for cid in ids}
        for cid, jwt in jwts.items():
            assert push(first, jwt, seq_body(cid, 7)).status_code == 200
        wait_for(
            lambda: None if len(seqs_in(federate_union([first]))) == len(ids) else "missing",
            timeout=10,
            what="all clusters federated",
        )
        before = {line for line in federate_union([first]).splitlines() if "aof-" in line}

        cluster.stop_all(graceful=True)  # SIGTERM: each node fsyncs its AOF and exits
        # Redis gone while running: ready turns false, uploads get 503, nothing crashes.
        wait_for(
            lambda: (
                None
                if httpx.get(f"{first.external}/healthz/ready").status_code == 503
                else "still ready"
            ),
            timeout=10,
            what="not ready without Redis",
        )
        gone = push(first, jwts[ids[0]], seq_body(ids[0], 8))
        assert gone.status_code == 503 and int(gone.headers["Retry-After"]) > 0, gone.text
        assert httpx.get(f"{first.external}/healthz").status_code == 200

        # Redis unreachable when a server starts: it starts, stays up through failed ring
        # heartbeats and reports not ready.
        (late,) = stack.enter_context(servers_on(cluster.url, tmp_path, signing_key, ["late"]))
        wait_for(
            lambda: None if ring_failures(late) >= 2 else "fewer than two",
            timeout=10,
            what="failed ring heartbeats",
        )
        assert late.process.alive, late.process.log_tail()
        assert httpx.get(f"{late.external}/healthz/ready").status_code == 503
        assert httpx.get(f"{late.internal}/healthz/ready").status_code == 503
        assert push(late, jwts[ids[1]], seq_body(ids[1], 8)).status_code == 503

        cluster.start_all()  # every node reloads its AOF
        # Both become ready by themselves: nothing restarts them.
        for pod in (first, late):
            wait_for(
                lambda pod=pod: (
                    None  # type: ignore[misc]
                    if httpx.get(f"{pod.external}/healthz/ready").status_code == 200
                    else httpx.get(f"{pod.external}/healthz/ready").text
                ),
                timeout=30,
                what=f"{pod.name} ready again",
            )

        # Every snapshot that had not expired is back, byte for byte (same server timestamps).
        def restored() -> str | None:
            after = {line for line in federate_union([first, late]).splitlines() if "aof-" in line}
            return None if after == before else f"{len(before - after)} lines missing"

        wait_for(restored, timeout=15, what="snapshots restored from the AOF")
        for pod, cid in ((first, ids[2]), (late, ids[3])):
            answer = push(pod, jwts[cid], seq_body(cid, 9))
            assert answer.status_code == 200, answer.text
        for pod in (first, late):
            assert pod.process.alive and not crashed(pod), pod.process.log_tail()
