"""The upload token: a JWT the server issues at ``/authorize`` and checks at ``/upload``.

The layout matches the Go telemeter-server (docs/protocol.md section 2, "The JWT"): a compact JWS
whose algorithm follows the signing key (EC P-256 -> ES256, P-384 -> ES384, P-521 -> ES512,
RSA -> RS256), issuer ``telemeter.selfsigned``, the account id as ``sub`` and the cluster's labels
in the private claim ``telemeter.openshift.io``. The header is ``{"alg": .., "kid": ..}`` with the
signing key's RFC 7638 thumbprint as ``kid`` (the Go server writes ``""``), so a server holding
several keys during a rotation (``--verify-key``, docs/operations.md) checks each token against the
key that signed it; a token with an empty or no ``kid`` is tried against every key.

Verification accepts only the algorithms of the configured keys, so ``alg: none`` and an HMAC
made with the public key as its secret are refused before any signature check. Verified tokens
are kept in a bounded LRU so the upload hot path skips the ES256 verification (about 0.15 ms,
docs/architecture.md); a cached token still fails once it expires.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app.errors import InvalidToken

__all__ = [
    "AUDIENCES",
    "ISSUER",
    "LABELS_CLAIM",
    "Claims",
    "PublicKey",
    "SigningKey",
    "TokenIssuer",
    "TokenVerifier",
    "generate_signing_key",
    "load_signing_key",
    "load_verify_key",
    "thumbprint",
]

ISSUER: Final = "telemeter.selfsigned"
# The 2019 Go server wrote and expected "federate"; newer ones use "telemeter-client". We write both
# so tokens we issue pass either, and accept a token naming either one.
AUDIENCES: Final = ("federate", "telemeter-client")
LABELS_CLAIM: Final = "telemeter.openshift.io"

# A real token is ~450 bytes; refusing huge ones keeps base64/JSON decoding and the cache cheap.
_MAX_TOKEN_CHARS: Final = 8192

_EC_ALGORITHMS: Final[Mapping[str, str]] = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
}

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class SigningKey:
    """A private key with the JWS algorithm it implies and its public half."""

    private_key: PrivateKey
    algorithm: str
    public_key: PublicKey


@dataclass(frozen=True)
class Claims:
    """What a verified token says: the account (``sub``), the cluster's labels and the expiry."""

    subject: str
    labels: Mapping[str, str]
    expires_at: float


def _algorithm_for(key: PrivateKey | PublicKey) -> str:
    """Return the JWS algorithm the Go server derives from this key type, or raise ValueError."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(
                f"unsupported elliptic curve {key.curve.name!r}: use P-256, P-384 or P-521"
            )
        return algorithm
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    raise ValueError(f"unsupported key type {type(key).__name__}: use an EC or RSA key")


def thumbprint(key: SigningKey | PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of a key: base64url (no padding) of the SHA-256 of the
    public JWK's required members in lexicographic order, without whitespace."""
    public_key = key.public_key if isinstance(key, SigningKey) else key
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk: Any = ECAlgorithm.to_jwk(public_key, as_dict=True)
        members: tuple[str, ...] = ("crv", "kty", "x", "y")
    else:
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
        members = ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_verify_key(pem: bytes) -> PublicKey:
    """Load a PEM public or private key (``--verify-key``); return its public half.

    Raises ValueError as :func:`load_signing_key` does for what is not an EC or RSA key.
    """
    if b"PRIVATE KEY-----" in pem:
        return load_signing_key(pem).public_key
    try:
        public_key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"cannot load the verify key: not a PEM public or private key ({exc})"
        ) from exc
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError(
            f"unsupported verify key type {type(public_key).__name__}: use an EC or RSA key"
        )
    _algorithm_for(public_key)  # refuses other curves
    return public_key


