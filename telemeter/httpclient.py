"""A minimal HTTP/1.1 client over asyncio streams, with keep-alive: one connection, one request
at a time, or several pipelined in one write.

The server's remote-write forwarding, the benchmark's simulated clusters and the client's push
cycle send small requests; a general client (httpx) costs about a millisecond of CPU per request
in its own machinery, several times the work of the request itself (docs/benchmarks.md, "Remote
write"). This one writes the request in one ``write`` and reads the answer with two stream reads;
``pipeline`` writes many at once. The server's forwarder pipelines through `telemeter.pipelining`
instead, which parses the answers as they arrive (docs/architecture.md D13).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024


class HTTPError(Exception):
    """The server's answer could not be read as HTTP."""


class AnswerTooLarge(HTTPError):
    """The answer's body is longer than the caller's limit."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    path: str  # path plus query, as sent on the request line

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class Answer(NamedTuple):  # a tuple: made for every forwarded request, a third of a dataclass
    status: int
    body: bytes
    headers: Mapping[str, str]  # names in lower case


class Connection:
    """One keep-alive connection to one endpoint's host, re-opened when the server closed it."""

    def __init__(self, endpoint: Endpoint, ssl_context: ssl.SSLContext | None) -> None:
        self.endpoint = endpoint
        self.ssl_context = ssl_context
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        chunked: bool = False,
        limit: int = MAX_BODY_BYTES,
    ) -> Answer:
        """Send one request and read the whole answer; one retry if a reused socket was dead.

        ``chunked`` sends the body with ``Transfer-Encoding: chunked`` (one chunk) instead of a
        ``Content-Length``; an answer body over ``limit`` bytes raises AnswerTooLarge.
        """
        answers: list[Answer] = []
        await self.pipeline(method, path, [(headers, body)], answers, chunked=chunked, limit=limit)
        return answers[0]

    async def pipeline(
        self,
        method: str,
        path: str,
        requests: Sequence[tuple[Mapping[str, str], bytes]],
        answers: list[Answer],
        *,
        chunked: bool = False,
        limit: int = MAX_BODY_BYTES,
    ) -> None:
        """Send (headers, body) requests in one write (HTTP/1.1 pipelining: the server answers
        them in order) and append each answer to ``answers`` as it is read, so a caller that
        gives up half way keeps those it got. Raises as `request` for the first answer it could
        not read; one retry of them all if a reused socket was dead before the first answer.
        """
        data = b"".join([self._head(method, path, h, b, chunked) for h, b in requests])
        for attempt in (0, 1):
            reused = self._writer is not None and not self._reader_done()
            if not reused:
                await self._open()
            assert self._writer is not None
            try:
                self._writer.write(data)
                await self._writer.drain()
                answers.append(await self._answer(limit))
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                # A keep-alive connection the server had already closed: one fresh try.
                if not reused or attempt:
                    raise
        for _ in requests[1:]:
            if self._writer is None:
                raise ConnectionError("the server closed the connection before the last answer")
            answers.append(await self._answer(limit))

    def _reader_done(self) -> bool:
        return self._reader is None or self._reader.at_eof()

    async def _open(self) -> None:
        self.close()
        ep = self.endpoint
        context = self.ssl_context if ep.scheme == "https" else None
        self._reader, self._writer = await asyncio.open_connection(
            ep.host, ep.port, ssl=context, limit=MAX_HEAD_BYTES
        )

    def _head(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, chunked: bool
    ) -> bytes:
        """One request as written on the wire: its head, then its body."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.endpoint.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        elif body or method not in ("GET", "HEAD"):  # no length on a bodiless GET, as Go
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _answer(self, limit: int) -> Answer:
        """Read one answer (closing the connection after it when the server says so)."""
        assert self._reader is not None
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HTTPError("answer headers too long") from exc
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise HTTPError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        fields: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        status = int(rest[:3])
        answer = await self._read_body(status, fields, limit)
        if fields.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            self.close()
        return Answer(status, answer, fields)

    async def _read_body(self, status: int, fields: Mapping[str, str], limit: int) -> bytes:
        assert self._reader is not None
        if status in (204, 304) or status < 200:
            return b""  # RFC 9112 6.3: no body, whatever the headers say
        if fields.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            total = 0
            while True:
                size_line = await self._reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    raise HTTPError(f"bad chunk size {size_line[:20]!r}") from None
                total += size
                if total > limit:
                    raise AnswerTooLarge(f"answer longer than {limit} bytes")
                if size == 0:
                    while (await self._reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailer fields
                    return b"".join(parts)
                parts.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
        length = fields.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HTTPError(f"bad Content-Length {length[:20]!r}")
            if int(length) > limit:
                raise AnswerTooLarge(f"answer longer than {limit} bytes")
            return await self._reader.readexactly(int(length))
        parts = []  # no length: the body ends with the socket
        total = 0
        while chunk := await self._reader.read(65536):
            total += len(chunk)
            if total > limit:
                raise AnswerTooLarge(f"answer longer than {limit} bytes")
            parts.append(chunk)
        self.close()
        return b"".join(parts)

    def close(self) -> None:
        """Close the socket (a later request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def fetch(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    *,
    ssl_context: ssl.SSLContext | None = None,
    chunked: bool = False,
    limit: int = MAX_BODY_BYTES,
) -> Answer:
    """One request on a connection of its own, closed after the answer."""
    endpoint = Endpoint.parse(url)
    connection = Connection(endpoint, ssl_context)
    try:
        return await connection.request(
            method, endpoint.path, headers, body, chunked=chunked, limit=limit
        )
    finally:
        connection.close()
