"""`POST /upload`: the checks, the compiled pass and the store write of one upload.

The HTTP side is `app.protocol`, which calls `upload` straight from the HTTP parser
(no ASGI, no Starlette objects: uploads are the hot path). A refused upload raises an error of
`app.errors` (or of the core's, which `app.errors.http_error` translates).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from app import keys, snapshot
from app.errors import (
    InvalidToken,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    UnsupportedMediaType,
)
from app.runtime import Runtime
from app.store import Forward
from telemeter import remotewrite, snappy
from telemeter.upload import PassResult, process

PROTOBUF_TYPE = "application/vnd.google.protobuf"
DELIMITED_CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
MAX_SAMPLE_AGE_MS = 24 * 3600 * 1000
UPLOAD_SLOT_WAIT_S = 1.0

# Reads the body: (limit in bytes, seconds) -> the body, or raises PayloadTooLarge or
# RequestTimeout.
BodyReader = Callable[[int, float], Awaitable[bytes]]


def media_type(value: str) -> tuple[str, dict[str, str]]:
    """A media type and its parameters (names lowercased)."""
    kind, *params = (part.strip() for part in value.split(";"))
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.strip().lower()] = val.strip().strip('"')
    return kind.lower(), parsed


@functools.lru_cache(maxsize=64)  # a refused type raises, and is not cached
def _check_upload_type(content_type: str) -> None:
    kind, params = media_type(content_type)
    if (
        kind != PROTOBUF_TYPE
        or params.get("encoding") != "delimited"
        or (
            params.get("proto", "io.prometheus.client.MetricFamily")
            != "io.prometheus.client.MetricFamily"
        )
    ):
        raise UnsupportedMediaType(
            f"unsupported content type {content_type[:100]!r}: expected {DELIMITED_CONTENT_TYPE}",
        )


MISSING_BEARER = "an Authorization: Bearer <token> header is required"


def bearer(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer`` header value, or None if there is none."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(slots=True)
class _Checked:
    """What the head of an accepted upload decided."""

    cluster_id: str
    token_labels: dict[str, str]
    encoding: str


def _check_head(rt: Runtime, headers: Mapping[str, str]) -> _Checked:
    """Everything that can be checked from the head (the token, the types, the rate limit this
    process knows); raises the error of the first check that fails."""
    s = rt.settings
    token = bearer(headers.get("authorization", ""))
    if token is None:
        raise InvalidToken(MISSING_BEARER)
    claims = rt.verifier.verify(token)
    token_labels = dict(claims.labels)
    cluster_id = token_labels.get(s.partition_label, "")
    if not keys.valid_cluster_id(cluster_id):
        raise InvalidToken(f"the token carries no valid {s.partition_label} label")
    _check_upload_type(headers.get("content-type", ""))
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("snappy", "identity", ""):
        raise UnsupportedMediaType(
            f"unsupported content encoding {encoding[:40]!r}: expected snappy"
        )
    wait = rt.limited_for(cluster_id)
    if wait > 0:
        raise RateLimited("upload rate limit exceeded", retry_after=math.ceil(wait))
    return _Checked(cluster_id, token_labels, encoding)


async def upload(rt: Runtime, headers: Mapping[str, str], read_body: BodyReader) -> None:
    """Check, render and store one upload; raises an error (see the module docstring) if refused.

    ``headers`` has lowercased names. Everything that can be checked from the head is checked
    before the body is read.
    """
    s = rt.settings
    checked = _check_head(rt, headers)
    # The body is read before taking an upload slot: a client trickling its body in holds its
    # connection until --upload-timeout, never a slot (D10 bounds the decoding).
    body = await read_body(s.limit_bytes, s.upload_timeout)
    slots = rt.upload_slots
    if slots.locked():  # all taken: wait a little for one (wait_for costs a task, so only here)
        try:
            await asyncio.wait_for(slots.acquire(), UPLOAD_SLOT_WAIT_S)
        except TimeoutError as exc:
            raise Overloaded("too many uploads in progress") from exc
    else:
        await slots.acquire()
    try:
        now_ms = int(time.time()) * 1000  # the Go server stamps whole seconds
        rendered = _render_snapshot(rt, body, checked, now_ms)
        del body  # only the small compressed snapshot is held while Redis answers
        await _store(rt, checked.cluster_id, now_ms, *rendered)
    finally:
        slots.release()


def upload_now(rt: Runtime, headers: Mapping[str, str], body: bytes) -> asyncio.Future[None] | None:
    """`upload` of a body already read whole (`app.protocol`'s fast path): checked, rendered and
    handed to the store now; returns the future of the store's write (its error is the upload's),
    or None, with nothing stored, when no upload slot is free (then `upload` must be used)."""
    checked = _check_head(rt, headers)
    if len(body) > rt.settings.limit_bytes:
        raise PayloadTooLarge(f"request body larger than {rt.settings.limit_bytes} bytes")
    slots = rt.upload_slots
    if not slots.try_acquire():
        return None
    try:
        now_ms = int(time.time()) * 1000
        rendered = _render_snapshot(rt, body, checked, now_ms)
    except BaseException:
        slots.release()
        raise
    stored = asyncio.ensure_future(_store(rt, checked.cluster_id, now_ms, *rendered))
    stored.add_done_callback(lambda _: slots.release())
    return stored


async def _store(
    rt: Runtime,
    cluster_id: str,
    now_ms: int,
    value: bytes,
    counts: PassResult,
    forward: Forward | None,
) -> None:
    """Save a rendered upload (and queue it, with ``forward``); raises RateLimited or the
    store's errors."""
    s = rt.settings
    if forward is None:
        wait_ms = await rt.store.save_snapshot(cluster_id, value, now_ms=now_ms)
    else:
        try:
            wait_ms = await rt.store.save_snapshot(
                cluster_id,
                value,
                now_ms=now_ms,
                forward=forward,
                queue_limit=s.forward_queue_limit,
            )
        except QueueFull:
            if rt.forwarder is not None:
                rt.forwarder.metrics.queue_full.inc()
            raise
    if wait_ms > 0:
        rt.remember_limit(cluster_id, wait_ms / 1000)
        raise RateLimited("upload rate limit exceeded", retry_after=math.ceil(wait_ms / 1000))
    rt.remember_limit(cluster_id, s.ratelimit)
    m = rt.metrics
    m.uploads_stored.inc()
    m.series_stored.inc(counts.kept)
    if counts.past:
        m.overwritten_past.inc(counts.past)
    if counts.future:
        m.overwritten_future.inc(counts.future)


