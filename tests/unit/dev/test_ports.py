"""Free-port helpers: distinct ports, and Redis bus ports that are valid and bindable."""

from __future__ import annotations

import socket

import pytest

from dev.ports import REDIS_CLUSTER_BUS_OFFSET, free_port, free_ports, free_redis_ports


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_free_port_is_bindable() -> None:
    assert bindable(free_port())


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(bindable(port) for port in ports)


def test_free_redis_ports_leave_room_for_the_cluster_bus() -> None:
    ports = free_redis_ports(12)
    bus_ports = [port + REDIS_CLUSTER_BUS_OFFSET for port in ports]
    assert len(set(ports)) == 12
    assert max(bus_ports) <= 65535
    assert set(ports).isdisjoint(bus_ports)
    assert all(bindable(port) for port in ports + bus_ports)


def test_counts() -> None:
    assert free_ports(0) == []
    assert free_redis_ports(0) == []
    with pytest.raises(ValueError):
        free_ports(-1)
    with pytest.raises(ValueError):
        free_redis_ports(-1)
