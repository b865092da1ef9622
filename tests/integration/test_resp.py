"""The bare RESP connection used for uploads and `/federate` reads, against the real cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.cluster import ClusterNode, RedisCluster

from app import resp
from dev.ports import free_port
from tests.conftest import RedisClusterHandle

pytestmark = pytest.mark.integration


def test_replies_in_order_and_redirections_as_errors(redis_cluster: RedisClusterHandle) -> None:
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes],  # type: ignore[no-untyped-call]
        password=redis_cluster.password,
    )
    keys = [f"resp-{uuid.uuid4().hex}" for _ in range(64)]
    node_of: Callable[[str], Any] = client.get_node_from_key  # untyped in redis-py
    owner = node_of(keys[0])
    assert owner is not None
    mine = [k for k in keys if node_of(k) == owner][:3]
    other = next(k for k in keys if node_of(k) != owner)
    for i, key in enumerate(mine):
        client.set(key, f"v{i}".encode() * 1000)
    missing = f"{{{mine[0]}}}-missing"  # same slot, no value
    commands = [(b"GET", k.encode()) for k in [*mine, other, missing]]

    async def main() -> tuple[list[Any], Any, list[Any]]:
        conn = await resp.Connection.open(
            owner.host, int(owner.port), password=redis_cluster.password, timeout_s=5
        )
        try:
            # A batch, a single call and another batch in flight at once on one connection.
            first = conn.batch(commands, timeout_s=5)
            single = conn.call((b"ECHO", b"between"), timeout_s=5)
            second = conn.batch(commands[:1], timeout_s=5)
            return await first, await single, await second
        finally:
            conn.close()

    replies, single, second = asyncio.run(main())
    assert replies[:3] == [f"v{i}".encode() * 1000 for i in range(3)]
    assert isinstance(replies[3], resp.ReplyError) and str(replies[3]).startswith("MOVED")
    assert replies[4] is None
    assert single == b"between" and second == [b"v0" * 1000]
    for key in mine:
        client.delete(key)
    client.close()


def _loops() -> list[str]:
    return ["asyncio", "uvloop"]  # the server runs on uvloop; its transports differ


def _run(loop: str, coro: Any) -> Any:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


@pytest.mark.parametrize("loop", _loops())
def test_connection_pipelines_commands_in_order(
    redis_cluster: RedisClusterHandle, loop: str
) -> None:
    host, port = redis_cluster.startup_nodes[0]

    async def main() -> list[Any]:
        conn = await resp.Connection.open(host, port, password=redis_cluster.password, timeout_s=5)
        try:
            # Many commands and batches in flight at once, sent in one write: each caller gets
            # its own replies.
            replies = await asyncio.gather(
                *(
                    conn.batch([(b"ECHO", b"b%d" % i), (b"ECHO", b"c%d" % i)], timeout_s=5)
                    if i % 10 == 5
                    else conn.call((b"ECHO", b"%d" % i), timeout_s=5)
                    for i in range(200)
                )
            )
            error = await conn.call((b"NOSUCHCOMMAND",), timeout_s=5)
        finally:
            conn.close()
        return [replies, error, conn.closed]

    replies, error, closed = _run(loop, main())
    assert replies == [[b"b%d" % i, b"c%d" % i] if i % 10 == 5 else b"%d" % i for i in range(200)]
    assert isinstance(error, resp.ReplyError) and closed


@pytest.mark.parametrize("loop", _loops())
def test_large_replies_read_in_slices(redis_cluster: RedisClusterHandle, loop: str) -> None:
    host, port = redis_cluster.startup_nodes[0]
    # ECHO needs no key: replies of every size around and far above a feed slice, in one batch
    # (the reads then hold many replies and cut them anywhere).
    sizes = [resp.FEED_BYTES - 1, resp.FEED_BYTES, 3, 700_000, *range(9_000, 12_000, 97)]
    values = [bytes([i % 251]) * n for i, n in enumerate(sizes)]

    async def main() -> list[Any]:
        conn = await resp.Connection.open(host, port, password=redis_cluster.password, timeout_s=5)
        try:
            batch: list[Any] = await conn.batch([(b"ECHO", v) for v in values], timeout_s=10)
            return batch
        finally:
            conn.close()

    assert _run(loop, main()) == values


@pytest.mark.parametrize("loop", _loops())
def test_connection_failures_raise(loop: str) -> None:
    async def main() -> None:
        await resp.Connection.open("127.0.0.1", free_port(), password=None, timeout_s=2)

    with pytest.raises(OSError):
        _run(loop, main())


def test_connection_timeout_closes_it(redis_cluster: RedisClusterHandle) -> None:
    host, port = redis_cluster.startup_nodes[0]

    async def main() -> resp.Connection:
        conn = await resp.Connection.open(host, port, password=redis_cluster.password, timeout_s=5)
        with pytest.raises(TimeoutError):
            # WAIT blocks for its 2 s (no node has 6 replicas), whatever slots the node serves.
            await conn.call((b"WAIT", b"6", b"2000"), timeout_s=0.2)
        with pytest.raises(ConnectionError):
            await conn.call((b"PING",), timeout_s=1)
        return conn

    assert asyncio.run(main()).closed


@pytest.mark.parametrize("loop", _loops())
def test_uploads_use_the_kept_connections(
    redis_cluster: RedisClusterHandle, loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both upload commands go over the bare connections; the cluster client is not needed."""
    from prometheus_client import CollectorRegistry, Histogram

    from app import keys, snapshot
    from app.store import Store

    latency = Histogram("t", "t", ["op"], registry=CollectorRegistry())
    store = Store(
        nodes=redis_cluster.startup_nodes,
        password=redis_cluster.password,
        ttl_ms=60_000,
        ratelimit_ms=60_000,
        latency=latency,
    )
    clusters = [f"resp-{uuid.uuid4().hex}" for _ in range(20)]
    value = snapshot.encode(1000, 1, [("m", 1, b"m 1 1000\n")])

    async def main() -> tuple[list[int], list[int], list[bytes]]:
        try:
            first = await asyncio.gather(
                *(store.save_snapshot(c, value, now_ms=1000) for c in clusters)
            )
            again = await asyncio.gather(
                *(store.save_snapshot(c, value, now_ms=1000) for c in clusters)
            )
            ranges = sorted({keys.cluster_range(c) for c in clusters})
            stored = await store.load_snapshots(ranges, now_ms=1000)
        finally:
            await store.close()
        return first, again, stored

    with caplog.at_level("INFO", logger="app.store"):
        first, again, stored = _run(loop, main())
    assert first == [0] * len(clusters)
    assert all(0 < wait <= 60_000 for wait in again)  # rate limited, by the Lua script
    assert stored.count(value) >= len(clusters)
    assert not [r for r in caplog.records if "retrying via the cluster" in r.getMessage()]