def _render_snapshot(
    rt: Runtime, body: bytes, checked: _Checked, now_ms: int
) -> tuple[bytes, PassResult, Forward | None]:
    """Decode, check and render an upload into its stored snapshot (CPU only, no awaits), and
    with ``--forward-url`` into its Remote-Write request, built once here so that every retry
    sends the same bytes.

    Kept in its own function so the decompressed and rendered intermediates (~150 KB for the
    standard payload) are freed before the upload waits for Redis: only the ~5 KB snapshot
    is held per upload in flight (docs/architecture.md, D10).
    """
    s = rt.settings
    encoding, token_labels, cluster_id = checked.encoding, checked.token_labels, checked.cluster_id
    if encoding == "snappy":
        data = snappy.decode_framed(body, max_size=s.uncompressed_limit)
    elif len(body) > s.uncompressed_limit:
        raise PayloadTooLarge(f"request body larger than {s.uncompressed_limit} bytes")
    else:
        data = body
    push_time = snapshot.push_time_lines(s.partition_label, cluster_id, now_ms)
    push_family = (snapshot.PUSH_TIME_FAMILY, 1, push_time)
    tail, tail_series = remotewrite.encode([push_family]) if s.forward_url else (b"", 0)
    result = process(
        data,
        rt.pass_config(token_labels),
        now_ms=now_ms,
        min_timestamp_ms=now_ms - MAX_SAMPLE_AGE_MS,
        write_tail=tail,  # the pass's WriteRequest ends with the push time's series
    )
    value = snapshot.encode(now_ms, result.kept + 1, [*result.families, push_family])
    forward = None
    if s.forward_url:
        request = result.write_request
        forward = Forward(
            body=snappy.encode_block(request),
            size=len(request),
            tenant=cluster_id,
            series=result.write_series + tail_series,
            stamp_ms=now_ms,
        )
    result.families, result.write_request = [], b""
    return value, result, forward
