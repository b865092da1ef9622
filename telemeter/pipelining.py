"""HTTP/1.1 pipelining for the remote-write forwarder: rounds of ready-made requests written at
once on one keep-alive connection, their answers parsed as they arrive.

A receiver answers pipelined requests in order, each in its own write, so read through
`telemeter.httpclient`'s streams every answer cost a wake-up of the waiting coroutine, a
``readuntil`` and a ``readexactly``. Here an `asyncio.Protocol` parses every complete answer in
each ``data_received`` and wakes the sender once, when the round's answers are all in (or on an
error, a close or the end of the connection); docs/benchmarks.md, "Remote write (forwarding)".
The answers are read with `telemeter.httpclient`'s limits and rules: ``Content-Length``, chunked
or to the end of the connection; no body for 1xx, 204 and 304; ``Connection: close`` and
HTTP/1.0 end the connection after their answer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import cast

from telemeter.httpclient import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    Answer,
    AnswerTooLarge,
    Endpoint,
    HTTPError,
)


def parse_answer(
    data: bytearray, limit: int, *, eof: bool = False
) -> tuple[Answer, int, bool] | None:
    """The answer at the start of ``data``: (answer, bytes it took, whether the server closes
    the connection after it), or None while it is incomplete. With ``eof`` the connection has
    ended, which completes a body read to the end. Raises HTTPError, AnswerTooLarge."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        if len(data) >= MAX_HEAD_BYTES:
            raise HTTPError("answer headers too long")
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status_line = lines[0]  # HTTP/1.x NNN reason
    if status_line[:7] != "HTTP/1." or status_line[8:9] != " " or not status_line[9:12].isdigit():
        raise HTTPError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    status = int(status_line[9:12])
    close = status_line[7] == "0" or fields.get("connection", "").lower() == "close"
    start = end + 4
    if status in (204, 304) or status < 200:
        return Answer(status, b"", fields), start, close  # RFC 9112 6.3: no body
    if fields.get("transfer-encoding", "").lower() == "chunked":
        found = _chunked(data, start, limit)
        if found is None:
            return None
        body, used = found
        return Answer(status, body, fields), used, close
    length = fields.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPError(f"bad Content-Length {length[:20]!r}")
        size = int(length)
        if size > limit:
            raise AnswerTooLarge(f"answer longer than {limit} bytes")
        if len(data) < start + size:
            return None
        return Answer(status, bytes(data[start : start + size]), fields), start + size, close
    if len(data) - start > limit:  # no length: the body ends with the connection
        raise AnswerTooLarge(f"answer longer than {limit} bytes")
    if not eof:
        return None
    return Answer(status, bytes(data[start:]), fields), len(data), True


def _chunked(data: bytearray, pos: int, limit: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``pos``: (body, where it ends), None while incomplete."""
    spans: list[tuple[int, int]] = []
    total = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            _line_limit(data, pos)
            return None
        try:
            size = int(bytes(data[pos:line_end]).split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise HTTPError(f"bad chunk size {bytes(data[pos : pos + 20])!r}") from None
        total += size
        if total > limit:
            raise AnswerTooLarge(f"answer longer than {limit} bytes")
        pos = line_end + 2
        if size == 0:
            while True:  # trailer fields, up to an empty line
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    _line_limit(data, pos)
                    return None
                if line_end == pos:
                    return b"".join(data[a:b] for a, b in spans), pos + 2
                pos = line_end + 2
        if len(data) < pos + size + 2:
            return None
        spans.append((pos, pos + size))
        pos += size + 2


def _line_limit(data: bytearray, pos: int) -> None:
    """No line ends after ``pos`` yet: wait for more, unless the line is already too long."""
    if len(data) - pos > MAX_HEAD_BYTES:
        raise HTTPError("a chunk's size or trailer line too long")


class _Answers(asyncio.Protocol):
    """The reading side of a connection: the answers of the round in flight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)  # connection_made
        self.closed = False
        self.got_data = False  # anything at all read in this round
        self._buffer = bytearray()
        self._answers: list[Answer] = []
        self._expected = 0
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def expect(self, count: int, answers: list[Answer]) -> asyncio.Future[None]:
        """Start a round of ``count`` answers, appended to ``answers`` as they are parsed."""
        self._answers, self._expected = answers, len(answers) + count
        self.got_data = False
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self.got_data = True
        if self._waiter is None:
            self._fail(HTTPError("an answer to no request"))
        else:
            self._parse(eof=False)

    def _parse(self, *, eof: bool) -> None:
        answers, buffer = self._answers, self._buffer
        try:
            while len(answers) < self._expected and buffer:
                found = parse_answer(buffer, self.limit, eof=eof)
                if found is None:
                    break
                answer, used, close = found
                del buffer[:used]
                answers.append(answer)
                if close:
                    self._fail(None)
                    break
        except HTTPError as exc:
            self._fail(exc)
            return
        if len(answers) >= self._expected:
            self._wake(None)
        elif eof:
            self._fail(None)

    def eof_received(self) -> bool:
        if self._waiter is not None:
            self._parse(eof=True)
        self._fail(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc)

    def _fail(self, exc: BaseException | None) -> None:
        """End the connection; the round in flight, if short of answers, fails with ``exc``."""
        self.closed = True
        self.transport.close()
        if len(self._answers) < self._expected:
            exc = exc or ConnectionError("the server closed the connection before the last answer")
            self._wake(exc)
        else:
            self._wake(None)

    def _wake(self, exc: BaseException | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)


class Pipeline:
    """One keep-alive connection to one endpoint, re-opened when the server closed it, for
    rounds of pipelined requests."""

    def __init__(
        self, endpoint: Endpoint, ssl_context: ssl.SSLContext | None, *, limit: int = MAX_BODY_BYTES
    ) -> None:
        self.endpoint = endpoint
        self.ssl_context = ssl_context
        self.limit = limit
        self._answers: _Answers | None = None

    async def round(self, data: Sequence[bytes], count: int, answers: list[Answer]) -> None:
        """Write ``count`` requests (``data``: their heads and bodies as on the wire, in pieces)
        at once and wait for all their answers, appended to ``answers`` in order as they are
        read: a caller that gives up half way keeps those it got. Raises for the first answer
        it could not read (ConnectionError, HTTPError, AnswerTooLarge); one retry of them all if
        a reused connection had closed before anything came back."""
        for attempt in (0, 1):
            reader = self._answers
            reused = reader is not None and not reader.closed and not reader.transport.is_closing()
            if reader is None or not reused:
                reader = await self._open()
            done = reader.expect(count, answers)
            try:
                reader.transport.writelines(data)
                await done
                return
            except ConnectionError:
                self.close()
                # A keep-alive connection the server had already closed: one fresh try.
                if not reused or attempt or reader.got_data:
                    raise

    async def _open(self) -> _Answers:
        self.close()
        ep = self.endpoint
        context = self.ssl_context if ep.scheme == "https" else None
        loop = asyncio.get_running_loop()
        _, self._answers = await loop.create_connection(
            lambda: _Answers(self.limit), ep.host, ep.port, ssl=context
        )
        return self._answers

    def close(self) -> None:
        """Close the socket (the next round opens a new one)."""
        if self._answers is not None:
            self._answers.transport.close()
        self._answers = None
