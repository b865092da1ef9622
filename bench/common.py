"""What the benchmark scripts share: the stack, the load, CPU and memory readings, medians.

Everything runs on loopback, on free ports, and is stopped by the context managers here, even
when a benchmark fails half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from app import keys
from client.benchmark import BenchmarkConfig, Summary, run_benchmark
from dev.compiled import stale_extensions
from dev.launch import KEEP_ALL, ServerHandle, start_server, write_signing_key
from dev.ports import free_ports
from dev.processes import ManagedProcess
from dev.redis_cluster import LocalRedisCluster
from dev.upstream import go_binaries

STANDARD_PAYLOAD = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "testdata"
    / "upstream"
    / "timeseries.txt"
).resolve()
GO_UPLOAD_CPU_MS = 1.84  # Go telemeter-server 2019, server CPU per accepted standard upload
GO_RSS_PER_SERIES = 3200  # Go keeps ~3.2 KB of RSS per stored series
CLK_TCK = os.sysconf("SC_CLK_TCK")
# On a machine with two or more cores the server under test gets core 0 to itself; Redis and the
# load generator share the others.
CORES = os.cpu_count() or 1
SERVER_CPUS = "0"
OTHER_CPUS = f"1-{CORES - 1}" if CORES > 1 else "0"
# Short ring times: a pod started after another one stopped takes over every range within ~2 s.
RING_ARGS = ("--ring-heartbeat", "0.5s", "--ring-lease", "2s")
# The servers whose CPU per upload is compared with Go's run the ring at its defaults, as
# production does: at the short times its heartbeats alone cost Redis ~0.03 ms per upload at
# 100 uploads/s (docs/benchmarks.md, "Fixed costs cut in the evening of 2026-12-03").
PRODUCTION_RING: tuple[str, ...] = ()
FILL_BATCH = 50  # clusters pushed at once when filling (the server takes 64 uploads at a time)


def out(line: str = "") -> None:
    """Write one line of a benchmark's report on stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def standard_payload() -> bytes:
    """The standard payload (232 series); exits with the reason when the test data is absent."""
    if not STANDARD_PAYLOAD.exists():
        raise SystemExit(f"standard payload not found at {STANDARD_PAYLOAD} (../shared/testdata)")
    return STANDARD_PAYLOAD.read_bytes()


def median(values: Sequence[float]) -> float:
    """The median (the figure every benchmark reports over its runs)."""
    return float(statistics.median(values))


