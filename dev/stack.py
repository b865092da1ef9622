"""The local stack: the whole system on free loopback ports, for `make demo` and the e2e tests.

One implementation serves `make demo` (`telemeter-stack`, :func:`main`) and the end-to-end tests
(docs/architecture.md, "Components": the launcher is the default, the demo and the test
fixture); the helpers that start one process are in :mod:`dev.launch`. :class:`Stack` runs the
whole system on one machine:

* a Redis Cluster (:class:`~dev.redis_cluster.LocalRedisCluster`, or an existing one);
* the authorization stand-in and two server pods sharing one signing key, with short ring times;
* a TCP load balancer in this process, in front of the pods' external listeners (the client
  pushes to it, so it keeps pushing when a pod dies, as behind a Kubernetes Service);
* a Prometheus (:mod:`dev.prometheus`) that is both the cluster's Prometheus the
  client federates from and the central one scraping every pod's ``/federate``;
* the client, pushing the cluster ``test`` every few seconds.

With ``prometheus_url`` the client federates from that existing Prometheus instead; the central
scraper is still ours, since it is what shows the pushed series arriving.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dev.balancer import Balancer
from dev.launch import (
    ServerHandle,
    start_authorization_server,
    start_server,
    write_signing_key,
)
from dev.ports import free_ports
from dev.processes import ManagedProcess
from dev.prometheus import (
    REPLICA_LABEL,
    WATCHDOG_ALERT,
    PrometheusHandle,
    find_prometheus,
    start_prometheus,
    start_receiver,
    wait_for,
)
from dev.redis_cluster import LocalRedisCluster

log = logging.getLogger(__name__)

CLUSTER_ID = "test"
DEMO_TOKEN = "demo-token"  # noqa: S105 - the stand-in's demo token, not a secret
PODS = ("pod-a", "pod-b")
# `_id=""` keeps the series the central role ingested from the pods out of the client's scrape:
# it federates from the same Prometheus, and would otherwise push its own pushes back.
SOURCE_MATCHES = ('{__name__=~"up|ALERTS|prometheus_build_info",_id=""}',)
# Giving any --rename switches off the client's default ALERTS=alerts, so it is repeated here.
RENAMES = ("ALERTS=alerts", "prometheus_build_info=build_info")
PUSH_TIME_METRIC = "telemeter_push_time_seconds"
TRY_QUERY = 'count by (__name__) ({_id="%s"})'
_ACKS_SAMPLE = "metricsclient_http_requests_total"


def _go_duration(seconds: float) -> str:
    return f"{seconds:g}s"


@dataclass(frozen=True)
class StackConfig:
    """What :class:`Stack` starts; the defaults are the demo's short intervals.

    Times are in seconds. ``redis_url`` uses an existing Redis Cluster instead of starting one;
    ``prometheus_url`` makes the client federate from an existing Prometheus (ours still scrapes
    the pods). ``workdir`` keeps configs, data and logs (default: a temp dir removed at stop).
    """

    workdir: Path | None = None
    redis_url: str | None = None
    prometheus_url: str | None = None
    pods: tuple[str, ...] = PODS
    cluster_id: str = CLUSTER_ID
    token: str = DEMO_TOKEN
    client_interval: float = 5.0
    scrape_interval: float = 1.0
    ring_heartbeat: float = 0.5
    ring_lease: float = 3.0
    # Below the client interval: each push must be accepted, not rate limited.
    ratelimit: float = 2.0
    matches: tuple[str, ...] = SOURCE_MATCHES
    renames: tuple[str, ...] = RENAMES
    anonymize_labels: str = "instance"
    anonymize_salt: str = "demo"
    elide_label: str = REPLICA_LABEL
    server_args: tuple[str, ...] = ()
    # A second Prometheus receiving the pods' remote write (--forward-url), as Thanos would.
    remote_write: bool = True


def federated_series(text: str, *, label: str = "_id") -> dict[str, int]:
    """Series per cluster (value of ``label``) in a ``/federate`` text; one sample line each."""
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            counts[sample.labels.get(label, "")] += 1
    return dict(counts)


class Stack:
    """The whole system on loopback: :meth:`start` it, use it, :meth:`stop` it (or ``with``)."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.workdir = Path()
        self.redis_url = ""
        self.redis: LocalRedisCluster | None = None
        self.authorization_url = ""
        self.servers: dict[str, ServerHandle] = {}
        self.balancer: Balancer | None = None
        self.prometheus: PrometheusHandle | None = None
        self.receiver: PrometheusHandle | None = None
        self.client: ManagedProcess | None = None
        self.client_url = ""
        self._cleanup = contextlib.ExitStack()

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every component (in dependency order) and return once the client runs."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything that was started, in reverse order. Safe to call repeatedly."""
        self._cleanup.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        cfg = self.config
        began = time.monotonic()
        if cfg.workdir is None:
            self.workdir = Path(
                self._cleanup.enter_context(tempfile.TemporaryDirectory(prefix="telemeter-stack-"))
            )
        else:
            self.workdir = cfg.workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        if cfg.redis_url:
            self.redis_url = cfg.redis_url
        else:
            self.redis = LocalRedisCluster(base_dir=self.workdir / "redis")
            self._cleanup.enter_context(self.redis)
            self.redis_url = self.redis.url
        auth, self.authorization_url = start_authorization_server(
            workdir=self.workdir, tokens=[cfg.token]
        )
        self._cleanup.callback(auth.stop)
        self._start_servers()
        self.balancer = Balancer([h.external.removeprefix("http://") for h in self.pods])
        self._cleanup.enter_context(self.balancer.start())
        self.prometheus = start_prometheus(
            workdir=self.workdir / "prometheus",
            federate_targets=[h.internal.removeprefix("http://") for h in self.pods],
            server_targets={h.name: h.internal.removeprefix("http://") for h in self.pods},
            scrape_interval=_go_duration(cfg.scrape_interval),
        )
        self._cleanup.callback(self.prometheus.process.stop)
        if cfg.prometheus_url is None:
            self._wait_for_source()
        self._start_client()
        log.info("stack started seconds=%.1f workdir=%s", time.monotonic() - began, self.workdir)

    def _start_servers(self) -> None:
        cfg = self.config
        key = write_signing_key(self.workdir / "signing.pem")
        forward: list[str] = []
        if cfg.remote_write:
            self.receiver = start_receiver(workdir=self.workdir / "receiver")
            self._cleanup.callback(self.receiver.process.stop)
            forward = ["--forward-url", f"{self.receiver.url}/api/v1/write", "--forward-interval",
                       "0.5s"]  # fmt: skip
        extra = [
            *forward,
            "--elide-label", cfg.elide_label,
            "--ratelimit", _go_duration(cfg.ratelimit),
            "--ring-heartbeat", _go_duration(cfg.ring_heartbeat),
            "--ring-lease", _go_duration(cfg.ring_lease),
            *cfg.server_args,
        ]  # fmt: skip
        # Started together and waited for after, so the pods' start-ups overlap.
        for name in cfg.pods:
            handle = start_server(
                redis_url=self.redis_url,
                workdir=self.workdir,
                name=name,
                shared_key=key,
                authorize=self.authorization_url,
                extra_args=extra,
                wait=False,
            )
            self._cleanup.callback(handle.process.stop)
            self.servers[name] = handle
        for handle in self.pods:
            handle.process.wait_http(handle.external + "/healthz")
            handle.process.wait_http(handle.internal + "/healthz")

    def _wait_for_source(self) -> None:
        """Wait until Prometheus has scraped every target and fired the alert once.

        Then the client's first push already holds every series it will ever push, so the
        number of series in Prometheus is stable from the first push on.
        """
        prometheus = self._prometheus()
        targets = 1 + 2 * len(self.pods)  # itself, and each pod's /federate and /metrics
        timeout = 20 + 5 * self.config.scrape_interval
        wait_for(
            prometheus.url,
            f"count(up == 1) >= {targets}",
            timeout=timeout,
            process=prometheus.process,
        )
        wait_for(
            prometheus.url,
            f'ALERTS{{alertname="{WATCHDOG_ALERT}",alertstate="firing"}}',
            timeout=timeout,
            process=prometheus.process,
        )

    def _start_client(self) -> None:
        cfg = self.config
        assert self.balancer is not None
        (port,) = free_ports(1)
        argv = [
            sys.executable, "-m", "client.main",
            "--from", self.source_url,
            "--id", cfg.cluster_id,
            "--to", self.balancer.url,
            "--to-token", cfg.token,
            "--interval", _go_duration(cfg.client_interval),
            *(arg for match in cfg.matches for arg in ("--match", match)),
            *(arg for rename in cfg.renames for arg in ("--rename", rename)),
            "--anonymize-labels", cfg.anonymize_labels,
            "--anonymize-salt", cfg.anonymize_salt,
            "--listen", f"127.0.0.1:{port}",
        ]  # fmt: skip
        self.client = ManagedProcess("client", argv, log_path=self.workdir / "client.log")
        self.client.start()
        self._cleanup.callback(self.client.stop)
        self.client_url = f"http://127.0.0.1:{port}"
        self.client.wait_http(self.client_url + "/healthz")

    # ----- addresses and state ---------------------------------------------------------------

    @property
    def pods(self) -> list[ServerHandle]:
        """The server pods, in start order."""
        return list(self.servers.values())

    @property
    def prometheus_url(self) -> str:
        """The central Prometheus (ours)."""
        return self._prometheus().url

    @property
    def source_url(self) -> str:
        """The Prometheus the client federates from."""
        return self.config.prometheus_url or self.prometheus_url

    def _prometheus(self) -> PrometheusHandle:
        if self.prometheus is None:
            raise RuntimeError("the stack's Prometheus is not running")
        return self.prometheus

    def processes(self) -> list[ManagedProcess]:
        """Every child process this stack started and still tracks (not Redis's nodes)."""
        procs = [handle.process for handle in self.pods]
        if self.prometheus is not None:
            procs.append(self.prometheus.process)
        if self.receiver is not None:
            procs.append(self.receiver.process)
        if self.client is not None:
            procs.append(self.client)
        return procs

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query against the central Prometheus."""
        return self._prometheus().query(promql)

    def pod_series(self) -> dict[str, dict[str, int]]:
        """Per live pod: series per cluster in its ``/federate`` right now."""
        result = {}
        for handle in self.pods:
            if handle.process.alive:
                answer = httpx.get(handle.internal + "/federate", timeout=10)
                answer.raise_for_status()
                result[handle.name] = federated_series(answer.text)
        return result

    def client_payload(self) -> str:
        """The client's last payload (its ``/federate``), as text exposition."""
        answer = httpx.get(self.client_url + "/federate", timeout=10)
        answer.raise_for_status()
        return answer.text

    def client_acks(self) -> int:
        """How many uploads the client got answered 200 (from its self-metrics)."""
        answer = httpx.get(self.client_url + "/metrics", timeout=10)
        answer.raise_for_status()
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == _ACKS_SAMPLE
                    and labels.get("client") == "federate_to"
                    and labels.get("status_code") == "200"
                ):
                    return int(sample.value)
        return 0

    def wait_for_series(self, *, timeout: float = 60.0) -> int:
        """Wait until the cluster's series are in Prometheus; return how many there are."""
        prometheus = self._prometheus()
        result = wait_for(
            prometheus.url,
            f'count({{_id="{self.config.cluster_id}"}})',
            timeout=timeout,
            process=prometheus.process,
        )
        return int(float(result[0]["value"][1]))

    # ----- what the demo prints --------------------------------------------------------------

    def describe(self) -> str:
        """The addresses of every component, for people."""
        cfg = self.config
        assert self.balancer is not None
        lines = [
            f"telemeter stack (logs and data in {self.workdir})",
            f"  Prometheus      {self.prometheus_url}",
            f"  load balancer   {self.balancer.url}   (the client pushes here)",
        ]
        if self.receiver is not None:
            lines.append(f"  receiver        {self.receiver.url}   (the pods' remote write)")
        for handle in self.pods:
            lines.append(
                f"  {handle.name:<15} {handle.external}   internal {handle.internal}/federate"
            )
        lines += [
            f"  authorization   {self.authorization_url}   (token {cfg.token!r})",
            f"  Redis Cluster   {self.redis_url}",
            f"  client          {self.client_url}/federate   (cluster {cfg.cluster_id!r}, "
            f"every {_go_duration(cfg.client_interval)}, from {self.source_url})",
        ]
        return "\n".join(lines)

    def summary(self) -> str:
        """Clusters and series federated per pod, and a query to try."""
        cid = self.config.cluster_id
        lines = ["series are arriving:"]
        for name, clusters in self.pod_series().items():
            lines.append(
                f"  {name:<15} {len(clusters)} cluster(s), {sum(clusters.values())} series "
                "federated"
            )
        in_prometheus = self.query(f'count({{_id="{cid}"}})')
        count = in_prometheus[0]["value"][1] if in_prometheus else "0"
        promql = TRY_QUERY % cid
        graph = f"{self.prometheus_url}/graph?g0.expr={quote(promql)}&g0.tab=1"
        lines += [
            f"  Prometheus      {count} series of cluster {cid!r}",
        ]
        if self.receiver is not None:
            forwarded = self.receiver.query(f'count({{_id="{cid}"}})')
            n = forwarded[0]["value"][1] if forwarded else "0"
            lines.append(f"  receiver        {n} series of cluster {cid!r} (remote write)")
        lines += [
            f"try:  {promql}",
            f"      {graph}",
        ]
        return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="telemeter-stack",
        description=(
            "Run the whole system on this machine (Redis Cluster, two servers behind a load "
            "balancer, the authorization stand-in, Prometheus, a client) until Ctrl-C."
        ),
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="use this existing Redis Cluster (comma-separated redis:// URLs) instead of "
        "starting one",
    )
    parser.add_argument(
        "--prometheus-url",
        default=None,
        help="let the client federate from this existing Prometheus; the stack's own "
        "Prometheus still scrapes the servers",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep configs, data and logs here (default: a temp dir removed on exit)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the stack does")
    return parser.parse_args(argv)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """``telemeter-stack``: start the stack, print where things are, run until Ctrl-C/SIGTERM."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if find_prometheus() is None:  # ours is the central scraper even with --prometheus-url
        print(
            "telemeter-stack: prometheus is not installed; run `make demo` as root", file=sys.stderr
        )
        return 1
    signal.signal(signal.SIGTERM, _raise_interrupt)
    config = StackConfig(
        workdir=args.workdir, redis_url=args.redis_url, prometheus_url=args.prometheus_url
    )
    stack = Stack(config)
    try:
        print("starting the stack ...", flush=True)
        stack.start()
        print(stack.describe(), flush=True)
        print("waiting for the first push to reach Prometheus ...", flush=True)
        stack.wait_for_series(timeout=120)
        print(stack.summary(), flush=True)
        print("running; Ctrl-C stops everything", flush=True)
        while True:
            dead = [proc.name for proc in stack.processes() if not proc.alive]
            if dead:
                print(f"telemeter-stack: {', '.join(dead)} exited; stopping", file=sys.stderr)
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"telemeter-stack: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
