"""End to end: the whole stack of `make demo` (the same :class:`Stack`), checked in Prometheus.

The first four tests are the checks of the Go project's integration test, run against the central
Prometheus; then the series count, one serving pod per cluster (ring invariant I1), and last,
because it kills a pod, the crash hand-over (I5) with no acknowledged push lost (I6). The tests
share one stack (module scope) and run in file order.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dev.prometheus import (
    FEDERATE_JOB,
    POD_INSTANCE_PREFIX,
    REPLICA_LABEL,
    WATCHDOG_ALERT,
    federate_scrape_config,
    find_prometheus,
    wait_for,
)
from dev.stack import PUSH_TIME_METRIC, Stack, StackConfig, federated_series
from tests.conftest import REDIS_URL_ENV
from tests.support import wait_for as poll  # dev.prometheus has a wait_for of its own

pytestmark = pytest.mark.e2e

DOCS_SCRAPE_CONFIG = Path(__file__).resolve().parents[2] / "docs" / "prometheus-scrape.yaml"


def _scalar(result: list[dict[str, Any]]) -> float:
    """The value of a one-element instant vector (0 for an empty one)."""
    return float(result[0]["value"][1]) if result else 0.0


def _closed(url: str) -> bool:
    host, _, port = url.removeprefix("http://").rpartition(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The demo's stack, with series already arriving; every process and port checked closed."""
    if find_prometheus() is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    redis_url = os.environ.get(REDIS_URL_ENV) or None
    if redis_url is None and shutil.which("redis-server") is None:
        pytest.fail(f"redis-server is not on PATH: install it or set {REDIS_URL_ENV}")
    config = StackConfig(workdir=tmp_path_factory.mktemp("stack"), redis_url=redis_url)
    with Stack(config) as running:
        running.wait_for_series(timeout=60)
        yield running
        processes = running.processes()
        redis = running.redis
        urls = [running.prometheus_url, running.client_url, running.authorization_url]
        urls += [url for pod in running.pods for url in (pod.external, pod.internal)]
        assert running.balancer is not None
        urls.append(running.balancer.url)
    assert [proc.name for proc in processes if proc.alive] == []
    if redis is not None:
        assert [node.port for node in redis.nodes if node.pid is not None] == []
    assert [url for url in urls if not _closed(url)] == []


def _pushed_series(stack: Stack) -> int:
    """Series in the client's last payload."""
    return sum(federated_series(stack.client_payload()).values())


# ----- the Go integration test's four checks ---------------------------------------------------


def test_cluster_series_arrive(stack: Stack) -> None:
    assert _scalar(stack.query('count({_id="test"})')) > 0


def test_the_pushed_series_are_forwarded_to_the_remote_write_receiver(stack: Stack) -> None:
    assert stack.receiver is not None
    cid = stack.config.cluster_id
    result = wait_for(stack.receiver.url, f'count({{_id="{cid}"}})', timeout=60)
    assert int(result[0]["value"][1]) > 0


def test_renamed_metric_arrives_under_its_new_name(stack: Stack) -> None:
    assert stack.query('prometheus_build_info{_id=""}'), "the source has the original name"
    assert stack.query('build_info{_id="test"}')
    assert stack.query('prometheus_build_info{_id="test"}') == []


def test_alerts_arrive_as_alerts(stack: Stack) -> None:
    assert stack.query(f'alerts{{_id="test",alertname="{WATCHDOG_ALERT}",alertstate="firing"}}')
    assert stack.query('ALERTS{_id="test"}') == []


def test_elided_label_is_absent(stack: Stack) -> None:
    assert f"{REPLICA_LABEL}=" in stack.client_payload(), "the client pushed the label"
    assert stack.query(f'{{_id="test",{REPLICA_LABEL}!=""}}') == []


# ----- series identity and count ---------------------------------------------------------------


def test_prometheus_holds_exactly_the_pushed_series(stack: Stack) -> None:
    expected = _pushed_series(stack) + 1  # plus the cluster's telemeter_push_time_seconds

    def check() -> str | None:
        count = _scalar(stack.query('count({_id="test"})'))
        return None if count == expected else f"{count:g} series, expected {expected}"

    poll(check, timeout=3 * stack.config.client_interval, what="series in Prometheus")
    # The pods' target labels are not attached to federated series (docs/prometheus-scrape.yaml).
    assert stack.query(f'{{_id="test",instance=~"{POD_INSTANCE_PREFIX}.*"}}') == []
    # Each pushed series is one series in Prometheus, with the labels it was pushed with: the
    # elided label removed, and `job` from the target only where the cluster pushed none.
    pushed = set()
    for family in text_string_to_metric_families(stack.client_payload()):
        for sample in family.samples:
            labels = {**sample.labels, "__name__": sample.name}
            labels.pop(REPLICA_LABEL)
            labels.setdefault("job", FEDERATE_JOB)
            pushed.add(frozenset(labels.items()))
    stored = {frozenset(s["metric"].items()) for s in stack.query('{_id="test"}')}
    stored = {labels for labels in stored if ("__name__", PUSH_TIME_METRIC) not in labels}
    assert stored == pushed
    (push_time,) = stack.query(f'{PUSH_TIME_METRIC}{{_id="test"}}')
    assert push_time["metric"] == {"__name__": PUSH_TIME_METRIC, "_id": "test", "job": FEDERATE_JOB}


