"""The forwarder's pipelined HTTP/1.1 rounds: answers parsed however they are split across reads,
against small real HTTP/1.1 servers (closing mid-round, idle closes, limits)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemeter.httpclient import Answer, AnswerTooLarge, Endpoint, HTTPError
from telemeter.pipelining import Pipeline, parse_answer

NO_CONTENT = b"HTTP/1.1 204 No Content\r\nDate: Thu, 03 Dec 2026 11:00:00 GMT\r\n\r\n"
REFUSED = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nbad samples"
THROTTLED = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
CHUNKED = (
    b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;ext=1\r\nover\r\n6\r\nloaded\r\n0\r\nX-Trailer: t\r\n\r\n"
)
KINDS = {
    NO_CONTENT: (204, b""),
    REFUSED: (400, b"bad samples"),
    THROTTLED: (429, b""),
    CHUNKED: (500, b"overloaded"),
}


def parse_all(data: bytes, *, eof: bool = False) -> list[Answer]:
    buffer, out = bytearray(data), []
    while buffer and (found := parse_answer(buffer, 1 << 20, eof=eof)) is not None:
        answer, used, _ = found
        del buffer[:used]
        out.append(answer)
    return out


@given(st.lists(st.sampled_from(list(KINDS)), min_size=1, max_size=8), st.data())
def test_answers_split_anywhere_are_parsed_whole_and_in_order(
    answers: list[bytes], data: st.DataObject
) -> None:
    wire = b"".join(answers)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=6)))
    got: list[Answer] = []
    buffer = bytearray()
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        buffer += wire[start:end]  # one read
        while buffer and (found := parse_answer(buffer, 1 << 20)) is not None:
            answer, used, close = found
            assert not close
            del buffer[:used]
            got.append(answer)
    assert not buffer
    assert [(a.status, a.body) for a in got] == [KINDS[a] for a in answers]
    assert all(a.headers["retry-after"] == "7" for a in got if a.status == 429)


def test_close_eof_bodies_and_limits() -> None:
    closing = b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno"
    ((answer, used, close),) = [parse_answer(bytearray(closing), 100)]  # type: ignore[misc]
    assert (answer.status, answer.body, used, close) == (503, b"no", len(closing), True)
    old = b"HTTP/1.0 200 OK\r\n\r\nto the end"
    assert parse_answer(bytearray(old), 100) is None  # the body ends with the connection
    assert [(a.status, a.body) for a in parse_all(old, eof=True)] == [(200, b"to the end")]
    with pytest.raises(AnswerTooLarge):
        parse_answer(bytearray(REFUSED), 10)
    with pytest.raises(AnswerTooLarge):
        parse_answer(bytearray(CHUNKED), 5)
    with pytest.raises(HTTPError):
        parse_answer(bytearray(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000), 100)
    with pytest.raises(HTTPError):
        parse_answer(bytearray(b"SSH-2.0-OpenSSH\r\n\r\n"), 100)
    endless = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 70000
    assert parse_answer(bytearray(endless[:1000]), 100) is None  # a size line still coming
    with pytest.raises(HTTPError):
        parse_answer(bytearray(endless), 100)
    with pytest.raises(HTTPError):
        parse_answer(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), 100)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_requests(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """The bodies of ``count`` requests (each with a Content-Length)."""
    bodies = []
    for _ in range(count):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        bodies.append(await reader.readexactly(length))
    return bodies


def request(body: bytes) -> list[bytes]:
    return [b"POST /w HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body), body]


def rounds(handle: Handler, *batches: int) -> list[list[Answer] | BaseException]:
    """Run rounds of ``batches[i]`` requests against a server answering with ``handle``: each
    round's answers, or what it raised (with the answers it kept before, as an exception note)."""

    async def run() -> list[list[Answer] | BaseException]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pipe = Pipeline(Endpoint.parse(f"http://127.0.0.1:{port}/w"), None)
        out: list[list[Answer] | BaseException] = []
        for n, count in enumerate(batches):
            answers: list[Answer] = []
            data = [part for i in range(count) for part in request(b"r%d.%d" % (n, i))]
            try:
                async with asyncio.timeout(10):
                    await pipe.round(data, count, answers)
                out.append(answers)
            except (ConnectionError, HTTPError) as exc:
                exc.add_note(repr([a.body for a in answers]))
                out.append(exc)
        pipe.close()
        server.close()
        return out

    return asyncio.run(run())


def echo(answer_bytes: Callable[[bytes], bytes], *, close_after: int = 0) -> Handler:
    """A server answering each request as it arrives; the ``close_after``-th with a close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while not reader.at_eof():
            try:
                (body,) = await read_requests(reader, 1)
                served += 1
                writer.write(answer_bytes(body))
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            if served == close_after:
                break
        writer.close()

    return handle


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_rounds_on_one_connection_get_their_answers_in_order() -> None:
    sizes = [5, 1, 16]
    got = rounds(echo(ok), *sizes)
    assert [[(a.status, a.body) for a in r] for r in got] == [  # type: ignore[union-attr]
        [(200, b"r%d.%d" % (n, i)) for i in range(c)] for n, c in enumerate(sizes)]  # fmt: skip


def test_all_answers_in_one_write() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bodies = await read_requests(reader, 4)
        writer.write(b"".join([NO_CONTENT, REFUSED, *(ok(b) for b in bodies[2:])]))
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    (answers,) = rounds(handle, 4)
    assert isinstance(answers, list)
    assert [(a.status, a.body) for a in answers] == [
        (204, b""), (400, b"bad samples"), (200, b"r0.2"), (200, b"r0.3")]  # fmt: skip


def test_a_server_closing_mid_round_keeps_the_answers_before() -> None:
    got = rounds(echo(ok, close_after=2), 4, 2)
    assert isinstance(got[0], ConnectionError) and got[0].__notes__ == ["[b'r0.0', b'r0.1']"]
    assert [a.body for a in got[1]] == [b"r1.0", b"r1.1"]  # type: ignore[union-attr]


def test_connection_close_ends_the_round() -> None:
    def closing(body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"

    got = rounds(echo(closing), 3, 1)
    assert isinstance(got[0], ConnectionError) and got[0].__notes__ == ["[b'x']"]
    assert [a.body for a in got[1]] == [b"x"]  # type: ignore[union-attr]


def test_a_connection_closed_while_idle_is_reopened() -> None:
    got = rounds(echo(ok, close_after=2), 2, 2, 2)  # each connection closes after one round
    assert [[a.body for a in r] for r in got] == [  # type: ignore[union-attr]
        [b"r%d.%d" % (n, i) for i in range(2)] for n in range(3)]  # fmt: skip


def test_garbage_fails_the_round() -> None:
    got = rounds(echo(lambda body: b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), 2, 1)
    assert isinstance(got[0], HTTPError)
    assert isinstance(got[1], HTTPError)  # on a new connection: the old one was out of step


def test_a_reused_connection_closed_before_answering_is_tried_again_once() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(b"".join(ok(b) for b in await read_requests(reader, 2)))
        await writer.drain()
        if connections == 1:  # read the next round, then close without a word
            await read_requests(reader, 2)
        else:
            await reader.read()
        writer.close()

    got = rounds(handle, 2, 2)
    assert [[a.body for a in r] for r in got] == [  # type: ignore[union-attr]
        [b"r%d.%d" % (n, i) for i in range(2)] for n in range(2)]  # fmt: skip
    assert connections == 2