def pin(pid: int, cpus: str) -> None:
    """Bind every thread of a process to ``cpus`` (a taskset list such as ``"0"``)."""
    subprocess.run(
        ["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL
    )


@contextlib.contextmanager
def pinned(cpus: str) -> Iterator[None]:
    """Bind this process to ``cpus`` for the block, then give it back the CPUs it had (what it
    starts meanwhile inherits the binding; later benchmarks in the same run must not)."""
    before = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    pin(os.getpid(), cpus)
    try:
        yield
    finally:
        pin(os.getpid(), before)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process, all threads (from /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime: fields 14, 15


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all threads."""
    return sum(cpu_times(pid))


def run_and_wait_seconds(pid: int) -> tuple[float, float]:
    """Seconds a process's main thread ran, and waited runnable for a core (/proc schedstat).

    Over a run, wall time minus both is the time it had nothing to do: a server that never
    idles is saturated, and its wait shows how much other processes kept it off a core.
    """
    ran, waited, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(ran) / 1e9, int(waited) / 1e9


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def metric_sum(url: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) on a /metrics page; 0 when absent."""
    text = httpx.get(url, timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def machine_description() -> str:
    """Cores, CPU model, memory and Python: what docs/benchmarks.md quotes. Every benchmark
    prints it first, so this is also where one on stale compiled modules stops."""
    stale = stale_extensions()
    if stale:
        raise SystemExit(
            f"compiled modules older than their sources: {', '.join(stale)}; rebuild them "
            "(make bootstrap, or python setup.py build_ext --inplace) before benchmarking"
        )
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} cores, {model}, {mem_kb / 2**20:.0f} GiB, "
        f"Python {platform.python_version()}, load average {load:.2f} at start, "
        f"yardstick {yardstick_ms():.1f} ms"
    )


_YARDSTICK_TEXT = b"".join(
    b'node_cpu_seconds_total{cpu="%d",mode="m%d"} %d.%d 1600000000000\n' % (i, i % 7, i * 37, i)
    for i in range(40_000)
)


def yardstick_ms() -> float:
    """CPU ms this process spends on a fixed workload that none of the project's code touches
    (zlib level 6 and SHA-256 of 2.9 MB of exposition text), median of 5.

    This machine's speed moves by up to 3x between days and even within minutes, with the same
    code; the yardstick printed next to each run tells a slow machine from slower code.
    """
    times = []
    for _ in range(5):
        began = time.process_time()
        zlib.compress(_YARDSTICK_TEXT, 6)
        hashlib.sha256(_YARDSTICK_TEXT).digest()
        times.append(time.process_time() - began)
    return median(times) * 1000


def steal_ticks() -> tuple[int, int]:
    """All CPU ticks of the machine so far, and those stolen by the hypervisor (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields[:8]), fields[7]


@dataclass
class Stack:
    """A Redis Cluster plus the servers a benchmark starts on it."""

    cluster: LocalRedisCluster
    workdir: Path
    key: Path
    servers: list[ServerHandle] = field(default_factory=list)

    def start_server(
        self,
        name: str,
        *,
        extra_args: Sequence[str] = (),
        cpus: str | None = None,
        ring: Sequence[str] = RING_ARGS,
    ) -> ServerHandle:
        """Start a server on the cluster (bound to ``cpus`` when given, with the ring times
        ``ring``)."""
        handle = start_server(
            redis_url=self.cluster.url,
            workdir=self.workdir,
            name=name,
            shared_key=self.key,
            extra_args=[*ring, *extra_args],
        )
        self.servers.append(handle)
        if cpus is not None:
            pin(handle.process.pid, cpus)
        return handle

    def wait_serving_all(self, server: ServerHandle, *, timeout: float = 30.0) -> None:
        """Wait until ``server`` holds every ring range (so its ``/federate`` serves all)."""
        deadline = time.monotonic() + timeout
        owned = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                view = httpx.get(server.internal + "/debug/ring", timeout=2).json()
                owned = len(view.get("ranges", []))
                if owned == keys.RANGES:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{server.name} holds {owned} of {keys.RANGES} ring ranges")

    def stop_servers(self) -> None:
        """Stop every server started so far."""
        for handle in self.servers:
            handle.process.stop()
        self.servers.clear()

    def redis_pids(self) -> list[int]:
        """Process ids of every Redis node (primaries and replicas)."""
        return [node.pid for node in self.cluster.nodes if node.pid is not None]

    def primary_ports(self) -> list[int]:
        """Client ports of the current primaries."""
        return [node.port for node in self.cluster.nodes if node.role == "primary"]

    def used_memory(self) -> int:
        """``used_memory`` summed over the primaries."""
        total = 0
        for port in self.primary_ports():
            with self.cluster.client(port) as conn:
                total += int(conn.info("memory")["used_memory"])
        return total

    def flush(self) -> None:
        """Delete every key (FLUSHALL on each primary; replicas follow)."""
        for port in self.primary_ports():
            with self.cluster.client(port) as conn:
                conn.flushall()

    def keys(self) -> int:
        """Number of keys over the primaries."""
        total = 0
        for port in self.primary_ports():
            with self.cluster.client(port) as conn:
                total += int(conn.dbsize())
        return total


@contextlib.contextmanager
def stack(*, pin_redis: str | None = None) -> Iterator[Stack]:
    """A fresh Redis Cluster (3 primaries, 3 replicas, AOF everysec) in a temp dir, then gone."""
    with tempfile.TemporaryDirectory(prefix="telemeter-bench-") as tmp:
        workdir = Path(tmp)
        cluster = LocalRedisCluster(base_dir=workdir / "redis")
        cluster.start()
        bench = Stack(cluster, workdir, write_signing_key(workdir / "signing.pem"))
        try:
            if pin_redis is not None:
                for pid in bench.redis_pids():
                    pin(pid, pin_redis)
            yield bench
        finally:
            bench.stop_servers()
            cluster.stop()


@contextlib.contextmanager
def server(bench: Stack, mode: str, forward_url: str = "") -> Iterator[ServerHandle]:
    """One server of ``mode`` on core 0, stopped after the block: ``ours...`` (on ``bench``'s
    Redis) or ``go...`` (the Go 2019 server, in memory, stub authorization); ``...+fwd`` forwards
    to ``forward_url``, ``...fwd1`` with one ``--tenant-id``. Both ``--ratelimit 0s``; ours with
    the ring at its default times."""
    fwd = ["--forward-url", forward_url] if "+fwd" in mode else []
    fwd += ["--tenant-id", "bench"] if mode.endswith("fwd1") else []
    if mode.startswith("ours"):
        handle = bench.start_server(
            mode, extra_args=["--ratelimit", "0s", *fwd], cpus=SERVER_CPUS, ring=PRODUCTION_RING
        )
        if fwd:
            bench.wait_serving_all(handle)  # the forwarder holds every range's queue
        try:
            yield handle
        finally:
            handle.process.stop()
            bench.servers.remove(handle)
        return
    ext, internal = free_ports(2)
    argv = [
        "taskset", "-c", SERVER_CPUS, str(go_binaries() / "telemeter-server"),
        "--listen", f"127.0.0.1:{ext}", "--listen-internal", f"127.0.0.1:{internal}",
        "--shared-key", str(bench.key), "--whitelist", KEEP_ALL, "--ratelimit", "0s", *fwd,
    ]  # fmt: skip
    # taskset before exec, not after: Go sizes GOMAXPROCS from the affinity it starts with.
    proc = ManagedProcess(mode, argv, log_path=bench.workdir / f"{mode}.log").start()
    try:
        proc.wait_http(f"http://127.0.0.1:{internal}/healthz")
        yield ServerHandle(proc, mode, f"http://127.0.0.1:{ext}", f"http://127.0.0.1:{internal}")
    finally:
        proc.stop()


def load_config(
    server: ServerHandle,
    *,
    workers: int,
    duration_s: float | None = None,
    uploads: int | None = None,
    interval_s: float = 0.0,
    seed: int = 1,
) -> BenchmarkConfig:
    """A saturation load on one server: no start spread, no wait between pushes or after errors."""
    return BenchmarkConfig(
        to_upload=server.external + "/upload",
        to_auth=server.external + "/authorize",
        token="bench",  # noqa: S106 (stub authorization accepts any token)
        metrics_text=standard_payload(),
        workers=workers,
        interval_s=interval_s,
        ramp_up_s=0.0,
        duration_s=duration_s,
        uploads=uploads,
        error_wait_s=0.0,
        timeout_s=30.0,
        seed=seed,
    )


def load(config: BenchmarkConfig) -> Summary:
    """Run one load with the telemeter-benchmark machinery, in this process."""
    return asyncio.run(run_benchmark(config))


def fill(server: ServerHandle, clusters: int) -> int:
    """Store ``clusters`` new clusters of the standard payload; returns their series count.

    Each worker is one cluster that pushes once; batches keep the server's upload queue short.
    """
    accepted = 0
    series = 0
    while accepted < clusters:
        batch = min(FILL_BATCH, clusters - accepted)
        config = load_config(server, workers=batch, uploads=batch, interval_s=3600.0)
        summary = load(config)
        if summary.accepted != batch:
            raise RuntimeError(f"filling: {summary.accepted} of {batch} accepted: {summary}")
        accepted += batch
        series = summary.series_per_upload
    return clusters * series


def wait_for_quiet_redis(bench: Stack, *, seconds: float = 1.0) -> None:
    """Let replication and the AOF settle before reading memory."""
    time.sleep(seconds)
    with contextlib.suppress(redis.RedisError):
        for port in bench.primary_ports():
            with bench.cluster.client(port) as conn:
                conn.execute_command("MEMORY", "PURGE")
