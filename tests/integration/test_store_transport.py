"""A redis-py connection whose transport closed under it, on uvloop (the server's loop).

uvloop raises RuntimeError ("the handler is closed") for a write on a closed transport, where
asyncio's own loop fails the read with ConnectionError; redis-py passes it on as it is and drops
the connection. The store must turn it into StoreUnavailable (a 503 for an upload, never a 500),
and the next call must work on a new connection.
"""

from __future__ import annotations

import pytest
import uvloop
from prometheus_client import CollectorRegistry, Histogram

from app.errors import StoreUnavailable
from app.store import Store
from tests.conftest import RedisClusterHandle

pytestmark = pytest.mark.integration


def test_a_write_on_a_closed_transport_is_store_unavailable(
    redis_cluster: RedisClusterHandle,
) -> None:
    store = Store(
        nodes=redis_cluster.startup_nodes,
        password=redis_cluster.password,
        ttl_ms=60_000,
        ratelimit_ms=0,
        latency=Histogram("t", "t", ["op"], registry=CollectorRegistry()),
    )

    async def scenario() -> None:
        try:
            await store.cache_account("transport-test", "token", "account", ttl_s=60)
            client = await store.client()
            aborted = 0
            for node in client.get_nodes():
                for conn in list(node._free):
                    if conn._writer is not None:
                        conn._writer.transport.abort()  # closed under redis-py's feet
                        aborted += 1
            assert aborted, "no idle redis-py connection to close"
            with pytest.raises(StoreUnavailable):
                await store.cached_account("transport-test", "token")
            assert await store.cached_account("transport-test", "token") == "account"
        finally:
            await store.close()

    uvloop.run(scenario())
