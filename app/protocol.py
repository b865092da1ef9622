"""The HTTP protocol of both listeners: uvicorn's httptools protocol, plus

- a deadline for the request head (uvicorn has none: a client sending half a header would hold
  its connection forever);
- on the external listener, ``POST /upload`` handled straight from the parser's callbacks by
  `UploadCycle`, without ASGI, Starlette or FastAPI objects: uploads are the hot path, and that
  machinery cost more CPU per upload than the Redis work. Everything else goes to the ASGI app;
- a lingering close after an early answer (one sent before the request's body was all read, a
  413 above all): the rest of the body is read and discarded, within bounds, before the
  connection closes or goes on, so the client reads the answer instead of a connection reset
  (docs/protocol.md, "Lingering close").

An `UploadCycle` stands where uvicorn keeps its request-response cycle, so uvicorn's own keep-alive,
pipelining, flow control and graceful shutdown apply to uploads unchanged.

The fast path (docs/architecture.md, "The upload fast path"): the external listener's protocol
is a light one, `FirstRequest`, which holds the bytes of a connection's first request until they
are known to be one whole, plainly framed ``POST /upload`` with ``Connection: close``
(`simple_upload`), as the Go client sends. Such an upload is handled by callbacks
(`app.uploads.upload_now`), with no uvicorn object, parser callback, cycle or task of its own but
the store's write. Any other connection, or bytes that do not make a whole request within
`FAST_WAIT_S`, is handed to a `TelemeterProtocol` with the bytes read, and served as above.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import Any, Literal, cast

import httptools
from prometheus_client import Counter
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from app.errors import PayloadTooLarge, RequestTimeout, http_error
from app.runtime import Runtime
from app.uploads import upload, upload_now
from telemeter.errors import TelemeterError

log = logging.getLogger(__name__)


# What uvicorn's protocol makes anew for each connection (everything else it sets is shared).
_PER_CONNECTION = frozenset(("parser", "pipeline"))
# The request headers `app.uploads.upload` and `UploadCycle` read.
_UPLOAD_HEADERS = frozenset(
    (b"authorization", b"content-type", b"content-encoding", b"content-length", b"expect")
)


# The fast path's request: exactly this request line, then header lines that a strict pattern
# accepts (a token name, a colon, visible characters), so that whatever it takes the parser would
# read the same way; the rest is the parser's to judge.
_UPLOAD_LINE = b"POST /upload HTTP/1.1\r\n"
_SIMPLE_HEAD = re.compile(
    rb"POST /upload HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n"
)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")
_MAX_SIMPLE_HEAD = 16384
FAST_WAIT_S = 0.05  # how long held bytes wait to make a whole request before the parser has them


def simple_upload(data: bytes, limit: int) -> tuple[dict[str, str], bytes] | Literal[False] | None:
    """Whether ``data`` is one whole, plainly framed ``POST /upload`` with ``Connection: close``:
    (its upload headers, lowercased, and its body), None while it may still become one, False
    when it will not (no ``Expect`` or ``Upgrade``, no header twice, a body framed by
    ``Content-Length`` or chunked without extensions or trailers, within ``limit``, and nothing
    after it)."""
    if not data.startswith(_UPLOAD_LINE):
        return None if _UPLOAD_LINE.startswith(data) else False
    head = _SIMPLE_HEAD.match(data)
    if head is None:
        return None if b"\r\n\r\n" not in data and len(data) < _MAX_SIMPLE_HEAD else False
    fields: dict[bytes, bytes] = {}
    for line in head.group(1).split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in fields:
            return False
        fields[name] = value.strip(b" \t")
    if (
        fields.get(b"connection", b"").lower() != b"close"
        or b"expect" in fields
        or b"upgrade" in fields
    ):
        return False
    start = head.end()
    chunked, length = fields.get(b"transfer-encoding"), fields.get(b"content-length")
    body: bytes | Literal[False] | None
    if chunked is not None:
        if length is not None or chunked.lower() != b"chunked":
            return False
        body = _chunked_body(data, start, limit)
    elif length is not None:
        if not length.isdigit() or len(length) > 10 or int(length) > limit:
            return False
        end = start + int(length)
        body = None if len(data) < end else data[start:] if len(data) == end else False
    else:
        body = b"" if len(data) == start else False
    if not isinstance(body, bytes):
        return body
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in fields.items()
        if name in _UPLOAD_HEADERS
    }
    return headers, body


def _chunked_body(data: bytes, pos: int, limit: int) -> bytes | Literal[False] | None:
    """A chunked body from ``pos`` to the end of ``data`` (see `simple_upload`)."""
    parts: list[bytes] = []
    total = 0
    while True:
        end = data.find(b"\r\n", pos, pos + 10)
        if end < 0:
            return None if len(data) < pos + 10 else False
        if not _CHUNK_SIZE.fullmatch(data, pos, end):
            return False
        size = int(data[pos:end], 16)
        pos = end + 2
        if size == 0:
            if len(data) < pos + 2:
                return None
            return b"".join(parts) if data[pos:] == b"\r\n" else False
        total += size
        if total > limit:
            return False
        if len(data) < pos + size + 2:
            return None
        if data[pos + size : pos + size + 2] != b"\r\n":
            return False
        parts.append(data[pos : pos + size])
        pos += size + 2


class _FastCycle:
    """An upload of `FirstRequest` while it is stored: whether it is answered, or the client
    left first."""

    __slots__ = ("disconnected", "response_complete")

    def __init__(self) -> None:
        self.response_complete = False
        self.disconnected = False


class _Disconnected(Exception):
    """The client went away before its upload was read: there is no one to answer."""


class UploadCycle:
    """One ``POST /upload`` on a connection: its body as it arrives, then the answer.

    Has the attributes uvicorn's protocol uses of a cycle (``response_complete``, ``keep_alive``,
    ``disconnected``, ``message_event``, ``run_asgi``).
    """

    def __init__(self, protocol: TelemeterProtocol, rt: Runtime, *, keep_alive: bool) -> None:
        self.protocol = protocol
        self.rt = rt
        self.headers = {  # the ones an upload reads (uvicorn lowercased the names)
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in protocol.headers
            if name in _UPLOAD_HEADERS
        }
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self._event: asyncio.Event | None = None  # made only if the body is waited for
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = rt.settings.limit_bytes
        self.complete = False
        # Asked for a 100 Continue not (yet) sent: answered early, the body may never come.
        self.awaiting_continue = self.headers.get("expect", "").lower() == "100-continue"

    @property
    def message_event(self) -> asyncio.Event:
        """Set on each change below (the body grew, ended, or the client left)."""
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()

    # ---- called by the protocol (parser callbacks) ----

    def feed(self, body: bytes) -> None:
        """A piece of the body: kept until the limit, then only counted."""
        if self.response_complete:
            return
        self.size += len(body)
        if self.size <= self.limit:
            self.chunks.append(body)
        else:
            self.chunks = []
            self._wake()

    def end(self) -> None:
        """The body is complete."""
        self.complete = True
        self._wake()

    async def read_body(self, limit: int, seconds: float) -> bytes:
        """The whole body; PayloadTooLarge past ``limit``, RequestTimeout past ``seconds``."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        if not self.complete and self.awaiting_continue:
            self.protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # as curl asks
            self.awaiting_continue = False
        if self._waiting(limit):  # usually the whole body came with the head
            try:
                async with asyncio.timeout(seconds):
                    while self._waiting(limit):
                        self.message_event.clear()
                        await self.message_event.wait()
            except TimeoutError as exc:
                raise RequestTimeout(f"request body not received within {seconds:g}s") from exc
        if self.disconnected:
            raise _Disconnected()
        if self.size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        return b"".join(self.chunks)

    def _waiting(self, limit: int) -> bool:
        """Whether more of the body is still to come (and wanted)."""
        return not (self.complete or self.size > limit or self.disconnected)

    # ---- run as uvicorn runs an ASGI cycle ----

    async def run_asgi(self, app: Any) -> None:
        """Handle the upload and answer it (started by uvicorn, in order, like a cycle)."""
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            await upload(self.rt, self.headers, self.read_body)
        except _Disconnected:
            _count(self.rt, 499, start)  # counted, never sent
            return
        except Exception as exc:  # what it means: _outcome
            error = exc
        status, reason, retry_after = _outcome(self.rt, error)
        del error  # its traceback holds this frame: a reference cycle per refused upload
        self._answer(status, reason, retry_after)
        _count(self.rt, status, start)

    def _answer(self, status: int, reason: str, retry_after: int | None) -> None:
        protocol = self.protocol
        transport = protocol.transport
        if self.disconnected or transport.is_closing():
            self.response_complete = True
            return
        # Answered before the whole body was read (refused early): the rest of it is read and
        # discarded (lingering), and the connection goes on only if all of it came.
        early = not self.complete
        close = (
            not self.keep_alive
            or (status >= 500 and status != 503)
            or (early and (self.awaiting_continue or not protocol.lingers()))
        )
        transport.write(
            _answer_bytes(protocol.server_state, status, reason, retry_after, close=close)
        )
        self.response_complete = True
        self.chunks = []
        if close:
            protocol.close_after_answer()
        else:
            protocol.on_response_complete()


