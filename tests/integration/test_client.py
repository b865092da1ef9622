"""Our client process pushing to our real server (on the session's Redis Cluster).

The source Prometheus is a recording stand-in here (the real one is in tests/e2e): what arrives
in the server's ``/federate`` is renamed, anonymized, elided and stamped with ``_id``, and the
client obeys the server's rate limit (429 + Retry-After) instead of hammering it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dev.launch import ServerHandle
from dev.ports import free_port
from dev.processes import ManagedProcess
from telemeter.transforms import anonymize
from tests.support import federate, series_of
from tests.unit.client.recorder import Recorder, text_reply

pytestmark = pytest.mark.integration

StartClient = Callable[..., tuple[ManagedProcess, str]]


def _source_text() -> str:
    now_ms = int(time.time() * 1000)
    return (
        "# TYPE ALERTS untyped\n"
        f'ALERTS{{alertname="Watchdog",alertstate="firing",instance="10.0.0.1:9090"}} 1 {now_ms}\n'
        "# TYPE up untyped\n"
        f'up{{instance="10.0.150.196:9099",job="node",pod="node-1"}} 1 {now_ms}\n'
        "# TYPE not_whitelisted untyped\n"
        f'not_whitelisted{{job="node"}} 3 {now_ms}\n'
    )


@pytest.fixture
def source() -> Iterator[Recorder]:
    with Recorder() as recorder:
        recorder.script("/federate", text_reply(_source_text()))
        yield recorder


@pytest.fixture
def start_client(tmp_path: Path) -> Iterator[StartClient]:
    """Start ``telemeter-client`` processes; stopped (SIGTERM) at teardown."""
    started: list[ManagedProcess] = []

    def start(*args: str) -> tuple[ManagedProcess, str]:
        port = free_port()
        argv = [
            sys.executable, "-m", "client.main",
            "--listen", f"127.0.0.1:{port}", "--to-token", "a", *args,
        ]  # fmt: skip
        process = ManagedProcess(
            f"client-{len(started)}", argv, log_path=tmp_path / f"client-{len(started)}.log"
        )
        started.append(process.start())
        base = f"http://127.0.0.1:{port}"
        process.wait_http(base + "/healthz")
        return process, base

    yield start
    for process in started:
        assert process.stop() == 0, process.log_tail()


def _wait_for_series(server: ServerHandle, cluster_id: str, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [
            line for line in series_of(federate(server), cluster_id) if "push_time" not in line
        ]
        if lines:
            return lines
        time.sleep(0.2)
    raise AssertionError(f"no series of {cluster_id} arrived")


def test_pushed_series_arrive_renamed_anonymized_and_elided(
    start_servers: Callable[..., ServerHandle], source: Recorder, start_client: StartClient
) -> None:
    server = start_servers(
        whitelist=['{__name__="alerts"}', '{__name__="up"}'],
        extra_args=["--elide-label", "pod", "--ratelimit", "0s"],
    )
    process, _ = start_client(
        "--from", source.url, "--to", server.external, "--id", "cluster-x",
        "--match", '{__name__=~".+"}', "--interval", "30s",
        "--anonymize-labels", "instance", "--anonymize-salt", "s1",
    )  # fmt: skip
    lines = _wait_for_series(server, "cluster-x")
    names = sorted(line.split("{", 1)[0] for line in lines)
    assert names == ["alerts", "up"]  # ALERTS renamed; not_whitelisted dropped by the server
    alerts = next(line for line in lines if line.startswith("alerts{"))
    up = next(line for line in lines if line.startswith("up{"))
    assert f'instance="{anonymize("s1", "10.0.0.1:9090")}"' in alerts
    assert 'instance="bx5-9vHZu36u"' in up  # the Go client's hash of 10.0.150.196:9099
    assert not any("10.0.150.196" in line for line in lines)  # only the anonymized value
    assert all('_id="cluster-x"' in line for line in lines)
    assert "pod=" not in up  # --elide-label on the server
    assert process.alive


PUSH_INTERVAL_S = 0.5


def test_client_obeys_the_server_rate_limit(
    start_servers: Callable[..., ServerHandle], source: Recorder, start_client: StartClient
) -> None:
    # The server allows one upload per 4m30s; the client would push every PUSH_INTERVAL_S.
    server = start_servers(whitelist=['{__name__="up"}'])
    _, base = start_client(
        "--from", source.url, "--to", server.external, "--id", "cluster-rl",
        "--match", "up", "--interval", f"{PUSH_INTERVAL_S}s",
    )  # fmt: skip
    _wait_for_series(server, "cluster-rl")
    sent = {
        code: f'metricsclient_http_requests_total{{client="federate_to",status_code="{code}"}} 1.0'
        for code in ("200", "429")
    }
    deadline = time.monotonic() + 20
    while sent["429"] not in (metrics := httpx.get(f"{base}/metrics").text.splitlines()):
        assert time.monotonic() < deadline, "no 429 within 20 s"
        time.sleep(0.2)
    # One accepted upload, one 429 whose Retry-After (minutes) the client is now waiting out:
    # over the next four intervals it neither scrapes nor pushes again. (Counting scrapes from
    # the start would count retries of a slow first push on a busy machine.)
    assert sent["200"] in metrics
    scrapes = len(source.requests("/federate"))
    time.sleep(4 * PUSH_INTERVAL_S)  # on purpose: four intervals in which nothing may happen
    assert len(source.requests("/federate")) == scrapes
    assert sent["429"] in httpx.get(f"{base}/metrics").text.splitlines()
