"""The server's self-metrics, in one registry per process (docs/architecture.md, D10).

Names follow the Go telemeter-server where the meaning is the same (docs/protocol.md section 5).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from telemeter.selfmetrics import MetricSet, counter, gauge, histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How a lingering close ends: the body ended; the client closed or reset; the byte bound or the
# time bound was reached; the server shut down; the body's framing was invalid.
LINGER_ENDS = ("complete", "peer", "bytes", "timeout", "shutdown", "invalid")


class ServerMetrics(MetricSet):
    """Every self-metric of a server process."""

    requests = counter("http_requests_total", "HTTP requests.", "code", "handler", "method")
    duration = histogram("http_request_duration_seconds", "HTTP request latency.", "handler")
    uploads = counter("telemeter_uploads_total", "Uploads accepted and stored.")
    rejects = counter("telemeter_upload_rejects_total", "Uploads refused, by reason.", "reason")
    series = counter("telemeter_upload_series_total", "Series stored by accepted uploads.")
    overwritten = counter(
        "telemeter_overwritten_timestamps_total",
        "Sample timestamps replaced by the receive time, by tense.",
        "tense",
    )
    partitions = gauge("telemeter_partitions", "Clusters served by the last /federate.")
    federated_series = gauge("telemeter_federate_series", "Series served by the last /federate.")
    federate_conflicts = counter(
        "telemeter_federate_type_conflicts_total",
        "Family blocks left out of /federate because clusters disagree on the type.",
    )
    corrupt = counter("telemeter_corrupt_snapshots_total", "Stored values that are not snapshots.")
    redis = histogram("telemeter_redis_duration_seconds", "Redis operation latency.", "op")
    authorizations = counter(
        "telemeter_authorizations_total", "Token exchanges, by result.", "result"
    )
    lingering_closes = counter(
        "telemeter_lingering_closes_total",
        "Request bodies read and discarded after an early answer, by how that ended "
        "(docs/protocol.md, Lingering close).",
        "end",
    )

    fast_uploads = counter(
        "telemeter_upload_fast_path_total",
        "Uploads answered on the fast path: whole in the bytes read, with Connection: close, as "
        "the Go client sends them (docs/architecture.md, The upload fast path).",
    )

    def __init__(self) -> None:
        super().__init__()
        for end in LINGER_ENDS:
            self.lingering_closes.labels(end)
        # What every accepted upload updates: children looked up once (labels() is not free),
        # behind fronts added up at scrape time.
        self.upload_ok = self.counter_front(self.requests.labels("200", "/upload", "post"))
        self.upload_duration = self.histogram_front(self.duration.labels("/upload"))
        self.uploads_stored = self.counter_front(self.uploads)
        self.series_stored = self.counter_front(self.series)
        self.overwritten_past = self.counter_front(self.overwritten.labels("past"))
        self.overwritten_future = self.counter_front(self.overwritten.labels("future"))
        self.fast_answered = self.counter_front(self.fast_uploads)


class HTTPMetrics:
    """ASGI middleware counting requests per route template (not per raw path)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            handler = getattr(route, "path", "other")
            self.metrics.requests.labels(str(status), handler, scope["method"].lower()).inc()
            self.metrics.duration.labels(handler).observe(time.perf_counter() - start)
