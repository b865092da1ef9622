"""Errors of the server and the one place where errors become HTTP answers.

    TelemeterError (telemeter.errors)
    ├── InvalidPayload ............ 400   (core: bad data, a bad metric)
    │   └── TooLarge .............. 413   (core: a size or count limit)
    ├── InvalidToken .............. 401   (tokens: no, bad or expired JWT)
    ├── AuthorizationDenied ....... its upstream status (401/403/404/409/429/4xx)
    ├── AuthorizationUnavailable .. 500   (upstream 5xx or unreachable; no detail leaks)
    ├── StoreUnavailable .......... 503 + Retry-After (Redis unreachable or failing)
    └── HTTPProblem ............... its own status (400/401/408/415/429/503 of the routes)

Answers are plain text with the reason, as the Go server's ``http.Error`` writes them. Nothing is
ever answered 200 unless the snapshot was stored (docs/architecture.md, D9).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from app.authorizer import AuthorizationDenied, AuthorizationUnavailable
from app.store import StoreUnavailable
from app.tokens import InvalidToken
from telemeter.errors import InvalidPayload, TelemeterError, TooLarge

log = logging.getLogger(__name__)

STORE_RETRY_AFTER_S = 5


class HTTPProblem(TelemeterError):
    """A request the routes refuse with a given status, reason and optional Retry-After."""

    def __init__(self, status: int, reason: str, *, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def problem(exc: TelemeterError) -> tuple[int, str, int | None]:
    """The status, reason and Retry-After seconds (or None) of an error of ours."""
    if isinstance(exc, HTTPProblem):
        return exc.status, exc.reason, exc.retry_after
    if isinstance(exc, TooLarge):
        return 413, str(exc), None
    if isinstance(exc, InvalidPayload):
        return 400, str(exc), None
    if isinstance(exc, InvalidToken):
        return 401, f"unauthorized: {exc}", None
    if isinstance(exc, AuthorizationDenied):
        return exc.status_code, str(exc), exc.retry_after
    if isinstance(exc, AuthorizationUnavailable):
        return 500, str(exc), None
    if isinstance(exc, StoreUnavailable):
        return 503, "store unavailable, retry later", STORE_RETRY_AFTER_S
    log.error("unmapped error type=%s error=%s", type(exc).__name__, exc)
    return 500, "internal error", None


def to_response(exc: TelemeterError) -> Response:
    """The HTTP answer of an error of ours: plain text with the reason."""
    status, reason, retry_after = problem(exc)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return PlainTextResponse(reason + "\n", status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Map every error of ours to its status code, in one place."""

    async def handle(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, TelemeterError)
        return to_response(exc)

    app.add_exception_handler(TelemeterError, handle)
