"""Lingering close, against real servers: an upload far over ``--limit-bytes`` reads its 413, not
a connection reset, because the server reads and discards the rest of the body after answering
(docs/protocol.md, "Lingering close"); the byte and time bounds end a linger; a drained
keep-alive connection goes on; memory stays flat.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dev.launch import ServerHandle, start_server
from tests.conftest import RedisClusterHandle
from tests.support import DELIMITED, authorize, chunks

pytestmark = pytest.mark.integration

LIMIT = 500 * 1024
BODY = b"\0" * (3 * 1024 * 1024)  # six times the limit
TRIES = 30
PIECE = 64 * 1024
# Nothing of a discarded body is kept: 60 oversized uploads (180 MB sent) must not grow the
# server's RSS by more than this (socket reads are at most 256 KiB at a time).
RSS_GROWTH_LIMIT_KB = 8 * 1024


class Raw:
    """A raw HTTP/1.1 client connection: what it sends and reads is exactly what is written."""

    def __init__(self, server: ServerHandle) -> None:
        url = httpx.URL(server.external)
        assert url.port is not None
        self.sock = socket.create_connection((url.host, url.port), timeout=10)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self, what: str) -> None:
        data = self.sock.recv(PIECE)
        if not data:
            raise ConnectionError(f"connection closed {what}")
        self.buffer += data

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The next answer: (status, headers with lowercased names, body)."""
        while b"\r\n\r\n" not in self.buffer:
            self._more("before an answer")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._more("in the middle of an answer")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def at_eof(self) -> bool:
        """Whether the server has ended its side (waits for it up to the socket timeout)."""
        if self.buffer:
            return False
        return self.sock.recv(1) == b""


def request(
    path: str, body: bytes, *, chunked: bool, close: bool, headers: dict[str, str]
) -> bytes:
    """A whole request: the head, then the body (chunked in PIECE-sized chunks, or not)."""
    lines = [f"POST {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if not chunked:
        return head + body
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + PIECE]), body[i : i + PIECE])
        for i in range(0, len(body), PIECE)
    ]
    return head + b"".join(parts) + b"0\r\n\r\n"


def upload_headers(jwt: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {jwt}",
        "Content-Type": DELIMITED,
        "Content-Encoding": "snappy",
    }


