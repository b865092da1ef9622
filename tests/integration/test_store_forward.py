"""An upload of a forwarding server, stored and queued against the real cluster: in one script
where the cluster's slot and its range's slot are on one node, in two steps where they are not.

Either way: the entry is queued with the snapshot saved; a rate-limited upload leaves no entry
behind; a full queue refuses the upload and leaves the stored snapshot as it was.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram
from redis.crc import key_slot

from app import keys, snapshot
from app.errors import QueueFull
from app.store import Forward, Store, _primary
from tests.conftest import RedisClusterHandle

pytestmark = pytest.mark.integration

QUEUE_LIMIT = 3


def _store(redis_cluster: RedisClusterHandle, *, ratelimit_ms: int) -> Store:
    return Store(
        nodes=redis_cluster.startup_nodes,
        password=redis_cluster.password,
        ttl_ms=60_000,
        ratelimit_ms=ratelimit_ms,
        latency=Histogram("t", "t", ["op"], registry=CollectorRegistry()),
    )


def _forward(cluster_id: str, n: int) -> Forward:
    return Forward(body=b"request %d" % n, size=9, tenant=cluster_id, series=1, stamp_ms=1000 + n)


async def _cluster_ids(store: Store, *, same_node: bool, count: int) -> list[str]:
    """Fresh cluster IDs whose snapshot slot is (or is not) on its range's index node."""
    client = await store.client()
    found = []
    prefix = uuid.uuid4().hex
    for i in itertools.count():
        cluster_id = f"{prefix}-{i}"
        slot = key_slot(keys.snapshot_key(cluster_id).encode())
        index_slot = key_slot(keys.index_key(keys.range_of_slot(slot)).encode())
        snap_node, index_node = _primary(client, slot), _primary(client, index_slot)
        assert snap_node is not None and index_node is not None
        if (snap_node.name == index_node.name) == same_node:
            found.append(cluster_id)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


@pytest.mark.parametrize("same_node", [True, False], ids=["one script", "two steps"])
def test_queued_with_the_snapshot_and_nothing_left_when_refused(
    redis_cluster: RedisClusterHandle, same_node: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(redis_cluster, ratelimit_ms=60_000)

    async def main() -> None:
        try:
            client = await store.client()
            (cluster_id,) = await _cluster_ids(store, same_node=same_node, count=1)
            stream = keys.forward_key(keys.cluster_range(cluster_id))
            await client.delete(stream)
            first = snapshot.encode(1000, 1, [("m", 1, b"m 1 1000\n")])
            save = store.save_snapshot
            assert await save(cluster_id, first, now_ms=1000, forward=_forward(cluster_id, 0),
                              queue_limit=QUEUE_LIMIT) == 0  # fmt: skip
            entries: list[Any] = await client.xrange(stream) or []
            assert [fields[b"b"] for _, fields in entries] == [b"request 0"]
            assert entries[0][1][b"t"] == cluster_id.encode()
            assert await client.get(keys.snapshot_key(cluster_id)) == first
            index = keys.index_key(keys.cluster_range(cluster_id))
            assert await client.zscore(index, cluster_id) == 1000

            # Within the rate limit: refused, and no entry is left queued for it.
            second = snapshot.encode(2000, 1, [("m", 1, b"m 2 2000\n")])
            wait = await save(cluster_id, second, now_ms=2000, forward=_forward(cluster_id, 1),
                              queue_limit=QUEUE_LIMIT)  # fmt: skip
            assert 0 < wait <= 60_000
            assert await client.xlen(stream) == 1
            assert await client.get(keys.snapshot_key(cluster_id)) == first

            # A full queue: refused, the stored snapshot untouched, the window not taken.
            await client.delete(keys.ratelimit_key(cluster_id))
            for n in range(QUEUE_LIMIT - 1):
                await client.xadd(stream, {b"b": b"filler %d" % n})
            with pytest.raises(QueueFull):
                await save(cluster_id, second, now_ms=2000, forward=_forward(cluster_id, 2),
                           queue_limit=QUEUE_LIMIT)  # fmt: skip
            assert await client.xlen(stream) == QUEUE_LIMIT
            assert await client.get(keys.snapshot_key(cluster_id)) == first
            assert not await client.exists(keys.ratelimit_key(cluster_id))
            await client.delete(stream)
        finally:
            await store.close()

    with caplog.at_level("INFO", logger="app.store"):
        asyncio.run(main())
    # The one script ran where it could: the cluster client was never needed.
    assert not [r for r in caplog.records if "retrying via the cluster" in r.getMessage()]


def test_the_forwarder_reads_each_nodes_streams_in_one_script(
    redis_cluster: RedisClusterHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """``read_queues`` of all the ranges: what each stream holds, in order, up to the count; on
    a node that does not serve a stream, the script reads nothing and the streams are read one
    by one instead."""
    store = _store(redis_cluster, ratelimit_ms=0)
    queued = {r: r % 4 for r in range(keys.RANGES)}  # range: entries (a quarter empty)

    async def main() -> None:
        try:
            client = await store.client()
            await client.delete(*(keys.forward_key(r) for r in range(keys.RANGES)))
            for r, n in queued.items():
                for i in range(n):
                    fields = {b"b": b"body %d-%d" % (r, i), b"u": b"9", b"t": b"tenant-%d" % r,
                              b"n": b"%d" % (i + 1), b"s": b"%d" % (1000 + i)}  # fmt: skip
                    await client.xadd(keys.forward_key(r), fields)  # type: ignore[arg-type]
            with caplog.at_level("INFO", logger="app.store"):
                heads = await store.read_queues(list(range(keys.RANGES)), count=2)
            assert not [r for r in caplog.records if "one by one" in r.getMessage()]
            by_range = {q[0].range_id: q for q in heads}
            assert len(by_range) == len(heads)
            assert set(by_range) == {r for r, n in queued.items() if n}
            for r, n in queued.items():
                got = [(e.range_id, e.body, e.tenant, e.series, e.stamp_ms)
                       for e in by_range.get(r, [])]  # fmt: skip
                assert got == [(r, b"body %d-%d" % (r, i), f"tenant-{r}", i + 1, 1000 + i)
                               for i in range(min(n, 2))]  # fmt: skip
                stored = await client.xrange(keys.forward_key(r), count=2) or []
                assert [e.entry_id for e in by_range.get(r, [])] == [i for i, _ in stored]

            # A node asked for streams it does not serve: they are read one by one.
            ranges = [r for r, n in queued.items() if n]
            slot = key_slot(keys.forward_key(ranges[0]).encode())
            elsewhere = next(
                n
                for n in client.get_primaries()
                if n.name != _primary(client, slot).name  # type: ignore[union-attr]
            )
            caplog.clear()
            with caplog.at_level("INFO", logger="app.store"):
                again = await store._read_heads(client, elsewhere, ranges, 2)
            assert [r for r in caplog.records if "one by one" in r.getMessage()]
            assert [(r, [entry_id for entry_id, _ in reply]) for r, reply in again] == [
                (r, [e.entry_id for e in by_range[r]]) for r in ranges
            ]
            await client.delete(*(keys.forward_key(r) for r in queued))
        finally:
            await store.close()

    asyncio.run(main())
