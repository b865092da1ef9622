"""Flags of ``telemeter-client``: the Go client's names, defaults and URL rules.

The flags are a model, :class:`ClientFlags` (a dataclass: the client does not load pydantic, to
stay light), from which the parser is generated as the server's is from its settings. Two objects
come out of the command line:

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from client.errors import ConfigError
from telemeter.addresses import parse_listen_address
from telemeter.durations import format_duration, parse_duration
from telemeter.errors import InvalidSelector
from telemeter.flags import flag_name, with_default
from telemeter.selectors import parse_selector
from telemeter.transforms import DEFAULT_RENAMES, parse_label_pairs, parse_renames

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "DEFAULT_LIMIT_BYTES",
    "DEFAULT_LISTEN",
    "DEFAULT_MATCH",
    "ClientFlags",
    "ClientSettings",
    "Runtime",
    "build_parser",
    "federate_url",
    "flags_from_args",
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
    trust of each side (TLS contexts built once per reload: a context loads the whole CA bundle,
    ~30 ms of CPU, which per push would be most of the client's work)."""

    rules: tuple[str, ...]
    from_trust: Trust = field(default_factory=lambda: Trust())
    to_trust: Trust = field(default_factory=lambda: Trust())
    from_token: str = field(default="", repr=False)
    to_token: str = field(default="", repr=False)
    salt: str = field(default="", repr=False)


class Trust:
    """The TLS context of one side: the system's trust store (as Go; OpenSSL honours
    SSL_CERT_FILE and SSL_CERT_DIR) plus an optional CA file, built on first use. A side
    reached over plain HTTP never builds one: the store is ~2 MiB of the client's memory."""

    def __init__(self, ca_file: Path | None = None) -> None:
        self.ca_file = ca_file
        self._context: ssl.SSLContext | None = None
        if ca_file is not None:
            self.context()  # a bad file is a configuration error now, not at the first push

    def context(self) -> ssl.SSLContext:
        if self._context is None:
            context = ssl.create_default_context()
            if self.ca_file is not None:
                # Go adds the file to the system roots rather than replacing them.
                try:
                    context.load_verify_locations(cafile=str(self.ca_file))
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"cannot read --from-ca-file {self.ca_file}: {exc}") from None
            self._context = context
        return self._context


def option(
    default: Any,
    help_text: str,
    *,
    flag: str = "",
    short: str = "",
    duration: bool = False,
    secret: bool = False,
) -> Any:
    """A field of :class:`ClientFlags`: its default and help; its flag where the field's name does
    not give it (``from_``: ``--from``) and a short one; a Go duration; a secret (not in repr)."""
    meta = {"help": help_text, "flag": flag, "short": short, "duration": duration}
    return field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True, slots=True)
class ClientFlags:
    """The command line of ``telemeter-client``: a field a flag, with the Go client's names and
    defaults (:func:`build_parser` is generated from it). The type of a default decides the flag's:
    a tuple is a repeatable flag, a bool a switch, an int or a duration (seconds) is parsed."""

    listen: str = option(DEFAULT_LISTEN, "host:port for health, metrics and reload ('' off)")
    from_: str = option("", "the Prometheus to federate from", flag="from")
    from_token: str = option("", "bearer token for the source Prometheus", secret=True)
    from_token_file: str = option("", "file holding the bearer token for --from")
    from_ca_file: str = option("", "CA bundle for --from, besides the system roots")
    id: str = option("", "the unique identifier (cluster id) for metrics sent")
    to: str = option("", "the telemeter server to send metrics to")
    to_upload: str = option("", "upload endpoint (default: <to>/upload)")
    to_auth: str = option("", "token exchange endpoint (default: <to>/authorize?id=<id>)")
    to_token: str = option("", "long-lived bearer token for the telemeter server", secret=True)
    to_token_file: str = option("", "file holding the token for --to")
    interval: float = option(
        DEFAULT_INTERVAL_SECONDS, "time between pushes, a Go duration", duration=True
    )
    limit_bytes: int = option(DEFAULT_LIMIT_BYTES, "largest /federate answer read")
    match: tuple[str, ...] = option(DEFAULT_MATCH, "a series selector to federate (repeat)")
    match_file: str = option("", "file of match rules, one per line")
    label: tuple[str, ...] = option((), "key=value labels to add (comma lists)")
    rename: tuple[str, ...] = option(
        tuple(f"{old}={new}" for old, new in DEFAULT_RENAMES.items()), "OLD=NEW family renames"
    )
    anonymize_labels: tuple[str, ...] = option((), "labels whose values are hashed")
    anonymize_salt: str = option("", "secret salt of the anonymization hash", secret=True)
    anonymize_salt_file: str = option("", "file holding the anonymization salt")
    verbose: bool = option(False, "log debug output", short="-v")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, generated from :class:`ClientFlags`; flags not given are left out of
    the result, so the model's defaults apply."""
    parser = argparse.ArgumentParser(
        prog="telemeter-client",
        description="Federate a Prometheus via push: read /federate, clean, anonymize, upload.",
        argument_default=argparse.SUPPRESS,
    )
    for spec in fields(ClientFlags):
        flag = flag_name(spec.metadata["flag"] or spec.name)
        names = [spec.metadata["short"], flag] if spec.metadata["short"] else [flag]
        help_text = with_default(
            spec.metadata["help"], spec.default, duration=spec.metadata["duration"]
        )
        if isinstance(spec.default, bool):
            parser.add_argument(*names, dest=spec.name, action="store_true", help=help_text)
            continue
        action = "append" if isinstance(spec.default, tuple) else "store"
        metavar = flag[2:].upper().replace("-", "_")
        parser.add_argument(*names, dest=spec.name, action=action, metavar=metavar, help=help_text)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> ClientSettings:
    """Parse and validate a command line; raise ConfigError (argparse exits on unknown flags)."""
    return settings_from_args(build_parser().parse_args(argv))


