"""The tool's own metrics, served on ``--listen``."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    """The tool's own metrics on ``--listen`` (the Go tool's counter names)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.errors = PromCounter(
            "forward_errors", "Failed pushes of all workers", registry=self.registry
        )
        self.samples = PromCounter(
            "forwarded_samples", "Samples pushed by all workers", registry=self.registry
        )
        self.uploads = PromCounter(
            "benchmark_uploads", "Upload attempts by answer", ["status"], registry=self.registry
        )


async def serve_metrics(listen: str, metrics: Metrics) -> asyncio.Server:
    """A tiny HTTP server for ``/metrics``, ``/healthz`` and ``/healthz/ready``."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--listen must be host:port, got {listen!r}")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b" ", 2)
            path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
            if path == b"/metrics":
                status, kind, body = (
                    "200 OK",
                    CONTENT_TYPE_LATEST,
                    generate_latest(metrics.registry),
                )
            elif path in (b"/healthz", b"/healthz/ready"):
                status, kind, body = "200 OK", "text/plain", b"ok\n"
            else:
                status, kind, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a broken probe connection is the prober's problem
        finally:
            writer.close()

    return await asyncio.start_server(handle, host.strip("[]") or None, int(port))
