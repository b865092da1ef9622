"""The forwarder's CPU per forwarded upload, in-process: its turns against a real Redis Cluster
and a real Prometheus receiver, without the rest of the server.

Each round queues ``--entries`` standard-sized Remote-Write requests (232 series, ~10 KB
snappy-compressed), one per cluster (a tenant each, the default), in the streams of the 256
ranges, as uploads at 100/s leave them for a turn every ``--forward-interval``; then runs
``Forwarder.cycle`` until the streams are empty and counts the process CPU of those turns only.
Last, the CPU of an idle turn (the heads of the 256 empty streams). The forwarder runs on core 0,
Redis and the receiver on the others, as in ``bench.forward``. Prints the medians over the
rounds (docs/benchmarks.md, "Remote write (forwarding)").

    python -m bench.forward_turn [--rounds 30] [--entries 100] [--profile FILE] [--tenant-id T]
    mkfifo ctl; PERF_CTL=ctl perf record -D -1 --control fifo:ctl -- python -m bench.forward_turn
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Histogram

from app import keys
from app.forward import Forwarder, ForwardMetrics
from app.settings import ServerSettings
from app.store import Forward, Store
from bench.common import OTHER_CPUS, SERVER_CPUS, median, out
from dev.prometheus import start_receiver
from dev.redis_cluster import LocalRedisCluster
from telemeter import remotewrite, snappy

SERIES = 232
T = TypeVar("T")


def write_request(cluster_id: str, now_ms: int) -> tuple[bytes, int]:
    """A WriteRequest the size of the standard upload's (232 series, ~80 KB)."""

    def labels(i: int) -> list[tuple[str, str]]:
        return [("__name__", f"bench_metric_{i // 8}"), ("_id", cluster_id), ("le", str(i % 8)),
                ("namespace", f"openshift-{i % 13}"), ("pod", f"pod-{i % 37}-{i * 79 % 1009}"),
                ("instance", f"10.0.{i % 7}.{i % 251}:9100"), ("job", f"job-{i % 5}")]  # fmt: skip

    series = [(labels(i), [(float(i), now_ms)]) for i in range(SERIES)]
    request = remotewrite.encode_series(series)
    return request, len(request)


async def run(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, _cpus(OTHER_CPUS))  # Redis and the receiver inherit the other cores
    with tempfile.TemporaryDirectory() as tmp, LocalRedisCluster(base_dir=Path(tmp)) as cluster:
        receiver = start_receiver(workdir=Path(tmp) / "receiver")
        os.sched_setaffinity(0, _cpus(SERVER_CPUS))  # the forwarder on core 0, as the server
        try:
            await measure(cluster, receiver.url + "/api/v1/write", args)
        finally:
            receiver.process.stop()


async def measure(cluster: LocalRedisCluster, url: str, args: argparse.Namespace) -> None:
    rounds, entries, profile = args.rounds, args.entries, args.profile
    settings = ServerSettings(forward_url=url, tenant_id=args.tenant_id)
    latency = Histogram("latency", "", ["op"], registry=CollectorRegistry())
    store = Store(nodes=cluster.startup_nodes, password=None, ttl_ms=600_000, ratelimit_ms=0,
                  latency=latency)  # fmt: skip
    all_ranges = frozenset(range(keys.RANGES))
    forwarder = Forwarder(settings, store, lambda: all_ranges, ForwardMetrics())
    spent: defaultdict[str, float] = defaultdict(
        float
    )  # CPU s of the turns' Redis reads and deletes
    store.read_queues = _timed(spent, "read", store.read_queues)  # type: ignore[method-assign]
    store.ack = _timed(spent, "delete", store.ack)  # type: ignore[method-assign]
    profiler = cProfile.Profile() if profile else None
    ctl = os.environ.get("PERF_CTL")  # perf record -D -1 --control fifo:PATH: only the turns
    perf = open(ctl, "w", buffering=1) if ctl else None  # noqa: SIM115, ASYNC230
    parts: dict[str, list[float]] = {"all": [], "read": [], "delete": [], "send": [], "sys": []}
    idle: list[float] = []
    for n in range(rounds + 2):  # two warm-up rounds
        now_ms = int(time.time() * 1000)
        for i in range(entries):
            request, size = write_request(f"c{n}-{i}", now_ms)
            forward = Forward(snappy.encode_block(request), size, f"c{n}-{i}", SERIES, now_ms)
            await store.enqueue(f"c{n}-{i}", forward, queue_limit=1000)
        if profiler and n >= 2:
            profiler.enable()
        if perf and n >= 2:
            perf.write("enable\n")
        spent.clear()
        start, usage = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        while await forwarder.cycle() == 0.0:  # 0: a stream was read full, another turn at once
            pass
        busy = time.process_time() - start
        system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - usage.ru_stime
        start = time.process_time()
        await forwarder.cycle()
        empty = time.process_time() - start
        if profiler:
            profiler.disable()
        if perf:
            perf.write("disable\n")
        if forwarder.metrics.errors._value.get():
            raise SystemExit("the receiver refused requests")
        if n >= 2:
            us = 1e6 / entries
            parts["all"].append(busy * us)
            parts["read"].append(spent["read"] * us)
            parts["delete"].append(spent["delete"] * us)
            parts["send"].append((busy - spent["read"] - spent["delete"]) * us)
            parts["sys"].append(system * us)
            idle.append(empty * 1e3)
    await forwarder.stop()
    await store.close()
    a = parts["all"]
    out(f"forwarder CPU per upload: {median(a):.1f} us (median of {rounds} rounds of {entries}; "
        f"{min(a):.1f}-{max(a):.1f})")  # fmt: skip
    out("  of it: " + ", ".join(f"{k} {median(v):.1f}" for k, v in parts.items() if k != "all")
        + " us (sys: kernel time, mean " + f"{sum(parts['sys']) / len(a):.1f})")  # fmt: skip
    out(f"idle turn (256 empty streams): {median(idle):.2f} ms")
    registry = forwarder.metrics.registry
    name = "telemeter_forward_request_duration_seconds"
    total = registry.get_sample_value(f"{name}_sum", {"status_code": "204"}) or 0.0
    requests = registry.get_sample_value(f"{name}_count", {"status_code": "204"}) or 1.0
    out(f"request latency (a round's, pipelined): {total / requests * 1e3:.2f} ms mean")
    if profiler and profile:
        profiler.dump_stats(profile)


def _timed(spent: defaultdict[str, float], part: str, call: Callable[..., Awaitable[T]]) -> Any:
    """``call``, its process CPU added to ``spent[part]`` (awaited alone within a turn)."""

    async def timed(*args: Any, **kwargs: Any) -> T:
        start = time.process_time()
        try:
            return await call(*args, **kwargs)
        finally:
            spent[part] += time.process_time() - start

    return timed


def _cpus(spec: str) -> set[int]:
    first, _, last = spec.partition("-")
    return set(range(int(first), int(last or first) + 1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--profile", help="write a cProfile of the turns to this file")
    parser.add_argument("--tenant-id", help="one tenant for all (unset: a tenant per cluster)")
    args = parser.parse_args(argv)
    try:
        import uvloop  # the server's loop (app/main.py)

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
