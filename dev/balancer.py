"""A round-robin TCP load balancer for the local stack: it stands in for a Kubernetes Service.

Used by `dev.stack` so that the client keeps pushing when a pod is killed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

_POLL_S = 0.2
_CONNECT_TIMEOUT_S = 1.0
_BUFFER = 65536


class Balancer:
    """A round-robin TCP load balancer on a free loopback port, in threads of this process.

    It stands in for the Kubernetes Service in front of the pods: each connection goes to the
    next backend that accepts a TCP connection, so a dead pod is skipped at once, and bytes are
    relayed both ways until either side closes.
    """

    def __init__(self, backends: Sequence[str]) -> None:
        if not backends:
            raise ValueError("a balancer needs at least one backend")
        self.backends = [_split_address(address) for address in backends]
        self.url = ""
        self._turn = itertools.count()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> Self:
        """Listen on 127.0.0.1 on a free port and start relaying."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_S)  # so the accept loop sees a stop request
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._spawn(self._accept_loop)
        log.info("balancer listening url=%s backends=%s", self.url, self.backends)
        return self

    def stop(self) -> None:
        """Stop accepting and close every relayed connection (each within a poll period)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        self._threads.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name="balancer", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._relay, conn)

    def _connect(self) -> socket.socket | None:
        for _ in self.backends:
            backend = self.backends[next(self._turn) % len(self.backends)]
            try:
                return socket.create_connection(backend, timeout=_CONNECT_TIMEOUT_S)
            except OSError as exc:
                log.debug("backend refused backend=%s:%d error=%s", *backend, exc)
        return None

    def _relay(self, conn: socket.socket) -> None:
        with contextlib.ExitStack() as closing:
            closing.enter_context(conn)
            upstream = self._connect()
            if upstream is None:
                log.warning("no backend accepts a connection backends=%s", self.backends)
                return
            closing.enter_context(upstream)
            conn.settimeout(None)
            upstream.settimeout(None)
            sel = closing.enter_context(selectors.DefaultSelector())
            sel.register(conn, selectors.EVENT_READ, (conn, upstream))
            sel.register(upstream, selectors.EVENT_READ, (upstream, conn))
            with contextlib.suppress(OSError):
                while not self._stopping.is_set():
                    for key, _ in sel.select(timeout=_POLL_S):
                        source, sink = key.data
                        data = source.recv(_BUFFER)
                        if not data:
                            return
                        sink.sendall(data)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ----- the command line ------------------------------------------------------------------------
