"""Fixtures of the client tests: a recording HTTP stand-in and settings pointing at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from client.settings import ClientSettings, parse_settings
from tests.unit.client.recorder import Recorder

SettingsFactory = Callable[..., ClientSettings]


@pytest.fixture
def server() -> Iterator[Recorder]:
    """A recording stand-in for both the source Prometheus and the telemeter server."""
    with Recorder() as recorder:
        yield recorder


@pytest.fixture
def make_settings(server: Recorder) -> SettingsFactory:
    """Settings that read from and push to ``server``; extra flags are appended."""

    def make(*extra: str) -> ClientSettings:
        return parse_settings(
            [
                "--from", server.url,
                "--to", server.url,
                "--id", "test",
                "--to-token", "secret-token",
                "--listen", "",
                *extra,
            ]
        )  # fmt: skip

    return make
