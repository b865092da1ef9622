"""`app.protocol.simple_upload`: which bytes the upload fast path takes as one whole upload, and
that everything else (incomplete for now, or not plain) is left to the parser."""

from __future__ import annotations

import pytest

from app.protocol import simple_upload

LIMIT = 1000
HEAD = (
    b"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
    b"Content-Type: application/vnd.google.protobuf; encoding=delimited\r\n"
    b"Content-Encoding: snappy\r\nConnection: close\r\n"
)


def _chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def test_a_whole_upload_framed_by_its_length() -> None:
    request = HEAD + b"Content-Length: 5\r\n\r\nhello"
    assert simple_upload(request, LIMIT) == (
        {
            "authorization": "Bearer t",
            "content-type": "application/vnd.google.protobuf; encoding=delimited",
            "content-encoding": "snappy",
            "content-length": "5",
        },
        b"hello",
    )


def test_a_whole_chunked_upload_as_the_go_client_sends_it() -> None:
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"a" * 300, b"b" * 7)
    found = simple_upload(request, LIMIT)
    assert isinstance(found, tuple)
    assert found[1] == b"a" * 300 + b"b" * 7
    assert "transfer-encoding" not in found[0]


@pytest.mark.parametrize(
    "request_",
    [
        HEAD + b"Content-Length: 5\r\n\r\nhell",  # the body still coming
        HEAD + b"Content-Length: 5\r\n\r",  # the head still coming
        HEAD[:30],
        b"POST /up",
        b"",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"abc")[:-1],
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nab",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n3",
    ],
)
def test_a_prefix_of_one_may_still_become_one(request_: bytes) -> None:
    assert simple_upload(request_, LIMIT) is None


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /upload HTTP/1.1\r\n\r\n",
        b"POST /upload?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"POST /upload HTTP/1.0\r\nConnection: close\r\n\r\n",
        b"POST /authorize HTTP/1.1\r\n\r\n",
        HEAD.replace(b"Connection: close", b"Connection: keep-alive") + b"\r\n",
        HEAD.replace(b"Connection: close\r\n", b"") + b"\r\n",  # keep-alive by default
        HEAD + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        HEAD + b"Upgrade: h2c\r\n\r\n",
        HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",  # a header twice
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello",
        HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + _chunked(b"x"),
        HEAD + b"Content-Length: +5\r\n\r\nhello",
        HEAD + b"Content-Length: 1001\r\n\r\n",  # over the limit: the parser's way answers 413
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"a" * 600, b"b" * 600),
        HEAD + b"Content-Length: 5\r\n\r\nhello" + b"POST",  # pipelined after it
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"x") + b"G",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",  # extension
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",  # a chunk too long
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n123456789\r\n",  # a size of 9 digits
        HEAD + b"Bad Name: x\r\n\r\n",  # a space in a name
        HEAD + b"Name : x\r\n\r\n",
        HEAD + b" folded\r\n\r\n",  # obs-fold
        HEAD + b"X: a\nb\r\n\r\n",  # a bare LF
        HEAD + b"X: a\x00b\r\n\r\n",  # a control character
        HEAD + b"Content-Length: 2\r\n\r\n\r\n\r\nxx",
        HEAD + b"X" * 20000,  # a head too long without its end
    ],
)
def test_anything_else_is_the_parsers(request_: bytes) -> None:
    assert simple_upload(request_, LIMIT) is False


def test_no_body_at_all() -> None:
    assert simple_upload(HEAD + b"\r\n", LIMIT) == (
        {
            "authorization": "Bearer t",
            "content-type": "application/vnd.google.protobuf; encoding=delimited",
            "content-encoding": "snappy",
        },
        b"",
    )
