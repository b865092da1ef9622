"""Tests of app.tokens: Go JWT layout, verification, attacks and the cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from app.errors import InvalidToken
from app.runtime import Runtime
from app.settings import ServerSettings
from app.tokens import (
    Claims,
    SigningKey,
    TokenIssuer,
    TokenVerifier,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
    thumbprint,
)

TESTDATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata").resolve()
NOW = 1_800_000_000.0


def _testdata(relative: str) -> Path:
    path = TESTDATA / relative
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture(scope="module")
def upstream_key() -> SigningKey:
    return load_signing_key(_testdata("upstream/test.key").read_bytes())


@pytest.fixture(scope="module")
def recorded_token() -> str:
    response = json.loads(_testdata("wire/authorize-response.json").read_text())
    token: str = response["token"]
    return token


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_signing_key()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    return header, payload


def _payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "aud": ["federate"],
        "exp": int(NOW) + 3600,
        "iat": int(NOW),
        "iss": "telemeter.selfsigned",
        "nbf": int(NOW),
        "sub": "account-1",
        "telemeter.openshift.io": {"labels": {"_id": "cluster-a"}},
    }
    payload.update(overrides)
    return {name: value for name, value in payload.items() if value is not None}


def _sign(key: SigningKey, payload: dict[str, Any]) -> str:
    return jwt.encode(
        payload, key.private_key, algorithm=key.algorithm, headers={"kid": "", "typ": None}
    )


def _verifier(key: SigningKey, **kwargs: Any) -> TokenVerifier:
    return TokenVerifier([key], clock=FakeClock(NOW), **kwargs)


# --- the recorded Go token and our layout ---------------------------------------------------


def test_recorded_go_token_verifies(upstream_key: SigningKey, recorded_token: str) -> None:
    claims = TokenVerifier([upstream_key]).verify(recorded_token, verify_exp=False)
    assert claims.subject == "3ludi27ck5rj"
    assert dict(claims.labels) == {"_id": "cluster-a"}
    assert claims.expires_at == 1795673278


def test_recorded_go_token_verifies_with_the_public_key_only(
    upstream_key: SigningKey, recorded_token: str
) -> None:
    claims = TokenVerifier([upstream_key.public_key]).verify(recorded_token, verify_exp=False)
    assert claims.subject == "3ludi27ck5rj"


def test_issued_token_has_the_go_layout(upstream_key: SigningKey, recorded_token: str) -> None:
    token = TokenIssuer(upstream_key).issue(
        account_id="3ludi27ck5rj", labels={"_id": "cluster-a"}, now=NOW
    )
    header, payload = _unverified_parts(token)
    go_header, go_payload = _unverified_parts(recorded_token)
    # Same algorithm; our kid names the signing key, where Go writes "" (both verify here).
    assert go_header == {"alg": "ES256", "kid": ""}
    assert header == {"alg": "ES256", "kid": thumbprint(upstream_key)}
    assert payload.keys() == go_payload.keys()
    assert payload["iss"] == go_payload["iss"] == "telemeter.selfsigned"
    # Both audiences, so the 2019 Go server ("federate") and newer ones accept it.
    assert payload["aud"] == ["federate", "telemeter-client"]
    assert payload["sub"] == go_payload["sub"]
    assert payload["telemeter.openshift.io"] == go_payload["telemeter.openshift.io"]
    assert payload["iat"] == payload["nbf"] == int(NOW)
    assert payload["exp"] == int(NOW) + 86400
    assert go_payload["exp"] - go_payload["iat"] == 86400


def test_issue_then_verify_round_trip(key: SigningKey) -> None:
    token = TokenIssuer(key, expire_seconds=600).issue(
        account_id="acct", labels={"_id": "c1", "extra": "x"}, now=NOW
    )
    claims = _verifier(key).verify(token)
    assert claims == Claims(
        subject="acct", labels={"_id": "c1", "extra": "x"}, expires_at=NOW + 600
    )


def test_claims_labels_are_read_only(key: SigningKey) -> None:
    token = TokenIssuer(key).issue(account_id="acct", labels={"_id": "c1"}, now=NOW)
    claims = _verifier(key).verify(token)
    with pytest.raises(TypeError):
        claims.labels["_id"] = "other"  # type: ignore[index]


# --- key loading ------------------------------------------------------------------------------


def _pem(private_key: Any) -> bytes:
    pem: bytes = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


@pytest.mark.parametrize(
    ("curve", "algorithm"),
    [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384"), (ec.SECP521R1(), "ES512")],
)
def test_ec_key_algorithm(curve: ec.EllipticCurve, algorithm: str) -> None:
    key = load_signing_key(_pem(ec.generate_private_key(curve)))
    assert key.algorithm == algorithm
    token = TokenIssuer(key).issue(account_id="a", labels={"_id": "c"}, now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert _verifier(key).verify(token).subject == "a"


def test_rsa_key_algorithm() -> None:
    key = load_signing_key(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    assert key.algorithm == "RS256"
    token = TokenIssuer(key).issue(account_id="a", labels={"_id": "c"}, now=NOW)
    assert _verifier(key).verify(token).subject == "a"


def test_upstream_key_is_es256(upstream_key: SigningKey) -> None:
    assert upstream_key.algorithm == "ES256"


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param(_pem(ed25519.Ed25519PrivateKey.generate()), id="ed25519"),
        pytest.param(_pem(ec.generate_private_key(ec.SECP256K1())), id="secp256k1"),
        pytest.param(b"not a pem", id="garbage"),
    ],
)
def test_unsupported_keys_are_refused(pem: bytes) -> None:
    with pytest.raises(ValueError, match=r"key|curve"):
        load_signing_key(pem)


def test_generated_key_is_p256() -> None:
    key = generate_signing_key()
    assert key.algorithm == "ES256"
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    assert key.private_key.curve.name == "secp256r1"


# --- attacks and invalid claims -------------------------------------------------------------


def test_alg_none_is_rejected(key: SigningKey) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{header}.{_b64(json.dumps(_payload()).encode())}."
    with pytest.raises(InvalidToken, match="algorithm"):
        _verifier(key).verify(token)


def test_hs256_with_the_public_key_as_secret_is_rejected(upstream_key: SigningKey) -> None:
    # The classic key-confusion attack: HMAC keyed with the server's public PEM.
    public_pem = upstream_key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        f"{_b64(json.dumps({'alg': 'HS256', 'kid': ''}).encode())}."
        f"{_b64(json.dumps(_payload()).encode())}"
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{_b64(signature)}"
    with pytest.raises(InvalidToken, match="algorithm"):
        _verifier(upstream_key).verify(token)


def test_expired_token_is_rejected(key: SigningKey) -> None:
    token = _sign(key, _payload(exp=int(NOW) - 61))
    with pytest.raises(InvalidToken, match="expired"):
        _verifier(key).verify(token)
    # ... unless expiry checking is off (as for the recorded token).
    assert _verifier(key).verify(token, verify_exp=False).subject == "account-1"


def test_expiry_has_60_seconds_leeway(key: SigningKey) -> None:
    token = _sign(key, _payload(exp=int(NOW) - 59))
    assert _verifier(key).verify(token).subject == "account-1"


def test_not_yet_valid_token_is_rejected(key: SigningKey) -> None:
    token = _sign(key, _payload(nbf=int(NOW) + 61))
    with pytest.raises(InvalidToken, match="not yet valid"):
        _verifier(key).verify(token)
    assert _verifier(key).verify(_sign(key, _payload(nbf=int(NOW) + 59))).subject == "account-1"


def test_wrong_issuer_is_rejected(key: SigningKey) -> None:
    with pytest.raises(InvalidToken, match="issuer"):
        _verifier(key).verify(_sign(key, _payload(iss="someone.else")))


def test_missing_issuer_is_rejected(key: SigningKey) -> None:
    with pytest.raises(InvalidToken, match="iss"):
        _verifier(key).verify(_sign(key, _payload(iss=None)))


@pytest.mark.parametrize("audience", [["other"], "other", []])
def test_wrong_audience_is_rejected(key: SigningKey, audience: Any) -> None:
    with pytest.raises(InvalidToken, match=r"(?i)aud"):
        _verifier(key).verify(_sign(key, _payload(aud=audience)))


@pytest.mark.parametrize("audience", [["federate"], "telemeter-client", ["x", "telemeter-client"]])
def test_either_audience_is_accepted(key: SigningKey, audience: Any) -> None:
    assert _verifier(key).verify(_sign(key, _payload(aud=audience))).subject == "account-1"


def test_token_of_another_key_is_rejected(key: SigningKey) -> None:
    other = generate_signing_key()
    with pytest.raises(InvalidToken, match="signature"):
        _verifier(key).verify(_sign(other, _payload()))


def test_any_configured_key_verifies(key: SigningKey) -> None:
    other = generate_signing_key()
    verifier = TokenVerifier([other, key.public_key], clock=FakeClock(NOW))
    assert verifier.verify(_sign(key, _payload())).subject == "account-1"
    assert verifier.verify(_sign(other, _payload(sub="b"))).subject == "b"


def test_tampered_payload_is_rejected(key: SigningKey) -> None:
    header, _, signature = _sign(key, _payload()).split(".")
    forged = _b64(json.dumps(_payload(sub="someone-else")).encode())
    with pytest.raises(InvalidToken, match="signature"):
        _verifier(key).verify(f"{header}.{forged}.{signature}")


@pytest.mark.parametrize(
    "private_claim",
    [
        None,
        {},
        {"labels": ["_id", "c"]},
        {"labels": {"_id": 1}},
        "labels",
    ],
)
def test_bad_labels_claim_is_rejected(key: SigningKey, private_claim: Any) -> None:
    payload = _payload()
    del payload["telemeter.openshift.io"]
    if private_claim is not None:
        payload["telemeter.openshift.io"] = private_claim
    with pytest.raises(InvalidToken, match="labels"):
        _verifier(key).verify(_sign(key, payload))


@pytest.mark.parametrize("subject", ["", 7])
def test_bad_subject_is_rejected(key: SigningKey, subject: Any) -> None:
    with pytest.raises(InvalidToken, match=r"(?i)sub"):
        _verifier(key).verify(_sign(key, _payload(sub=subject)))


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c", "x" * 10000])
def test_malformed_tokens_are_rejected(key: SigningKey, token: str) -> None:
    with pytest.raises(InvalidToken):
        _verifier(key).verify(token)


# --- the cache ------------------------------------------------------------------------------


def test_cache_does_not_accept_an_expired_token(key: SigningKey) -> None:
    clock = FakeClock(NOW)
    verifier = TokenVerifier([key], clock=clock)
    token = TokenIssuer(key, expire_seconds=100).issue(account_id="a", labels={"_id": "c"}, now=NOW)
    first = verifier.verify(token)
    clock.now = NOW + 100 + 59  # within the leeway: still served from the cache
    assert verifier.verify(token) is first
    clock.now = NOW + 100 + 61
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)


def test_cache_hit_returns_the_cached_claims(key: SigningKey) -> None:
    verifier = _verifier(key)
    token = _sign(key, _payload())
    assert verifier.verify(token) is verifier.verify(token)


def test_cache_is_bounded(key: SigningKey) -> None:
    verifier = _verifier(key, cache_size=1)
    token_a = _sign(key, _payload(sub="a"))
    token_b = _sign(key, _payload(sub="b"))
    claims_a = verifier.verify(token_a)
    verifier.verify(token_b)  # evicts a
    again = verifier.verify(token_a)
    assert again == claims_a
    assert again is not claims_a


def test_failures_are_not_cached(key: SigningKey) -> None:
    clock = FakeClock(NOW)
    verifier = TokenVerifier([key], clock=clock)
    token = _sign(key, _payload(nbf=int(NOW) + 120))
    with pytest.raises(InvalidToken, match="not yet valid"):
        verifier.verify(token)
    clock.now = NOW + 120
    assert verifier.verify(token).subject == "account-1"


def test_verifier_needs_a_key() -> None:
    with pytest.raises(ValueError, match="key"):
        TokenVerifier([])


# --- key ids and rotation (docs/operations.md, "Rotating the signing key") ---------------------


def _b64int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


# The RSA key of RFC 7638 section 3.1 and its thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
    "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
    "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_matches_the_rfc7638_example() -> None:
    key = rsa.RSAPublicNumbers(_b64int("AQAB"), _b64int(RFC7638_N)).public_key()
    assert thumbprint(key) == RFC7638_THUMBPRINT


def test_ec_thumbprint_is_over_the_canonical_members(key: SigningKey) -> None:
    assert isinstance(key.public_key, ec.EllipticCurvePublicKey)
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key))
    canonical = f'{{"crv":"{jwk["crv"]}","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
    assert thumbprint(key) == _b64(hashlib.sha256(canonical.encode()).digest())
    assert thumbprint(key) == thumbprint(key.public_key) != thumbprint(generate_signing_key())


def test_issued_token_carries_the_signing_key_thumbprint(key: SigningKey) -> None:
    token = TokenIssuer(key).issue(account_id="a", labels={"_id": "c"}, now=NOW)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": thumbprint(key)}


def _public_pem(key: SigningKey) -> bytes:
    return key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_verify_key_loads_from_a_public_or_a_private_pem() -> None:
    ec_key = generate_signing_key()
    rsa_key = load_signing_key(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    for signing in (ec_key, rsa_key):
        for pem in (_public_pem(signing), _pem(signing.private_key)):
            assert thumbprint(load_verify_key(pem)) == thumbprint(signing)


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param(
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            id="ed25519-public",
        ),
        pytest.param(_pem(ec.generate_private_key(ec.SECP256K1())), id="secp256k1"),
        pytest.param(b"not a pem", id="garbage"),
    ],
)
def test_unsupported_verify_keys_are_refused(pem: bytes) -> None:
    with pytest.raises(ValueError, match=r"key|curve"):
        load_verify_key(pem)


def _sign_kid(key: SigningKey, kid: str | None, **claims: Any) -> str:
    headers: dict[str, Any] = {"typ": None} if kid is None else {"kid": kid, "typ": None}
    return jwt.encode(_payload(**claims), key.private_key, algorithm=key.algorithm, headers=headers)


def test_token_of_a_verify_key_is_accepted() -> None:
    old, new = generate_signing_key(), generate_signing_key()
    token = TokenIssuer(old).issue(account_id="a", labels={"_id": "c"}, now=NOW)
    verifier = TokenVerifier([new, load_verify_key(_public_pem(old))], clock=FakeClock(NOW))
    assert verifier.verify(token).subject == "a"
    fresh = TokenIssuer(new).issue(account_id="b", labels={"_id": "c"}, now=NOW)
    assert verifier.verify(fresh).subject == "b"


@pytest.mark.parametrize("kid", ["", None])
def test_empty_or_missing_kid_is_tried_against_every_key(kid: str | None) -> None:
    keys = [generate_signing_key() for _ in range(3)]
    verifier = TokenVerifier(keys, clock=FakeClock(NOW))
    for n, signing in enumerate(keys):
        assert verifier.verify(_sign_kid(signing, kid, sub=f"s{n}")).subject == f"s{n}"


def test_kid_selects_one_key_only() -> None:
    first, second = generate_signing_key(), generate_signing_key()
    verifier = TokenVerifier([first, second], clock=FakeClock(NOW))
    # Signed by second but naming first: checked against first only, so refused.
    with pytest.raises(InvalidToken, match="signature"):
        verifier.verify(_sign_kid(second, thumbprint(first)))
    assert verifier.verify(_sign_kid(second, thumbprint(second))).subject == "account-1"


@pytest.mark.parametrize("kid", ["unknown", RFC7638_THUMBPRINT, 7, ["x"]])
def test_unknown_kid_is_refused(key: SigningKey, kid: Any) -> None:
    # Signed by hand: pyjwt will not write a kid that is not a string.
    header = _b64(json.dumps({"alg": "ES256", "kid": kid}).encode())
    signing_input = f"{header}.{_b64(json.dumps(_payload()).encode())}"
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    algorithm = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256)
    signature = algorithm.sign(signing_input.encode(), key.private_key)
    # pyjwt reads a kid that is not a string as malformed; a string one is unknown here.
    with pytest.raises(InvalidToken, match="key id" if isinstance(kid, str) else "malformed"):
        _verifier(key).verify(f"{signing_input}.{_b64(signature)}")


def test_token_of_a_removed_key_is_refused() -> None:
    old, new = generate_signing_key(), generate_signing_key()
    token = TokenIssuer(old).issue(account_id="a", labels={"_id": "c"}, now=NOW)
    assert TokenVerifier([new, old.public_key], clock=FakeClock(NOW)).verify(token).subject == "a"
    after = TokenVerifier([new], clock=FakeClock(NOW))  # the old key removed: a restart
    with pytest.raises(InvalidToken, match="key id"):
        after.verify(token)
    with pytest.raises(InvalidToken, match="signature"):
        after.verify(_sign_kid(old, ""))  # the Go layout: tried against new, which fails


def test_runtime_signs_with_shared_key_and_accepts_verify_keys(tmp_path: Path) -> None:
    old, new = generate_signing_key(), generate_signing_key()
    (tmp_path / "new.pem").write_bytes(_pem(new.private_key))
    (tmp_path / "old.pub.pem").write_bytes(_public_pem(old))
    settings = ServerSettings(
        name="t", shared_key=tmp_path / "new.pem", verify_key=[tmp_path / "old.pub.pem"]
    )
    rt = Runtime(settings)  # builds, opens nothing
    assert rt.issuer.kid == thumbprint(new)
    old_token = TokenIssuer(old).issue(account_id="a", labels={"_id": "c"})
    assert rt.verifier.verify(old_token).subject == "a"
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=f"--verify-key {missing}"):
        Runtime(settings.model_copy(update={"verify_key": [missing]}))
