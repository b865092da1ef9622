"""Flags of ``telemeter-client``: the Go client's names, defaults and URL rules.

Two objects come out of the command line:

- :class:`ClientSettings`, built once at start-up from the flags (:func:`settings_from_args`);
- :class:`Runtime`, what the files named by flags hold (tokens, salt, match rules, CA bundle),
  read by :func:`load_runtime` at start-up and again on every reload (SIGHUP, ``POST /-/reload``).

Like the Go client, ``--label``, ``--rename`` and ``--anonymize-labels`` take comma-separated
lists (pflag ``StringSlice``, CSV quoting allowed) and may be repeated; ``--match`` may be repeated
but is never split (selectors contain commas). Unlike the Go client, contradictory or useless
combinations are refused with a message instead of failing later at run time.
"""

from __future__ import annotations

import argparse
import csv
import logging
import posixpath
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from client.errors import ConfigError
from telemeter.addresses import parse_listen_address
from telemeter.durations import format_duration, parse_duration
from telemeter.errors import InvalidSelector
from telemeter.selectors import parse_selector
from telemeter.transforms import DEFAULT_RENAMES, parse_label_pairs, parse_renames

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "DEFAULT_LIMIT_BYTES",
    "DEFAULT_LISTEN",
    "DEFAULT_MATCH",
    "ClientSettings",
    "Runtime",
    "build_parser",
    "federate_url",
    "load_runtime",
    "parse_settings",
    "settings_from_args",
]

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "localhost:9002"
DEFAULT_INTERVAL_SECONDS = 270.0  # 4m30s, the Go default and the server's default rate limit
DEFAULT_LIMIT_BYTES = 200 * 1024
# The Go client's --match default: replaced by any --match flag, kept alongside --match-file.
DEFAULT_MATCH = ('{__name__="up"}',)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The validated command line. Secrets given literally are kept out of ``repr``."""

    from_url: str
    authorize_url: str
    upload_url: str
    cluster_id: str
    listen: tuple[str, int] | None
    interval_seconds: float
    limit_bytes: int
    matches: tuple[str, ...]
    match_file: Path | None
    labels: Mapping[str, str]
    renames: Mapping[str, str]
    anonymize_labels: tuple[str, ...]
    from_ca_file: Path | None
    from_token_file: Path | None
    to_token_file: Path | None
    anonymize_salt_file: Path | None
    verbose: bool
    from_token: str = field(default="", repr=False)
    to_token: str = field(default="", repr=False)
    anonymize_salt: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a reload refreshes: tokens, salt and rules (literal flags or file contents), and the
    TLS contexts (built once here: a context loads the whole CA bundle, ~30 ms of CPU, which
    per push would be most of the client's work)."""

    rules: tuple[str, ...]
    from_verify: ssl.SSLContext | bool = True
    to_verify: ssl.SSLContext | bool = True
    from_token: str = field(default="", repr=False)
    to_token: str = field(default="", repr=False)
    salt: str = field(default="", repr=False)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the Go client's flag names and defaults."""
    parser = argparse.ArgumentParser(
        prog="telemeter-client",
        description="Federate a Prometheus via push: read /federate, clean, anonymize, upload.",
    )
    add = parser.add_argument
    add(
        "--listen", default=DEFAULT_LISTEN, help="host:port for health, metrics and reload ('' off)"
    )
    add("--from", dest="from_", metavar="FROM", default="", help="the Prometheus to federate from")
    add("--from-token", default="", help="bearer token for the source Prometheus")
    add("--from-token-file", default="", help="file holding the bearer token for --from")
    add("--from-ca-file", default="", help="CA bundle for --from, besides the system roots")
    add("--id", default="", help="the unique identifier (cluster id) for metrics sent")
    add("--to", default="", help="the telemeter server to send metrics to")
    add("--to-upload", default="", help="upload endpoint (default: <to>/upload)")
    add("--to-auth", default="", help="token exchange endpoint (default: <to>/authorize?id=<id>)")
    add("--to-token", default="", help="long-lived bearer token for the telemeter server")
    add("--to-token-file", default="", help="file holding the token for --to")
    interval = format_duration(DEFAULT_INTERVAL_SECONDS)  # defaults shown from the constants
    renames = ",".join(f"{old}={new}" for old, new in DEFAULT_RENAMES.items())
    add(
        "--interval",
        default=interval,
        help=f"time between pushes, a Go duration (default {interval})",
    )
    add(
        "--limit-bytes",
        default=str(DEFAULT_LIMIT_BYTES),
        help=f"largest /federate answer read (default {DEFAULT_LIMIT_BYTES})",
    )
    add("--match", action="append", default=None, help="a series selector to federate (repeat)")
    add("--match-file", default="", help="file of match rules, one per line")
    add("--label", action="append", default=[], help="key=value labels to add (comma lists)")
    add(
        "--rename",
        action="append",
        default=[],
        help=f"OLD=NEW family renames (default {renames})",
    )
    add("--anonymize-labels", action="append", default=[], help="labels whose values are hashed")
    add("--anonymize-salt", default="", help="secret salt of the anonymization hash")
    add("--anonymize-salt-file", default="", help="file holding the anonymization salt")
    add("-v", "--verbose", action="store_true", help="log debug output")
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> ClientSettings:
    """Parse and validate a command line; raise ConfigError (argparse exits on unknown flags)."""
    return settings_from_args(build_parser().parse_args(argv))


