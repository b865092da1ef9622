"""A Redis primary SIGKILLed under Redis's default ``cluster-require-full-coverage yes``, while
clusters push (docs/operations.md, "Failure modes").

With the default, every node refuses every command (``CLUSTERDOWN``) from the moment the dead
primary is marked failed until its replica has taken over, so every cluster's pushes fail for
those seconds, not only those of the lost slots. What must hold: each failed push is a 503 with
``Retry-After`` (never another 5xx, never a hang past the client's timeout); once the replica is
promoted every cluster's pushes succeed again without restarting the server; and no push
answered 200 is lost (``/federate`` serves each cluster's last acknowledged push, or a later
one).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis.crc import key_slot

from app import keys
from dev.launch import ServerHandle
from dev.redis_cluster import LocalRedisCluster
from dev.redis_security import RedisSecurity
from tests.conftest import require_redis_server
from tests.integration.test_faults import crashed, federate_union, seq_body, seqs_in, servers_on
from tests.support import UPLOAD_HEADERS, authorize, wait_for

pytestmark = pytest.mark.integration

CLIENT_TIMEOUT_S = 10.0
NODE_TIMEOUT_MS = 2000


@dataclass
class Pushes:
    """What the simulated clients saw: per cluster the pushes answered 200, per attempt its
    time (since the kill), status and duration, and what was wrong."""

    acked: dict[str, list[int]] = field(default_factory=dict)
    attempted: dict[str, int] = field(default_factory=dict)
    answers: list[tuple[float, str, int, float]] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


async def _pushing(
    server: ServerHandle, jwts: dict[str, str], pushes: Pushes, stop: asyncio.Event, t0: list[float]
) -> None:
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as http:

        async def one_cluster(cid: str) -> None:
            seq = 0
            while not stop.is_set():
                seq += 1
                pushes.attempted[cid] = seq
                began = time.monotonic()
                try:
                    answer = await http.post(
                        f"{server.external}/upload",
                        content=seq_body(cid, seq),
                        headers={"Authorization": f"Bearer {jwts[cid]}", **UPLOAD_HEADERS},
                    )
                except httpx.HTTPError as exc:  # a timeout (a hang) or a cut connection
                    pushes.wrong.append(f"{cid}#{seq}: {exc!r}")
                    continue
                took = time.monotonic() - began
                pushes.answers.append((began - t0[0], cid, answer.status_code, took))
                if answer.status_code == 200:
                    pushes.acked[cid].append(seq)
                elif answer.status_code != 503 or int(answer.headers.get("Retry-After", 0)) <= 0:
                    pushes.wrong.append(f"{cid}#{seq}: {answer.status_code} {answer.headers}")
                # A fast client: a push every 0.1 s, not waiting out the Retry-After.
                await asyncio.sleep(0.1)

        await asyncio.gather(*(one_cluster(cid) for cid in jwts))


def _recovered(pushes: Pushes, since: float) -> str | None:
    """None once every cluster had three pushes in a row answered 200 after ``since``."""
    last: dict[str, list[int]] = {}
    for at, cid, status, _ in pushes.answers:
        if at >= since:
            last.setdefault(cid, []).append(status)
    behind = [c for c in pushes.acked if last.get(c, [])[-3:] != [200, 200, 200]]
    return f"not yet pushing again: {behind}" if behind else None


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls-acl"])
def test_a_primary_killed_under_the_default_full_coverage(
    signing_key: Path, tmp_path: Path, secure: bool
) -> None:
    # With TLS and the ACL user (docs/operations.md, "Redis over TLS and with an ACL user"), the
    # new slot map and the promoted primary are reached over TLS too.
    security = (
        RedisSecurity.create(tmp_path / "tls", admin_password="admin", server_password="server")
        if secure
        else None
    )
    cluster = LocalRedisCluster(
        base_dir=tmp_path / "redis",
        redis_server=require_redis_server(),
        node_timeout_ms=NODE_TIMEOUT_MS,
        require_full_coverage=True,  # Redis's default
        security=security,
    )
    cluster.start()
    extra = tuple(security.server_args(tmp_path / "redis-password")) if security else ()
    try:
        with servers_on(cluster.url, tmp_path, signing_key, ["coverage"], extra_args=extra) as (
            server,
        ):
            ids = [f"cover-{i}" for i in range(6)]
            jwts = {cid: authorize(server, cid) for cid in ids}
            pushes = Pushes(acked={cid: [] for cid in ids})
            slot = key_slot(keys.snapshot_key(ids[0]).encode())
            victim = cluster.primary_for_slot(slot)
            elsewhere = {
                cid
                for cid in ids
                if cluster.primary_for_slot(key_slot(keys.snapshot_key(cid).encode())) != victim
            }
            assert elsewhere, "every cluster on one primary"

            async def scenario() -> tuple[float, float]:
                stop, t0 = asyncio.Event(), [time.monotonic()]
                task = asyncio.create_task(_pushing(server, jwts, pushes, stop, t0))
                await asyncio.sleep(2.0)
                assert all(pushes.acked.values()), "no push answered 200 before the kill"
                await asyncio.to_thread(cluster.kill_node, victim)
                t0[0] = killed = time.monotonic()
                promoted = 0.0
                while (missing := _recovered(pushes, promoted or 1e9)) is not None:
                    assert time.monotonic() - killed < 60, f"no recovery: {missing}"
                    if not promoted:
                        owner = await asyncio.to_thread(_owner_of, cluster, slot)
                        if owner not in (None, victim):
                            promoted = time.monotonic() - killed
                    await asyncio.sleep(0.2)
                stop.set()
                await task
                return promoted, time.monotonic() - killed

            promoted, _ = asyncio.run(scenario())
            assert pushes.wrong == [], pushes.wrong[:10]
            failed = [(at, cid) for at, cid, status, _ in pushes.answers if status != 200]
            slowest = max(took for *_, took in pushes.answers)
            # The default's mark: clusters whose primary lives failed too (CLUSTERDOWN).
            assert {cid for _, cid in failed} & elsewhere, "no CLUSTERDOWN seen"
            assert slowest < CLIENT_TIMEOUT_S
            print(
                f"\nreplica promoted {promoted:.1f}s after the kill; pushes failed (503) from "
                f"{min(a for a, _ in failed):.1f}s to {max(a for a, _ in failed):.1f}s, "
                f"{len({c for _, c in failed})} of {len(ids)} clusters; slowest answer "
                f"{slowest:.2f}s"
            )

            # Nothing acknowledged is lost: each cluster's last 200, or a later push.
            def served() -> str | None:
                seen = seqs_in(federate_union([server]))
                wrong = {
                    c: (seen.get(c), acked[-1], pushes.attempted[c])
                    for c, acked in pushes.acked.items()
                    if not acked[-1] <= seen.get(c, -1) <= pushes.attempted[c]
                }
                return f"(served, last acknowledged, last sent) {wrong}" if wrong else None

            wait_for(served, timeout=30, what="every last acknowledged push in /federate")
            assert server.process.alive and not crashed(server)
    finally:
        cluster.stop()


def _owner_of(cluster: LocalRedisCluster, slot: int) -> int | None:
    try:
        return cluster.primary_for_slot(slot)
    except Exception:  # no node answers, or the slot is unassigned for a moment
        return None
