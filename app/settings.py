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
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from telemeter.durations import parse_duration
from telemeter.errors import InvalidSelector
from telemeter.selectors import Whitelist
from telemeter.transforms import parse_label_pairs

log = logging.getLogger(__name__)

KIB = 1024


def default_name() -> str:
    """The ring member id: the host name plus a random suffix (so restarts are new members)."""
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


class ServerSettings(BaseSettings):
    """Every setting of `telemeter-server` (durations in seconds)."""

    model_config = SettingsConfigDict(env_prefix="TELEMETER_", frozen=True, extra="forbid")

    listen: str = "0.0.0.0:9003"
    listen_internal: str = "localhost:9004"
    name: str = Field(default_factory=default_name)
    shared_key: Path | None = None
    token_expire_seconds: int = Field(default=86400, gt=0)
    authorize: str | None = None
    authorize_cache_ttl: float = 600.0
    auth_failure_limit: int = Field(default=10, ge=1)
    partition_label: str = "_id"
    label: list[str] = []
    required_label: list[str] = []
    whitelist: list[str] = []
    whitelist_file: Path | None = None
    elide_label: list[str] = []
    limit_bytes: int = Field(default=500 * KIB, gt=0)
    limit_uncompressed_bytes: int | None = Field(default=None, gt=0)
    limit_receive_bytes: int = Field(default=128 * KIB, gt=0)
    limit_receive_uncompressed_bytes: int = Field(default=4 * KIB * KIB, gt=0)
    limit_receive_requests: int = Field(default=120, gt=0)
    limit_series: int = Field(default=10_000, gt=0)
    limit_labels: int = Field(default=64, gt=0)
    limit_label_length: int = Field(default=255, gt=0)
    ratelimit: float = 270.0
    ttl: float = 600.0
    upload_timeout: float = 30.0
    lingering_close_bytes: int = Field(default=8 * KIB * KIB, ge=0)
    lingering_close_timeout: float = Field(default=5.0, ge=0)
    max_concurrent_uploads: int = Field(default=64, gt=0)
    tls_crt: Path | None = None
    tls_key: Path | None = None
    internal_tls_crt: Path | None = None
    internal_tls_key: Path | None = None
    forward_url: str | None = None
    forward_max_age: float = 3600.0
    forward_queue_limit: int = Field(default=1000, gt=0)
    forward_batch_entries: int = Field(default=64, gt=0)
    forward_batch_bytes: int = Field(default=4 * KIB * KIB, gt=0)
    forward_timeout: float = 10.0
    forward_interval: float = 1.0
    forward_backoff_max: float = 30.0
    forward_ca_file: Path | None = None
    forward_client_crt: Path | None = None
    forward_client_key: Path | None = None
    tenant_id: str | None = None
    tenant_header: str = Field(default="THANOS-TENANT", pattern=r"^[A-Za-z0-9-]{1,64}$")
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    redis_url: str = "redis://127.0.0.1:6379"
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    redis_timeout: float = 2.0
    ring_heartbeat: float = 2.0
    ring_lease: float = 10.0
    ring_namespace: str = Field(
        default="telemeter-ring", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
    )
    verbose: int = 0

    @field_validator(
        "authorize_cache_ttl", "ratelimit", "ttl", "upload_timeout", "redis_timeout",
        "ring_heartbeat", "ring_lease", "forward_max_age", "forward_timeout", "forward_interval",
        "forward_backoff_max", "lingering_close_timeout", mode="before",
    )  # fmt: skip
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
        if self.forward_url and not self.forward_url.startswith(("http://", "https://")):
            raise ValueError("--forward-url must be an http:// or https:// URL")
        if (self.forward_client_crt is None) != (self.forward_client_key is None):
            raise ValueError("--forward-client-crt and --forward-client-key must be given together")
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
    """The command line of `telemeter-server`, with the Go server's flag names."""
    p = argparse.ArgumentParser(
        prog="telemeter-server",
        description="Receive federated metrics pushes from clusters and serve them to Prometheus.",
        argument_default=argparse.SUPPRESS,
    )
    add = p.add_argument
    add("--listen", help="external listener address (default 0.0.0.0:9003)")
    add(
        "--listen-internal", help="internal listener address for /federate (default localhost:9004)"
    )
    add("--name", help="this pod's ring member id (default: host name plus a random suffix)")
    add("--shared-key", type=Path, help="PEM private key signing tokens, shared by all replicas")
    add("--token-expire-seconds", type=int, help="lifetime of issued tokens (default 86400)")
    add("--authorize", help="URL of the upstream authorization service (unset: accept any token)")
    add("--authorize-cache-ttl", help="how long a positive authorization is cached (default 10m)")
    add("--auth-failure-limit", type=int, help="rejected token exchanges per cluster per minute")
    add("--partition-label", help="label carrying the cluster id (default _id)")
    add("--label", action="append", help="key=value label added to every stored metric")
    add("--required-label", action="append", help="key=value label every metric must carry")
    add("--whitelist", action="append", help="selector of metrics to keep (none: keep none)")
    add("--whitelist-file", type=Path, help="file of whitelist selectors, one per line")
    add("--elide-label", action="append", help="label removed from every stored metric")
    add("--limit-bytes", type=int, help="maximum upload body size (default 512000)")
    add("--limit-uncompressed-bytes", type=int, help="maximum decompressed upload size")
    add("--limit-receive-bytes", type=int, help="maximum remote-write body size (default 131072)")
    add("--limit-receive-uncompressed-bytes", type=int, help="maximum inflated remote-write size")
    add("--limit-receive-requests", type=int, help="remote-write requests per cluster per minute")
    add("--limit-series", type=int, help="maximum families and metrics per upload (default 10000)")
    add("--limit-labels", type=int, help="maximum labels per metric (default 64)")
    add("--limit-label-length", type=int, help="maximum bytes of a name or label value (255)")
    add("--ratelimit", help="minimum time between uploads of one cluster (default 4m30s)")
    add("--ttl", help="how long a snapshot is served after its upload (default 10m)")
    add("--upload-timeout", help="time allowed to receive an upload body (default 30s)")
    add("--lingering-close-bytes", type=int, help="bytes drained after an early answer (8 MiB)")
    add("--lingering-close-timeout", help="time draining after an early answer (5s)")
    add("--max-concurrent-uploads", type=int, help="uploads decoded at once (default 64)")
    add("--tls-crt", type=Path, help="certificate of the external listener")
    add("--tls-key", type=Path, help="key of the external listener")
    add("--internal-tls-crt", type=Path, help="certificate of the internal listener")
    add("--internal-tls-key", type=Path, help="key of the internal listener")
    add("--forward-url", help="remote-write URL every accepted upload is forwarded to")
    add("--forward-max-age", help="forwarded entries older than this are dropped (default 1h)")
    add("--forward-queue-limit", type=int, help="queued uploads per ring range (default 1000)")
    add("--forward-batch-entries", type=int, help="queued uploads per request (default 64)")
    add("--forward-batch-bytes", type=int, help="uncompressed bytes per request (default 4 MiB)")
    add("--forward-timeout", help="timeout of one remote-write request (default 10s)")
    add("--forward-interval", help="how often an idle queue is looked at (default 1s)")
    add("--forward-backoff-max", help="longest wait between retries (default 30s)")
    add("--forward-ca-file", type=Path, help="CA bundle the remote-write receiver is checked with")
    add("--forward-client-crt", type=Path, help="client certificate for the receiver")
    add("--forward-client-key", type=Path, help="key of --forward-client-crt")
    add("--tenant-id", help="tenant of every forwarded request (unset: the cluster id)")
    add("--tenant-header", help="header carrying the tenant (default THANOS-TENANT)")
    add("--oidc-issuer", help="OIDC issuer of the receiver's OAuth2 client credentials")
    add("--oidc-audience", help="audience asked for with the client credentials")
    add("--client-id", help="OAuth2 client id for the receiver")
    add("--client-secret", help="OAuth2 client secret (better: --client-secret-file)")
    add("--client-secret-file", type=Path, help="file holding the OAuth2 client secret")
    add("--redis-url", help="Redis Cluster startup nodes, comma separated (TELEMETER_REDIS_URL)")
    add("--redis-password-file", type=Path, help="file holding the Redis password")
    add("--redis-timeout", help="Redis connect and command timeout (default 2s)")
    add("--ring-heartbeat", help="ring heartbeat period (default 2s)")
    add("--ring-lease", help="ring lease duration (default 10s)")
    add(
        "--ring-namespace",
        help="ring name: pods with the same one share the slots (default telemeter-ring)",
    )
    add("-v", "--verbose", action="count", help="more logging")
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
