"""A real HTTP/1.1 server on a free loopback port that records requests and answers scripts.

It stands in for a Prometheus (``/federate``) and a telemeter server (``/authorize``,
``/upload``) in the client's tests: each request is kept with its raw request target and its
headers in wire order, and each path answers from a script of replies (the last one repeats).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Recorded:
    """One request as it came over the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class Reply:
    """A scripted answer."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def token_reply(
    token: str = "jwt-1", *, labels: Mapping[str, str] | None = None, expires: int = 86400
) -> Reply:
    """An ``/authorize`` answer like the Go server's."""
    document: dict[str, Any] = {
        "version": 1,
        "token": token,
        "expiresInSeconds": expires,
        "labels": dict(labels if labels is not None else {"_id": "test"}),
    }
    return Reply(200, json.dumps(document).encode(), {"Content-Type": "application/json"})


def text_reply(text: str) -> Reply:
    """A ``/federate`` answer in text format 0.0.4."""
    return Reply(200, text.encode(), {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


class Recorder:
    """Start with ``with Recorder() as server:``; ``server.url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: list[Recorded] = []
        self._scripts: dict[str, list[Reply]] = {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self._read_body()
                request = Recorded(
                    method=self.command,
                    target=self.path,
                    headers=list(self.headers.items()),
                    body=body,
                    at=time.monotonic(),
                )
                reply = recorder._record(request)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def _read_body(self) -> bytes:
                if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_POST = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer requests to ``path`` with these replies in turn, repeating the last one."""
        with self._lock:
            self._scripts[path] = list(replies)

    def _record(self, request: Recorded) -> Reply:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            script = self._scripts.get(request.path)
            if not script:
                return Reply(404, b"not scripted\n")
            return script.pop(0) if len(script) > 1 else script[0]

    def requests(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Recorded]:
        """Block until ``count`` requests to ``path`` arrived; fail the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self._requests if r.path == path]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(found)} of {count} requests to {path} arrived")
                self._lock.wait(remaining)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def recorder() -> Iterator[Recorder]:
    """Fixture body: a running Recorder, stopped after the test."""
    with Recorder() as server:
        yield server
