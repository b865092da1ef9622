"""Redis Cluster access: snapshots, the rate limit, the cluster index and cached authorizations.

This is the only module that talks to Redis. Every redis-py exception is translated here, once,
into `StoreUnavailable`, which the server answers with 503 and ``Retry-After`` (docs/architecture.md
D9). The connection is made lazily and re-made after a failure, so a server started
before Redis becomes ready by itself when Redis appears.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import Histogram
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from app import keys, resp
from app.errors import QueueFull, StoreUnavailable
from app.redis_tls import mismatch_hint, use_context
from app.scripts import (
    COUNT_FAILURE,
    COUNT_RECEIVE,
    ENQUEUE,
    ENQUEUE_BYTES,
    READ_HEADS_BYTES,
    SAVE_AND_QUEUE_BYTES,
    SAVE_SNAPSHOT,
    SAVE_SNAPSHOT_BYTES,
)

log = logging.getLogger(__name__)

# Everything redis-py raises for an unreachable or failing cluster (RedisClusterException is not
# a RedisError). RuntimeError: on uvloop, a write on a transport that closed under redis-py
# raises "the handler is closed", which redis-py passes on (then drops the connection).
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, RuntimeError)


# Errors of a bare node connection after which the cluster client is asked instead.
NODE_ERRORS = (ConnectionError, TimeoutError, OSError)


_UNANSWERED = object()  # a command the bare connection could not run
# The fields of a queue entry, in the order ENQUEUE and SAVE_AND_QUEUE write them.
_ENTRY_FIELDS = [b"b", b"u", b"t", b"n", b"s"]


@dataclass(frozen=True)
class Forward:
    """What an upload queues for remote write (see `ENQUEUE`)."""

    body: bytes
    size: int
    tenant: str
    series: int
    stamp_ms: int


@dataclass(slots=True)  # not frozen: made for every entry of every turn, that costs 3x
class QueuedEntry:
    """One entry of a range's remote-write stream."""

    range_id: int
    entry_id: bytes
    body: bytes
    size: int
    tenant: str
    series: int
    stamp_ms: int


