"""A real Prometheus for the local stack: its configuration, its process and its HTTP API.

In the demo and the end-to-end tests one Debian ``prometheus`` process plays two roles:

* the *cluster's* Prometheus the client federates from (it scrapes itself and evaluates an
  always-firing ``Watchdog`` alert, as OpenShift does, so ``ALERTS`` exists), with the external
  label ``prometheus_replica`` that the servers remove with ``--elide-label``;
* the *central* Prometheus that scrapes every server pod's internal ``/federate`` and
  ``/metrics``.

:func:`federate_scrape_config` is the recommended central scrape job;
``docs/prometheus-scrape.yaml`` shows the same job (a test checks that the two agree), so the demo
and the tests run what the docs recommend.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dev.ports import free_port
from dev.processes import ManagedProcess

log = logging.getLogger(__name__)

DEBIAN_PROMETHEUS = "/usr/bin/prometheus"
FEDERATE_JOB = "telemeter-federate"
SERVER_JOB = "telemeter-server"
SOURCE_JOB = "prometheus"
REPLICA_LABEL = "prometheus_replica"
# The federate job's targets get this prefix on their `instance` label so the metric relabeling
# can tell the pod's own label from an `instance` label a cluster pushed (see the docs file).
POD_INSTANCE_PREFIX = "telemeter-pod/"
WATCHDOG_ALERT = "Watchdog"
_START_ATTEMPTS = 3  # a probed free port can be taken before prometheus binds it


def federate_scrape_config(
    targets: Sequence[str], *, job_name: str = FEDERATE_JOB
) -> dict[str, Any]:
    """The central scrape job for the pods' internal ``/federate`` (docs/architecture.md, D6).

    ``honor_labels`` keeps the labels the clusters pushed (``_id``, their own ``job`` and
    ``instance``). A federated series without its own ``instance`` would still get the pod's
    target ``instance``, so its identity would change when its slot moves to another pod. The
    target ``instance`` is therefore marked with a prefix (still unique per pod, so ``up`` and the
    other per-target series stay distinct) and removed again from the scraped series, where only
    a label carrying the mark can have come from the target. ``pod`` and any other per-pod target
    label are not attached at all (``labeldrop`` at the target level leaves the pushed labels
    alone, since those arrive in the scraped text, after target relabeling).
    """
    return {
        "job_name": job_name,
        "honor_labels": True,
        "metrics_path": "/federate",
        "static_configs": [{"targets": list(targets)}],
        "relabel_configs": [
            {
                "source_labels": ["__address__"],
                "target_label": "instance",
                "replacement": POD_INSTANCE_PREFIX + "${1}",
            },
            {"action": "labeldrop", "regex": "pod"},
        ],
        "metric_relabel_configs": [
            {
                "source_labels": ["instance"],
                "regex": POD_INSTANCE_PREFIX + ".*",
                "target_label": "instance",
                "replacement": "",
            },
        ],
    }


def server_scrape_config(pods: Mapping[str, str], *, job_name: str = SERVER_JOB) -> dict[str, Any]:
    """The job scraping each pod's own ``/metrics`` (normal labels plus ``pod``)."""
    return {
        "job_name": job_name,
        "static_configs": [
            {"targets": [address], "labels": {"pod": name}} for name, address in pods.items()
        ],
    }


def watchdog_rules() -> dict[str, Any]:
    """An always-firing alert, so the source Prometheus has an ``ALERTS`` series to push."""
    return {
        "groups": [
            {
                "name": "telemeter-demo",
                "rules": [
                    {
                        "alert": WATCHDOG_ALERT,
                        "expr": "vector(1)",
                        "labels": {"severity": "none"},
                        "annotations": {"summary": "Always firing, to show ALERTS arriving."},
                    }
                ],
            }
        ]
    }


def stack_config(
    *,
    self_address: str,
    federate_targets: Sequence[str],
    server_targets: Mapping[str, str],
    rule_file: Path,
    scrape_interval: str = "1s",
    replica: str = "demo-0",
    extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The whole configuration of the stack's Prometheus (source and central roles)."""
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": scrape_interval,
            # Prometheus adds external labels to its /federate output, as a cluster's
            # monitoring stack does; the servers elide this one.
            "external_labels": {REPLICA_LABEL: replica},
        },
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {"job_name": SOURCE_JOB, "static_configs": [{"targets": [self_address]}]},
            federate_scrape_config(federate_targets),
            server_scrape_config(server_targets),
            *extra_scrape_configs,
        ],
    }


