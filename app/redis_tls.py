"""TLS to Redis (``rediss://``): one `ssl.SSLContext`, built at start-up, for every connection.

Both paths to Redis use it: the bare RESP connections of the hot path (`app.resp`) and the
redis-py cluster client (`app.store`). The cluster client creates a node for every address
it learns (``CLUSTER SLOTS``, ``MOVED``/``ASK`` redirections) from one shared set of
connection arguments, so once `use_context` has put the context there, every node it will
ever talk to is reached over TLS. See docs/operations.md, "Redis over TLS and with an ACL user".
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection


def client_context(
    *, ca_file: Path | None, client_crt: Path | None, client_key: Path | None
) -> ssl.SSLContext:
    """The context every Redis connection uses: the nodes' certificates are checked against
    ``ca_file`` (the system's CAs when unset), host names included; with ``client_crt`` the
    client presents that certificate (``tls-auth-clients``)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if client_crt is not None:
        context.load_cert_chain(client_crt, client_key)
    return context


class TLSConnection(Connection):
    """redis-py's asyncio connection, opened with a given `ssl.SSLContext` (its own
    `SSLConnection` builds a context per connection from file names)."""

    def __init__(self, *, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        self._tls = ssl_context
        super().__init__(**kwargs)

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {**super()._connection_arguments(), "ssl": self._tls}


def use_context(client: RedisCluster, context: ssl.SSLContext) -> None:
    """Make a cluster client not yet connected reach every node through ``context``.

    The client's shared connection arguments give every node it discovers later; the startup
    nodes were built from them already, so they get the same two settings.
    """
    shared = client.nodes_manager.connection_kwargs
    shared.update(connection_class=TLSConnection, ssl_context=context)
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = TLSConnection
        node.connection_kwargs["ssl_context"] = context


def mismatch_hint(exc: BaseException, *, tls: bool) -> str:
    """A hint for the errors a TLS mismatch gives, which do not say so themselves: a TLS port
    resets a plaintext client, a plaintext port leaves a TLS handshake unanswered."""
    text = str(exc)
    if not tls and ("reset by peer" in text or "closed by server" in text):
        return " (a TLS-only port resets plaintext clients: is the URL meant to be rediss://?)"
    if tls and "Timeout connecting" in text:
        return " (a plaintext port never answers a TLS handshake: is the URL meant to be redis://?)"
    return ""
