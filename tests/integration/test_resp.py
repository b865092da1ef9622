"""The bare RESP pipeline used for `/federate` reads, against the real cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.cluster import ClusterNode, RedisCluster

from telemeter.server import resp
from telemeter.tools.ports import free_port
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
    replies = asyncio.run(
        resp.pipeline(
            owner.host, int(owner.port), commands, password=redis_cluster.password, timeout_s=5
        )
    )
    assert replies[:3] == [f"v{i}".encode() * 1000 for i in range(3)]
    assert isinstance(replies[3], resp.ReplyError) and str(replies[3]).startswith("MOVED")
    assert replies[4] is None
    for key in mine:
        client.delete(key)
    client.close()


def test_unreachable_node_raises() -> None:
    with pytest.raises(OSError):
        asyncio.run(
            resp.pipeline("127.0.0.1", free_port(), [(b"PING",)], password=None, timeout_s=2)
        )