def _outcome(rt: Runtime, error: BaseException | None) -> tuple[int, str, int | None]:
    """(status, reason, Retry-After) of an upload that ended with ``error`` (None: stored)."""
    if error is None:
        return 200, "", None
    if isinstance(error, TelemeterError):
        answer = http_error(error)
        rt.metrics.rejects.labels(answer.reject_reason).inc()
        return answer.status, answer.reason, answer.retry_after
    log.error("upload failed", exc_info=error)
    return 500, "internal error", None


def _count(rt: Runtime, status: int, start: float) -> None:
    """An upload's answer (499: the client left first) in the metrics."""
    m = rt.metrics
    if status == 200:
        m.upload_ok.inc()
    else:
        m.requests.labels(str(status), "/upload", "post").inc()
    m.upload_duration.observe(time.perf_counter() - start)


def _answer_bytes(
    state: ServerState, status: int, reason: str, retry_after: int | None, *, close: bool
) -> bytes:
    """An upload's answer: its status, uvicorn's default headers, the reason as plain text."""
    body = (reason + "\n").encode() if reason else b""
    head = [STATUS_LINE[status]]
    for name, value in state.default_headers:
        head += [name, b": ", value, b"\r\n"]
    if body:
        head.append(b"content-type: text/plain; charset=utf-8\r\n")
    head.append(b"content-length: %d\r\n" % len(body))
    if retry_after is not None:
        head.append(b"retry-after: %d\r\n" % retry_after)
    if close:
        head.append(b"connection: close\r\n")
    head += [b"\r\n", body]
    return b"".join(head)


