"""The client's local listener (Go default ``localhost:9002``).

``/healthz`` and ``/healthz/ready`` (200 while the process runs), ``/metrics`` (self-metrics),
``GET /federate`` (the last payload after the transforms, as text exposition 0.0.4) and
``POST /-/reload`` (the same as SIGHUP: 200, or 500 with the reason while the old configuration
stays in use).

A few routes for a local health check and a scrape, so a small HTTP/1.1 server over asyncio
streams rather than a web framework: FastAPI and uvicorn would be most of the client's imports
and memory (docs/architecture.md, "Components"). Keep-alive, ``Content-Length`` bodies only
(``Transfer-Encoding`` is refused with 411), heads up to 16 KiB, bodies up to 64 KiB (discarded:
no route takes one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from client.errors import ConfigError
from client.metrics import CONTENT_TYPE, ClientMetrics
from client.worker import Worker

__all__ = ["Listener"]

logger = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
IDLE_TIMEOUT_S = 30.0
PLAIN = "text/plain; charset=utf-8"
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
}

Answer = tuple[int, str, bytes]  # status, content type, body


class Listener:
    """The local listener of one client process."""

    def __init__(self, worker: Worker, metrics: ClientMetrics) -> None:
        self._worker = worker
        self._metrics = metrics
        self._routes: dict[str, tuple[str, Callable[[], Answer]]] = {
            "/healthz": ("GET", _ok),
            "/healthz/ready": ("GET", _ok),
            "/metrics": ("GET", self._self_metrics),
            "/federate": ("GET", self._last_payload),
            "/-/reload": ("POST", self._reload),
        }

    async def serve(self, host: str, port: int) -> None:
        """Serve until cancelled."""
        server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEAD)
        async with server:
            await server.serve_forever()

    def answer(self, method: str, target: str) -> Answer:
        """The answer to a request for ``target`` (path and query)."""
        route = self._routes.get(target.partition("?")[0])
        if route is None:
            return 404, PLAIN, b"404 page not found\n"
        allowed, handler = route
        if method != allowed and not (method == "HEAD" and allowed == "GET"):
            return 405, PLAIN, b"method not allowed\n"
        return handler()

    def _self_metrics(self) -> Answer:
        return 200, CONTENT_TYPE, self._metrics.render()

    def _last_payload(self) -> Answer:
        # Imported here: protobuf is only needed when someone looks (docs/architecture.md,
        # "The client's footprint").
        from telemeter.exposition import TEXT_CONTENT_TYPE, render_text

        text = render_text(self._worker.forwarder.last_families)
        return 200, TEXT_CONTENT_TYPE, text.encode()

    def _reload(self) -> Answer:
        try:
            self._worker.reload()
        except ConfigError as exc:
            logger.error("reload failed err=%s", exc)
            return 500, PLAIN, f"failed to reload config: {exc}\n".encode()
        return 200, PLAIN, b"ok\n"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; False when the connection is to be closed."""
        try:
            async with asyncio.timeout(IDLE_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            _write(writer, (400, PLAIN, b"request head too large\n"), keep=False, head_only=False)
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            _write(writer, (400, PLAIN, b"bad request line\n"), keep=False, head_only=False)
            return False
        method, target, version = parts
        fields = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        keep = fields.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        if "transfer-encoding" in fields:
            _write(writer, (411, PLAIN, b"length required\n"), keep=False, head_only=False)
            return False
        length = fields.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            _write(writer, (413, PLAIN, b"request body too large\n"), keep=False, head_only=False)
            return False
        await reader.readexactly(int(length))  # no route takes a body
        _write(writer, self.answer(method, target), keep=keep, head_only=method == "HEAD")
        await writer.drain()
        return keep


def _ok() -> Answer:
    return 200, PLAIN, b"ok"


def _write(writer: asyncio.StreamWriter, answer: Answer, *, keep: bool, head_only: bool) -> None:
    status, content_type, body = answer
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + (b"" if head_only else body))
