"""The forwarder's CPU per forwarded upload, in-process: its turns against a real Redis Cluster
and a real Prometheus receiver, without the rest of the server.

Each round queues ``--entries`` standard-sized Remote-Write requests (232 series, ~10 KB
snappy-compressed), one per cluster (a tenant each, the default), in the streams of the 256
ranges, as uploads at 100/s leave them for a turn every ``--forward-interval``; then runs
``Forwarder.cycle`` until the streams are empty and counts the process CPU of those turns only.
Last, the CPU of an idle turn (the heads of the 256 empty streams). The forwarder runs on core 0,
Redis and the receiver on the others, as in ``bench.forward``. Prints the medians over the
rounds (docs/benchmarks.md, "Remote write (forwarding)").

    python -m bench.forward_turn [--rounds 30] [--entries 100] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

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


def write_request(cluster_id: str, now_ms: int) -> tuple[bytes, int]:
    """A WriteRequest the size of the standard upload's (232 series, ~80 KB)."""

    def labels(i: int) -> list[tuple[str, str]]:
        return [("__name__", f"bench_metric_{i // 8}"), ("_id", cluster_id), ("le", str(i % 8)),
                ("namespace", f"openshift-{i % 13}"), ("pod", f"pod-{i % 37}-{i * 79 % 1009}"),
                ("instance", f"10.0.{i % 7}.{i % 251}:9100"), ("job", f"job-{i % 5}")]  # fmt: skip

    series = [(labels(i), [(float(i), now_ms)]) for i in range(SERIES)]
    request = remotewrite.encode_series(series)
    return request, len(request)


async def run(rounds: int, entries: int, profile: str | None) -> None:
    os.sched_setaffinity(0, _cpus(OTHER_CPUS))  # Redis and the receiver inherit the other cores
    with tempfile.TemporaryDirectory() as tmp, LocalRedisCluster(base_dir=Path(tmp)) as cluster:
        receiver = start_receiver(workdir=Path(tmp) / "receiver")
        os.sched_setaffinity(0, _cpus(SERVER_CPUS))  # the forwarder on core 0, as the server
        try:
            await measure(cluster, receiver.url + "/api/v1/write", rounds, entries, profile)
        finally:
            receiver.process.stop()


async def measure(
    cluster: LocalRedisCluster, url: str, rounds: int, entries: int, profile: str | None
) -> None:
    settings = ServerSettings(forward_url=url)
    latency = Histogram("latency", "", ["op"], registry=CollectorRegistry())
    store = Store(nodes=cluster.startup_nodes, password=None, ttl_ms=600_000, ratelimit_ms=0,
                  latency=latency)  # fmt: skip
    all_ranges = frozenset(range(keys.RANGES))
    forwarder = Forwarder(settings, store, lambda: all_ranges, ForwardMetrics())
    profiler = cProfile.Profile() if profile else None
    per_upload: list[float] = []
    idle: list[float] = []
    for n in range(rounds + 2):  # two warm-up rounds
        now_ms = int(time.time() * 1000)
        for i in range(entries):
            request, size = write_request(f"c{n}-{i}", now_ms)
            forward = Forward(snappy.encode_block(request), size, f"c{n}-{i}", SERIES, now_ms)
            await store.enqueue(f"c{n}-{i}", forward, queue_limit=1000)
        if profiler and n >= 2:
            profiler.enable()
        start = time.process_time()
        while await forwarder.cycle() == 0.0:  # 0: a stream was read full, another turn at once
            pass
        busy = time.process_time() - start
        start = time.process_time()
        await forwarder.cycle()
        empty = time.process_time() - start
        if profiler:
            profiler.disable()
        if forwarder.metrics.errors._value.get():
            raise SystemExit("the receiver refused requests")
        if n >= 2:
            per_upload.append(busy / entries * 1e6)
            idle.append(empty * 1e3)
    await forwarder.stop()
    await store.close()
    out(f"forwarder CPU per upload: {median(per_upload):.1f} us (median of {rounds} rounds of "
        f"{entries}; {min(per_upload):.1f}-{max(per_upload):.1f})")  # fmt: skip
    out(f"idle turn (256 empty streams): {median(idle):.2f} ms")
    if profiler and profile:
        profiler.dump_stats(profile)


def _cpus(spec: str) -> set[int]:
    first, _, last = spec.partition("-")
    return set(range(int(first), int(last or first) + 1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--profile", help="write a cProfile of the turns to this file")
    args = parser.parse_args(argv)
    try:
        import uvloop  # the server's loop (app/main.py)

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args.rounds, args.entries, args.profile))


if __name__ == "__main__":
    main()