def flags_from_args(args: argparse.Namespace) -> ClientFlags:
    """The model of the parsed flags: the given ones converted, the others their defaults."""
    given: dict[str, Any] = {}
    for spec in fields(ClientFlags):
        if spec.name not in args:
            continue
        value = getattr(args, spec.name)
        try:
            if spec.metadata["duration"]:
                value = parse_duration(value)
            elif type(spec.default) is int:
                value = int(value)
            elif isinstance(spec.default, tuple):
                value = tuple(value)
        except ValueError as exc:
            flag = flag_name(spec.metadata["flag"] or spec.name)
            raise ConfigError(f"{flag}: {exc}") from None
        given[spec.name] = value
    return ClientFlags(**given)


def settings_from_args(args: argparse.Namespace) -> ClientSettings:
    """Validate parsed flags and derive the URLs as the Go client does; raise ConfigError."""
    flags = flags_from_args(args)
    if not flags.from_:
        raise ConfigError(
            "you must specify a Prometheus server to federate from (e.g. --from http://localhost:9090)"
        )
    from_url = _from_url(flags.from_)
    authorize_url, upload_url = _to_urls(
        to=flags.to, to_auth=flags.to_auth, to_upload=flags.to_upload, cluster_id=flags.id
    )
    _one_of("--from-token", flags.from_token, "--from-token-file", flags.from_token_file)
    _one_of("--to-token", flags.to_token, "--to-token-file", flags.to_token_file)
    _one_of(
        "--anonymize-salt", flags.anonymize_salt, "--anonymize-salt-file", flags.anonymize_salt_file
    )
    if not flags.to_token and not flags.to_token_file:
        raise ConfigError("--to-token or --to-token-file is required (exchanged at /authorize)")
    anonymize_labels = tuple(_split_slice(flags.anonymize_labels))
    if anonymize_labels and not (flags.anonymize_salt or flags.anonymize_salt_file):
        raise ConfigError(
            "--anonymize-labels needs --anonymize-salt or --anonymize-salt-file "
            "(an unsalted hash of a label value is easy to reverse)"
        )
    try:
        labels = parse_label_pairs(_split_slice(flags.label))
        renames = parse_renames([r for r in _split_slice(flags.rename) if r]) or dict(
            DEFAULT_RENAMES
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if flags.interval <= 0:
        raise ConfigError(f"--interval must be positive, got {format_duration(flags.interval)}")
    if flags.limit_bytes <= 0:
        raise ConfigError(f"--limit-bytes must be positive, got {flags.limit_bytes}")
    return ClientSettings(
        from_url=from_url,
        authorize_url=authorize_url,
        upload_url=upload_url,
        cluster_id=flags.id,
        listen=_listen_address(flags.listen) if flags.listen else None,
        interval_seconds=flags.interval,
        limit_bytes=flags.limit_bytes,
        matches=flags.match,
        match_file=_path(flags.match_file),
        labels=labels,
        renames=renames,
        anonymize_labels=anonymize_labels,
        from_ca_file=_path(flags.from_ca_file),
        from_token_file=_path(flags.from_token_file),
        to_token_file=_path(flags.to_token_file),
        anonymize_salt_file=_path(flags.anonymize_salt_file),
        verbose=flags.verbose,
        from_token=flags.from_token,
        to_token=flags.to_token,
        anonymize_salt=flags.anonymize_salt,
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
    to_trust = Trust()
    return Runtime(
        rules=tuple(rules),
        from_trust=Trust(settings.from_ca_file) if settings.from_ca_file else to_trust,
        to_trust=to_trust,
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
