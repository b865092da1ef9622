"""The two FastAPI apps of a server process: the external and the internal listener.

External (untrusted, behind the load balancer): ``/authorize``, ``/upload``, health.
Internal (the central Prometheus only): ``/federate``, ``/metrics``, health. Internal endpoints
are not routed on the external app at all (PROTOCOL.md section 5).
"""

from __future__ import annotations

import asyncio
import logging
import math
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

from telemeter.core import snappy
from telemeter.core.delimited import write_families
from telemeter.core.errors import InvalidPayload, TelemeterError, TooLarge
from telemeter.core.exposition import TEXT_CONTENT_TYPE
from telemeter.core.textparse import parse_text
from telemeter.core.upload import PassResult, process
from telemeter.server import keys, snapshot
from telemeter.server.authorizer import AuthorizationDenied, StubAuthorizer
from telemeter.server.errors import HTTPProblem, install_handlers, to_response
from telemeter.server.metrics import ASGIApp, HTTPMetrics, Receive, Scope, Send
from telemeter.server.runtime import Runtime
from telemeter.server.status_page import status as status_page
from telemeter.server.store import StoreUnavailable
from telemeter.server.tokens import InvalidToken

log = logging.getLogger(__name__)

PROTOBUF_TYPE = "application/vnd.google.protobuf"
DELIMITED_CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
AUTHORIZE_BODY_LIMIT = 4 * 1024
MAX_SAMPLE_AGE_MS = 24 * 3600 * 1000
UPLOAD_SLOT_WAIT_S = 1.0


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    kind, *params = (part.strip() for part in value.split(";"))
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.strip().lower()] = val.strip().strip('"')
    return kind.lower(), parsed


def _check_upload_type(content_type: str) -> None:
    kind, params = _media_type(content_type)
    if (
        kind != PROTOBUF_TYPE
        or params.get("encoding") != "delimited"
        or (
            params.get("proto", "io.prometheus.client.MetricFamily")
            != "io.prometheus.client.MetricFamily"
        )
    ):
        raise HTTPProblem(
            415,
            f"unsupported content type {content_type[:100]!r}: expected {DELIMITED_CONTENT_TYPE}",
        )


