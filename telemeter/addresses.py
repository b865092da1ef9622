"""Addresses given on command lines: Go-style listen addresses and Redis Cluster URLs.

Pure parsing, shared by the server, the client, the stand-in and the local tools.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

_URL_FORMS = (
    "expected comma-separated 'redis://[:password@]host:port' (rediss:// for TLS) or "
    "'host:port' entries"
)


class RedisURL(NamedTuple):
    """A parsed ``--redis-url``: the startup nodes, the password, and whether TLS is used."""

    nodes: list[tuple[str, int]]
    password: str | None
    tls: bool = False


def parse_listen_address(address: str) -> tuple[str, int]:
    """Split a Go-style listen address (``127.0.0.1:9001``, ``:9001``, ``[::1]:9001``).

    An empty host means every interface, as in Go.
    """
    host, separator, port_text = address.rpartition(":")
    if (
        not separator
        or not (port_text.isascii() and port_text.isdigit())
        or not 0 <= int(port_text) <= 65535
    ):
        raise ValueError(f"invalid listen address {address!r}: expected [host]:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)


def _redact(entry: str) -> str:
    """Hide credentials so error messages and logs never carry the password."""
    return re.sub(r"//[^@/]*@", "//***@", entry)


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad port {text!r} in Redis URL entry {_redact(entry)!r}; {_URL_FORMS}")
    return int(text)


def _parse_entry(entry: str) -> tuple[str, int, str | None, str | None]:
    """Parse one ``redis[s]://[:password@]host:port`` or ``host:port`` entry; the last item is
    the scheme (None for a bare ``host:port``)."""
    if "://" not in entry:
        host, sep, port_text = entry.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # "[::1]:7000"
        if not sep or not host:
            raise ValueError(f"Redis URL entry {entry!r} has no host:port; {_URL_FORMS}")
        return host, _parse_port(port_text, entry), None, None
    parts = urlsplit(entry)
    shown = _redact(entry)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"unsupported scheme {parts.scheme!r} in {shown!r}; {_URL_FORMS}")
    if parts.path not in ("", "/", "/0") or parts.query or parts.fragment:
        raise ValueError(f"Redis Cluster has only database 0; drop the path/query in {shown!r}")
    if parts.username:
        raise ValueError(f"user names are not supported in {shown!r}; use --redis-username")
    # netloc is "[:password@]host:port"; split it by hand so a bad port gets our message.
    host_port = parts.netloc.rpartition("@")[2]
    host, sep, port_text = host_port.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise ValueError(f"Redis URL entry {shown!r} has no host:port; {_URL_FORMS}")
    password = unquote(parts.password) if parts.password else None
    return host, _parse_port(port_text, entry), password, parts.scheme


def parse_redis_url(url: str) -> RedisURL:
    """Parse a comma-separated list of Redis Cluster startup nodes.

    Each entry is ``redis://[:password@]host:port``, ``rediss://...`` (TLS) or ``host:port``;
    the password may be given on any entries but must be the same wherever it appears, and
    ``redis://`` and ``rediss://`` entries cannot be mixed (a bare ``host:port`` follows the
    others). Returns the (host, port) startup nodes in order, the password (None when there is
    none) and whether TLS is used.
    """
    if not url.strip():
        raise ValueError(f"empty Redis URL; {_URL_FORMS}")
    nodes: list[tuple[str, int]] = []
    passwords: set[str] = set()
    schemes: set[str] = set()
    for raw in url.split(","):
        entry = raw.strip()
        if not entry:
            raise ValueError(f"empty entry in Redis URL {_redact(url)!r}; {_URL_FORMS}")
        host, port, password, scheme = _parse_entry(entry)
        nodes.append((host, port))
        if password is not None:
            passwords.add(password)
        if scheme is not None:
            schemes.add(scheme)
    if len(passwords) > 1:
        raise ValueError("entries of the Redis URL carry different passwords")
    if len(schemes) > 1:
        raise ValueError("the Redis URL mixes redis:// and rediss:// entries (TLS is all or none)")
    return RedisURL(nodes, next(iter(passwords), None), schemes == {"rediss"})


# ----- CLI -----------------------------------------------------------------------------------
