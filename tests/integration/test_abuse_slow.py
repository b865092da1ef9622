"""Slow clients, against a running server with a 2 s upload timeout and two upload slots:
trickling, stalled and never-finished requests are cut off and do not hold the slots.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dev.launch import ServerHandle
from tests.conftest import RedisClusterHandle
from tests.support import (
    DELIMITED,
    authorize,
    encode_upload,
    new_id,
    post_upload,
    start_all,
    upload_headers,
    valid_families,
)

pytestmark = pytest.mark.integration


# ---- slow clients -----------------------------------------------------------------------------

UPLOAD_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def slow_server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """A server with a 2 s upload timeout and only two upload slots."""
    args = ["--ratelimit", "0s", "--upload-timeout", f"{UPLOAD_TIMEOUT_S}s"]
    (handle,) = start_all(
        redis_cluster.url,
        tmp_path_factory.mktemp("slow"),
        signing_key,
        {"slow": [*args, "--max-concurrent-uploads", "2"]},
    )
    yield handle
    handle.process.stop()


async def _slow_upload(
    server: ServerHandle,
    jwt: str,
    *,
    trickle: bool,
    seconds: float = 8.0,
    opened: list[int] | None = None,
) -> tuple[int, float]:
    """Send an upload whose body trickles in (10 bytes every 0.3 s) or stalls after 100 bytes;
    return the status the server answered with and when. Once the head (and with a stall the
    100 bytes) is sent, the connection's local port is added to ``opened``."""
    url = httpx.URL(server.external)
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    framing = "Transfer-Encoding: chunked" if trickle else "Content-Length: 50000"
    head = (
        f"POST /upload HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {jwt}\r\n"
        f"Content-Type: {DELIMITED}\r\nContent-Encoding: snappy\r\n{framing}\r\n\r\n"
    )
    started = time.monotonic()
    writer.write(head.encode())
    if not trickle:
        writer.write(b"\0" * 100)
    await writer.drain()
    if opened is not None:
        opened.append(writer.get_extra_info("sockname")[1])

    async def feed() -> None:
        while trickle:
            writer.write(b"a\r\n" + b"\0" * 10 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.3)

    feeder = asyncio.create_task(feed())
    try:
        async with asyncio.timeout(seconds):
            status_line = await reader.readline()
    finally:
        feeder.cancel()
        writer.close()
    return int(status_line.split()[1]), time.monotonic() - started


def _all_read(server: ServerHandle, client_ports: list[int]) -> bool:
    """Whether the server has read all that came on the connections from ``client_ports``:
    its side of each has nothing left in its receive queue (Linux ``/proc/net/tcp``)."""
    port = httpx.URL(server.external).port
    seen = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, _, queues = line.split()[1:5]
            if int(local.rsplit(":", 1)[1], 16) != port:
                continue
            peer = int(remote.rsplit(":", 1)[1], 16)
            if peer in client_ports:
                if int(queues.split(":")[1], 16):
                    return False
                seen.add(peer)
    return seen == set(client_ports)


def test_slow_and_stalled_bodies_are_cut_off(slow_server: ServerHandle) -> None:
    jwt = authorize(slow_server, new_id("slow"))

    async def both() -> tuple[tuple[int, float], tuple[int, float]]:
        return await asyncio.gather(
            _slow_upload(slow_server, jwt, trickle=True),
            _slow_upload(slow_server, jwt, trickle=False),
        )

    for status, took in asyncio.run(both()):
        assert status == 408
        assert UPLOAD_TIMEOUT_S - 0.2 < took < UPLOAD_TIMEOUT_S + 2.5, took
    # Cut off means released: both upload slots are free again.
    cluster_id = new_id("after")
    answer = post_upload(
        slow_server, authorize(slow_server, cluster_id), encode_upload(valid_families(cluster_id))
    )
    assert answer.status_code == 200, answer.text


def test_stalled_uploads_do_not_hold_the_upload_slots(slow_server: ServerHandle) -> None:
    """As many stalled uploads as there are slots (2) must not turn honest uploads away."""
    jwt = authorize(slow_server, new_id("stall"))
    cluster_id = new_id("honest")
    body = encode_upload(valid_families(cluster_id))
    honest_jwt = authorize(slow_server, cluster_id)

    async def scenario() -> tuple[list[tuple[int, float]], int, float, float]:
        opened: list[int] = []
        stalled = [
            asyncio.create_task(_slow_upload(slow_server, jwt, trickle=False, opened=opened))
            for _ in range(2)
        ]
        deadline = time.monotonic() + 5
        while not (len(opened) == 2 and _all_read(slow_server, opened)):
            assert time.monotonic() < deadline, "the server did not read the stalled requests"
            await asyncio.sleep(0.01)
        # Both are in their body read now.
        async with httpx.AsyncClient(timeout=10) as http:
            started = time.monotonic()
            health = await http.get(f"{slow_server.external}/healthz")
            health_s = time.monotonic() - started
            assert health.status_code == 200
            started = time.monotonic()
            answer = await http.post(
                f"{slow_server.external}/upload", content=body, headers=upload_headers(honest_jwt)
            )
            took = time.monotonic() - started
        return await asyncio.gather(*stalled), answer.status_code, took, health_s

    stalled, status, took, health_s = asyncio.run(scenario())
    assert [s for s, _ in stalled] == [408, 408]
    assert health_s < 0.5, "the event loop is blocked by slow clients"
    assert status == 200 and took < 1.0, (
        f"an honest upload got {status} after {took:.2f}s while two stalled bodies held the "
        "two upload slots"
    )


def test_a_request_head_that_never_finishes_is_cut_off(slow_server: ServerHandle) -> None:
    """Slowloris: a request line and one header, then silence. Such a connection must be
    closed by a timeout, like a stalled body, or enough of them exhaust the pod's sockets."""
    url = httpx.URL(slow_server.external)
    assert url.port is not None
    limit = UPLOAD_TIMEOUT_S + 3.0

    async def hang() -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(f"POST /upload HTTP/1.1\r\nHost: {url.host}\r\n".encode())
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                data = await reader.read(200)  # b"" (closed) or an error answer (408/400)
        except TimeoutError:
            data = b"(still open)"
        finally:
            writer.close()
        return data, time.monotonic() - started

    data, took = asyncio.run(hang())
    assert data != b"(still open)", (
        f"an unfinished request head still holds its connection after {took:.1f}s"
    )
