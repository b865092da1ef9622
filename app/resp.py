"""Bare RESP: a kept connection to one Redis node, for the commands of each upload and the
batches of reads of each `/federate`.

redis-py spends ~60 us of CPU per pipelined command, this a few (hiredis parses the replies).
`app.store` falls back to the cluster client when anything here fails or a reply
is an error (a redirection, for instance).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis

ReplyError = hiredis.ReplyError
# A large read (the forwarder's XRANGE replies, ~10 KB an entry) is parsed in slices: hiredis
# moves what is left of its buffer after each reply, so a 256 KB read parsed whole costs twice.
FEED_BYTES = 16 * 1024


def encode(args: Sequence[bytes]) -> bytes:
    """One command in the RESP wire format."""
    if len(args) == 2:  # GET key, the thousand reads of each /federate: one formatting
        first, second = args
        return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(first), first, len(second), second)
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class Connection(asyncio.Protocol):
    """A persistent connection to one Redis node: commands are pipelined, replies come in order.

    Used for the commands of every upload and the reads of `/federate`, where redis-py's command
    machinery costs more CPU than the rest of the Redis work. Error replies are returned as
    `ReplyError` instances. A command that times out closes the connection (later replies could
    no longer be matched).
    """

    def __init__(self) -> None:
        self._parser = hiredis.Reader()
        # Per call or batch in flight: its future, the timer that fails it after the timeout,
        # and how many replies a batch waits for (0 for a single call).
        self._waiters: deque[tuple[asyncio.Future[Any], asyncio.TimerHandle, int]] = deque()
        self._batch: list[Any] = []  # the replies gathered so far for the oldest batch
        self._outgoing: list[bytes] = []  # commands to write once the ready callbacks have run
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        password: str | None,
        timeout_s: float,
        username: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Connection:
        """Connect (over TLS with ``tls``) and authenticate (as ``username``, else the default
        user) within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            _, conn = await loop.create_connection(cls, host, port, ssl=tls)
        if password:
            user = (username.encode(),) if username else ()
            reply = await conn.call((b"AUTH", *user, password.encode()), timeout_s=timeout_s)
            if isinstance(reply, ReplyError):
                conn.close()
                raise ConnectionError(f"redis refused AUTH: {reply}")
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if len(data) <= FEED_BYTES:
            self._parser.feed(data)
            self._deliver()
            return
        for start in range(0, len(data), FEED_BYTES):
            self._parser.feed(data, start, min(FEED_BYTES, len(data) - start))
            self._deliver()

    def _deliver(self) -> None:
        """Hand the complete replies to their waiters."""
        reply = self._parser.gets()
        while reply is not False:
            if self._waiters:
                waiter, timer, count = self._waiters[0]
                if count:
                    self._batch.append(reply)
                    if len(self._batch) == count:
                        reply, self._batch = self._batch, []
                        count = 0
                if not count:
                    self._waiters.popleft()
                    timer.cancel()
                    if not waiter.done():  # its caller may have given up
                        waiter.set_result(reply)
            reply = self._parser.gets()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiters:
            waiter, timer, _ = self._waiters.popleft()
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
        return self._send(encode(args), 0, timeout_s)

    def batch(
        self, commands: Sequence[Sequence[bytes] | bytes], *, timeout_s: float
    ) -> asyncio.Future[Any]:
        """Send many commands (each its arguments, or already `encode`d) at once; the future
        gets the list of their replies, in order."""
        if not commands:
            raise ValueError("an empty batch")
        data = b"".join([c if isinstance(c, bytes) else encode(c) for c in commands])
        return self._send(data, len(commands), timeout_s)

    def _send(self, data: bytes, count: int, timeout_s: float) -> asyncio.Future[Any]:
        if self.closed or self._transport is None:
            raise ConnectionError("redis connection closed")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        idle = not self._waiters and not self._outgoing
        self._waiters.append((waiter, loop.call_later(timeout_s, self._expire, waiter), count))
        if idle:  # nothing in flight (a steady trickle of uploads): no one to share a write with
            self._transport.write(data)
            return waiter
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(data)
        return waiter

    def _flush(self) -> None:
        """Write the commands queued since the last flush: under load (commands already in
        flight), the uploads handled in one turn of the event loop share one system call (and
        Redis one read)."""
        data, self._outgoing = self._outgoing, []
        if self._transport is not None and not self.closed:
            self._transport.write(data[0] if len(data) == 1 else b"".join(data))
