"""The error table of the server: each error's status, Retry-After, reject reason and answer."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from app import errors
from app.snapshot import CorruptSnapshot
from telemeter import errors as core

# error -> (status, Retry-After header or None, reject reason label, answered text)
TABLE: dict[str, tuple[core.TelemeterError, int, str | None, str, str]] = {
    "bad request": (errors.BadRequest("no id"), 400, None, "bad_request", "no id"),
    "bad payload": (errors.BadPayload("bad metric"), 400, None, "invalid", "bad metric"),
    "core invalid payload": (core.InvalidPayload("bad"), 400, None, "invalid", "bad"),
    "too large": (errors.PayloadTooLarge("big"), 413, None, "too_large", "big"),
    "core too large": (core.TooLarge("big"), 413, None, "too_large", "big"),
    "unauthorized": (errors.Unauthorized("no token"), 401, None, "unauthorized", "no token"),
    "invalid token": (
        errors.InvalidToken("token has expired"),
        401,
        None,
        "unauthorized",
        "unauthorized: token has expired",
    ),
    "timeout": (errors.RequestTimeout("slow"), 408, None, "timeout", "slow"),
    "media type": (
        errors.UnsupportedMediaType("text/plain"),
        415,
        None,
        "unsupported_media_type",
        "text/plain",
    ),
    "rate limited": (errors.RateLimited("wait", retry_after=7), 429, "7", "rate_limited", "wait"),
    "overloaded": (errors.Overloaded("busy"), 503, "1", "overloaded", "busy"),
    "store unavailable": (
        errors.StoreUnavailable("redis get failed"),
        503,
        "5",
        "store_unavailable",
        "store unavailable, retry later",
    ),
    "queue full": (
        errors.QueueFull("range 3"),
        503,
        "5",
        "queue_full",
        "the remote-write queue is full, retry later",
    ),
    "authorization denied": (
        errors.AuthorizationDenied(403),
        403,
        None,
        "other",
        "authorization denied (upstream status 403)",
    ),
    "authorization denied 429": (
        errors.AuthorizationDenied(429, 300),
        429,
        "300",
        "other",
        "authorization denied (upstream status 429)",
    ),
    "authorization unavailable": (
        errors.AuthorizationUnavailable("abc"),
        500,
        None,
        "other",
        "authorization service unavailable (request id abc)",
    ),
    "never answered": (CorruptSnapshot("bad"), 500, None, "other", "internal error"),
    "core root": (core.TelemeterError("x"), 500, None, "other", "internal error"),
}


def _raising(exc: core.TelemeterError) -> FastAPI:
    app = FastAPI()
    errors.install_handlers(app)

    @app.get("/")
    async def fail() -> None:
        raise exc

    return app


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(TABLE))
async def test_error_table(case: str) -> None:
    exc, status, retry_after, reject_reason, reason = TABLE[case]
    error = errors.http_error(exc)
    assert (error.status, error.reject_reason, error.reason) == (status, reject_reason, reason)
    assert error.retry_after == (None if retry_after is None else int(retry_after))
    transport = httpx.ASGITransport(app=_raising(exc))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.get("/")
    assert answer.status_code == status
    assert answer.headers.get("retry-after") == retry_after
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text == reason + "\n"


def test_every_answered_error_is_in_the_table() -> None:
    answered = {type(row[0]) for row in TABLE.values()}
    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    assert {c for c in classes if issubclass(c, errors.HTTPError)} - answered == {errors.HTTPError}
