"""Abuse with tokens and paths, against a running server: forged and misused upload tokens are
401 (or 400/403) and change nothing stored; no internal endpoint answers on the external listener.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from redis.cluster import RedisCluster

from app.tokens import AUDIENCES, ISSUER, LABELS_CLAIM, TokenIssuer, load_signing_key
from app.tokens import generate_signing_key as other_key
from dev.launch import ServerHandle
from tests.support import (
    authorize,
    encode_upload,
    new_id,
    post_upload,
    stored,
    valid_families,
)

pytestmark = pytest.mark.integration


# ---- forged and misused tokens ----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(cluster_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": list(AUDIENCES),
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "sub": "attacker",
        LABELS_CLAIM: {"labels": {"_id": cluster_id}},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if secret is None else hmac.digest(secret, signing_input.encode(), "sha256")
    return f"{signing_input}.{_b64(signature)}"


def forged_token(attack: str, cluster_id: str, key_path: Path) -> str:
    """A token for ``cluster_id`` made by one of the attacks the verifier must refuse."""
    key = load_signing_key(key_path.read_bytes())
    signed = key.private_key
    if attack == "alg none":
        return _unsigned({"alg": "none", "typ": "JWT"}, _claims(cluster_id), None)
    if attack == "HS256 with the public key as secret":
        public_pem = key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return _unsigned({"alg": "HS256", "typ": "JWT"}, _claims(cluster_id), public_pem)
    if attack == "expired":
        issued = time.time() - 86400 - 3600  # past the 60 s leeway
        return TokenIssuer(key).issue(account_id="a", labels={"_id": cluster_id}, now=issued)
    if attack == "not yet valid":
        issued = time.time() + 3600
        return TokenIssuer(key).issue(account_id="a", labels={"_id": cluster_id}, now=issued)
    if attack == "signed by another key":
        return TokenIssuer(other_key()).issue(account_id="a", labels={"_id": cluster_id})
    if attack == "unknown key id":  # signed by the server's own key, but naming another
        return pyjwt.encode(
            _claims(cluster_id), signed, algorithm="ES256", headers={"kid": "no-such-key"}
        )
    overrides: dict[str, dict[str, Any]] = {
        "wrong issuer": {"iss": "evil.example"},
        "wrong audience": {"aud": ["someone-else"]},
        "no audience": {"aud": None},
        "no expiry": {"exp": None},
        "no cluster label": {LABELS_CLAIM: {"labels": {"other": cluster_id}}},
        "cluster label breaking the hash tag": {LABELS_CLAIM: {"labels": {"_id": "a}{b"}}},
        "labels not strings": {LABELS_CLAIM: {"labels": {"_id": 7}}},
    }
    return pyjwt.encode(
        _claims(cluster_id, **overrides[attack]), signed, algorithm="ES256", headers={"kid": ""}
    )


ATTACKS = [
    "alg none",
    "HS256 with the public key as secret",
    "expired",
    "not yet valid",
    "wrong issuer",
    "wrong audience",
    "no audience",
    "no expiry",
    "signed by another key",
    "unknown key id",
    "no cluster label",
    "cluster label breaking the hash tag",
    "labels not strings",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_forged_token_is_401(
    attack: str, open_server: ServerHandle, rclient: RedisCluster, signing_key: Path
) -> None:
    cluster_id = new_id("jwt")
    real = authorize(open_server, cluster_id)
    assert (
        post_upload(open_server, real, encode_upload(valid_families(cluster_id))).status_code == 200
    )
    before = stored(rclient, cluster_id)
    token = forged_token(attack, cluster_id, signing_key)
    answer = post_upload(open_server, token, encode_upload(valid_families(cluster_id)))
    assert answer.status_code == 401, (answer.status_code, answer.text)
    assert stored(rclient, cluster_id) == before


def test_token_of_one_cluster_cannot_write_another(
    open_server: ServerHandle, rclient: RedisCluster
) -> None:
    a, b = new_id("tenant-a"), new_id("tenant-b")
    jwt_a, jwt_b = authorize(open_server, a), authorize(open_server, b)
    for cid, token in ((a, jwt_a), (b, jwt_b)):
        assert (
            post_upload(open_server, token, encode_upload(valid_families(cid))).status_code == 200
        )
    before = {cid: stored(rclient, cid) for cid in (a, b)}
    answer = post_upload(
        open_server, jwt_a, encode_upload(valid_families(b))
    )  # _id="B" with A's token
    assert answer.status_code in (400, 403), (answer.status_code, answer.text)
    assert {cid: stored(rclient, cid) for cid in (a, b)} == before


# ---- the external listener serves no internal endpoint ------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/federate", "/federate/", "//federate", "/./federate", "/%66ederate", "/FEDERATE",
        "/federate?match[]=up", "/metrics", "/metrics/", "/debug/ring", "/debug/pprof/",
        "/debug/vars", "/internal/federate", "/docs", "/openapi.json",
    ],
)  # fmt: skip
def test_internal_endpoints_are_not_on_the_external_listener(
    path: str, open_server: ServerHandle
) -> None:
    for method in ("GET", "POST"):
        answer = httpx.request(method, open_server.external + path, timeout=10)
        assert answer.status_code in (404, 405), (method, path, answer.status_code)
        assert "# TYPE" not in answer.text and "http_requests_total" not in answer.text
    assert httpx.get(open_server.internal + "/metrics").status_code == 200
