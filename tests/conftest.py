"""Shared pytest fixtures.

``redis_cluster`` is the one Redis Cluster the integration tests share. It is found through one
env var, as in redis-py's own test suite: ``TELEMETER_TEST_REDIS_URL`` (the ``--redis-url``
format, see :func:`dev.redis_cluster.parse_redis_url`) points at an existing
cluster; without it a :class:`LocalRedisCluster` is started for the session and stopped after.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dev.launch import ServerHandle, start_server, write_signing_key
from dev.redis_cluster import LocalRedisCluster
from telemeter.addresses import parse_redis_url

REDIS_URL_ENV = "TELEMETER_TEST_REDIS_URL"


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated here so --strict-markers holds for any rootdir.
    config.addinivalue_line(
        "markers", "integration: needs a real Redis Cluster (started by the session fixture)"
    )


@dataclass(frozen=True)
class RedisClusterHandle:
    """Where the shared test cluster is; ``local`` is set only when this session started it."""

    url: str
    startup_nodes: list[tuple[str, int]]
    password: str | None
    local: LocalRedisCluster | None


def require_redis_server() -> str:
    """Path of ``redis-server``; fails (not skips) the test when missing, since CI installs it."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(
            "redis-server is not on PATH: install it (Debian: apt-get install redis-server) "
            f"or set {REDIS_URL_ENV} to an existing Redis Cluster"
        )
    return path


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterHandle]:
    """The shared Redis Cluster: from ``TELEMETER_TEST_REDIS_URL``, else a local one."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        nodes, password, _ = parse_redis_url(url)
        yield RedisClusterHandle(url=url, startup_nodes=nodes, password=password, local=None)
        return
    cluster = LocalRedisCluster(
        base_dir=tmp_path_factory.mktemp("redis-cluster"), redis_server=require_redis_server()
    )
    with cluster:
        yield RedisClusterHandle(
            url=cluster.url,
            startup_nodes=cluster.startup_nodes,
            password=cluster.password,
            local=cluster,
        )


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared EC P-256 ``--shared-key`` for every server a test session starts."""
    return write_signing_key(tmp_path_factory.mktemp("keys") / "signing.pem")


@pytest.fixture
def start_servers(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path
) -> Iterator[Callable[..., ServerHandle]]:
    """Start real `telemeter-server` processes on the shared cluster; all stopped at teardown."""
    started: list[ServerHandle] = []

    def start(
        name: str = "s1", *, ring: str | None = None, ready: bool = True, **kwargs: Any
    ) -> ServerHandle:
        """Start a server in its own ring (``ring`` names a shared one) and wait until ready."""
        kwargs.setdefault("redis_url", redis_cluster.url)
        namespace = ring or f"test-{uuid.uuid4().hex[:10]}"
        kwargs["extra_args"] = ["--ring-namespace", namespace, *kwargs.get("extra_args", ())]
        handle = start_server(workdir=tmp_path, name=name, shared_key=signing_key, **kwargs)
        started.append(handle)
        if ready:
            handle.process.wait_http(handle.internal + "/healthz/ready")
        return handle

    yield start
    for handle in started:
        handle.process.stop()
