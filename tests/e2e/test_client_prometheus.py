"""End to end: a real Prometheus -> our client -> our server (on the session's Redis Cluster).

Prometheus (the Debian package) scrapes a small static endpoint every second, so its
``/federate`` has an ALERTS series with ``instance`` and ``job`` target labels; the client
federates it (Prometheus answers delimited protobuf to the client's Accept header) and pushes it;
the server's ``/federate`` then shows the series renamed, anonymized, elided and with ``_id``.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from client.forwarder import DELIMITED_CONTENT_TYPE, SCRAPE_ACCEPT
from dev.launch import ServerHandle
from dev.ports import free_ports
from dev.processes import ManagedProcess
from telemeter.transforms import anonymize
from tests.support import federate, series_of
from tests.unit.client.recorder import Recorder, text_reply

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PROMETHEUS = "/usr/bin/prometheus"
TARGET_METRICS = (
    "# TYPE ALERTS gauge\n"
    'ALERTS{alertname="Watchdog",alertstate="firing",severity="none"} 1\n'
    "# TYPE cluster_version gauge\n"
    'cluster_version{type="current",version="4.1.0",replica="a"} 1\n'
)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real Prometheus scraping a static endpoint; yields its URL and the target's address."""
    binary = shutil.which("prometheus") or (PROMETHEUS if Path(PROMETHEUS).exists() else None)
    if binary is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    with Recorder() as target:
        target.script("/metrics", text_reply(TARGET_METRICS))
        target_address = target.url.removeprefix("http://")
        (port,) = free_ports(1)
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: static\n"
            f"    static_configs:\n      - targets: ['{target_address}']\n"
        )
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        process = ManagedProcess("prometheus", argv, log_path=tmp_path / "prometheus.log").start()
        url = f"http://127.0.0.1:{port}"
        try:
            process.wait_http(url + "/-/ready", timeout=30)
            yield url, target_address
        finally:
            process.stop()


def _wait_for_federated(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.get(f"{url}/federate", params={"match[]": '{job="static"}'})
        if "ALERTS{" in answer.text:
            return
        time.sleep(0.2)
    raise AssertionError("Prometheus never federated the static target")


def test_prometheus_series_reach_the_server(
    prometheus: tuple[str, str],
    start_servers: Callable[..., ServerHandle],
    tmp_path: Path,
) -> None:
    prometheus_url, target_address = prometheus
    _wait_for_federated(prometheus_url)
    # The client's Accept header gets delimited protobuf from a real Prometheus.
    answer = httpx.get(
        f"{prometheus_url}/federate",
        params={"match[]": '{job="static"}'},
        headers={"Accept": SCRAPE_ACCEPT},
    )
    assert answer.headers["content-type"] == DELIMITED_CONTENT_TYPE
    server = start_servers(
        whitelist=['{__name__="alerts"}', '{__name__="cluster_version"}'],
        extra_args=["--elide-label", "replica", "--ratelimit", "0s"],
    )
    listen_port = free_ports(1)[0]
    argv = [
        sys.executable, "-m", "client.main",
        "--from", prometheus_url, "--to", server.external, "--id", "e2e-cluster",
        "--to-token", "a", "--match", '{job="static"}', "--interval", "30s",
        "--anonymize-labels", "instance", "--anonymize-salt", "s1",
        "--listen", f"127.0.0.1:{listen_port}",
    ]  # fmt: skip
    client = ManagedProcess("client", argv, log_path=tmp_path / "client.log").start()
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 20
        while not lines and time.monotonic() < deadline:
            lines = [line for line in series_of(federate(server), "e2e-cluster") if "{" in line]
            lines = [line for line in lines if not line.startswith("telemeter_push_time")]
            time.sleep(0.2)
        assert lines, client.log_tail()
        assert sorted(line.split("{", 1)[0] for line in lines) == ["alerts", "cluster_version"]
        hashed = f'instance="{anonymize("s1", target_address)}"'
        for line in lines:
            assert hashed in line and 'job="static"' in line and '_id="e2e-cluster"' in line
            assert "replica=" not in line
        assert target_address not in federate(server)
        assert client.alive
    finally:
        assert client.stop() == 0, client.log_tail()
