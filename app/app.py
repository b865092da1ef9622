"""The two FastAPI apps of a server process: the external and the internal listener.

External (untrusted, behind the load balancer): ``/authorize``, health; ``POST /upload`` is
answered by the HTTP protocol itself (`app.protocol`) and never reaches this app.
Internal (the central Prometheus only): ``/federate``, ``/metrics``, health. Internal endpoints
are not routed on the external app at all (docs/protocol.md section 5).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import keys, snapshot
from app.authorizer import StubAuthorizer
from app.errors import (
    AuthorizationDenied,
    BadRequest,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    Unauthorized,
    install_handlers,
)
from app.metrics import HTTPMetrics
from app.receive import receive
from app.runtime import Runtime
from app.status_page import status as status_page
from app.uploads import (
    DELIMITED_CONTENT_TYPE,
    MISSING_BEARER,
    PROTOBUF_TYPE,
    bearer,
    media_type,
)
from telemeter.exposition import TEXT_CONTENT_TYPE

log = logging.getLogger(__name__)

AUTHORIZE_BODY_LIMIT = 4 * 1024


async def _read_body(request: Request, *, limit: int, seconds: float) -> bytes:
    """The request body, refusing it as soon as it grows past ``limit`` or takes too long."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(f"request body not received within {seconds:g}s") from exc
    return b"".join(chunks)


def _accepts_gzip(request: Request) -> bool:
    for item in request.headers.get("accept-encoding", "").split(","):
        coding, _, q = item.strip().partition(";")
        if coding.strip().lower() == "gzip" and q.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def _wants_protobuf(request: Request) -> bool:
    first = request.headers.get("accept", "").split(",")[0]
    kind, params = media_type(first)
    return kind == PROTOBUF_TYPE and params.get("encoding") == "delimited"


def create_external_app(rt: Runtime) -> FastAPI:
    """The external listener: token exchange, health (uploads: see app.protocol)."""
    app = FastAPI(title="telemeter-server", docs_url=None, redoc_url=None, openapi_url=None)
    install_handlers(app)
    app.add_middleware(HTTPMetrics, metrics=rt.metrics)
    # POST /upload never reaches this app: the HTTP protocol (app.protocol) hands
    # it straight to app.uploads.
    s = rt.settings
    m = rt.metrics

    @app.get("/")
    async def index() -> dict[str, list[str]]:
        paths = ["/", "/authorize", "/upload", "/healthz", "/healthz/ready"]
        return {"paths": [*paths, "/metrics/v1/receive"] if s.forward_url else paths}

    _health_routes(app, rt)

    @app.post("/authorize")
    async def authorize(request: Request) -> Response:
        cluster_id = request.query_params.get("id", "")
        content_type = request.headers.get("content-type", "")
        if not cluster_id and content_type.startswith("application/x-www-form-urlencoded"):
            body = await _read_body(request, limit=AUTHORIZE_BODY_LIMIT, seconds=s.upload_timeout)
            cluster_id = parse_qs(body.decode("utf-8", "replace")).get("id", [""])[0]
        if not cluster_id:
            raise BadRequest("the cluster id is required (query or form field 'id')")
        if not keys.valid_cluster_id(cluster_id):
            raise BadRequest("invalid cluster id: use letters, digits and ._:- (<= 128)")
        token = bearer(request.headers.get("authorization", ""))
        if token is None:
            raise Unauthorized(MISSING_BEARER)
        account = await authorize_cluster(rt, cluster_id, token)
        labels = {s.partition_label: cluster_id}
        jwt = rt.issuer.issue(account_id=account, labels=labels)
        m.authorizations.labels("ok").inc()
        return JSONResponse(
            {
                "version": 1,
                "token": jwt,
                "expiresInSeconds": s.token_expire_seconds,
                "labels": labels,
            }
        )

    if s.forward_url:  # remote write is received only when it can be forwarded

        @app.post("/metrics/v1/receive")
        async def receive_route(request: Request) -> Response:
            headers = {k.lower(): v for k, v in request.headers.items()}
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > s.limit_receive_bytes:  # before auth: cheap
                raise PayloadTooLarge(f"request body larger than {s.limit_receive_bytes} bytes")
            body = await _read_body(request, limit=s.limit_receive_bytes, seconds=s.upload_timeout)
            return Response(status_code=await receive(rt, headers, body))

    return app