def load_signing_key(pem: bytes) -> SigningKey:
    """Load an unencrypted PEM private key (``--shared-key``) and pick its JWS algorithm.

    Raises ValueError when the PEM does not hold a private key or holds one of another type
    (Ed25519, DSA, an EC key on a curve other than P-256/P-384/P-521).
    """
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"cannot load the signing key: not an unencrypted PEM private key ({exc})"
        ) from exc
    if not isinstance(private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(
            f"unsupported signing key type {type(private_key).__name__}: use an EC or RSA key"
        )
    algorithm = _algorithm_for(private_key)
    return SigningKey(
        private_key=private_key, algorithm=algorithm, public_key=private_key.public_key()
    )


def generate_signing_key() -> SigningKey:
    """Generate a fresh EC P-256 (ES256) signing key, e.g. for a single replica or tests."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(
        private_key=private_key, algorithm="ES256", public_key=private_key.public_key()
    )


class TokenIssuer:
    """Issues upload tokens signed with one key."""

    def __init__(self, key: SigningKey, *, expire_seconds: int = 86400) -> None:
        if expire_seconds <= 0:
            raise ValueError("expire_seconds must be positive")
        self._key = key
        self.kid = thumbprint(key)
        self.expire_seconds = expire_seconds

    def issue(self, *, account_id: str, labels: Mapping[str, str], now: float | None = None) -> str:
        """Return a compact JWS for ``account_id`` carrying ``labels`` (``{"_id": cluster}``)."""
        issued_at = int(time.time() if now is None else now)
        payload: dict[str, Any] = {
            "aud": list(AUDIENCES),
            "exp": issued_at + self.expire_seconds,
            "iat": issued_at,
            "iss": ISSUER,
            "nbf": issued_at,
            "sub": account_id,
            LABELS_CLAIM: {"labels": dict(labels)},
        }
        # "typ": None drops PyJWT's default "typ" header: the Go server writes only alg and kid.
        return jwt.encode(
            payload,
            self._key.private_key,
            algorithm=self._key.algorithm,
            headers={"kid": self.kid, "typ": None},
        )


class TokenVerifier:
    """Verifies upload tokens against one or more keys, with an LRU of verified tokens.

    A token whose ``kid`` is the thumbprint of a configured key is checked against that key only;
    one with ``kid: ""`` or none (the Go server's) against every key; any other ``kid`` is refused.
    """

    def __init__(
        self,
        keys: Sequence[SigningKey | PublicKey],
        *,
        leeway_seconds: int = 60,
        cache_size: int = 10000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("at least one verification key is required")
        self._keys: list[tuple[str, PublicKey]] = []
        self._by_kid: dict[str, tuple[str, PublicKey]] = {}
        for key in keys:
            public_key = key.public_key if isinstance(key, SigningKey) else key
            entry = (_algorithm_for(public_key), public_key)
            kid = thumbprint(public_key)
            if kid not in self._by_kid:  # the same key given twice is tried once
                self._by_kid[kid] = entry
                self._keys.append(entry)
        self._algorithms = {algorithm for algorithm, _ in self._keys}
        self._leeway = leeway_seconds
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        # The server is async, but a verifier may be shared with worker threads.
        self._lock = threading.Lock()

    def verify(self, token: str, *, verify_exp: bool = True) -> Claims:
        """Return the claims of a valid token, or raise InvalidToken with the reason."""
        now = self._clock()
        cached = self._cached(token)
        if cached is not None:
            if verify_exp and now > cached.expires_at + self._leeway:
                self._forget(token)
                raise InvalidToken("token has expired")
            return cached
        if len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken("token is too long")
        payload = self._decode(token)
        claims = self._claims(payload, now=now, verify_exp=verify_exp)
        # Only tokens that passed the expiry check are worth keeping; the hit path re-checks it.
        if verify_exp:
            self._remember(token, claims)
        return claims

    def _decode(self, token: str) -> dict[str, Any]:
        """Check the signature, ``iss`` and ``aud``; return the payload."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise InvalidToken(f"algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        if kid is None or kid == "":
            candidates = self._keys
        elif isinstance(kid, str) and kid in self._by_kid:
            candidates = [self._by_kid[kid]]
        else:
            raise InvalidToken(f"unknown key id {str(kid)[:64]!r}")
        for key_algorithm, public_key in candidates:
            if key_algorithm != algorithm:
                continue
            try:
                payload: dict[str, Any] = jwt.decode(
                    token,
                    public_key,
                    algorithms=[key_algorithm],
                    audience=list(AUDIENCES),
                    issuer=ISSUER,
                    # exp and nbf are checked below against our clock (so the cache and the
                    # first check agree); Go ignores iat, so do we.
                    options={
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "require": ["exp", "iss", "aud", "sub"],
                    },
                )
            except jwt.InvalidSignatureError:
                continue  # maybe signed by another configured key
            except jwt.PyJWTError as exc:
                raise InvalidToken(str(exc)) from None
            return payload
        raise InvalidToken("signature verification failed")

    def _claims(self, payload: Mapping[str, Any], *, now: float, verify_exp: bool) -> Claims:
        """Check the time window and the claim types; build Claims."""
        expires_at = payload["exp"]
        if not _is_number(expires_at):
            raise InvalidToken("exp is not a number")
        not_before = payload.get("nbf")
        if not_before is not None and not _is_number(not_before):
            raise InvalidToken("nbf is not a number")
        if verify_exp and now > expires_at + self._leeway:
            raise InvalidToken("token has expired")
        if not_before is not None and now < not_before - self._leeway:
            raise InvalidToken("token is not yet valid")
        subject = payload["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("sub is not a non-empty string")
        private = payload.get(LABELS_CLAIM)
        labels = private.get("labels") if isinstance(private, dict) else None
        if not isinstance(labels, dict) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in labels.items()
        ):
            raise InvalidToken(f"{LABELS_CLAIM} labels is not a map of strings")
        # A read-only view: cached Claims are shared between requests.
        return Claims(
            subject=subject, labels=MappingProxyType(dict(labels)), expires_at=float(expires_at)
        )

    def _cached(self, token: str) -> Claims | None:
        with self._lock:
            claims = self._cache.get(token)
            if claims is not None:
                self._cache.move_to_end(token)
            return claims

    def _remember(self, token: str, claims: Claims) -> None:
        if self._cache_size <= 0:
            return
        with self._lock:
            self._cache[token] = claims
            self._cache.move_to_end(token)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _forget(self, token: str) -> None:
        with self._lock:
            self._cache.pop(token, None)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
