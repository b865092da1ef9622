"""``POST /metrics/v1/receive``: Prometheus remote write from clusters, checked, then queued.

A cluster's own Prometheus can push with ``remote_write`` instead of running the client. The
request is authenticated with our upload JWT, or with the scheme of today's Go server: a bearer
token that is ``base64({"authorization_token": ..., "cluster_id": ...})``, checked against
``--authorize`` and cached in Redis as ``/authorize`` answers are. Unlike the Go server, every
series must carry ``_id`` equal to the authenticated cluster: no cluster writes under another's
ID. Then the whitelist and elide apply, the cluster-wide rate limit, and the request is queued in
its range's remote-write stream, forwarded like an upload (`app.forward`); 204 once queued
(docs/protocol.md section 5; docs/operations.md, "Remote write").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Mapping

from app import keys
from app.errors import (
    AuthorizationDenied,
    InvalidToken,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    UnsupportedMediaType,
)
from app.runtime import Runtime
from app.store import Forward
from app.uploads import MISSING_BEARER, bearer, media_type
from telemeter import remotewrite, snappy

MAX_AGE_MS = 24 * 3600 * 1000
MAX_AHEAD_MS = 10 * 60 * 1000


def _check_type(headers: Mapping[str, str]) -> None:
    kind, params = media_type(headers.get("content-type", ""))
    encoding = headers.get("content-encoding", "").strip().lower()
    version = headers.get("x-prometheus-remote-write-version", remotewrite.VERSION).strip()
    if kind != remotewrite.CONTENT_TYPE or params.get("proto", "prometheus.WriteRequest") != (
        "prometheus.WriteRequest"
    ):
        raise UnsupportedMediaType(
            f"unsupported content type {headers.get('content-type', '')[:100]!r}: expected "
            "application/x-protobuf (Remote-Write 1.0)"
        )
    if encoding != "snappy":
        raise UnsupportedMediaType(
            f"unsupported content encoding {encoding[:40]!r}: expected snappy"
        )
    if not version.startswith("0.1."):
        raise UnsupportedMediaType(
            f"unsupported remote-write version {version[:20]!r}: expected 0.1.0"
        )


async def authenticate(rt: Runtime, authorization: str) -> str:
    """The cluster ID a request is authenticated as (InvalidToken, or the authorizer's answer)."""
    token = bearer(authorization)
    if token is None:
        raise InvalidToken(MISSING_BEARER)
    try:
        claims = rt.verifier.verify(token)
    except InvalidToken as jwt_error:
        try:
            decoded = json.loads(base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_"))
            cluster_id = str(decoded["cluster_id"])
            secret = str(decoded["authorization_token"])
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise jwt_error from None
        if not keys.valid_cluster_id(cluster_id) or not secret:
            raise InvalidToken("the token names no valid cluster_id") from None
        from app.app import authorize_cluster  # the /authorize logic, with its cache

        try:
            await authorize_cluster(rt, cluster_id, secret)
        except AuthorizationDenied as exc:
            if exc.status in (401, 403):
                raise InvalidToken(f"the authorizer refused the token ({exc.status})") from None
            raise
        return cluster_id
    cluster_id = dict(claims.labels).get(rt.settings.partition_label, "")
    if not keys.valid_cluster_id(cluster_id):
        raise InvalidToken(f"the token carries no valid {rt.settings.partition_label} label")
    return cluster_id


async def receive(rt: Runtime, headers: Mapping[str, str], body: bytes) -> int:
    """Check and queue one remote-write request (``headers`` lowercased); returns the status."""
    s = rt.settings
    cluster_id = await authenticate(rt, headers.get("authorization", ""))
    _check_type(headers)
    if len(body) > s.limit_receive_bytes:
        raise PayloadTooLarge(f"request body larger than {s.limit_receive_bytes} bytes")
    data = snappy.decode_block(body, max_size=s.limit_receive_uncompressed_bytes)
    series = remotewrite.decode(data)
    now_ms = int(time.time() * 1000)
    remotewrite.check_received(
        series,
        remotewrite.ReceiveLimits(
            partition_label=s.partition_label,
            cluster_id=cluster_id,
            max_series=s.limit_series,
            max_labels=s.limit_labels,
            max_length=s.limit_label_length,
            min_timestamp_ms=now_ms - MAX_AGE_MS,
            max_timestamp_ms=now_ms + MAX_AHEAD_MS,
        ),
    )
    elide = rt.elide_labels
    kept = [
        ([(k, v) for k, v in labels if k not in elide], samples)
        for labels, samples in series
        if rt.whitelist.matches(dict(labels).get("__name__", ""), dict(labels))
    ]
    if not kept:
        return 204  # metadata only, or nothing the whitelist keeps
    wait_ms = await rt.store.count_receive(cluster_id, limit=s.limit_receive_requests)
    if wait_ms > 0:
        raise RateLimited("remote-write rate limit exceeded", retry_after=math.ceil(wait_ms / 1000))
    request = remotewrite.encode_series(kept)
    forward = Forward(
        body=snappy.encode_block(request),
        size=len(request),
        tenant=cluster_id,
        series=len(kept),
        stamp_ms=min(ts for _, samples in kept for _, ts in samples)
        if any(samples for _, samples in kept)
        else now_ms,
    )
    try:
        await rt.store.enqueue(cluster_id, forward, queue_limit=s.forward_queue_limit)
    except QueueFull:
        if rt.forwarder is not None:
            rt.forwarder.metrics.queue_full.inc()
        raise
    return 204
