"""The server's flags: Go names, Go durations, environment variables, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from app.settings import DURATIONS, ServerSettings, build_parser, parse_settings
from telemeter.durations import format_duration


def test_defaults_match_the_go_server() -> None:
    s = parse_settings([])
    assert (s.listen, s.listen_internal) == ("0.0.0.0:9003", "localhost:9004")
    assert s.limit_bytes == 500 * 1024 and s.uncompressed_limit == 500 * 1024
    assert (s.ratelimit, s.ttl, s.token_expire_seconds) == (270.0, 600.0, 86400)
    assert s.partition_label == "_id" and s.whitelist == []


def test_go_flags_and_durations() -> None:
    s = parse_settings(
        [
            "--ratelimit=4m30s", "--ttl", "1h", "--whitelist", "up", "--whitelist", '{job="x"}',
            "--label", "region=eu", "--elide-label", "replica", "--limit-bytes=1024", "-v",
        ]
    )  # fmt: skip
    assert s.ratelimit == 270 and s.ttl == 3600 and s.whitelist_rules() == ["up", '{job="x"}']
    assert s.label == ["region=eu"] and s.elide_label == ["replica"] and s.limit_bytes == 1024
    assert s.verbose == 1


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETER_REDIS_URL", "redis://10.0.0.1:7000")
    monkeypatch.setenv("TELEMETER_TTL", "5m")
    s = ServerSettings()
    assert s.redis_url == "redis://10.0.0.1:7000" and s.ttl == 300
    assert parse_settings(["--ttl", "2m"]).ttl == 120  # a flag beats the environment


@pytest.mark.parametrize(
    "argv",
    [
        ["--ttl", "5"],
        ["--whitelist", "{bad"],
        ["--label", "novalue"],
        ["--tls-crt", "a.pem"],
        ["--internal-tls-client-ca", "ca.pem"],
        ["--internal-tls-client-ca", "ca.pem", "--tls-crt", "a.pem", "--tls-key", "a.key"],
        ["--forward-url", "ftp://x"],
        ["--forward-client-crt", "c.pem"],
        ["--oidc-issuer", "http://issuer"],
        ["--ring-heartbeat", "10s", "--ring-lease", "5s"],
        ["--limit-bytes", "0"],
        ["--redis-url", "rediss://h:1", "--redis-client-crt", "c.pem"],
        ["--redis-url", "redis://h:1", "--redis-ca-file", "ca.pem"],
        ["--redis-url", "redis://user:pw@h:1"],
    ],
)
def test_inconsistent_flags_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(argv)
    assert "error" in capsys.readouterr().err


# The flags of the hand-written parser the generated one replaced (the Go server's names).
FORMER_FLAGS = {
    "--listen", "--listen-internal", "--name", "--shared-key", "--verify-key",
    "--token-expire-seconds",
    "--authorize", "--authorize-cache-ttl", "--auth-failure-limit", "--partition-label", "--label",
    "--required-label", "--whitelist", "--whitelist-file", "--elide-label", "--limit-bytes",
    "--limit-uncompressed-bytes", "--limit-receive-bytes", "--limit-receive-uncompressed-bytes",
    "--limit-receive-requests", "--limit-series", "--limit-labels", "--limit-label-length",
    "--ratelimit", "--ttl", "--upload-timeout", "--lingering-close-bytes",
    "--lingering-close-timeout", "--max-concurrent-uploads", "--tls-crt",
    "--tls-key", "--internal-tls-crt", "--internal-tls-key", "--forward-url", "--forward-max-age",
    "--forward-queue-limit", "--forward-batch-entries", "--forward-batch-bytes",
    "--forward-timeout", "--forward-interval", "--forward-backoff-max", "--forward-concurrency",
    "--forward-ca-file", "--forward-client-crt", "--forward-client-key", "--tenant-id",
    "--tenant-header",
    "--oidc-issuer", "--oidc-audience", "--client-id", "--client-secret", "--client-secret-file",
    "--redis-url", "--redis-password-file", "--redis-timeout", "--ring-heartbeat", "--ring-lease",
    "--ring-namespace", "-v", "--verbose",
}  # fmt: skip
# Flags added since, each on purpose (docs/operations.md says what they do).
ADDED_FLAGS = {
    "--internal-tls-client-ca",
    "--redis-username", "--redis-ca-file", "--redis-client-crt", "--redis-client-key",
}  # fmt: skip


def test_redis_tls_and_acl_flags() -> None:
    s = parse_settings(
        [
            "--redis-url", "rediss://10.0.0.1:7000", "--redis-username", "telemeter",
            "--redis-ca-file", "ca.pem", "--redis-client-crt", "c.pem", "--redis-client-key", "k",
        ]
    )  # fmt: skip
    assert (s.redis_username, s.redis_ca_file) == ("telemeter", Path("ca.pem"))
    assert (s.redis_client_crt, s.redis_client_key) == (Path("c.pem"), Path("k"))


def test_the_flags_are_exactly_the_former_ones_plus_the_added_ones() -> None:
    flags = {s for a in build_parser()._actions for s in a.option_strings} - {"-h", "--help"}
    # No --redis-password: a secret stays out of the process list.
    assert flags == FORMER_FLAGS | ADDED_FLAGS


def test_verify_key_is_repeatable(monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse_settings(["--verify-key", "old.pem", "--verify-key", "older.pem"])
    assert s.verify_key == [Path("old.pem"), Path("older.pem")] and s.shared_key is None
    assert parse_settings([]).verify_key == []
    monkeypatch.setenv("TELEMETER_VERIFY_KEY", '["/keys/a.pem"]')
    assert parse_settings([]).verify_key == [Path("/keys/a.pem")]


def test_help_shows_every_flag_with_its_help_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping (argparse breaks lines at hyphens)
    text = " ".join(build_parser().format_help().split())
    for action in build_parser()._actions:
        assert action.help and all(s in text for s in action.option_strings)
        name = action.dest
        if name == "help":
            continue
        info = ServerSettings.model_fields[name]
        assert info.description and action.help.startswith(info.description)
        assert info.description in text
        if info.default not in (None, [], PydanticUndefined):
            shown = format_duration(info.default) if name in DURATIONS else str(info.default)
            assert action.help.endswith(f"(default {shown})"), name
            assert action.help in text
    assert (
        "--ratelimit RATELIMIT minimum time between uploads of one cluster (default 4m30s)" in text
    )
    assert "--limit-bytes LIMIT_BYTES maximum upload body size (default 512000)" in text


def test_flag_types_follow_the_model() -> None:
    s = parse_settings(["-vv", "--label", "a=b", "--label", "c=d", "--shared-key", "k.pem"])
    assert s.verbose == 2 and s.label == ["a=b", "c=d"] and s.shared_key == Path("k.pem")
    assert parse_settings(["--forward-max-age", "90s"]).forward_max_age == 90
    with pytest.raises(SystemExit):
        parse_settings(["--limit-series", "many"])  # an int flag refuses text, as before
