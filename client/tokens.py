"""The upload token: the ``/authorize`` answer, parsed and cached (docs/protocol.md section 2).

The server answers ``{"version":1,"token":"<JWT>","expiresInSeconds":86400,"labels":{...}}``.
The token is reused until 15 s before it expires and dropped on any 401 from ``/upload``; its
labels are added to every pushed metric. This module does no I/O: the forwarder makes the call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from client.errors import AuthorizeError

__all__ = ["EXPIRY_MARGIN_SECONDS", "MAX_RESPONSE_BYTES", "TokenCache", "UploadToken"]

logger = logging.getLogger(__name__)

EXPIRY_MARGIN_SECONDS = 15.0
# Go reads at most 16 KiB of the answer.
MAX_RESPONSE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class UploadToken:
    """A token for ``/upload``; ``expires_at`` is on the cache's clock, None for "never"."""

    labels: Mapping[str, str]
    expires_at: float | None
    value: str = field(repr=False)


def parse_token_response(body: bytes, *, now: float) -> UploadToken:
    """Parse an ``/authorize`` answer body; raise AuthorizeError when it is unusable.

    The token is considered expired ``EXPIRY_MARGIN_SECONDS`` before ``expiresInSeconds`` (so a
    lifetime of 15 s or less makes it single-use); a missing or non-positive lifetime means no
    expiry, as in Go (the token is then kept until a 401).
    """
    if len(body) > MAX_RESPONSE_BYTES:
        raise AuthorizeError(f"authorize answer is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise AuthorizeError(f"authorize answer is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise AuthorizeError("authorize answer is not a JSON object")
    token = document.get("token")
    if not isinstance(token, str) or not token:
        raise AuthorizeError("authorize answer has no token")
    labels = document.get("labels")
    if labels is None:
        labels = {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise AuthorizeError("authorize answer has malformed labels")
    lifetime = document.get("expiresInSeconds")
    expires_at: float | None = None
    if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0:
        expires_at = now + max(float(lifetime) - EXPIRY_MARGIN_SECONDS, 0.0)
    return UploadToken(labels=dict(labels), expires_at=expires_at, value=token)


class TokenCache:
    """The current upload token, tied to the long-lived token it was exchanged for."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._token: UploadToken | None = None
        self._source = ""

    def now(self) -> float:
        """The cache's clock (monotonic seconds unless a test injects another)."""
        return self._clock()

    def get(self, long_lived: str) -> UploadToken | None:
        """The cached token if it was issued for ``long_lived`` and has not expired."""
        token = self._token
        if token is None or self._source != long_lived:
            return None
        if token.expires_at is not None and self._clock() >= token.expires_at:
            return None
        return token

    def put(self, long_lived: str, token: UploadToken) -> None:
        """Remember a fresh token."""
        self._token = token
        self._source = long_lived

    def invalidate(self, value: str) -> None:
        """Drop the token if it is still ``value`` (a 401 from ``/upload`` proved it stale)."""
        if self._token is not None and self._token.value == value:
            logger.info("upload token dropped reason=unauthorized")
            self._token = None
