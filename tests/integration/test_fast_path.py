"""The upload fast path (`app.protocol`, docs/architecture.md "The upload fast path"), against a
running server: a whole upload with ``Connection: close``, as the Go client sends it, is stored and
answered; refusals keep their answers; a request the fast path cannot take whole (its body
stalled, something after it) goes to the parser as it came, with the parser's answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import RedisCluster

from app.protocol import FAST_WAIT_S
from dev.launch import ServerHandle
from tests.conftest import RedisClusterHandle
from tests.support import (
    DELIMITED,
    authorize,
    encode_upload,
    new_id,
    start_all,
    stored,
    stored_text,
    valid_families,
)

pytestmark = pytest.mark.integration

UPLOAD_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    args = ["--ratelimit", "0s", "--upload-timeout", f"{UPLOAD_TIMEOUT_S}s"]
    (handle,) = start_all(
        redis_cluster.url, tmp_path_factory.mktemp("fast"), signing_key, {"fast": args}
    )
    yield handle
    handle.process.stop()


def _head(server: ServerHandle, jwt: str, framing: str, *, close: bool = True) -> bytes:
    host = httpx.URL(server.external).host
    return (
        f"POST /upload HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Go-http-client/1.1\r\n"
        f"{framing}\r\nAuthorization: Bearer {jwt}\r\nContent-Type: {DELIMITED}\r\n"
        f"Content-Encoding: snappy\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}"
        "\r\n"
    ).encode()


def _chunked(body: bytes, size: int = 4096) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def _exchange(
    server: ServerHandle, pieces: list[bytes], *, pause: float = 0.0
) -> tuple[int, bytes, float]:
    """Send ``pieces`` (``pause`` s apart), read until the server closes: (status, the
    answer's body, the seconds it took)."""
    url = httpx.URL(server.external)
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    started = time.monotonic()
    try:
        for i, piece in enumerate(pieces):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, time.monotonic() - started


def _fast_answered(server: ServerHandle) -> float:
    """The server's count of uploads answered on the fast path."""
    text = httpx.get(f"{server.internal}/metrics", timeout=10).text
    (line,) = [x for x in text.splitlines() if x.startswith("telemeter_upload_fast_path_total ")]
    return float(line.split()[1])


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1 << 20, 4096, 7], ids=["one write", "4 KB pieces", "7 B"])
def test_a_whole_upload_as_the_go_client_sends_it_is_stored(
    server: ServerHandle, rclient: RedisCluster, size: int
) -> None:
    cluster_id = new_id()
    jwt = authorize(server, cluster_id)
    request = _head(server, jwt, "Transfer-Encoding: chunked") + _chunked(
        encode_upload(valid_families(cluster_id))
    )
    before = _fast_answered(server)
    status, body, took = asyncio.run(_exchange(server, _pieces(request, size), pause=0.002))
    assert (status, body) == (200, b"")
    if took < FAST_WAIT_S:  # (7-byte pieces take longer: then it is the parser's)
        assert _fast_answered(server) == before + 1
    value = stored(rclient, cluster_id)
    assert value is not None and f'_id="{cluster_id}"' in stored_text(value)


def test_an_upload_framed_by_its_length_is_stored(
    server: ServerHandle, rclient: RedisCluster
) -> None:
    cluster_id = new_id()
    jwt = authorize(server, cluster_id)
    payload = encode_upload(valid_families(cluster_id))
    request = _head(server, jwt, f"Content-Length: {len(payload)}") + payload
    before = _fast_answered(server)
    assert asyncio.run(_exchange(server, [request]))[:2] == (200, b"")
    assert stored(rclient, cluster_id) is not None
    assert _fast_answered(server) == before + 1


def test_refusals_keep_their_answers(server: ServerHandle, rclient: RedisCluster) -> None:
    before = _fast_answered(server)
    cluster_id = new_id()
    payload = encode_upload(valid_families(cluster_id))
    request = _head(server, "not-a-jwt", f"Content-Length: {len(payload)}") + payload
    status, body, _ = asyncio.run(_exchange(server, [request]))
    assert status == 401
    assert body.startswith(b"unauthorized: malformed token")
    jwt = authorize(server, cluster_id)
    bad = b"\xff\x06\x00\x00sNaPpY\x00\x09\x00\x00\x00\x00\x00\x00\x05hello"
    request = _head(server, jwt, f"Content-Length: {len(bad)}") + bad
    status, body, _ = asyncio.run(_exchange(server, [request]))
    assert status == 400
    assert body.startswith(b"snappy: ")
    assert stored(rclient, cluster_id) is None
    assert _fast_answered(server) == before + 2


def test_a_stalled_body_gets_the_parsers_deadline(server: ServerHandle) -> None:
    """Held back only a moment: then the parser has the bytes, and its body deadline answers."""
    jwt = authorize(server, new_id())
    request = _head(server, jwt, "Content-Length: 50000") + b"\0" * 100
    before = _fast_answered(server)
    status, body, took = asyncio.run(_exchange(server, [request]))
    assert _fast_answered(server) == before
    assert status == 408
    assert b"not received within" in body
    assert UPLOAD_TIMEOUT_S - 0.5 < took < UPLOAD_TIMEOUT_S + 3


@pytest.mark.parametrize("close", [True, False], ids=["close", "keep-alive"])
def test_what_the_fast_path_does_not_take_the_parser_serves(
    server: ServerHandle, rclient: RedisCluster, close: bool
) -> None:
    """Another request after the upload in the same write, or a kept-alive connection: the
    parser's way, which answers the upload and, on a kept-alive connection, the next request."""
    cluster_id = new_id()
    jwt = authorize(server, cluster_id)
    payload = encode_upload(valid_families(cluster_id))
    host = httpx.URL(server.external).host
    after = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    request = _head(server, jwt, f"Content-Length: {len(payload)}", close=close) + payload
    before = _fast_answered(server)
    status, body, _ = asyncio.run(_exchange(server, [request + after]))
    assert _fast_answered(server) == before
    assert status == 200
    assert (b"HTTP/1.1 200" in body) is not close  # keep-alive: /healthz answered after it
    assert stored(rclient, cluster_id) is not None
