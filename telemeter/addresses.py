"""Addresses given on command lines: Go-style listen addresses and Redis Cluster URLs.

Pure parsing, shared by the server, the client, the stand-in and the local tools.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

_URL_FORMS = "expected comma-separated 'redis://[:password@]host:port' or 'host:port' entries"


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


def _parse_entry(entry: str) -> tuple[str, int, str | None]:
    """Parse one ``redis://[:password@]host:port`` or ``host:port`` entry."""
    if "://" not in entry:
        host, sep, port_text = entry.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # "[::1]:7000"
        if not sep or not host:
            raise ValueError(f"Redis URL entry {entry!r} has no host:port; {_URL_FORMS}")
        return host, _parse_port(port_text, entry), None
    parts = urlsplit(entry)
    shown = _redact(entry)
    if parts.scheme != "redis":
        raise ValueError(f"unsupported scheme {parts.scheme!r} in {shown!r}; {_URL_FORMS}")
    if parts.path not in ("", "/", "/0") or parts.query or parts.fragment:
        raise ValueError(f"Redis Cluster has only database 0; drop the path/query in {shown!r}")
    if parts.username:
        raise ValueError(f"user names are not supported in {shown!r}; {_URL_FORMS}")
    # netloc is "[:password@]host:port"; split it by hand so a bad port gets our message.
    host_port = parts.netloc.rpartition("@")[2]
    host, sep, port_text = host_port.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise ValueError(f"Redis URL entry {shown!r} has no host:port; {_URL_FORMS}")
    password = unquote(parts.password) if parts.password else None
    return host, _parse_port(port_text, entry), password


def parse_redis_url(url: str) -> tuple[list[tuple[str, int]], str | None]:
    """Parse a comma-separated list of Redis Cluster startup nodes.

    Each entry is ``redis://[:password@]host:port`` or ``host:port``; the password may be
    given on any entries but must be the same wherever it appears. Returns the (host, port)
    startup nodes in order and the password (None when there is none).
    """
    if not url.strip():
        raise ValueError(f"empty Redis URL; {_URL_FORMS}")
    nodes: list[tuple[str, int]] = []
    passwords: set[str] = set()
    for raw in url.split(","):
        entry = raw.strip()
        if not entry:
            raise ValueError(f"empty entry in Redis URL {_redact(url)!r}; {_URL_FORMS}")
        host, port, password = _parse_entry(entry)
        nodes.append((host, port))
        if password is not None:
            passwords.add(password)
    if len(passwords) > 1:
        raise ValueError("entries of the Redis URL carry different passwords")
    return nodes, next(iter(passwords), None)


# ----- CLI -----------------------------------------------------------------------------------
