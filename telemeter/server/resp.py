"""A bare RESP pipeline: many single-key commands to one Redis node in one write.

`/federate` reads a thousand snapshots per scrape; redis-py spends ~60 us of CPU per pipelined
command, this ~5 us (hiredis parses the replies). Only used for reads; `telemeter.server.store`
falls back to the cluster client when anything here fails or a reply is a redirection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis

ReplyError = hiredis.ReplyError
READ_SIZE = 1 << 20


def encode(args: Sequence[bytes]) -> bytes:
    """One command in the RESP wire format."""
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
