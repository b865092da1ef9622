"""The client of the upstream authorization service ("tollbooth") behind ``POST /authorize``.

It turns a cluster's long-lived token into an account id (the JWT ``sub``). docs/protocol.md
section 2 fixes the exchange and how its answers map to ours:

    200/201, JSON, non-empty account_id  -> the account id
    401, 403, 404, 409, any other 4xx    -> AuthorizationDenied(status_code)
                                            (429: with retry_after=300)
    5xx, bad JSON, empty account_id,
    other codes, network errors          -> AuthorizationUnavailable (the server answers 500)

Both errors are in `app.errors`. httpx errors are translated here and nowhere else; the details
of a failure are logged here with a request id, and never answered.
"""

from __future__ import annotations

import abc
import json
import logging
import uuid
from typing import Final

import httpx

from app.errors import AuthorizationDenied, AuthorizationUnavailable

__all__ = [
    "Authorizer",
    "HttpAuthorizer",
    "StubAuthorizer",
    "stable_account_id",
]

logger = logging.getLogger(__name__)

# docs/protocol.md: a 429 from upstream becomes our 429 with "Retry-After: 300".
TOO_MANY_REQUESTS_RETRY_AFTER_SECONDS: Final = 300
# The upstream answer is a small JSON object; cap what we keep in a log line.
_MAX_LOGGED_DETAIL_CHARS: Final = 256

_FNV64_OFFSET: Final = 0xCBF29CE484222325
_FNV64_PRIME: Final = 0x100000001B3
_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


def stable_account_id(cluster_id: str) -> str:
    """Return the account id the Go stand-in and stub derive from a cluster id.

    FNV-1a 64-bit of the UTF-8 bytes, written in base 32 with Go's ``strconv`` digits
    (``0-9a-v``); for ``cluster-a`` it is ``3ludi27ck5rj``, the ``sub`` of the recorded token.
    """
    value = _FNV64_OFFSET
    for byte in cluster_id.encode():
        value = ((value ^ byte) * _FNV64_PRIME) & 0xFFFFFFFFFFFFFFFF
    digits = []
    while True:
        value, digit = divmod(value, 32)
        digits.append(_DIGITS[digit])
        if value == 0:
            return "".join(reversed(digits))


class Authorizer(abc.ABC):
    """Maps a (cluster id, long-lived token) pair to an account id, or raises."""

    @abc.abstractmethod
    async def authorize(self, *, cluster_id: str, token: str) -> str:
        """Return the account id, or raise AuthorizationDenied / AuthorizationUnavailable."""


class StubAuthorizer(Authorizer):
    """Accepts any token, like the Go server without ``--authorize`` (for tests and demos only)."""

    async def authorize(self, *, cluster_id: str, token: str) -> str:
        """Return the stable account id of ``cluster_id`` whatever the token is."""
        return stable_account_id(cluster_id)


class HttpAuthorizer(Authorizer):
    """Asks the upstream authorization service over HTTP (``--authorize URL``)."""

    def __init__(self, url: str, *, client: httpx.AsyncClient, timeout: float = 10.0) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the authorization URL must be an absolute http(s) URL: {url!r}")
        self._url = parsed
        # Never log credentials or query secrets that may sit in the configured URL.
        self._logged_url = str(parsed.copy_with(username=None, password=None, query=None))
        self._client = client
        self._timeout = timeout

    async def authorize(self, *, cluster_id: str, token: str) -> str:
        """POST the registration request and map the answer (see the module docstring)."""
        request_id = uuid.uuid4().hex[:16]
        body = json.dumps(
            {"cluster_id": cluster_id, "authorization_token": token, "account_id": ""}
        ).encode()
        try:
            response = await self._client.post(
                self._url,
                content=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            detail = f"request failed: {type(exc).__name__}: {exc}"
            raise self._unavailable(request_id, detail) from None

        status = response.status_code
        if 400 <= status < 500:
            logger.info(
                "upstream authorization denied request_id=%s cluster_id=%s status=%d",
                request_id,
                cluster_id,
                status,
            )
            retry_after = TOO_MANY_REQUESTS_RETRY_AFTER_SECONDS if status == 429 else None
            raise AuthorizationDenied(status, retry_after)
        if status not in (200, 201):
            raise self._unavailable(
                request_id, f"unexpected status {status}: {_detail(response.text)}"
            )
        content_type = response.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise self._unavailable(request_id, f"unexpected content type {content_type!r}")
        try:
            answer = json.loads(response.content)
        except ValueError:
            raise self._unavailable(
                request_id, f"unparsable body: {_detail(response.text)}"
            ) from None
        account_id = answer.get("account_id") if isinstance(answer, dict) else None
        if not isinstance(account_id, str) or not account_id:
            raise self._unavailable(request_id, f"no account_id in {_detail(response.text)}")
        return account_id

    def _unavailable(self, request_id: str, detail: str) -> AuthorizationUnavailable:
        """Log what went wrong upstream; return the detail-free error to raise to the caller."""
        logger.warning(
            "upstream authorization failed request_id=%s url=%s detail=%s",
            request_id,
            self._logged_url,
            detail,
        )
        return AuthorizationUnavailable(request_id)


def _detail(text: str) -> str:
    """Shorten an upstream body for a log line."""
    return repr(text[:_MAX_LOGGED_DETAIL_CHARS])