class Store:
    """The server's view of Redis Cluster."""

    def __init__(
        self,
        *,
        nodes: list[tuple[str, int]],
        password: str | None,
        ttl_ms: int,
        ratelimit_ms: int,
        latency: Histogram,
        timeout_s: float = 2.0,
        username: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._nodes = nodes
        self._password = password
        self._username = username
        self._tls = tls  # one context for both paths (app/redis_tls.py)
        self.ttl_ms = ttl_ms
        self.ratelimit_ms = ratelimit_ms
        self._latency = latency
        self._timeout_s = timeout_s
        self._client: RedisCluster | None = None
        self._connections: dict[str, resp.Connection] = {}
        self._latency_of: dict[str, Any] = {}  # the latency histogram's child per operation
        self._lock = asyncio.Lock()

    async def _connect(self) -> RedisCluster:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                client = RedisCluster(
                    startup_nodes=[ClusterNode(host, port) for host, port in self._nodes],
                    username=self._username,
                    password=self._password,
                    driver_info=None,  # no CLIENT SETINFO, not in the ACL (docs/operations.md)
                    socket_connect_timeout=self._timeout_s,
                    socket_timeout=self._timeout_s,
                    # Bounded: an upload waits a few seconds at most, then gets 503. (Since
                    # redis-py 6 this also bounds the retries after cluster errors.)
                    retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
                )
                if self._tls is not None:
                    use_context(client, self._tls)
                try:
                    await client.initialize()
                except REDIS_ERRORS as exc:
                    await _close_quietly(client)
                    hint = mismatch_hint(exc, tls=self._tls is not None)
                    log.warning("redis cluster unreachable error=%s%s", exc, hint)
                    raise StoreUnavailable(f"redis cluster unreachable: {exc}{hint}") from exc
                self._client = client
            return self._client

    async def client(self) -> RedisCluster:
        """The connected client (for the ring, which keeps its own state in Redis)."""
        return await self._connect()

    @asynccontextmanager
    async def _call(self, op: str) -> AsyncIterator[RedisCluster]:
        """Time one operation and translate redis-py's errors (the one place this happens,
        with `save_snapshot`, which does the same without a context manager's cost)."""
        client = await self._connect()
        start = time.perf_counter()
        try:
            yield client
        except REDIS_ERRORS as exc:
            raise _failed(op, exc) from exc
        finally:
            self._observe(op, start)

    def _observe(self, op: str, start: float) -> None:
        child = self._latency_of.get(op)
        if child is None:
            child = self._latency_of[op] = self._latency.labels(op)
        child.observe(time.perf_counter() - start)

    async def close(self) -> None:
        """Close every connection."""
        connections, self._connections = self._connections, {}
        for conn in connections.values():
            conn.close()
        if self._client is not None:
            client, self._client = self._client, None
            await _close_quietly(client)

    async def ping(self) -> bool:
        """Whether every primary answers (the readiness of the server)."""
        try:
            async with self._call("ping") as client:
                await client.ping(target_nodes=RedisCluster.PRIMARIES)
        except StoreUnavailable:
            return False
        return True

    async def save_snapshot(
        self,
        cluster_id: str,
        value: bytes,
        *,
        now_ms: int,
        forward: Forward | None = None,
        queue_limit: int = 0,
    ) -> int:
        """Replace the cluster's snapshot unless it is rate limited; returns 0 or the ms to wait.

        The index entry is written first: an entry without a snapshot is harmless (skipped and
        later pruned), a snapshot without an entry would be invisible. With ``forward``, the
        upload is also queued for remote write, in its range's slot: where that slot and the
        cluster's are on one node, one script does all of it (`SAVE_AND_QUEUE`); else the queue
        entry is written first, and taken back if the rate limit refuses the upload. A full
        queue is `QueueFull`, and the snapshot is not written.
        """
        if forward is not None:
            return await self._save_and_queue(cluster_id, value, now_ms, forward, queue_limit)
        snap, limit = keys.snapshot_key(cluster_id), keys.ratelimit_key(cluster_id)
        snap_key = snap.encode()
        snap_slot = key_slot(snap_key)
        index = keys.index_key(keys.range_of_slot(snap_slot))
        index_key = index.encode()
        ttl, ratelimit = self.ttl_ms, self.ratelimit_ms
        zadd = (b"ZADD", index_key, b"%d" % now_ms, cluster_id.encode())
        save = (
            b"EVAL",
            SAVE_SNAPSHOT_BYTES,
            b"2",
            snap_key,
            limit.encode(),
            value,
            b"%d" % ttl,
            b"%d" % ratelimit,
        )

        def index_again(c: RedisCluster) -> Awaitable[Any]:
            return c.zadd(index, {cluster_id: now_ms})

        def save_again(c: RedisCluster) -> Awaitable[Any]:
            return c.eval(SAVE_SNAPSHOT, 2, snap, limit, value, ttl, ratelimit)

        client = await self._connect()
        start = time.perf_counter()
        try:
            index_node, snap_node = (
                _primary(client, key_slot(index_key)),
                _primary(client, snap_slot),
            )
            if (
                index_node is not None
                and snap_node is not None
                and index_node.name == snap_node.name
            ):
                # One write on one connection; Redis runs the two in order, the entry first.
                _, wait = await self._on_node(
                    client, snap_node, [(zadd, index_again), (save, save_again)]
                )
            else:
                await self._on_node(client, index_node, [(zadd, index_again)])
                (wait,) = await self._on_node(client, snap_node, [(save, save_again)])
        except REDIS_ERRORS as exc:
            raise _failed("save", exc) from exc
        finally:
            self._observe("save", start)
        return int(wait)

    async def _save_and_queue(
        self, cluster_id: str, value: bytes, now_ms: int, forward: Forward, queue_limit: int
    ) -> int:
        snap, limit = keys.snapshot_key(cluster_id), keys.ratelimit_key(cluster_id)
        snap_slot = key_slot(snap.encode())
        range_id = keys.range_of_slot(snap_slot)
        index, stream = keys.index_key(range_id), keys.forward_key(range_id)
        index_slot = key_slot(index.encode())
        ttl, ratelimit = self.ttl_ms, self.ratelimit_ms
        args = (
            b"%d" % queue_limit,
            forward.body,
            b"%d" % forward.size,
            forward.tenant.encode(),
            b"%d" % forward.series,
            b"%d" % forward.stamp_ms,
        )
        client = await self._connect()
        start = time.perf_counter()
        try:
            node, index_node = _primary(client, snap_slot), _primary(client, index_slot)

            def in_two_steps(c: RedisCluster) -> Awaitable[int]:
                return self._queue_then_save(c, cluster_id, value, now_ms, range_id, args,
                                             index_node)  # fmt: skip

            if node is None or index_node is None or node.name != index_node.name:
                return await in_two_steps(client)
            at_once = (
                b"EVAL", SAVE_AND_QUEUE_BYTES, b"2", snap.encode(), limit.encode(),
                index.encode(), stream.encode(), cluster_id.encode(), b"%d" % now_ms, value,
                b"%d" % ttl, b"%d" % ratelimit, *args,
            )  # fmt: skip
            # The script could not run there (a moved slot, a failed connection): two steps.
            (wait,) = await self._on_node(client, node, [(at_once, in_two_steps)])
            if wait is None:
                raise QueueFull(f"the remote-write queue of range {range_id} is full")
            return int(wait)
        except REDIS_ERRORS as exc:
            raise _failed("save", exc) from exc
        finally:
            self._observe("save", start)

    async def _queue_then_save(
        self,
        client: RedisCluster,
        cluster_id: str,
        value: bytes,
        now_ms: int,
        range_id: int,
        args: tuple[bytes, ...],
        index_node: ClusterNode | None,
    ) -> int:
        """`_save_and_queue` with its two slots on two nodes (or after its one command failed):
        the index entry and the queue entry, then the snapshot; an upload the rate limit refuses
        takes its queue entry back."""
        snap, limit = keys.snapshot_key(cluster_id), keys.ratelimit_key(cluster_id)
        index, stream = keys.index_key(range_id), keys.forward_key(range_id)
        ttl, ratelimit = self.ttl_ms, self.ratelimit_ms
        zadd = (b"ZADD", index.encode(), b"%d" % now_ms, cluster_id.encode())
        enqueue = (b"EVAL", ENQUEUE_BYTES, b"1", stream.encode(), *args)
        save = (b"EVAL", SAVE_SNAPSHOT_BYTES, b"2", snap.encode(), limit.encode(), value,
                b"%d" % ttl, b"%d" % ratelimit)  # fmt: skip

        def index_again(c: RedisCluster) -> Awaitable[Any]:
            return c.zadd(index, {cluster_id: now_ms})

        def enqueue_again(c: RedisCluster) -> Awaitable[Any]:
            return c.eval(ENQUEUE, 1, stream, *args)

        def save_again(c: RedisCluster) -> Awaitable[Any]:
            return c.eval(SAVE_SNAPSHOT, 2, snap, limit, value, ttl, ratelimit)

        _, entry_id = await self._on_node(
            client, index_node, [(zadd, index_again), (enqueue, enqueue_again)]
        )
        if entry_id is None:
            raise QueueFull(f"the remote-write queue of range {range_id} is full")
        snap_node = _primary(client, key_slot(snap.encode()))
        (wait,) = await self._on_node(client, snap_node, [(save, save_again)])
        if int(wait) > 0:
            await client.xdel(stream, entry_id)
        return int(wait)

    async def enqueue(self, cluster_id: str, forward: Forward, *, queue_limit: int) -> None:
        """Queue a remote-write request in the stream of the cluster's range (`QueueFull`)."""
        range_id = keys.cluster_range(cluster_id)
        stream = keys.forward_key(range_id)
        async with self._call("enqueue") as client:
            entry_id = await client.eval(
                ENQUEUE, 1, stream, queue_limit, forward.body, forward.size,
                forward.tenant, forward.series, forward.stamp_ms,
            )  # fmt: skip
        if entry_id is None:
            raise QueueFull(f"the remote-write queue of range {range_id} is full")

    async def count_receive(self, cluster_id: str, *, limit: int) -> int:
        """Count a received request in the cluster's one-minute window; the ms to wait when the
        window already holds ``limit`` (cluster-wide, as the upload rate limit)."""
        async with self._call("receive_limit") as client:
            wait = await client.eval(
                COUNT_RECEIVE, 1, keys.receive_limit_key(cluster_id), 60_000, limit
            )
        return int(wait)

    async def read_queues(self, ranges: list[int], *, count: int) -> list[list[QueuedEntry]]:
        """The heads of the ranges' remote-write streams that hold entries: for each, its first
        ``count`` entries, oldest first. Every turn of the forwarder asks this of all the ranges
        it leases (256 for one pod), most of them empty: one script per node (``READ_HEADS``)
        answers for the streams with entries only, and only those cost Python work here."""
        if not ranges:
            return []
        async with self._call("queue_read") as client:
            owners = client.nodes_manager.slots_cache
            groups: dict[str, list[int]] = {}
            nodes: dict[str, ClusterNode | None] = {}
            for r in ranges:  # the one loop over every range: kept to dict lookups
                found = owners.get(_FORWARD_SLOTS[r])
                node = found[0] if found else None
                name = node.name if node is not None else ""
                group = groups.get(name)
                if group is None:
                    group = groups[name] = []
                    nodes[name] = node
                group.append(r)
            read = await asyncio.gather(*(
                self._read_heads(client, nodes[name], group, count)
                for name, group in groups.items()))  # fmt: skip
        out: list[list[QueuedEntry]] = []
        for heads in read:
            for r, reply in heads:
                entries = []
                for entry_id, flat in reply:
                    if isinstance(flat, list) and flat[::2] == _ENTRY_FIELDS:  # as scripts write
                        _, body, _, size, _, tenant, _, series, _, stamp = flat
                    else:
                        f = _hash(flat)
                        body, size, tenant = f[b"b"], f[b"u"], f[b"t"]
                        series, stamp = f[b"n"], f[b"s"]
                    entries.append(QueuedEntry(r, entry_id, body, int(size), tenant.decode(),
                                               int(series), int(stamp)))  # fmt: skip
                out.append(entries)
        return out

    async def _read_heads(
        self, client: RedisCluster, node: ClusterNode | None, ranges: list[int], count: int
    ) -> list[tuple[int, list[Any]]]:
        """(range, XRANGE reply) of the ranges whose streams hold entries, of ranges ``node``
        serves: the script on the kept connection, else (the node failed, or a slot moved so
        that a stream is elsewhere: the script then reads nothing) one XRANGE per stream, which
        follows the slots."""
        if node is not None:
            reply: Any = _UNANSWERED
            try:
                conn = await self._connection(node)
                (reply,) = await conn.batch([_read_heads(tuple(ranges), count)],
                                            timeout_s=self._timeout_s)  # fmt: skip
            except NODE_ERRORS as exc:
                log.info("node command failed, reading the streams one by one error=%r", exc)
            if isinstance(reply, resp.ReplyError):
                log.info("node answered an error, reading the streams one by one error=%s", reply)
            elif reply is not _UNANSWERED:
                return [(ranges[reply[i] - 1], reply[i + 1]) for i in range(0, len(reply), 2)]
        replies = await self._per_node(
            client, [_forward_key(r) for r in ranges], command=lambda key: _xrange(key, count),
            convert=lambda raw: raw, add=lambda pipe, key: pipe.xrange(key, count=count),
            slot_of=_forward_slot,
        )  # fmt: skip
        return [(r, reply) for r, reply in zip(ranges, replies, strict=True) if reply]

    async def queue_lengths(self, ranges: list[int]) -> list[int]:
        """The number of entries in each range's remote-write stream."""
        if not ranges:
            return []
        async with self._call("queue_len") as client:
            lengths: list[int] = await self._per_node(
                client, [_forward_key(r) for r in ranges], command=lambda key: (b"XLEN", key),
                convert=int, add=lambda pipe, key: pipe.xlen(key), slot_of=_forward_slot,
            )  # fmt: skip
        return [int(n or 0) for n in lengths]

    async def ack(self, entries: Iterable[QueuedEntry]) -> None:
        """Delete sent (or dropped) entries from their streams: an XDEL per stream, on the bare
        connections (redis-py's pipeline cost ~30 us of CPU per stream and turn)."""
        ids: dict[str, list[bytes]] = {}
        for e in entries:
            ids.setdefault(_forward_key(e.range_id), []).append(e.entry_id)
        if ids:
            async with self._call("queue_ack") as client:
                await self._per_node(client, list(ids), command=lambda key: (
                    b"XDEL", key, *ids[key.decode()]), convert=int, slot_of=_forward_slot,
                    add=lambda pipe, key: pipe.xdel(key, *ids[key]))  # fmt: skip

    async def _on_node(
        self,
        client: RedisCluster,
        node: ClusterNode | None,
        commands: list[tuple[tuple[bytes, ...], Callable[[RedisCluster], Awaitable[Any]]]],
    ) -> list[Any]:
        """Run (command, fallback) pairs on the kept connection to ``node``, in one write.

        A bare RESP connection skips redis-py's command machinery (most of the CPU of a command).
        A command that could not be sent, whose node failed or that answered an error (a slot
        that moved, for instance) goes through the cluster client instead (its ``fallback``),
        which follows redirections, refreshes its view of the cluster and raises what redis-py
        raises.
        """
        replies: list[Any] = [_UNANSWERED] * len(commands)
        if node is not None:
            try:
                conn = await self._connection(node)
                replies = await conn.batch([c for c, _ in commands], timeout_s=self._timeout_s)
            except NODE_ERRORS as exc:
                log.info("node command failed, retrying via the cluster error=%r", exc)
        results = []
        for (_, fallback), reply in zip(commands, replies, strict=True):
            if isinstance(reply, resp.ReplyError):
                log.info("node answered an error, retrying via the cluster error=%s", reply)
            if reply is _UNANSWERED or isinstance(reply, resp.ReplyError):
                reply = await fallback(client)
            results.append(reply)
        return results

    async def _connection(self, node: ClusterNode) -> resp.Connection:
        """The kept connection to a node, opened on first use and after it closed."""
        conn = self._connections.get(node.name)
        if conn is None or conn.closed:
            conn = await resp.Connection.open(
                node.host, int(node.port), password=self._password, timeout_s=self._timeout_s,
                username=self._username, tls=self._tls,
            )  # fmt: skip
            old = self._connections.get(node.name)
            if old is not None and not old.closed:  # another upload opened one meanwhile
                conn.close()
                return old
            self._connections[node.name] = conn
        return conn

    async def load_snapshots(self, ranges: Iterable[int], *, now_ms: int) -> list[bytes]:
        """Every stored snapshot of the clusters in the given ring ranges, range by range.

        The ranges are read per node of their index key: as soon as a node has answered for its
        index keys, the snapshots of those clusters are asked for, while other nodes may still
        be answering for theirs.
        """
        ranges = list(ranges)
        prune_before_ms = now_ms - keys.INDEX_PRUNE_GRACE_MS
        async with self._call("load") as client:
            by_node: dict[str, list[int]] = {}
            for r in ranges:
                node = _primary(client, key_slot(keys.index_key(r).encode()))
                by_node.setdefault(node.name if node else "", []).append(r)
            reads = await asyncio.gather(
                *(self._load_ranges(client, group, prune_before_ms) for group in by_node.values())
            )
        values: dict[int, list[bytes]] = {}
        stale: list[tuple[int, str]] = []
        for found, gone in reads:
            values.update(found)
            stale += gone
        if stale:
            await self._prune(stale)
        return [value for r in ranges for value in values.get(r, ())]

    async def _load_ranges(
        self, client: RedisCluster, ranges: list[int], prune_before_ms: int
    ) -> tuple[dict[int, list[bytes]], list[tuple[int, str]]]:
        """The snapshots of some ranges per range, and the (range, cluster) index entries older
        than ``prune_before_ms`` whose snapshot is gone."""
        indexes: list[list[tuple[bytes, float]]] = await self._per_node(
            client,
            [keys.index_key(r) for r in ranges],
            command=lambda key: (b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"),
            convert=_pairs,
            add=lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
        )
        entries = [
            (r, member.decode(), score)
            for r, idx in zip(ranges, indexes, strict=True)
            for member, score in idx
        ]
        if not entries:
            return {}, []
        replies: list[bytes | None] = await self._per_node(
            client,
            [keys.snapshot_key(cluster_id) for _, cluster_id, _ in entries],
            command=lambda key: (b"GET", key),
            convert=lambda reply: reply,
            add=lambda pipe, key: pipe.get(key),
        )
        found: dict[int, list[bytes]] = {}
        stale = []
        for (r, cluster_id, score), value in zip(entries, replies, strict=True):
            if value is not None:
                found.setdefault(r, []).append(value)
            elif score < prune_before_ms:
                stale.append((r, cluster_id))
        return found, stale

    async def _per_node(
        self,
        client: RedisCluster,
        names: list[str],
        *,
        command: Callable[[bytes], tuple[bytes, ...] | bytes],
        convert: Callable[[Any], Any],
        add: Callable[[Any, str], Any],
        slot_of: Callable[[bytes], int] = key_slot,
    ) -> list[Any]:
        """One single-key command per name, sent as one batch on the kept connection per primary.

        ``command`` gives the raw command (or it encoded) and ``convert`` shapes its raw reply
        the way redis-py would; ``add`` queues the same command on a redis-py pipeline; the
        ``slot_of`` a key. The cluster client takes over for a node that fails (it finds the
        node's successor) and for a reply redirected because a slot moved (it follows the
        redirection).
        """
        groups: dict[str, list[int]] = {}
        nodes: dict[str, ClusterNode] = {}
        encoded = [name.encode() for name in names]
        for i, key in enumerate(encoded):
            node = _primary(client, slot_of(key))
            if node is None:
                raise StoreUnavailable(f"no node serves the slot of {names[i]}")
            groups.setdefault(node.name, []).append(i)
            nodes[node.name] = node
        results: list[Any] = [None] * len(names)

        async def via_cluster(indices: list[int]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for i in indices:
                add(pipe, names[i])
            return list(await pipe.execute())

        async def run(node_name: str) -> None:
            node, indices = nodes[node_name], groups[node_name]
            try:
                conn = await self._connection(node)
                raw = await conn.batch(
                    [command(encoded[i]) for i in indices], timeout_s=self._timeout_s
                )
            except NODE_ERRORS as exc:
                log.info("node pipeline failed, retrying via the cluster error=%r", exc)
                replies = await via_cluster(indices)
            else:
                replies = [None if isinstance(r, resp.ReplyError) else convert(r) for r in raw]
                moved = [
                    i for i, r in zip(indices, raw, strict=True) if isinstance(r, resp.ReplyError)
                ]
                if moved:  # MOVED/ASK during a slot migration
                    again = dict(zip(moved, await via_cluster(moved), strict=True))
                    replies = [again.get(i, r) for i, r in zip(indices, replies, strict=True)]
            for i, reply in zip(indices, replies, strict=True):
                results[i] = reply

        await asyncio.gather(*(run(name) for name in groups))
        return results

    async def _prune(self, stale: list[tuple[int, str]]) -> None:
        async with self._call("prune") as client:
            pipe = client.pipeline(transaction=False)
            for range_id, cluster_id in stale:
                pipe.zrem(keys.index_key(range_id), cluster_id)
            await pipe.execute()
        log.info("pruned expired clusters from the index count=%d", len(stale))

    async def cached_account(self, cluster_id: str, token: str) -> str | None:
        """The account ID cached for (cluster, token) by an earlier successful authorization."""
        async with self._call("auth_get") as client:
            value = await client.get(keys.auth_key(cluster_id, token))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def cache_account(self, cluster_id: str, token: str, account: str, *, ttl_s: int) -> None:
        """Remember a positive authorization for ``ttl_s`` seconds."""
        if ttl_s <= 0:
            return
        async with self._call("auth_set") as client:
            await client.set(keys.auth_key(cluster_id, token), account, ex=ttl_s)

    async def count_auth_failure(self, cluster_id: str) -> int:
        """Count a rejected token exchange of the cluster; returns the count in this window."""
        async with self._call("auth_fail") as client:
            n = await client.eval(
                COUNT_FAILURE, 1, keys.auth_failures_key(cluster_id), keys.AUTH_FAILURE_WINDOW_S
            )
        return int(n)

    async def auth_failures(self, cluster_id: str) -> int:
        """Rejected token exchanges of the cluster in the current window."""
        async with self._call("auth_fail") as client:
            value = await client.get(keys.auth_failures_key(cluster_id))
        return 0 if value is None else int(value)


async def _close_quietly(client: RedisCluster) -> None:
    try:
        await client.aclose()
    except REDIS_ERRORS as exc:  # closing a broken client must not hide the first error
        log.debug("closing redis client failed error=%r", exc)


def _failed(op: str, exc: BaseException) -> StoreUnavailable:
    log.warning("redis operation failed op=%s error=%r", op, exc)
    return StoreUnavailable(f"redis {op} failed")


_forward_key = functools.lru_cache(maxsize=keys.RANGES)(keys.forward_key)
_forward_slot = functools.lru_cache(maxsize=keys.RANGES)(key_slot)
_FORWARD_SLOTS = [key_slot(keys.forward_key(r).encode()) for r in range(keys.RANGES)]


@functools.lru_cache(maxsize=64)
def _read_heads(ranges: tuple[int, ...], count: int) -> bytes:
    """The script reading the heads of some ranges' streams, the same every turn while the
    ranges stay on their nodes."""
    streams = [_forward_key(r).encode() for r in ranges]
    return resp.encode((b"EVAL", READ_HEADS_BYTES, b"0", b"%d" % count, *streams))


@functools.lru_cache(maxsize=keys.RANGES)
def _xrange(key: bytes, count: int) -> bytes:
    """The command reading the head of a stream, the same every turn."""
    return resp.encode((b"XRANGE", key, b"-", b"+", b"COUNT", b"%d" % count))


def _primary(client: RedisCluster, slot: int) -> ClusterNode | None:
    """The primary of a hash slot in the cluster client's slot table: what get_node_from_key
    finds, without its per-call overhead (this runs for every upload, and for every stored
    cluster on each scrape)."""
    owners = client.nodes_manager.slots_cache.get(slot)
    return owners[0] if owners else None


def _hash(flat: list[bytes] | dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A raw field-value list (or redis-py's dict of it) as a dict."""
    if isinstance(flat, dict):
        return flat
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _pairs(flat: list[bytes]) -> list[tuple[bytes, float]]:
    """A raw ``ZRANGE ... WITHSCORES`` reply as redis-py gives it: (member, score) pairs."""
    return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]
