"""The server's settings: the Go telemeter-server's flags, environment variables and secret files.

Precedence: a command-line flag, then the environment variable ``TELEMETER_<NAME>`` (for example
``TELEMETER_REDIS_URL``; lists as JSON), then the default. The result is one validated, frozen
object built at start-up and passed in (docs/architecture.md, "Conventions").
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict

from telemeter.addresses import parse_redis_url
from telemeter.durations import parse_duration
from telemeter.errors import InvalidSelector
from telemeter.flags import flag_name, with_default
from telemeter.selectors import Whitelist
from telemeter.transforms import parse_label_pairs

log = logging.getLogger(__name__)

KIB = 1024


def default_name() -> str:
    """The ring member id: the host name plus a random suffix (so restarts are new members)."""
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


# The fields given as Go durations ("4m30s"); on the command line they stay text until validated.
DURATIONS = (
    "authorize_cache_ttl", "ratelimit", "ttl", "upload_timeout", "redis_timeout", "ring_heartbeat",
    "ring_lease", "forward_max_age", "forward_timeout", "forward_interval", "forward_backoff_max",
    "lingering_close_timeout",
)  # fmt: skip
# Fields set only through the environment (a password on a command line is visible to all).
ENV_ONLY = frozenset({"redis_password"})


class ServerSettings(BaseSettings):
    """Every setting of `telemeter-server` (durations in seconds)."""

    model_config = SettingsConfigDict(env_prefix="TELEMETER_", frozen=True, extra="forbid")

    listen: str = Field(default="0.0.0.0:9003", description="external listener address")
    listen_internal: str = Field(
        default="localhost:9004", description="internal listener address for /federate"
    )
    name: str = Field(
        default_factory=default_name,
        description="this pod's ring member id (default: host name plus a random suffix)",
    )
    shared_key: Path | None = Field(
        default=None, description="PEM private key signing tokens, shared by all replicas"
    )
    verify_key: list[Path] = Field(
        default=[],
        description="PEM public or private key whose tokens are still accepted (key rotation)",
    )
    token_expire_seconds: int = Field(default=86400, gt=0, description="lifetime of issued tokens")
    authorize: str | None = Field(
        default=None,
        description="URL of the upstream authorization service (unset: accept any token)",
    )
    authorize_cache_ttl: float = Field(
        default=600.0, description="how long a positive authorization is cached"
    )
    auth_failure_limit: int = Field(
        default=10, ge=1, description="rejected token exchanges per cluster per minute"
    )
    partition_label: str = Field(default="_id", description="label carrying the cluster id")
    label: list[str] = Field(default=[], description="key=value label added to every stored metric")
    required_label: list[str] = Field(
        default=[], description="key=value label every metric must carry"
    )
    whitelist: list[str] = Field(
        default=[], description="selector of metrics to keep (none: keep none)"
    )
    whitelist_file: Path | None = Field(
        default=None, description="file of whitelist selectors, one per line"
    )
    elide_label: list[str] = Field(default=[], description="label removed from every stored metric")
    limit_bytes: int = Field(default=500 * KIB, gt=0, description="maximum upload body size")
    limit_uncompressed_bytes: int | None = Field(
        default=None, gt=0, description="maximum decompressed upload size (unset: --limit-bytes)"
    )
    limit_receive_bytes: int = Field(
        default=128 * KIB, gt=0, description="maximum remote-write body size"
    )
    limit_receive_uncompressed_bytes: int = Field(
        default=4 * KIB * KIB, gt=0, description="maximum inflated remote-write size"
    )
    limit_receive_requests: int = Field(
        default=120, gt=0, description="remote-write requests per cluster per minute"
    )
    limit_series: int = Field(
        default=10_000, gt=0, description="maximum families and metrics per upload"
    )
    limit_labels: int = Field(default=64, gt=0, description="maximum labels per metric")
    limit_label_length: int = Field(
        default=255, gt=0, description="maximum bytes of a name or label value"
    )
    ratelimit: float = Field(
        default=270.0, description="minimum time between uploads of one cluster"
    )
    ttl: float = Field(default=600.0, description="how long a snapshot is served after its upload")
    upload_timeout: float = Field(
        default=30.0, description="time allowed to receive an upload body"
    )
    lingering_close_bytes: int = Field(
        default=8 * KIB * KIB, ge=0, description="bytes drained after an early answer (0: off)"
    )
    lingering_close_timeout: float = Field(
        default=5.0, ge=0, description="time draining after an early answer (0: off)"
    )
    max_concurrent_uploads: int = Field(default=64, gt=0, description="uploads decoded at once")
    tls_crt: Path | None = Field(default=None, description="certificate of the external listener")
    tls_key: Path | None = Field(default=None, description="key of the external listener")
    internal_tls_crt: Path | None = Field(
        default=None, description="certificate of the internal listener"
    )
    internal_tls_key: Path | None = Field(default=None, description="key of the internal listener")
    internal_tls_client_ca: Path | None = Field(
        default=None,
        description="CA bundle: the internal listener then requires a client certificate it signed",
    )
    forward_url: str | None = Field(
        default=None, description="remote-write URL every accepted upload is forwarded to"
    )
    forward_max_age: float = Field(
        default=3600.0, description="forwarded entries older than this are dropped"
    )
    forward_queue_limit: int = Field(
        default=1000, gt=0, description="queued uploads per ring range"
    )
    forward_batch_entries: int = Field(default=64, gt=0, description="queued uploads per request")
    forward_batch_bytes: int = Field(
        default=4 * KIB * KIB, gt=0, description="uncompressed bytes per request"
    )
    forward_timeout: float = Field(default=10.0, description="timeout of one remote-write request")
    forward_interval: float = Field(default=1.0, description="how often an idle queue is looked at")
    forward_backoff_max: float = Field(default=30.0, description="longest wait between retries")
    forward_concurrency: int = Field(
        default=4, gt=0, description="requests in flight to the receiver"
    )
    forward_ca_file: Path | None = Field(
        default=None, description="CA bundle the remote-write receiver is checked with"
    )
    forward_client_crt: Path | None = Field(
        default=None, description="client certificate for the receiver"
    )
    forward_client_key: Path | None = Field(default=None, description="key of --forward-client-crt")
    tenant_id: str | None = Field(
        default=None, description="tenant of every forwarded request (unset: the cluster id)"
    )
    tenant_header: str = Field(
        default="THANOS-TENANT",
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="header carrying the tenant",
    )
    oidc_issuer: str | None = Field(
        default=None, description="OIDC issuer of the receiver's OAuth2 client credentials"
    )
    oidc_audience: str | None = Field(
        default=None, description="audience asked for with the client credentials"
    )
    client_id: str | None = Field(default=None, description="OAuth2 client id for the receiver")
    client_secret: SecretStr | None = Field(
        default=None, description="OAuth2 client secret (better: --client-secret-file)"
    )
    client_secret_file: Path | None = Field(
        default=None, description="file holding the OAuth2 client secret"
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379", description="Redis Cluster startup nodes, comma separated"
    )
    redis_password: SecretStr | None = Field(
        default=None, description="the Redis password (TELEMETER_REDIS_PASSWORD only: no flag)"
    )
    redis_password_file: Path | None = Field(
        default=None, description="file holding the Redis password"
    )
    redis_username: str | None = Field(
        default=None, description="Redis ACL user (unset: the default user)"
    )
    redis_ca_file: Path | None = Field(
        default=None, description="CA bundle the Redis nodes are checked with (rediss://)"
    )
    redis_client_crt: Path | None = Field(
        default=None, description="client certificate for Redis (rediss://)"
    )
    redis_client_key: Path | None = Field(default=None, description="key of --redis-client-crt")
    redis_timeout: float = Field(default=2.0, description="Redis connect and command timeout")
    ring_heartbeat: float = Field(default=2.0, description="ring heartbeat period")
    ring_lease: float = Field(default=10.0, description="ring lease duration")
    ring_namespace: str = Field(
        default="telemeter-ring",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
        description="ring name: pods with the same one share the slots",
    )
    verbose: int = Field(default=0, description="more logging (repeat for more)")

    @field_validator(*DURATIONS, mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("label", "required_label")
    @classmethod
    def _pairs(cls, value: list[str]) -> list[str]:
        parse_label_pairs(value)  # raises ValueError with the offending flag
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.ttl <= 0:
            raise ValueError("--ttl must be positive")
        if self.ring_lease < 2 * self.ring_heartbeat:
            raise ValueError("--ring-lease must be at least twice --ring-heartbeat")
        if (self.tls_crt is None) != (self.tls_key is None):
            raise ValueError("--tls-crt and --tls-key must be given together")
        if (self.internal_tls_crt is None) != (self.internal_tls_key is None):
            raise ValueError("--internal-tls-crt and --internal-tls-key must be given together")
        if self.internal_tls_client_ca is not None and self.internal_tls_crt is None:
            raise ValueError(
                "--internal-tls-client-ca needs --internal-tls-crt and --internal-tls-key "
                "(client certificates are checked only on a TLS listener)"
            )
        if self.forward_url and not self.forward_url.startswith(("http://", "https://")):
            raise ValueError("--forward-url must be an http:// or https:// URL")
        if (self.forward_client_crt is None) != (self.forward_client_key is None):
            raise ValueError("--forward-client-crt and --forward-client-key must be given together")
        if (self.redis_client_crt is None) != (self.redis_client_key is None):
            raise ValueError("--redis-client-crt and --redis-client-key must be given together")
        tls = parse_redis_url(self.redis_url).tls  # a bad URL is refused here, at start-up
        if not tls and (self.redis_ca_file or self.redis_client_crt):
            raise ValueError("--redis-ca-file and --redis-client-crt need a rediss:// --redis-url")
        if self.oidc_issuer and not self.client_id:
            raise ValueError("--oidc-issuer needs --client-id (and a client secret)")
        try:
            Whitelist.from_strings(self.whitelist_rules())  # fail at start-up on a bad selector
        except InvalidSelector as exc:
            raise ValueError(str(exc)) from exc
        return self

    def whitelist_rules(self) -> list[str]:
        """The ``--whitelist`` selectors plus those of ``--whitelist-file`` (one per line)."""
        rules = list(self.whitelist)
        if self.whitelist_file is not None:
            lines = self.whitelist_file.read_text().splitlines()
            rules += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return rules

    @property
    def uncompressed_limit(self) -> int:
        """The decompressed-size limit of an upload (``--limit-bytes`` unless set on its own)."""
        return self.limit_uncompressed_bytes or self.limit_bytes

    def oidc_secret(self) -> str | None:
        """The OAuth2 client secret, from ``--client-secret-file`` or ``--client-secret``."""
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text().strip()
        return self.client_secret.get_secret_value() if self.client_secret else None

    def redis_secret(self) -> str | None:
        """The Redis password, from ``--redis-password-file`` or ``TELEMETER_REDIS_PASSWORD``."""
        if self.redis_password_file is not None:
            return self.redis_password_file.read_text().strip()
        return self.redis_password.get_secret_value() if self.redis_password else None


def build_parser() -> argparse.ArgumentParser:
    """The command line of `telemeter-server`, generated from :class:`ServerSettings`.

    A flag a field (``--`` plus the name with ``-`` for ``_``), with the Go server's names;
    unset flags are left out of the result so the environment and the defaults apply.
    """
    p = argparse.ArgumentParser(
        prog="telemeter-server",
        description="Receive federated metrics pushes from clusters and serve them to Prometheus. "
        "Every flag may also be set as the environment variable TELEMETER_<NAME> "
        "(for example TELEMETER_REDIS_URL; lists as JSON).",
        argument_default=argparse.SUPPRESS,
    )
    for name, info in ServerSettings.model_fields.items():
        if name in ENV_ONLY:
            continue
        flag = flag_name(name)
        default = None if info.default is PydanticUndefined else info.default
        help_text = with_default(info.description or "", default, duration=name in DURATIONS)
        if name == "verbose":
            p.add_argument("-v", flag, action="count", help=help_text)
            continue
        if get_origin(info.annotation) is list:
            p.add_argument(flag, action="append", help=help_text)
            continue
        types = [t for t in get_args(info.annotation) or (info.annotation,) if t is not type(None)]
        if types[0] in (int, Path):
            p.add_argument(flag, type=types[0], help=help_text)
        else:  # text, secrets and durations: the model's validators parse them
            p.add_argument(flag, help=help_text)
    return p


def parse_settings(argv: Sequence[str] | None = None) -> ServerSettings:
    """Settings from the command line and the environment; exits with a message when invalid."""
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    try:
        return ServerSettings(**flags)
    except ValueError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")  # parser.error exits


def env_summary() -> dict[str, str]:
    """The TELEMETER_* variables set (names only: values may be secrets)."""
    return {k: "set" for k in os.environ if k.startswith("TELEMETER_")}
