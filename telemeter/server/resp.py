"""Bare RESP: a pipeline of many single-key commands to one Redis node, and a persistent
connection for the commands of each upload.

`/federate` reads a thousand snapshots per scrape; redis-py spends ~60 us of CPU per pipelined
command, this ~5 us (hiredis parses the replies). `telemeter.server.store` falls back to the
cluster client when anything here fails or a reply is an error (a redirection, for instance).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis

ReplyError = hiredis.ReplyError
READ_SIZE = 1 << 20


def encode(args: Sequence[bytes]) -> bytes:
    """One command in the RESP wire format."""
    if len(args) == 2:  # GET key, the thousand reads of each /federate: one formatting
        first, second = args
        return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(first), first, len(second), second)
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


async def pipeline(
    host: str,
    port: int,
    commands: Sequence[Sequence[bytes]],
    *,
    password: str | None,
    timeout_s: float,
) -> list[Any]:
    """Send every command on a new connection and return the replies in order.

    Error replies come back as `ReplyError` instances, not raised. Connection problems raise
    OSError, ConnectionError or TimeoutError.
    """
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = [encode((b"AUTH", password.encode()))] if password else []
            writer.write(b"".join([*head, *(encode(c) for c in commands)]))
            parser = hiredis.Reader()
            replies: list[Any] = []
            expected = len(commands) + len(head)
            while len(replies) < expected:
                data = await reader.read(READ_SIZE)
                if not data:
                    raise ConnectionError("redis closed the connection")
                parser.feed(data)
                reply = parser.gets()
                while reply is not False:
                    replies.append(reply)
                    reply = parser.gets()
        finally:
            writer.close()
    if head and isinstance(replies[0], ReplyError):
        raise ConnectionError(f"redis refused AUTH: {replies[0]}")
    return replies[len(head) :]


class Connection(asyncio.Protocol):
    """A persistent connection to one Redis node: commands are pipelined, replies come in order.

    Used for the two commands of every upload, where redis-py's command machinery costs more
    CPU than the rest of the Redis work. Error replies are returned as `ReplyError` instances.
    A command that times out closes the connection (later replies could no longer be matched).
    """

    def __init__(self) -> None:
        self._parser = hiredis.Reader()
        # Per command in flight: its future and the timer that fails it after the timeout.
        self._waiters: deque[tuple[asyncio.Future[Any], asyncio.TimerHandle]] = deque()
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(
        cls, host: str, port: int, *, password: str | None, timeout_s: float
    ) -> Connection:
        """Connect (and authenticate) within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            _, conn = await loop.create_connection(cls, host, port)
        if password:
            reply = await conn.call((b"AUTH", password.encode()), timeout_s=timeout_s)
            if isinstance(reply, ReplyError):
                conn.close()
                raise ConnectionError(f"redis refused AUTH: {reply}")
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        reply = self._parser.gets()
        while reply is not False:
            if self._waiters:
                waiter, timer = self._waiters.popleft()
                timer.cancel()
                if not waiter.done():  # its caller may have given up
                    waiter.set_result(reply)
            reply = self._parser.gets()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiters:
            waiter, timer = self._waiters.popleft()
            timer.cancel()
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"redis connection lost: {exc!r}"))

    def close(self) -> None:
        """Close the connection; commands in flight fail with ConnectionError."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _expire(self, waiter: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("redis did not answer in time"))
        self.close()  # the replies still to come could no longer be matched

    def call(self, args: Sequence[bytes], *, timeout_s: float) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply, or TimeoutError after ``timeout_s``.

        (A plain future with a timer: ``asyncio.timeout`` costs more than the rest of a call.)
        """
        if self.closed or self._transport is None:
            raise ConnectionError("redis connection closed")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append((waiter, loop.call_later(timeout_s, self._expire, waiter)))
        self._transport.write(encode(args))
        return waiter