def lingers(server: ServerHandle) -> dict[str, float]:
    """telemeter_lingering_closes_total by end, from the server's /metrics."""
    text = httpx.get(f"{server.internal}/metrics", timeout=10).text
    pattern = r'^telemeter_lingering_closes_total\{end="(\w+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def wait_lingers(server: ServerHandle, end: str, at_least: float, timeout: float = 10) -> float:
    """Poll the counter of ``end`` until it reaches ``at_least``; its value."""
    deadline = time.monotonic() + timeout
    while (value := lingers(server).get(end, 0)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _start(
    redis_cluster: RedisClusterHandle, signing_key: Path, workdir: Path, *args: str
) -> ServerHandle:
    handle = start_server(
        redis_url=redis_cluster.url,
        workdir=workdir,
        name="linger",
        shared_key=signing_key,
        extra_args=[
            "--ring-namespace", f"test-{uuid.uuid4().hex[:10]}",
            "--ratelimit", "0s", "--limit-bytes", str(LIMIT), *args,
        ],
    )  # fmt: skip
    handle.process.wait_http(handle.internal + "/healthz/ready")
    return handle


@pytest.fixture(scope="module")
def server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """A server with the default lingering bounds (8 MiB, 5 s)."""
    handle = _start(redis_cluster, signing_key, tmp_path_factory.mktemp("linger"))
    yield handle
    handle.process.stop()


@pytest.fixture(scope="module")
def bounded(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """A server that lingers for at most 1 MiB or 1 s."""
    args = ["--lingering-close-bytes", str(1024 * 1024), "--lingering-close-timeout", "1s"]
    handle = _start(redis_cluster, signing_key, tmp_path_factory.mktemp("bounded"), *args)
    yield handle
    handle.process.stop()


def _raw_tries(server: ServerHandle, path: str, headers: dict[str, str]) -> list[str]:
    """TRIES oversized requests over raw sockets (Content-Length or chunked, closing or kept
    alive); what went wrong with each that did not read a complete 413."""
    failures = []
    for i in range(TRIES):
        chunked, close = bool(i % 2), bool(i // 2 % 2)
        conn = Raw(server)
        try:
            conn.send(request(path, BODY, chunked=chunked, close=close, headers=headers))
            status, _, body = conn.answer()
            if status != 413 or not body.startswith(b"request body larger than"):
                failures.append(f"try {i}: {status} {body!r}")
            if close and not conn.at_eof():
                failures.append(f"try {i}: not closed after a 'Connection: close' request")
        except OSError as exc:  # ECONNRESET, EPIPE, or closed before a complete answer
            failures.append(f"try {i} (chunked={chunked}, close={close}): {exc!r}")
        finally:
            conn.close()
    return failures


def test_an_oversized_upload_reads_its_413_every_time(server: ServerHandle) -> None:
    jwt = authorize(server, f"linger-{uuid.uuid4().hex[:8]}")
    before = lingers(server)
    assert _raw_tries(server, "/upload", upload_headers(jwt)) == []
    # Each linger ended with its body or with the client's close (this client closes once it
    # has its answer, maybe before the server has read the last of the body), none by a bound.
    # (Not every try lingers: a body that is all in before the answer is not early.)
    after = lingers(server)
    assert 0 < after["complete"] + after["peer"] - before["complete"] - before["peer"] <= TRIES
    assert after["bytes"] == after["timeout"] == 0, after


def test_an_oversized_upload_reads_its_413_with_httpx(server: ServerHandle) -> None:
    jwt = authorize(server, f"linger-{uuid.uuid4().hex[:8]}")
    statuses = []
    with httpx.Client(timeout=10) as http:
        for i in range(TRIES):
            content = chunks(BODY, PIECE) if i % 2 else BODY  # chunked, or with Content-Length
            try:
                answer = http.post(
                    f"{server.external}/upload", content=content, headers=upload_headers(jwt)
                )
                statuses.append(str(answer.status_code))
            except httpx.HTTPError as exc:
                statuses.append(repr(exc))
    assert statuses == ["413"] * TRIES


def test_discarded_bodies_leave_memory_flat(server: ServerHandle) -> None:
    jwt = authorize(server, f"linger-{uuid.uuid4().hex[:8]}")
    _raw_tries(server, "/upload", upload_headers(jwt))  # warm up
    before = rss_kb(server.process.pid)
    assert _raw_tries(server, "/upload", upload_headers(jwt)) == []
    assert _raw_tries(server, "/upload", upload_headers(jwt)) == []
    growth = rss_kb(server.process.pid) - before
    assert growth < RSS_GROWTH_LIMIT_KB, f"RSS grew {growth} kB over {2 * TRIES} oversized uploads"


def test_a_kept_alive_connection_goes_on_after_a_drained_413(server: ServerHandle) -> None:
    jwt = authorize(server, f"linger-{uuid.uuid4().hex[:8]}")
    conn = Raw(server)
    try:
        for chunked in (False, True, False):
            conn.send(
                request("/upload", BODY, chunked=chunked, close=False, headers=upload_headers(jwt))
            )
            status, headers, _ = conn.answer()
            assert status == 413 and headers.get("connection") != "close"
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        status, _, body = conn.answer()
        assert (status, body) == (200, b"ok\n")
    finally:
        conn.close()


def test_asgi_routes_linger_after_early_refusals(server: ServerHandle) -> None:
    """/authorize refuses a form body over 4 KiB from its Content-Length, before reading it."""
    form = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer a"}
    assert _raw_tries(server, "/authorize", form) == []
    conn = Raw(server)  # kept alive: the drained connection goes on
    try:
        conn.send(request("/authorize", BODY, chunked=False, close=False, headers=form))
        assert conn.answer()[0] == 413
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert conn.answer()[:1] == (200,)
    finally:
        conn.close()


def test_an_upload_refused_from_its_head_reads_its_401(server: ServerHandle) -> None:
    headers = {"Content-Type": DELIMITED, "Content-Encoding": "snappy"}  # no token
    for i in range(10):
        conn = Raw(server)
        try:
            conn.send(request("/upload", BODY, chunked=bool(i % 2), close=True, headers=headers))
            assert conn.answer()[0] == 401
        finally:
            conn.close()


def _send_until_cut(conn: Raw, piece: bytes, pause: float, limit_s: float) -> tuple[int, float]:
    """Send pieces until the server's close makes a send fail; (bytes sent, seconds taken)."""
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            conn.send(piece)
        except OSError:
            return sent, time.monotonic() - started
        sent += len(piece)
        if pause:
            time.sleep(pause)
    raise AssertionError(f"still open after {limit_s}s and {sent} bytes")


def _oversized_head(jwt: str, close: bool) -> bytes:
    return request("/upload", b"", chunked=False, close=close, headers=upload_headers(jwt)).replace(
        b"Content-Length: 0", b"Content-Length: %d" % (64 * 1024 * 1024)
    )


@pytest.mark.parametrize("close", [True, False])
def test_the_byte_bound_ends_a_linger(bounded: ServerHandle, close: bool) -> None:
    jwt = authorize(bounded, f"linger-{uuid.uuid4().hex[:8]}")
    before = lingers(bounded).get("bytes", 0)
    conn = Raw(bounded)
    try:
        conn.send(_oversized_head(jwt, close))  # 64 MiB declared: refused from the head
        assert conn.answer()[0] == 413
        sent, took = _send_until_cut(conn, b"\0" * PIECE, 0, limit_s=20)
    finally:
        conn.close()
    assert sent >= 1024 * 1024 and took < 1.0  # cut by the 1 MiB bound, not the 1 s one
    assert wait_lingers(bounded, "bytes", before + 1) == before + 1


@pytest.mark.parametrize("close", [True, False])
def test_the_time_bound_ends_a_linger(bounded: ServerHandle, close: bool) -> None:
    jwt = authorize(bounded, f"linger-{uuid.uuid4().hex[:8]}")
    before = lingers(bounded).get("timeout", 0)
    conn = Raw(bounded)
    try:
        conn.send(_oversized_head(jwt, close))
        assert conn.answer()[0] == 413
        sent, took = _send_until_cut(conn, b"\0" * 1024, 0.05, limit_s=20)  # 20 KB/s
    finally:
        conn.close()
    assert 0.9 < took < 3.0 and sent < 1024 * 1024
    assert wait_lingers(bounded, "timeout", before + 1) == before + 1