async def _read_body(request: Request, *, limit: int, seconds: float) -> bytes:
    """The request body, refusing it as soon as it grows past ``limit`` or takes too long."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"request body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise HTTPProblem(408, f"request body not received within {seconds:g}s") from exc
    return b"".join(chunks)


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPProblem(401, "an Authorization: Bearer <token> header is required")
    return token.strip()


def _accepts_gzip(request: Request) -> bool:
    for item in request.headers.get("accept-encoding", "").split(","):
        coding, _, q = item.strip().partition(";")
        if coding.strip().lower() == "gzip" and q.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def _wants_protobuf(request: Request) -> bool:
    first = request.headers.get("accept", "").split(",")[0]
    kind, params = _media_type(first)
    return kind == PROTOBUF_TYPE and params.get("encoding") == "delimited"


def create_external_app(rt: Runtime) -> FastAPI:
    """The external listener: token exchange, uploads, health."""
    app = FastAPI(title="telemeter-server", docs_url=None, redoc_url=None, openapi_url=None)
    install_handlers(app)
    app.add_middleware(HTTPMetrics, metrics=rt.metrics)
    # Added last, so it runs first: uploads skip the routing and the middleware below it.
    app.add_middleware(UploadFastPath, rt=rt)
    s = rt.settings
    m = rt.metrics

    @app.get("/")
    async def index() -> dict[str, list[str]]:
        return {"paths": ["/", "/authorize", "/upload", "/healthz", "/healthz/ready"]}

    _health_routes(app, rt)

    @app.post("/authorize")
    async def authorize(request: Request) -> Response:
        cluster_id = request.query_params.get("id", "")
        content_type = request.headers.get("content-type", "")
        if not cluster_id and content_type.startswith("application/x-www-form-urlencoded"):
            body = await _read_body(request, limit=AUTHORIZE_BODY_LIMIT, seconds=s.upload_timeout)
            cluster_id = parse_qs(body.decode("utf-8", "replace")).get("id", [""])[0]
        if not cluster_id:
            raise HTTPProblem(400, "the cluster id is required (query or form field 'id')")
        if not keys.valid_cluster_id(cluster_id):
            raise HTTPProblem(400, "invalid cluster id: use letters, digits and ._:- (<= 128)")
        token = _bearer(request)
        account = await _authorize(rt, cluster_id, token)
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

    return app


_PROBLEM_REASONS = {
    401: "unauthorized",
    408: "timeout",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "overloaded",
}


def reject_reason(exc: TelemeterError) -> str:
    """The ``reason`` label of a refused upload (a small, fixed set of values)."""
    if isinstance(exc, HTTPProblem):
        return _PROBLEM_REASONS.get(exc.status, "bad_request")
    if isinstance(exc, TooLarge):
        return "too_large"
    if isinstance(exc, InvalidPayload):
        return "invalid"
    if isinstance(exc, InvalidToken):
        return "unauthorized"
    if isinstance(exc, StoreUnavailable):
        return "store_unavailable"
    return "other"


async def _authorize(rt: Runtime, cluster_id: str, token: str) -> str:
    """The account of (cluster, token): from the cache in Redis, else from the authorizer."""
    if isinstance(rt.authorizer, StubAuthorizer):  # no upstream: nothing to cache or throttle
        return await rt.authorizer.authorize(cluster_id=cluster_id, token=token)
    if await rt.store.auth_failures(cluster_id) >= rt.settings.auth_failure_limit:
        rt.metrics.authorizations.labels("throttled").inc()
        raise HTTPProblem(
            429,
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


async def _upload(rt: Runtime, request: Request) -> Response:
    s = rt.settings
    try:
        claims = rt.verifier.verify(_bearer(request))
    except HTTPProblem as exc:
        raise InvalidToken(exc.reason) from exc
    token_labels = dict(claims.labels)
    cluster_id = token_labels.get(s.partition_label, "")
    if not keys.valid_cluster_id(cluster_id):
        raise InvalidToken(f"the token carries no valid {s.partition_label} label")
    _check_upload_type(request.headers.get("content-type", ""))
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("snappy", "identity", ""):
        raise HTTPProblem(415, f"unsupported content encoding {encoding[:40]!r}: expected snappy")
    wait = rt.limited_for(cluster_id)
    if wait > 0:
        raise HTTPProblem(429, "upload rate limit exceeded", retry_after=math.ceil(wait))
    # The body is read before taking an upload slot: a client trickling its body in holds its
    # connection until --upload-timeout, never a slot (decision 10 bounds the decoding).
    body = await _read_body(request, limit=s.limit_bytes, seconds=s.upload_timeout)
    try:
        await asyncio.wait_for(rt.upload_slots.acquire(), UPLOAD_SLOT_WAIT_S)
    except TimeoutError as exc:
        raise HTTPProblem(503, "too many uploads in progress", retry_after=1) from exc
    try:
        now_ms = int(time.time()) * 1000  # the Go server stamps whole seconds
        value, counts = _render_snapshot(rt, body, encoding, token_labels, cluster_id, now_ms)
        del body  # only the small compressed snapshot is held while Redis answers
        wait_ms = await rt.store.save_snapshot(cluster_id, value, now_ms=now_ms)
    finally:
        rt.upload_slots.release()
    if wait_ms > 0:
        rt.remember_limit(cluster_id, wait_ms / 1000)
        raise HTTPProblem(429, "upload rate limit exceeded", retry_after=math.ceil(wait_ms / 1000))
    rt.remember_limit(cluster_id, s.ratelimit)
    m = rt.metrics
    m.uploads.inc()
    m.series.inc(counts.kept)
    m.overwritten.labels("past").inc(counts.past)
    m.overwritten.labels("future").inc(counts.future)
    return Response(status_code=200)


class UploadFastPath:
    """ASGI wrapper sending ``POST /upload`` straight to its handler.

    Uploads are the hot path: installed as the outermost middleware, this skips FastAPI's
    routing, dependency machinery and the other middleware (a fifth of an upload's CPU in a
    profile), with the same handler, errors and metrics. Everything else goes to the app.
    """

    def __init__(self, app: ASGIApp, rt: Runtime) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/upload" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        m = self.rt.metrics
        try:
            response = await _upload(self.rt, Request(scope, receive))
        except TelemeterError as exc:
            m.rejects.labels(reject_reason(exc)).inc()
            response = to_response(exc)
        await response(scope, receive, send)
        m.requests.labels(str(response.status_code), "/upload", "post").inc()
        m.duration.labels("/upload").observe(time.perf_counter() - start)


def _render_snapshot(
    rt: Runtime,
    body: bytes,
    encoding: str,
    token_labels: dict[str, str],
    cluster_id: str,
    now_ms: int,
) -> tuple[bytes, PassResult]:
    """Decode, check and render an upload into its stored snapshot (CPU only, no awaits).

    Kept in its own function so the decompressed and rendered intermediates (~150 KB for the
    standard payload) are freed before the upload waits for Redis: only the ~10 KB snapshot
    is held per upload in flight (ARCHITECTURE.md decision 10).
    """
    s = rt.settings
    if encoding == "snappy":
        data = snappy.decode_framed(body, max_size=s.uncompressed_limit)
    elif len(body) > s.uncompressed_limit:
        raise TooLarge(f"request body larger than {s.uncompressed_limit} bytes")
    else:
        data = body
    result = process(
        data,
        rt.pass_config(token_labels),
        now_ms=now_ms,
        min_timestamp_ms=now_ms - MAX_SAMPLE_AGE_MS,
    )
    push_time = snapshot.push_time_lines(s.partition_label, cluster_id, now_ms)
    families = [*result.families, (snapshot.PUSH_TIME_FAMILY, 1, push_time)]
    value = snapshot.encode(now_ms, result.kept + 1, families)
    result.families = []
    return value, result


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
            text = b"".join(snapshot.write_plain(merged))
            return Response(write_families(parse_text(text)), media_type=DELIMITED_CONTENT_TYPE)
        if _accepts_gzip(request):
            return StreamingResponse(
                _stream(snapshot.write_gzip(merged)),
                media_type=TEXT_CONTENT_TYPE,
                headers={"Content-Encoding": "gzip"},
            )
        parts = list(snapshot.write_plain(merged))
        # The length is known: the answer is sent whole, not in chunks.
        length = sum(len(part) for part in parts)
        return StreamingResponse(
            _stream(iter(parts)),
            media_type=TEXT_CONTENT_TYPE,
            headers={"Content-Length": str(length)},
        )

    return app


async def _stream(parts: Iterator[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    for part in parts:
        yield part


async def _merged(rt: Runtime) -> snapshot.Merged:
    now_ms = int(time.time() * 1000)
    # Only the ranges this pod holds a live lease for (ARCHITECTURE.md decision 5, I1).
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