def settings_from_args(args: argparse.Namespace) -> ClientSettings:
    """Validate parsed flags and derive the URLs as the Go client does; raise ConfigError."""
    if not args.from_:
        raise ConfigError(
            "you must specify a Prometheus server to federate from (e.g. --from http://localhost:9090)"
        )
    from_url = _from_url(args.from_)
    authorize_url, upload_url = _to_urls(
        to=args.to, to_auth=args.to_auth, to_upload=args.to_upload, cluster_id=args.id
    )
    _one_of("--from-token", args.from_token, "--from-token-file", args.from_token_file)
    _one_of("--to-token", args.to_token, "--to-token-file", args.to_token_file)
    _one_of(
        "--anonymize-salt", args.anonymize_salt, "--anonymize-salt-file", args.anonymize_salt_file
    )
    if not args.to_token and not args.to_token_file:
        raise ConfigError("--to-token or --to-token-file is required (exchanged at /authorize)")
    anonymize_labels = tuple(_split_slice(args.anonymize_labels))
    if anonymize_labels and not (args.anonymize_salt or args.anonymize_salt_file):
        raise ConfigError(
            "--anonymize-labels needs --anonymize-salt or --anonymize-salt-file "
            "(an unsalted hash of a label value is easy to reverse)"
        )
    try:
        labels = parse_label_pairs(_split_slice(args.label))
        renames = parse_renames([r for r in _split_slice(args.rename) if r]) or dict(
            DEFAULT_RENAMES
        )
        interval = parse_duration(args.interval)
        limit_bytes = int(args.limit_bytes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if interval <= 0:
        raise ConfigError(f"--interval must be positive, got {args.interval!r}")
    if limit_bytes <= 0:
        raise ConfigError(f"--limit-bytes must be positive, got {args.limit_bytes!r}")
    return ClientSettings(
        from_url=from_url,
        authorize_url=authorize_url,
        upload_url=upload_url,
        cluster_id=args.id,
        listen=_listen_address(args.listen) if args.listen else None,
        interval_seconds=interval,
        limit_bytes=limit_bytes,
        matches=tuple(args.match) if args.match is not None else DEFAULT_MATCH,
        match_file=_path(args.match_file),
        labels=labels,
        renames=renames,
        anonymize_labels=anonymize_labels,
        from_ca_file=_path(args.from_ca_file),
        from_token_file=_path(args.from_token_file),
        to_token_file=_path(args.to_token_file),
        anonymize_salt_file=_path(args.anonymize_salt_file),
        verbose=args.verbose,
        from_token=args.from_token,
        to_token=args.to_token,
        anonymize_salt=args.anonymize_salt,
    )


def load_runtime(settings: ClientSettings) -> Runtime:
    """Read the files named by flags (tokens, salt, match rules, CA); raise ConfigError.

    File contents are stripped of surrounding whitespace, as in Go. Match rules are the
    ``--match`` flags followed by the non-empty lines of ``--match-file``.
    """
    from_token = settings.from_token or _read_secret(settings.from_token_file, "--from-token-file")
    to_token = settings.to_token or _read_secret(settings.to_token_file, "--to-token-file")
    if not to_token:
        raise ConfigError(f"--to-token-file {settings.to_token_file} is empty")
    salt = settings.anonymize_salt or _read_secret(
        settings.anonymize_salt_file, "--anonymize-salt-file"
    )
    if settings.anonymize_labels and not salt:
        raise ConfigError(f"--anonymize-salt-file {settings.anonymize_salt_file} is empty")
    rules = list(settings.matches)
    if settings.match_file is not None:
        rules.extend(_read_text(settings.match_file, "--match-file").split("\n"))
    rules = [rule.strip() for rule in rules if rule.strip()]
    if not rules:
        raise ConfigError("no match rules: give --match or a non-empty --match-file")
    for rule in rules:
        try:
            parse_selector(rule)
        except InvalidSelector as exc:
            # Prometheus is the judge of its own selector syntax (ours lacks RE2-only forms).
            logger.warning("match rule may be invalid rule=%r reason=%s", rule, exc)
    # The trust store httpx would use for verify=True (SSL_CERT_FILE / SSL_CERT_DIR, else certifi).
    to_verify = httpx.create_ssl_context()
    verify: ssl.SSLContext = to_verify
    if settings.from_ca_file is not None:
        # Go adds the file to the system roots rather than replacing them.
        verify = ssl.create_default_context()
        try:
            verify.load_verify_locations(cafile=str(settings.from_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot read --from-ca-file {settings.from_ca_file}: {exc}"
            ) from None
    return Runtime(
        rules=tuple(rules),
        from_verify=verify,
        to_verify=to_verify,
        from_token=from_token,
        to_token=to_token,
        salt=salt,
    )


def federate_url(base: str, rules: Sequence[str]) -> str:
    """``base`` with one ``match[]`` parameter per rule, encoded like Go's ``url.Values.Encode``.

    Go sorts the parameters by key (stable within a key) and escapes everything but
    ``A-Za-z0-9-_.~``, spaces as ``+``: ``match%5B%5D=%7B__name__%3D~%22.%2B%22%7D``.
    """
    parts = urlsplit(base)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    pairs.extend(("match[]", rule) for rule in rules)
    pairs.sort(key=lambda pair: pair[0])
    return urlunsplit(parts._replace(query=urlencode(pairs)))


def _from_url(text: str) -> str:
    parts = _parse_url("--from", text)
    # Go trims trailing slashes and defaults an empty path to /federate.
    path = parts.path.rstrip("/") or "/federate"
    return urlunsplit(parts._replace(path=path, fragment=""))


def _to_urls(*, to: str, to_auth: str, to_upload: str, cluster_id: str) -> tuple[str, str]:
    """The authorize and upload URLs: explicit flags win, else derived from ``--to``."""
    authorize = urlunsplit(_parse_url("--to-auth", to_auth)) if to_auth else ""
    upload = urlunsplit(_parse_url("--to-upload", to_upload)) if to_upload else ""
    if to:
        parts = _parse_url("--to", to)
        base_path = parts.path or "/"
        if not authorize:
            if not cluster_id:
                raise ConfigError(
                    "--id is required with --to (the server's /authorize needs the cluster id); "
                    "or give --to-auth with the id in its query"
                )
            query = [*parse_qsl(parts.query, keep_blank_values=True), ("id", cluster_id)]
            query.sort(key=lambda pair: pair[0])
            authorize = urlunsplit(
                parts._replace(path=_join(base_path, "authorize"), query=urlencode(query))
            )
        if not upload:
            upload = urlunsplit(parts._replace(path=_join(base_path, "upload")))
    if not authorize or not upload:
        raise ConfigError("either --to or both --to-auth and --to-upload must be specified")
    return authorize, upload


def _join(base: str, name: str) -> str:
    """Go's ``path.Join``: joined and cleaned."""
    return posixpath.normpath(posixpath.join(base, name))


def _parse_url(flag: str, text: str) -> SplitResult:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{flag} is not a valid http(s) URL: {text!r}")
    return parts


def _one_of(flag: str, value: str, file_flag: str, file_value: str) -> None:
    if value and file_value:
        raise ConfigError(f"give {flag} or {file_flag}, not both")


def _split_slice(values: Sequence[str]) -> list[str]:
    """pflag ``StringSlice``: every occurrence is one CSV record (so ``a=b,c=d`` is two)."""
    out: list[str] = []
    for value in values:
        for record in csv.reader([value]):
            out.extend(record)
    return out


def _listen_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen_address(text)
    except ValueError as exc:
        raise ConfigError(f"--listen must be [host]:port, got {text!r}") from exc


def _path(text: str) -> Path | None:
    return Path(text) if text else None


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {flag} {path}: {exc}") from None


def _read_secret(path: Path | None, flag: str) -> str:
    return "" if path is None else _read_text(path, flag).strip()


def describe(settings: ClientSettings) -> str:
    """One log line of the effective settings (no secrets)."""
    return (
        f"from={settings.from_url} authorize={settings.authorize_url} "
        f"upload={settings.upload_url} interval={format_duration(settings.interval_seconds)} "
        f"limit_bytes={settings.limit_bytes} anonymize={','.join(settings.anonymize_labels)}"
    )