def find_prometheus() -> str | None:
    """The ``prometheus`` binary: on PATH, else the Debian package's path, else None."""
    found = shutil.which("prometheus")
    if found:
        return found
    return DEBIAN_PROMETHEUS if Path(DEBIAN_PROMETHEUS).exists() else None


@dataclass
class PrometheusHandle:
    """A running Prometheus and its base URL."""

    process: ManagedProcess
    url: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The ``result`` of an instant query (raises on an HTTP or PromQL error)."""
        return query(self.url, promql)


def start_prometheus(
    *,
    workdir: Path,
    federate_targets: Sequence[str],
    server_targets: Mapping[str, str],
    scrape_interval: str = "1s",
    binary: str | None = None,
    extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
) -> PrometheusHandle:
    """Write the stack's configuration (plus ``extra_scrape_configs``) and start Prometheus on a
    free port; wait until ready.

    JSON is valid YAML, so the configuration is written with :mod:`json` (no YAML dependency).
    """
    binary = binary or find_prometheus()
    if binary is None:
        raise FileNotFoundError(
            "prometheus not found: run scripts/bootstrap.sh as root "
            "(it runs apt-get install prometheus) or put it on PATH"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    rule_file = workdir / "rules.yml"
    rule_file.write_text(json.dumps(watchdog_rules(), indent=2))
    last_error: Exception | None = None
    for _ in range(_START_ATTEMPTS):
        address = f"127.0.0.1:{free_port()}"
        config_file = workdir / "prometheus.yml"
        config = stack_config(
            self_address=address,
            federate_targets=federate_targets,
            server_targets=server_targets,
            rule_file=rule_file,
            scrape_interval=scrape_interval,
            extra_scrape_configs=extra_scrape_configs,
        )
        config_file.write_text(json.dumps(config, indent=2))
        try:
            handle = _launch("prometheus", binary, workdir, config_file, address, LIFECYCLE)
        except (RuntimeError, TimeoutError) as exc:
            last_error = exc
            log.warning("prometheus did not start, retrying error=%s", exc)
            continue
        log.info("prometheus ready url=%s", handle.url)
        return handle
    raise RuntimeError(f"prometheus did not start after {_START_ATTEMPTS} attempts: {last_error}")


def query(url: str, promql: str, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Run an instant query against the Prometheus at ``url``; return its ``result`` list."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=timeout)
    answer.raise_for_status()
    body = answer.json()
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(
    url: str, promql: str, *, timeout: float, process: ManagedProcess | None = None
) -> list[dict[str, Any]]:
    """Poll an instant query until it returns a non-empty result; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, promql)
        if result:
            return result
        if process is not None and not process.alive:
            raise RuntimeError(f"prometheus exited:\n{process.log_tail()}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no result for {promql!r} after {timeout}s")
        time.sleep(0.2)


def start_receiver(
    *, workdir: Path, address: str | None = None, binary: str | None = None
) -> PrometheusHandle:
    """A Prometheus that only receives remote write (``/api/v1/write``), the stand-in for
    Thanos Receive or Mimir. Given ``address``, it listens there (a restart after an outage
    comes back at the same URL)."""
    binary = binary or find_prometheus()
    if binary is None:
        raise FileNotFoundError("prometheus not found: run scripts/bootstrap.sh as root")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "receiver.yml"
    config_file.write_text(json.dumps({"global": {"scrape_interval": "15s"}}))
    address = address or f"127.0.0.1:{free_port()}"
    return _launch("receiver", binary, workdir, config_file, address, RECEIVER)


LIFECYCLE = "--web.enable-lifecycle"
RECEIVER = "--web.enable-remote-write-receiver"


def _launch(
    name: str, binary: str, workdir: Path, config_file: Path, address: str, flag: str
) -> PrometheusHandle:
    """Start one Prometheus and wait until it is ready (stopped again if it is not)."""
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address={address}",
        "--storage.tsdb.retention.time=1d",
        flag,
    ]
    process = ManagedProcess(name, argv, log_path=workdir / f"{name}.log").start()
    url = f"http://{address}"
    try:
        process.wait_http(url + "/-/ready", timeout=30)
    except BaseException:
        process.stop()
        raise
    return PrometheusHandle(process, url)
