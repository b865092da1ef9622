"""Fixtures shared by integration test modules (the Redis Cluster ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import ClusterNode, RedisCluster

from dev.launch import ServerHandle
from tests.conftest import RedisClusterHandle
from tests.support import start_all


@pytest.fixture(scope="module")
def rclient(redis_cluster: RedisClusterHandle) -> Iterator[RedisCluster]:
    """A client of the session's Redis Cluster, to look at what the servers stored."""
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes],  # type: ignore[no-untyped-call]
        password=redis_cluster.password,
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def open_server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """A server without a rate limit, so every body sent to it is actually decoded."""
    (handle,) = start_all(
        redis_cluster.url,
        tmp_path_factory.mktemp("abuse"),
        signing_key,
        {"abuse": ["--ratelimit", "0s"]},
    )
    yield handle
    handle.process.stop()
