"""The /authorize answer and the upload-token cache."""

from __future__ import annotations

import json

import pytest

from client.errors import AuthorizeError
from client.tokens import TokenCache, UploadToken, parse_token_response


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _body(**fields: object) -> bytes:
    return json.dumps({"version": 1, "token": "jwt", "labels": {"_id": "c"}, **fields}).encode()


def test_token_expires_15_seconds_early() -> None:
    token = parse_token_response(_body(expiresInSeconds=86400), now=100.0)
    assert token.value == "jwt"
    assert token.labels == {"_id": "c"}
    assert token.expires_at == 100.0 + 86400 - 15
    assert "jwt" not in repr(token)


def test_short_or_missing_lifetimes() -> None:
    assert parse_token_response(_body(expiresInSeconds=10), now=5.0).expires_at == 5.0
    assert parse_token_response(_body(), now=5.0).expires_at is None
    assert parse_token_response(_body(expiresInSeconds=0), now=5.0).expires_at is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"token": ""}).encode(),
        json.dumps({"token": "x", "labels": {"_id": 1}}).encode(),
        json.dumps({"token": "x", "labels": []}).encode(),
        b" " * (16 * 1024 + 1),
    ],
)
def test_unusable_answers(body: bytes) -> None:
    with pytest.raises(AuthorizeError):
        parse_token_response(body, now=0.0)


def test_cache_expiry_source_and_invalidation() -> None:
    clock = FakeClock()
    cache = TokenCache(clock=clock)
    assert cache.get("long") is None
    cache.put("long", UploadToken(labels={}, expires_at=clock.now + 60, value="jwt-1"))
    assert cache.get("long") is not None
    assert cache.get("rotated-long-lived-token") is None
    clock.now += 59.9
    assert cache.get("long") is not None
    clock.now += 0.1
    assert cache.get("long") is None
    cache.put("long", UploadToken(labels={}, expires_at=None, value="jwt-2"))
    cache.invalidate("jwt-1")  # an older token: no effect
    assert cache.get("long") is not None
    cache.invalidate("jwt-2")
    assert cache.get("long") is None
