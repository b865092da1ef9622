"""Every error the server answers, and the one place where errors become HTTP answers.

Each class carries its answer: ``status``, ``retry_after`` (seconds for ``Retry-After``, or None)
and ``reject_reason``, the ``reason`` label of ``telemeter_upload_rejects_total`` when it refuses
an upload; ``reason`` is the text answered. Answering reads these attributes.

    TelemeterError (telemeter.errors)
    └── HTTPError ................. 500  other         any other error: "internal error"
        ├── BadRequest ............ 400  bad_request   /authorize without a valid cluster id
        │   └── BadPayload ........ 400  invalid       core InvalidPayload: bad data, a bad metric
        ├── PayloadTooLarge ....... 413  too_large     core TooLarge, or a body past its limit
        ├── Unauthorized .......... 401  unauthorized  /authorize without a Bearer token
        │   └── InvalidToken ...... 401  unauthorized  no, bad or expired upload JWT
        ├── RequestTimeout ........ 408  timeout       the body did not arrive in time
        ├── UnsupportedMediaType .. 415  unsupported_media_type
        ├── RateLimited ........... 429  rate_limited  + its Retry-After
        ├── Overloaded ............ 503  overloaded    + Retry-After: 1 (all upload slots taken)
        ├── StoreUnavailable ...... 503  store_unavailable  + Retry-After: 5 (Redis failing)
        │   └── QueueFull ......... 503  queue_full    + Retry-After: 5 (remote-write queue full)
        ├── AuthorizationDenied ... the upstream 4xx   (429: + Retry-After: 300)
        └── AuthorizationUnavailable  500              upstream 5xx or unreachable; no detail leaks

The pure core cannot import this module: its errors (``InvalidPayload``, ``TooLarge``) are
translated once, by `http_error`, where an error is answered. Errors that are never answered
(``CorruptSnapshot``, ``InvalidSelector``) are not here. Answers are plain text with the reason, as
the Go server's ``http.Error`` writes them. Nothing is ever answered 200 unless the snapshot was
stored (docs/architecture.md, D9).
"""

from __future__ import annotations

import logging
from typing import ClassVar, Final

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from telemeter import errors as core
from telemeter.errors import TelemeterError

log = logging.getLogger(__name__)


class HTTPError(TelemeterError):
    """Root of the errors the server answers; the message is the reason answered."""

    status: int = 500
    retry_after: int | None = None
    reject_reason: ClassVar[str] = "other"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after

    @property
    def reason(self) -> str:
        """The text of the answer."""
        return str(self)


class BadRequest(HTTPError):
    status = 400
    reject_reason = "bad_request"


class BadPayload(BadRequest):
    reject_reason = "invalid"


class PayloadTooLarge(HTTPError):
    status = 413
    reject_reason = "too_large"


class Unauthorized(HTTPError):
    status = 401
    reject_reason = "unauthorized"


class InvalidToken(Unauthorized):
    """The bearer token is not a valid upload token (the message says why)."""

    @property
    def reason(self) -> str:
        return f"unauthorized: {self}"


class RequestTimeout(HTTPError):
    status = 408
    reject_reason = "timeout"


class UnsupportedMediaType(HTTPError):
    status = 415
    reject_reason = "unsupported_media_type"


class RateLimited(HTTPError):
    status = 429
    reject_reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)


class Overloaded(HTTPError):
    status = 503
    retry_after = 1
    reject_reason = "overloaded"


class StoreUnavailable(HTTPError):
    """Redis could not be reached or answered with an error (the message stays in our log)."""

    status = 503
    retry_after = 5
    reject_reason = "store_unavailable"

    @property
    def reason(self) -> str:
        return "store unavailable, retry later"


class QueueFull(StoreUnavailable):
    """The range's remote-write queue is at --forward-queue-limit: back-pressure (D13)."""

    reject_reason = "queue_full"

    @property
    def reason(self) -> str:
        return "the remote-write queue is full, retry later"


class AuthorizationDenied(HTTPError):
    """The upstream service refused the token (a 4xx): answered with the same status."""

    def __init__(self, status: int, retry_after: int | None = None) -> None:
        super().__init__(
            f"authorization denied (upstream status {status})", retry_after=retry_after
        )
        self.status = status


class AuthorizationUnavailable(HTTPError):
    """The upstream service failed or answered nonsense; the details are only in our log."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"authorization service unavailable (request id {request_id})")
        self.request_id = request_id


# The core's errors, translated here and nowhere else (a subclass maps as its nearest base).
_CORE: Final[dict[type[TelemeterError], type[HTTPError]]] = {
    core.InvalidPayload: BadPayload,
    core.TooLarge: PayloadTooLarge,
}


def http_error(exc: TelemeterError) -> HTTPError:
    """The answered form of an error: ours as it is, the core's translated, any other a 500."""
    if isinstance(exc, HTTPError):
        return exc
    for kind in type(exc).__mro__:
        if kind in _CORE:
            return _CORE[kind](str(exc))
    log.error("unmapped error type=%s error=%s", type(exc).__name__, exc)
    return HTTPError("internal error")


def to_response(exc: TelemeterError) -> Response:
    """The HTTP answer of an error of ours: plain text with the reason."""
    error = http_error(exc)
    retry_after = error.retry_after
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return PlainTextResponse(error.reason + "\n", status_code=error.status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Answer every error of ours, in one place."""

    async def handle(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, TelemeterError)
        return to_response(exc)

    app.add_exception_handler(TelemeterError, handle)
