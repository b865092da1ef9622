"""The push loop against a recording stand-in: backoff, Retry-After, refused payloads, reload."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from client.backoff import Backoff
from client.errors import ConfigError
from client.forwarder import Forwarder
from client.metrics import ClientMetrics
from client.settings import ClientSettings, load_runtime
from client.worker import Worker
from tests.unit.client.conftest import SettingsFactory
from tests.unit.client.recorder import Recorded, Recorder, Reply, text_reply, token_reply


def _federate() -> Reply:
    return text_reply(f'up{{job="a"}} 1 {int(time.time() * 1000)}\n')


def _worker(settings: ClientSettings, backoff: Backoff) -> Worker:
    forwarder = Forwarder(settings, load_runtime(settings), metrics=ClientMetrics())
    return Worker(settings, forwarder, backoff=backoff)


async def _while_running(worker: Worker, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(worker.run())
    try:
        await body()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _run(worker: Worker, server: Recorder, path: str, count: int, timeout: float) -> list[Recorded]:
    async def body() -> None:
        await asyncio.to_thread(server.wait_for, path, count, timeout)

    asyncio.run(_while_running(worker, body))
    return server.requests(path)


def _gaps(requests: list[Recorded]) -> list[float]:
    return [later.at - earlier.at for earlier, later in itertools.pairwise(requests)]


def _highest(low: float, high: float) -> float:
    return high


def test_503_is_retried_with_growing_jittered_delays(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    server.script("/federate", _federate())
    server.script("/authorize", token_reply())
    server.script("/upload", Reply(503), Reply(503), Reply(503), Reply(200))
    seed = 1234
    backoff = Backoff(base_seconds=0.2, cap_seconds=30.0, uniform=random.Random(seed).uniform)
    worker = _worker(make_settings("--interval", "30s"), backoff)
    uploads = _run(worker, server, "/upload", 4, timeout=10)
    replay = random.Random(seed)
    expected = [replay.uniform(0.0, 0.2 * 2**n) for n in range(3)]
    gaps = _gaps(uploads)
    assert len(gaps) == 3
    for gap, delay in zip(gaps, expected, strict=True):
        # Each wait is the jittered draw, plus one scrape/exchange round trip on loopback.
        assert delay <= gap < delay + 0.4
    # Draws under a ceiling doubling per failure (0.2, 0.4, 0.8 s); after the 200 the next push
    # is 30 s away.
    assert len(server.requests("/upload")) == 4


def test_a_growing_ceiling_grows_the_waits(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    server.script("/federate", Reply(503))  # a failing Prometheus backs off too
    backoff = Backoff(base_seconds=0.1, cap_seconds=0.4, uniform=_highest)
    worker = _worker(make_settings("--interval", "30s"), backoff)
    scrapes = _run(worker, server, "/federate", 5, timeout=10)
    gaps = _gaps(scrapes)
    for gap, delay in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=True):  # capped at the cap
        assert delay <= gap < delay + 0.3


def test_429_retry_after_is_waited_out(server: Recorder, make_settings: SettingsFactory) -> None:
    server.script("/federate", _federate())
    server.script("/authorize", token_reply())
    server.script("/upload", Reply(429, b"rate limited", {"Retry-After": "2"}), Reply(200))
    # A backoff would wait 10 s here: only the Retry-After explains a 2 s gap.
    backoff = Backoff(base_seconds=10.0, cap_seconds=30.0, uniform=_highest)
    worker = _worker(make_settings("--interval", "30s"), backoff)
    (gap,) = _gaps(_run(worker, server, "/upload", 2, timeout=10))
    assert 2.0 <= gap < 2.5


def test_400_is_not_retried_before_the_next_interval(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    server.script("/federate", _federate())
    server.script("/authorize", token_reply())
    server.script("/upload", Reply(400, b"bad sample"), Reply(200))
    backoff = Backoff(base_seconds=0.05, cap_seconds=1.5, uniform=_highest)
    worker = _worker(make_settings("--interval", "1500ms"), backoff)
    (gap,) = _gaps(_run(worker, server, "/upload", 2, timeout=10))
    assert 1.5 <= gap < 2.0
    # The retry came from a new cycle: a new scrape, not the same payload resent at once.
    assert len(server.requests("/federate")) == 2
    assert backoff.failures == 0


def _rules(request: Recorded) -> list[str]:
    return parse_qs(urlsplit(request.target).query)["match[]"]


def test_reload_picks_up_a_changed_match_file_at_once(
    server: Recorder, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    match_file = tmp_path / "rules"
    match_file.write_text("up\n")
    server.script("/federate", _federate())
    server.script("/authorize", token_reply())
    server.script("/upload", Reply(200))
    worker = _worker(
        make_settings("--interval", "30s", "--match", "a", "--match-file", str(match_file)),
        Backoff(base_seconds=1.0, cap_seconds=30.0),
    )

    async def body() -> None:
        await asyncio.to_thread(server.wait_for, "/upload", 1)
        match_file.write_text('{__name__="b"}\n\nc\n')
        worker.reload()
        await asyncio.to_thread(server.wait_for, "/federate", 2, 5.0)
        # A file that cannot be read is refused and the last good configuration stays.
        match_file.unlink()
        with pytest.raises(ConfigError, match="cannot read --match-file"):
            worker.reload()
        assert worker.forwarder.runtime.rules == ("a", '{__name__="b"}', "c")

    asyncio.run(_while_running(worker, body))
    first, second = server.requests("/federate")[:2]
    assert _rules(first) == ["a", "up"]
    assert _rules(second) == ["a", '{__name__="b"}', "c"]
    assert second.at - first.at < 5.0  # the reload cut the 30 s wait short