class _Linger:
    """A lingering close in progress: the bytes it may still read, its deadline, and whether the
    connection closes when the body ends (else it goes on, kept alive)."""

    __slots__ = ("close", "left", "timer")

    def __init__(self, left: int, close: bool, timer: asyncio.TimerHandle) -> None:
        self.left = left
        self.close = close
        self.timer = timer


class _AnswerTransport:
    """The transport an ASGI cycle answers on: its ``close()`` lingers after an early answer."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: TelemeterProtocol) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        self.protocol.transport.write(data)

    def is_closing(self) -> bool:
        return self.protocol.transport.is_closing()

    def close(self) -> None:
        self.protocol.close_after_answer()


class TelemeterProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a head deadline, uploads handled without ASGI, and lingering
    closes.

    Configured by subclassing (uvicorn instantiates the class itself): ``head_timeout_s``, the
    lingering bounds ``linger_bytes`` and ``linger_timeout_s`` (either 0: off) and the counter
    ``linger_ends``, and ``runtime`` on the external listener only.
    """

    head_timeout_s = 30.0
    linger_bytes = 0
    linger_timeout_s = 0.0
    linger_ends: Counter | None = None
    runtime: Runtime | None = None
    _head_timer: asyncio.TimerHandle | None = None
    _addresses_unread = False  # connection_made defers reading them (see `server`)
    _linger: _Linger | None = None
    _body_done = True  # the parser's current request has no more body to come
    # The attributes uvicorn sets alike for every connection of a listener (see __init__).
    _shared: tuple[Config, ServerState, dict[str, Any]] | None = None

    # ---- lingering close (docs/protocol.md, "Lingering close") ----

    def lingers(self) -> bool:
        """Whether early answers linger (both bounds set)."""
        return self.linger_bytes > 0 and self.linger_timeout_s > 0

    def _early(self) -> bool:
        """Whether the current request is answered while its body is still coming."""
        cycle: Any = self.cycle
        return cycle is not None and cycle.response_complete and not self._body_done

    def close_after_answer(self) -> None:
        """Close after a complete answer: at once, or lingering while its request's body comes."""
        if self._linger is None and self._early() and self.lingers():
            self._start_linger(close=True)
        else:
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._linger is not None:
            self._unset_keepalive_if_required()  # lingering to close: its own bounds apply
        elif self._early() and not self.transport.is_closing():  # kept alive, answered early
            if self.lingers():
                self._start_linger(close=False)
            else:
                self.transport.close()

    def _start_linger(self, *, close: bool) -> None:
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if close and self.transport.can_write_eof():  # not with TLS
            self.transport.write_eof()  # the client reads the answer, then the end of it
        timer = self.loop.call_later(self.linger_timeout_s, self._end_linger, "timeout")
        self._linger = _Linger(self.linger_bytes, close, timer)

    def _end_linger(self, end: str) -> None:
        """Stop lingering: the connection goes on if the body ended and the answer allows it."""
        linger = self._linger
        if linger is None:
            return
        self._linger = None
        linger.timer.cancel()
        if self.linger_ends is not None:
            self.linger_ends.labels(end).inc()
        if end == "complete" and not linger.close and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        linger = self._linger
        if linger is not None:
            linger.left -= len(data)
            if linger.left < 0:
                self._end_linger("bytes")
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if self._linger is not None:  # a discarded body's framing is wrong: it was answered
            self._end_linger("invalid")
        else:
            super().send_400_response(msg)

    def shutdown(self) -> None:
        if self._linger is not None:
            self._end_linger("shutdown")
        else:
            super().shutdown()

    # ---- the request head deadline, uploads ----

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        if not self.transport.is_closing():
            log.info("closing a connection whose request head did not arrive in time")
            self.transport.close()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn's sets ~30 attributes, most of them the same for every connection of a
        # listener, and looks up two loggers: the first connection's are kept and copied.
        shared = type(self)._shared
        if shared is None or shared[0] is not config or shared[1] is not server_state:
            super().__init__(config, server_state, app_state, _loop)
            state = {k: v for k, v in vars(self).items() if k not in _PER_CONNECTION}
            type(self)._shared = (config, server_state, state)
            return
        self.__dict__.update(shared[2])
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.pipeline = deque()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's, but for the addresses: they cost a socket object and two system calls per
        # connection, and only a request to the ASGI app reads them (see `server`, `client`).
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self._addresses_unread = True
        self._arm_head_timer()

    def _read_addresses(self) -> None:
        self._addresses_unread = False
        self._server = get_local_addr(self.transport)
        self._client = get_remote_addr(self.transport)

    @property
    def server(self) -> tuple[str, int | None] | None:
        if self._addresses_unread:
            self._read_addresses()
        return self._server

    @server.setter
    def server(self, value: tuple[str, int | None] | None) -> None:
        self._server = value

    @property
    def client(self) -> tuple[str, int] | None:
        if self._addresses_unread:
            self._read_addresses()
        return self._client

    @client.setter
    def client(self, value: tuple[str, int] | None) -> None:
        self._client = value

    def on_message_begin(self) -> None:
        # uvicorn's, but the scope's addresses are filled in only for the ASGI app (below).
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        if self._head_timer is None:  # else armed when the connection was made: still running
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        if self.transport.is_closing():  # behind an answer that closed the connection
            return
        self._body_done = False
        self._unset_keepalive_if_required()  # (armed when a linger ended in this same read)
        rt = self.runtime
        if (
            rt is None
            or self.parser.get_method() != b"POST"
            or not (self.url == b"/upload" or self.url.startswith(b"/upload?"))
            or self.parser.should_upgrade()
        ):
            self.scope["server"], self.scope["client"] = self.server, self.client
            super().on_headers_complete()
            asgi = self.cycle
            if isinstance(asgi, RequestResponseCycle) and asgi.transport is self.transport:
                asgi.transport = _AnswerTransport(self)  # type: ignore[assignment]
            return
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        existing = self.cycle
        cycle = UploadCycle(self, rt, keep_alive=keep_alive)
        self.cycle = cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)  # type: ignore[arg-type]
        else:  # pipelined behind a request still being answered: uvicorn starts it later
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))  # type: ignore[arg-type]

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if isinstance(cycle, UploadCycle):
            cycle.feed(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_done = True
        cycle: Any = self.cycle
        if isinstance(cycle, UploadCycle):
            cycle.end()
        else:
            super().on_message_complete()
        self._end_linger("complete")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._end_linger("peer")
        super().connection_lost(exc)
        # A cycle refers to its protocol; the protocol must not refer back once the connection
        # is gone, or every connection's objects (which have lived long enough to reach the
        # oldest GC generation) wait for a full collection: RSS grew ~17 MiB per pod in a soak.
        self.cycle = None  # type: ignore[assignment]
        self.pipeline.clear()


class FirstRequest(asyncio.Protocol):
    """The external listener's protocol until a connection's first request is known (the upload
    fast path, see the module docstring): the bytes read are held; a whole upload that
    `simple_upload` takes is handled by callbacks, and any other connection is handed, with the
    bytes read, to a `TelemeterProtocol` (``full``) made for it then."""

    full: type[TelemeterProtocol]  # set per listener (app.main._config)

    __slots__ = ("app_state", "config", "cycle", "held", "server_state", "timer", "transport")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)  # connection_made
        self.held = b""
        self.timer: asyncio.TimerHandle | None = None
        self.cycle: _FastCycle | None = None  # an upload being stored

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server_state.connections.add(self)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.cycle is not None:  # more after a whole upload: it will not be read
            return
        held = self.held = self.held + data if self.held else data
        rt = self.full.runtime
        assert rt is not None  # FirstRequest serves the external listener only
        found = simple_upload(held, rt.settings.limit_bytes)
        if found is None:  # it may still become a whole upload: wait a little
            if self.timer is None:
                self.timer = asyncio.get_running_loop().call_later(FAST_WAIT_S, self.hand_over)
        elif not (isinstance(found, tuple) and self._upload(rt, *found)):
            self.hand_over()

    def hand_over(self) -> None:
        """From here the connection is a `TelemeterProtocol`'s, with the bytes read so far."""
        self._cancel_timer()
        self.server_state.connections.discard(self)
        if self.transport.is_closing():
            return
        full = self.full(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        full.connection_made(self.transport)
        self.transport.set_protocol(full)
        held, self.held = self.held, b""
        if held:
            full.data_received(held)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _upload(self, rt: Runtime, headers: dict[str, str], body: bytes) -> bool:
        """Handle a whole upload by callbacks; False, with nothing done, when no upload slot is
        free (the parser's way then waits for one)."""
        start = time.perf_counter()
        cycle = _FastCycle()
        try:
            stored = upload_now(rt, headers, body)
        except Exception as exc:
            self._cancel_timer()
            self.held = b""
            self._answer(rt, cycle, start, exc)
            return True
        if stored is None:
            return False
        self._cancel_timer()
        self.held = b""
        self.cycle = cycle
        stored.add_done_callback(lambda done: self._stored(rt, cycle, start, done))
        return True

    def _stored(
        self, rt: Runtime, cycle: _FastCycle, start: float, stored: asyncio.Future[None]
    ) -> None:
        if cycle.disconnected:
            _count(rt, 499, start)  # counted, never sent
            return
        error = stored.exception() if not stored.cancelled() else TimeoutError("cancelled")
        self._answer(rt, cycle, start, error)

    def _answer(
        self, rt: Runtime, cycle: _FastCycle, start: float, error: BaseException | None
    ) -> None:
        status, reason, retry_after = _outcome(rt, error)
        cycle.response_complete = True
        rt.metrics.fast_answered.inc()
        if not self.transport.is_closing():
            state = self.server_state
            self.transport.write(_answer_bytes(state, status, reason, retry_after, close=True))
            self.transport.close()
        _count(rt, status, start)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.held = b""
        self.server_state.connections.discard(self)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: an upload being stored is answered first."""
        if self.cycle is None:
            self.transport.close()