def test_stack_runs_the_documented_scrape_config(stack: Stack) -> None:
    yaml = pytest.importorskip("yaml")
    documented = yaml.safe_load(DOCS_SCRAPE_CONFIG.read_text())["scrape_configs"]
    (doc_job,) = [job for job in documented if job["job_name"] == FEDERATE_JOB]
    ours = federate_scrape_config(["unused:1"])
    for key in ("honor_labels", "metrics_path", "relabel_configs", "metric_relabel_configs"):
        assert doc_job[key] == ours[key], key


# ----- the ring: one pod per cluster, and a crash ----------------------------------------------


def _serving(stack: Stack) -> list[str]:
    """The live pods whose /federate has the cluster's series."""
    return [pod for pod, clusters in stack.pod_series().items() if "test" in clusters]


def test_each_cluster_is_served_by_exactly_one_pod(stack: Stack) -> None:
    cfg = stack.config
    # I2: the ring settles within one lease plus two heartbeats of stable membership.
    settle = cfg.ring_lease + 2 * cfg.ring_heartbeat + 2.0
    poll(
        lambda: None if len(_serving(stack)) == 1 else f"served by {_serving(stack)}",
        timeout=settle,
        what="one serving pod",
    )
    time.sleep(2 * cfg.ring_heartbeat)  # and it stays so
    (pod,) = _serving(stack)
    assert stack.pod_series()[pod]["test"] == _pushed_series(stack) + 1


def _wait_for_ack(stack: Stack, after: int, *, timeout: float) -> int:
    """Wait until the client has more than ``after`` uploads answered 200; return the count."""
    acks = after

    def check() -> str | None:
        nonlocal acks
        acks = stack.client_acks()
        return None if acks > after else f"{acks} acknowledged uploads"

    poll(check, timeout=timeout, what="an acknowledged upload")
    return acks


def test_killed_pod_is_replaced_and_no_acknowledged_push_is_lost(stack: Stack) -> None:
    cfg = stack.config
    expected = _pushed_series(stack) + 1
    serving = _serving(stack)
    victim = stack.servers[serving[0] if serving else cfg.pods[0]]
    # Kill between two pushes, once the last one has been scraped: every later push must reach
    # Prometheus, through whichever pod takes over the cluster's range.
    acked_before = _wait_for_ack(stack, stack.client_acks(), timeout=2 * cfg.client_interval)
    time.sleep(2 * cfg.scrape_interval)
    killed_at = time.time()
    victim.process.stop(signal.SIGKILL)
    assert not victim.process.alive

    def complete() -> str | None:
        fresh = _scalar(stack.query(f'count(timestamp({{_id="test"}}) > {killed_at})'))
        total = _scalar(stack.query('count({_id="test"})'))
        if fresh == total == expected:
            return None
        return f"{fresh:g} series pushed after the kill, {total:g} in all, expected {expected}"

    # One lease for the range to move, one client interval for the next push, one scrape for
    # Prometheus to see it, plus a second for a loaded machine.
    budget = cfg.ring_lease + cfg.client_interval + cfg.scrape_interval + 1.0
    took = poll(complete, timeout=budget, what="complete series after the kill")
    assert took <= budget
    assert [pod.name for pod in stack.pods if not pod.process.alive] == [victim.name]

    # I6: every upload answered 200 since the kill shows up in Prometheus as its own push time.
    acked_after = _wait_for_ack(stack, acked_before + 1, timeout=2 * cfg.client_interval)
    time.sleep(2 * cfg.scrape_interval)
    assert stack.client_acks() == acked_after, "no push between the last ack and the query"
    window = math.ceil(time.time() - killed_at) + 5
    pushes = {
        float(value)
        for series in stack.query(f'{PUSH_TIME_METRIC}{{_id="test"}}[{window}s]')
        for _, value in series["values"]
        if float(value) > killed_at
    }
    assert len(pushes) == acked_after - acked_before, sorted(pushes)
