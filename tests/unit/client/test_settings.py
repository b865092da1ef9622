"""Flags: the Go client's names, defaults and URL derivation; inconsistent combinations refused."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from client.errors import ConfigError
from client.settings import (
    DEFAULT_LIMIT_BYTES,
    ClientFlags,
    ClientSettings,
    build_parser,
    federate_url,
    flags_from_args,
    load_runtime,
    parse_settings,
)
from telemeter.durations import format_duration

BASE = ["--from", "http://prom:9090", "--to", "https://infogw.example.com", "--id", "c1"]


def _settings(*extra: str) -> ClientSettings:
    return parse_settings([*BASE, "--to-token", "t", *extra])


def test_defaults_are_the_go_clients() -> None:
    settings = _settings()
    assert settings.listen == ("localhost", 9002)
    assert settings.interval_seconds == 270.0
    assert settings.limit_bytes == DEFAULT_LIMIT_BYTES == 204800
    assert settings.matches == ('{__name__="up"}',)
    assert settings.renames == {"ALERTS": "alerts"}
    assert settings.labels == {}
    assert settings.anonymize_labels == ()
    assert settings.verbose is False


def test_urls_are_derived_like_go() -> None:
    settings = _settings()
    assert settings.from_url == "http://prom:9090/federate"
    assert settings.authorize_url == "https://infogw.example.com/authorize?id=c1"
    assert settings.upload_url == "https://infogw.example.com/upload"
    prefixed = parse_settings(
        [
            "--from",
            "http://p/prom/federate/",
            "--to",
            "http://s/base/?x=1",
            "--id",
            "a b",
            "--to-token",
            "t",
        ]
    )
    assert prefixed.from_url == "http://p/prom/federate"
    # Go: path.Join, the --to query kept, id added and the query re-encoded sorted by key.
    assert prefixed.authorize_url == "http://s/base/authorize?id=a+b&x=1"
    assert prefixed.upload_url == "http://s/base/upload?x=1"


def test_explicit_endpoints_win_over_to() -> None:
    settings = parse_settings(
        [
            "--from",
            "http://p",
            "--to-auth",
            "http://a/auth?id=z",
            "--to-upload",
            "http://u/up",
            "--to-token",
            "t",
        ]
    )
    assert settings.authorize_url == "http://a/auth?id=z"
    assert settings.upload_url == "http://u/up"


def test_slice_flags_split_on_commas_and_repeat() -> None:
    settings = _settings(
        "--label", "a=1,b=2", "--label", "c=3",
        "--rename", "x=y,z=w",
        "--anonymize-labels", "instance,pod", "--anonymize-labels", "ip",
        "--anonymize-salt", "s",
        "--match", '{__name__=~"a|b",job="x"}', "--match", "up",
        "--interval", "1m", "--limit-bytes", "1000", "--listen", ":9999", "-v",
    )  # fmt: skip
    assert settings.labels == {"a": "1", "b": "2", "c": "3"}
    assert settings.renames == {"x": "y", "z": "w"}
    assert settings.anonymize_labels == ("instance", "pod", "ip")
    assert settings.matches == ('{__name__=~"a|b",job="x"}', "up")
    assert settings.interval_seconds == 60.0
    assert settings.limit_bytes == 1000
    assert settings.listen == ("0.0.0.0", 9999)
    assert settings.verbose is True


def test_secrets_stay_out_of_repr() -> None:
    settings = _settings("--anonymize-labels", "instance", "--anonymize-salt", "pepper")
    assert "pepper" not in repr(settings)
    runtime = load_runtime(settings)
    assert runtime.salt == "pepper"
    assert "pepper" not in repr(runtime)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to", "http://s", "--id", "c", "--to-token", "t"], "federate from"),
        (["--from", "http://p", "--to-token", "t"], "either --to or both"),
        (["--from", "http://p", "--to-upload", "http://u", "--to-token", "t"], "either --to"),
        (["--from", "http://p", "--to", "http://s", "--to-token", "t"], "--id is required"),
        (["--from", "ftp://p", "--to", "http://s", "--id", "c"], "--from is not a valid"),
        ([*BASE], "--to-token or --to-token-file is required"),
        ([*BASE, "--to-token", "t", "--to-token-file", "f"], "not both"),
        ([*BASE, "--to-token", "t", "--from-token", "a", "--from-token-file", "f"], "not both"),
        ([*BASE, "--to-token", "t", "--anonymize-labels", "instance"], "needs --anonymize-salt"),
        ([*BASE, "--to-token", "t", "--interval", "0s"], "--interval must be positive"),
        ([*BASE, "--to-token", "t", "--interval", "5d"], "unknown unit"),
        ([*BASE, "--to-token", "t", "--limit-bytes", "-1"], "--limit-bytes must be positive"),
        ([*BASE, "--to-token", "t", "--label", "novalue"], "key=value"),
        ([*BASE, "--to-token", "t", "--rename", "a-b=c"], "not a valid metric name"),
        ([*BASE, "--to-token", "t", "--listen", "nowhere"], "--listen must be"),
    ],
)
def test_inconsistent_flags_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(argv)


def test_files_are_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  long-lived\n")
    (tmp_path / "from").write_text("prom-token\n")
    (tmp_path / "salt").write_text("s1\n")
    (tmp_path / "rules").write_text('up\n\n  {__name__="ALERTS"}  \n')
    settings = parse_settings(
        [
            *BASE,
            "--to-token-file", str(tmp_path / "token"),
            "--from-token-file", str(tmp_path / "from"),
            "--anonymize-labels", "instance",
            "--anonymize-salt-file", str(tmp_path / "salt"),
            "--match-file", str(tmp_path / "rules"),
        ]
    )  # fmt: skip
    runtime = load_runtime(settings)
    assert (runtime.to_token, runtime.from_token, runtime.salt) == (
        "long-lived",
        "prom-token",
        "s1",
    )
    # As in Go, the --match default stays when only --match-file is given.
    assert runtime.rules == ('{__name__="up"}', "up", '{__name__="ALERTS"}')


def test_unusable_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="cannot read --to-token-file"):
        load_runtime(parse_settings([*BASE, "--to-token-file", missing]))
    with pytest.raises(ConfigError, match="is empty"):
        load_runtime(parse_settings([*BASE, "--to-token-file", str(tmp_path / "empty")]))
    salted = [*BASE, "--to-token", "t", "--anonymize-labels", "instance"]
    with pytest.raises(ConfigError, match=r"--anonymize-salt-file .* is empty"):
        load_runtime(parse_settings([*salted, "--anonymize-salt-file", str(tmp_path / "empty")]))
    with pytest.raises(ConfigError, match="no match rules"):
        load_runtime(_settings("--match", " ", "--match-file", str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="cannot read --from-ca-file"):
        load_runtime(_settings("--from-ca-file", str(tmp_path / "empty")))


def test_federate_url_encodes_like_go() -> None:
    # The query of the recorded Go scrape (testdata/wire/client-scrape-request-headers.txt).
    url = federate_url("http://p/federate", ['{__name__=~".+"}'])
    assert url == "http://p/federate?match%5B%5D=%7B__name__%3D~%22.%2B%22%7D"
    # Existing parameters are kept; keys sorted, values of one key in order.
    url = federate_url("http://p/federate?z=1&a=2", ["b", "a"])
    assert url == "http://p/federate?a=2&match%5B%5D=b&match%5B%5D=a&z=1"


GO_CLIENT_FLAGS = {
    "--anonymize-labels", "--anonymize-salt", "--anonymize-salt-file", "--from", "--from-ca-file",
    "--from-token", "--from-token-file", "--id", "--interval", "--label", "--limit-bytes",
    "--listen", "--match", "--match-file", "--rename", "--to", "--to-auth", "--to-token",
    "--to-token-file", "--to-upload", "--verbose", "-v",
}  # fmt: skip


def test_the_flags_are_the_go_clients_and_help_shows_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == GO_CLIENT_FLAGS
    monkeypatch.setenv("COLUMNS", "400")
    text = " ".join(parser.format_help().split())
    assert all(action.help and action.help in text for action in parser._actions)
    assert "--interval INTERVAL time between pushes, a Go duration (default 4m30s)" in text
    assert f"(default {DEFAULT_LIMIT_BYTES})" in text and "(default ALERTS=alerts)" in text


def test_help_shows_every_flag_with_its_help_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping (argparse breaks lines at hyphens)
    parser = build_parser()
    text = " ".join(parser.format_help().split())
    actions = {action.dest: action for action in parser._actions}
    assert set(actions) - {"help"} == {spec.name for spec in fields(ClientFlags)}
    for spec in fields(ClientFlags):
        action = actions[spec.name]
        assert action.help and action.help.startswith(spec.metadata["help"]) and action.help in text
        default: Any = spec.default
        if default is False or default in ("", ()):
            assert action.help == spec.metadata["help"], spec.name
            continue
        if spec.metadata["duration"]:
            shown = format_duration(default)
        else:
            shown = ",".join(default) if isinstance(default, tuple) else str(default)
        assert action.help.endswith(f"(default {shown})"), spec.name
    assert "--listen LISTEN host:port for health, metrics and reload ('' off) " in text
    assert "(default localhost:9002) --from FROM the Prometheus to federate from" in text
    assert '--match MATCH a series selector to federate (repeat) (default {__name__="up"})' in text


def test_the_flags_model_takes_the_given_flags_converted_and_defaults_the_others() -> None:
    args = build_parser().parse_args(
        ["--from", "http://p", "--interval", "1m30s", "--limit-bytes", "10", "--match", "up", "-v"]
    )
    flags = flags_from_args(args)
    assert (flags.from_, flags.interval, flags.limit_bytes) == ("http://p", 90.0, 10)
    assert flags.match == ("up",) and flags.verbose is True
    assert flags_from_args(build_parser().parse_args([])) == ClientFlags()
    assert ClientFlags().rename == ("ALERTS=alerts",) and ClientFlags().interval == 270.0
    assert "s3cret" not in repr(ClientFlags(to_token="s3cret", anonymize_salt="s3cret"))
    with pytest.raises(ConfigError, match="--limit-bytes: invalid literal"):
        flags_from_args(build_parser().parse_args(["--limit-bytes", "many"]))


# What the client process must not load at start-up: each is megabytes of its RSS, multiplied by
# the fleet (docs/architecture.md, "The client's footprint").
HEAVY = (
    "pydantic", "prometheus_client", "httpx", "google", "importlib.metadata", "email", "cramjam"
)  # fmt: skip


def test_the_client_starts_without_heavy_imports() -> None:
    code = (
        "import sys, client.main; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_version_is_the_package_version() -> None:
    from importlib import metadata

    import telemeter

    assert metadata.version("telemeter") == telemeter.__version__
