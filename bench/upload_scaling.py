"""Benchmark 4: upload throughput of two server processes against one, at saturation.

Nothing is pinned: the servers, the Redis Cluster (3 primaries, 3 replicas, AOF) and the load
generator (this process, one event loop driving every server) compete for the machine's cores,
which is the question: what limits throughput here. Per run, each configuration is loaded for
the same time; the CPU of each part is read from /proc and reported in cores (CPU seconds per
wall second), together with what every other process on the machine used.

    python -m bench.upload_scaling [--runs 3] [--seconds 8] [--workers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import (
    CORES,
    Stack,
    cpu_seconds,
    load_config,
    machine_busy_seconds,
    machine_description,
    median,
    out,
    run_and_wait_seconds,
    stack,
)
from client.benchmark import Summary, run_benchmark
from dev.launch import ServerHandle


@dataclass(frozen=True)
class ScalingRun:
    """One configuration loaded once; CPU figures in cores."""

    servers: int
    uploads_per_s: float
    server_cores: float
    redis_cores: float
    generator_cores: float
    other_cores: float
    rejected: int
    waiting: float  # share of the run the servers' main threads waited for a core (mean)
    idle: float  # share of the run they had nothing to do (mean)


async def _load_all(
    servers: Sequence[ServerHandle], *, workers: int, seconds: float
) -> list[Summary]:
    configs = [
        load_config(s, workers=workers, duration_s=seconds, seed=i) for i, s in enumerate(servers)
    ]
    return await asyncio.gather(*(run_benchmark(c) for c in configs))


def measure(
    bench: Stack, servers: Sequence[ServerHandle], *, workers: int, seconds: float
) -> ScalingRun:
    """Load every server at once for ``seconds`` and read the CPU of every part."""
    pids = [s.process.pid for s in servers]
    redis_pids = bench.redis_pids()
    before = [cpu_seconds(p) for p in pids], sum(cpu_seconds(p) for p in redis_pids)
    sched = [run_and_wait_seconds(p) for p in pids]
    own, machine, wall = time.process_time(), machine_busy_seconds(), time.monotonic()
    summaries = asyncio.run(_load_all(servers, workers=workers, seconds=seconds))
    wall = time.monotonic() - wall
    own = time.process_time() - own
    machine = machine_busy_seconds() - machine
    server_cpu = sum(cpu_seconds(p) - b for p, b in zip(pids, before[0], strict=True))
    redis_cpu = sum(cpu_seconds(p) for p in redis_pids) - before[1]
    accepted = sum(s.accepted for s in summaries)
    ran = sum(run_and_wait_seconds(p)[0] - s[0] for p, s in zip(pids, sched, strict=True))
    waited = sum(run_and_wait_seconds(p)[1] - s[1] for p, s in zip(pids, sched, strict=True))
    return ScalingRun(
        servers=len(servers),
        uploads_per_s=accepted / max(s.elapsed_s for s in summaries),
        server_cores=server_cpu / wall,
        redis_cores=redis_cpu / wall,
        generator_cores=own / wall,
        other_cores=max(0.0, machine - server_cpu - redis_cpu - own) / wall,
        rejected=sum(s.attempts - s.accepted for s in summaries),
        waiting=waited / wall / len(pids),
        idle=max(0.0, 1 - (ran + waited) / wall / len(pids)),
    )


def run(*, runs: int, seconds: float, workers: int) -> list[ScalingRun]:
    """``runs`` rounds of one server then two servers (``workers`` per server)."""
    results = []
    with stack() as bench:
        servers = [
            bench.start_server(f"scale{i}", extra_args=["--ratelimit", "0s"]) for i in range(2)
        ]
        measure(bench, servers, workers=workers, seconds=2.0)  # warm-up both
        for i in range(runs):
            for count in (1, 2):
                result = measure(bench, servers[:count], workers=workers, seconds=seconds)
                out(
                    f"  run {i + 1}, {count} server(s): {result.uploads_per_s:.0f} uploads/s; "
                    f"cores used: servers {result.server_cores:.2f}, redis "
                    f"{result.redis_cores:.2f}, generator {result.generator_cores:.2f}, other "
                    f"processes {result.other_cores:.2f}; servers waited for a core "
                    f"{result.waiting:.0%}, idle {result.idle:.0%}; rejected {result.rejected}"
                )
                results.append(result)
    return results


def report(results: Sequence[ScalingRun]) -> float:
    """Print the medians; returns the throughput ratio of two servers to one."""
    by_count = {n: [r for r in results if r.servers == n] for n in (1, 2)}
    rate = {n: median([r.uploads_per_s for r in rs]) for n, rs in by_count.items()}
    for n, rs in by_count.items():
        total = median(
            [r.server_cores + r.redis_cores + r.generator_cores + r.other_cores for r in rs]
        )
        out(
            f"  {n} server(s): {rate[n]:.0f} uploads/s (median of {len(rs)}); cores: servers "
            f"{median([r.server_cores for r in rs]):.2f}, redis "
            f"{median([r.redis_cores for r in rs]):.2f}, generator "
            f"{median([r.generator_cores for r in rs]):.2f}, other "
            f"{median([r.other_cores for r in rs]):.2f}; busy {total:.2f} of {CORES}; servers "
            f"waited for a core {median([r.waiting for r in rs]):.0%}, idle "
            f"{median([r.idle for r in rs]):.0%}"
        )
    ratio = rate[2] / rate[1]
    out(f"scaling: two servers / one = {ratio:.2f} x the uploads/s")
    return ratio


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run benchmark 4 and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    report(run(runs=args.runs, seconds=args.seconds, workers=args.workers))


if __name__ == "__main__":
    main()
