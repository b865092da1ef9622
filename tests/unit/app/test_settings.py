"""The server's flags: Go names, Go durations, environment variables, refusals."""

from __future__ import annotations

import pytest

from app.settings import ServerSettings, parse_settings


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
        ["--forward-url", "ftp://x"],
        ["--forward-client-crt", "c.pem"],
        ["--oidc-issuer", "http://issuer"],
        ["--ring-heartbeat", "10s", "--ring-lease", "5s"],
        ["--limit-bytes", "0"],
    ],
)
def test_inconsistent_flags_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(argv)
    assert "error" in capsys.readouterr().err