async def authorize_cluster(rt: Runtime, cluster_id: str, token: str) -> str:
    """The account of (cluster, token): from the cache in Redis, else from the authorizer."""
    if isinstance(rt.authorizer, StubAuthorizer):  # no upstream: nothing to cache or throttle
        return await rt.authorizer.authorize(cluster_id=cluster_id, token=token)
    if await rt.store.auth_failures(cluster_id) >= rt.settings.auth_failure_limit:
        rt.metrics.authorizations.labels("throttled").inc()
        raise RateLimited(
            "too many failed token exchanges for this cluster",
            retry_after=keys.AUTH_FAILURE_WINDOW_S,
        )
    cached = await rt.store.cached_account(cluster_id, token)
    if cached is not None:
        return cached
    try:
        account = await rt.authorizer.authorize(cluster_id=cluster_id, token=token)
    except AuthorizationDenied:
        rt.metrics.authorizations.labels("denied").inc()
        await rt.store.count_auth_failure(cluster_id)
        raise
    await rt.store.cache_account(
        cluster_id, token, account, ttl_s=int(rt.settings.authorize_cache_ttl)
    )
    return account


def _health_routes(app: FastAPI, rt: Runtime) -> None:
    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/healthz/ready")
    async def ready() -> PlainTextResponse:
        ok, why = await rt.ready()
        if ok:
            return PlainTextResponse("ready\n")
        return PlainTextResponse(f"not ready: {why}\n", status_code=503)


def create_internal_app(rt: Runtime) -> FastAPI:
    """The internal listener: ``/federate`` for the central Prometheus, self-metrics, health."""
    app = FastAPI(
        title="telemeter-server internal", docs_url=None, redoc_url=None, openapi_url=None
    )
    install_handlers(app)
    app.add_middleware(HTTPMetrics, metrics=rt.metrics)

    @app.get("/")
    async def index() -> dict[str, list[str]]:
        return {
            "paths": [
                "/",
                "/federate",
                "/metrics",
                "/healthz",
                "/healthz/ready",
                "/debug/ring",
                "/status",
            ]
        }

    @app.get("/debug/ring")
    async def ring() -> dict[str, Any]:
        return await rt.ring.debug_view()

    @app.get("/status", response_class=HTMLResponse)
    async def status() -> HTMLResponse:
        return await status_page(rt)

    _health_routes(app, rt)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/federate")
    async def federate(request: Request) -> Response:
        merged = await _merged(rt)
        if _wants_protobuf(request):
            return Response(snapshot.write_protobuf(merged), media_type=DELIMITED_CONTENT_TYPE)
        if _accepts_gzip(request):
            return StreamingResponse(
                _stream(snapshot.write_gzip(merged)),
                media_type=TEXT_CONTENT_TYPE,
                headers={"Content-Encoding": "gzip"},
            )
        # The length is known: the answer is sent whole, not in chunks, a segment at a time.
        return StreamingResponse(
            _stream(snapshot.write_plain(merged)),
            media_type=TEXT_CONTENT_TYPE,
            headers={"Content-Length": str(snapshot.plain_length(merged))},
        )

    return app


async def _stream(parts: Iterator[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    for part in parts:
        yield part


async def _merged(rt: Runtime) -> snapshot.Merged:
    now_ms = int(time.time() * 1000)
    # Only the ranges this pod holds a live lease for (docs/architecture.md D5, I1).
    values = await rt.store.load_snapshots(sorted(rt.ring.owned_ranges()), now_ms=now_ms)
    # Never serve older than --ttl, whatever the key's own TTL says.
    merged = snapshot.merge(values, oldest_ms=now_ms - int(rt.settings.ttl * 1000))
    m = rt.metrics
    m.partitions.set(merged.clusters)
    m.federated_series.set(merged.series)
    m.federate_conflicts.inc(merged.conflicts)
    if merged.corrupt:
        m.corrupt.inc(merged.corrupt)
        log.warning("skipped corrupt snapshots count=%d", merged.corrupt)
    return merged
