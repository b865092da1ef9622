"""Free TCP ports on loopback for processes that tests and launchers start.

The kernel picks a free port when a socket binds to port 0; we hold every probe socket open
until the whole set is chosen (so the ports are distinct) and then release them for the real
server. Another process can still grab a port between release and use, so callers that start
servers should retry with fresh ports when a bind fails.

Redis Cluster needs two ports per node: the client port ``p`` and the cluster bus port
``p + 10000`` (Redis's fixed offset), so :func:`free_redis_ports` checks both.
"""

from __future__ import annotations

import contextlib
import socket

# Redis derives the cluster bus port from the client port with this fixed offset.
REDIS_CLUSTER_BUS_OFFSET = 10000
_MAX_PORT = 65535
# Probes per requested port before giving up: ephemeral ports above 55535 are useless for
# Redis (their bus port would exceed 65535), so some probes are expected to be rejected.
_ATTEMPTS_PER_PORT = 100


def _bind(host: str, port: int) -> socket.socket | None:
    """Return a socket bound to (host, port), or None when that port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def _check_count(n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    _check_count(n)
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        for _ in range(n):
            sock = _bind(host, 0)
            if sock is None:
                raise OSError(f"cannot bind any port on {host}")
            held.enter_context(sock)
            ports.append(sock.getsockname()[1])
    return ports


def free_port(host: str = "127.0.0.1") -> int:
    """Return one TCP port that was free on ``host`` a moment ago."""
    return free_ports(1, host=host)[0]


def free_redis_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``n`` distinct client ports ``p`` for Redis Cluster nodes on ``host``.

    For each ``p`` the cluster bus port ``p + 10000`` was free too (and is a valid port),
    and no chosen client port equals another node's bus port.
    """
    _check_count(n)
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        for _ in range(n * _ATTEMPTS_PER_PORT):
            if len(ports) == n:
                break
            client = _bind(host, 0)
            if client is None:
                raise OSError(f"cannot bind any port on {host}")
            held.enter_context(client)
            port: int = client.getsockname()[1]
            if port + REDIS_CLUSTER_BUS_OFFSET > _MAX_PORT:
                continue
            # Holding the bus probe also stops a later client probe from landing on it.
            bus = _bind(host, port + REDIS_CLUSTER_BUS_OFFSET)
            if bus is None:
                continue
            held.enter_context(bus)
            ports.append(port)
    if len(ports) < n:
        raise OSError(f"found only {len(ports)} of {n} free Redis port pairs on {host}")
    return ports
