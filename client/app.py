"""The client's local listener (Go default ``localhost:9002``).

``/healthz`` and ``/healthz/ready`` (200 while the process runs), ``/metrics`` (self-metrics),
``GET /federate`` (the last payload after the transforms, as text exposition 0.0.4) and
``POST /-/reload`` (the same as SIGHUP: 200, or 500 with the reason while the old configuration
stays in use).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from client.errors import ConfigError
from client.metrics import ClientMetrics
from client.worker import Worker
from telemeter.exposition import TEXT_CONTENT_TYPE, render_text

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(worker: Worker, metrics: ClientMetrics) -> FastAPI:
    """The local listener of one client process."""
    app = FastAPI(title="telemeter-client", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.get("/healthz/ready", response_class=PlainTextResponse)
    async def ready() -> str:
        return "ok"

    @app.get("/metrics")
    async def self_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/federate")
    async def last_payload() -> Response:
        text = render_text(worker.forwarder.last_families)
        return Response(text, headers={"Content-Type": TEXT_CONTENT_TYPE})

    @app.post("/-/reload", response_class=PlainTextResponse)
    async def reload() -> Response:
        try:
            worker.reload()
        except ConfigError as exc:
            logger.error("reload failed err=%s", exc)
            return PlainTextResponse(f"failed to reload config: {exc}\n", status_code=500)
        return PlainTextResponse("ok\n")

    return app
