"""The lean HTTP client against a small real HTTP/1.1 server: pipelined requests and answers."""

from __future__ import annotations

import asyncio

import pytest

from telemeter.httpclient import Answer, Connection, Endpoint


async def serve(bodies: list[bytes], *, close_after: int) -> asyncio.Server:
    """Answer each request with its body's length and the body, in order; answer the
    ``close_after``-th with ``Connection: close`` and close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
            bodies.append(body)
            served += 1
            last = served == close_after
            close = b"Connection: close\r\n" if last else b""
            writer.write(
                b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (close, len(body), body)
            )
            await writer.drain()
            if last:
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def run() -> tuple[list[Answer], list[bytes]]:
        bodies: list[bytes] = []
        server = await serve(bodies, close_after=0)
        port = server.sockets[0].getsockname()[1]
        conn = Connection(Endpoint.parse(f"http://127.0.0.1:{port}/w"), None)
        answers: list[Answer] = []
        requests = [({"X-N": str(i)}, b"body %d" % i) for i in range(5)]
        await conn.pipeline("POST", "/w", requests, answers)
        again = await conn.request("POST", "/w", {}, b"after")  # the connection is still in step
        conn.close()
        server.close()
        return [*answers, again], bodies

    answers, bodies = asyncio.run(run())
    assert [a.body for a in answers] == [b"body %d" % i for i in range(5)] + [b"after"]
    assert bodies == [a.body for a in answers] and {a.status for a in answers} == {200}


def test_answers_read_before_the_server_closes_are_kept() -> None:
    async def run() -> list[Answer]:
        server = await serve([], close_after=2)
        port = server.sockets[0].getsockname()[1]
        conn = Connection(Endpoint.parse(f"http://127.0.0.1:{port}/w"), None)
        answers: list[Answer] = []
        with pytest.raises(ConnectionError):
            await conn.pipeline("POST", "/w", [({}, b"%d" % i) for i in range(4)], answers)
        server.close()
        return answers

    assert [a.body for a in asyncio.run(run())] == [b"0", b"1"]
