"""Benchmark 1: server CPU time per accepted upload of the standard payload, at saturation.

One server process (``--ratelimit 0s``, so one cluster may push back to back) bound to core 0;
the Redis Cluster (3 primaries, 3 replicas, AOF) and the load generator (this process) share
the other core. Per run: the server's CPU time (utime + stime from /proc, all threads) over the
run divided by the accepted uploads. Everything the server does per upload is included: HTTP,
token check, snappy, the upload pass, rendering and compressing the snapshot, the Redis calls.

    python -m bench.upload_cpu [--runs 5] [--seconds 8] [--workers 16]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import (
    GO_UPLOAD_CPU_MS,
    OTHER_CPUS,
    SERVER_CPUS,
    Stack,
    cpu_seconds,
    load,
    load_config,
    machine_busy_seconds,
    machine_description,
    median,
    out,
    pinned,
    run_and_wait_seconds,
    stack,
    yardstick_ms,
)
from dev.launch import ServerHandle


@dataclass(frozen=True)
class UploadRun:
    """One measured run."""

    accepted: int
    rejected: int
    seconds: float
    server_ms_per_upload: float
    server_utilization: float  # server CPU seconds per wall second (1.0 = one core busy)
    redis_ms_per_upload: float
    generator_ms_per_upload: float
    uploads_per_s: float
    other_cores: float  # CPU of every other process on the machine during the run, in cores
    waiting: float  # share of the run the server's main thread waited, runnable, for a core
    idle: float  # share of the run it had nothing to do
    p50_ms: float
    p99_ms: float


def measure(
    bench: Stack, server: ServerHandle, *, seconds: float, workers: int, seed: int
) -> UploadRun:
    """One saturation run against ``server``, with the CPU readings around it."""
    redis_pids = bench.redis_pids()
    server_before = cpu_seconds(server.process.pid)
    redis_before = sum(cpu_seconds(pid) for pid in redis_pids)
    own_before = time.process_time()
    machine_before = machine_busy_seconds()
    ran_before, waited_before = run_and_wait_seconds(server.process.pid)
    summary = load(load_config(server, workers=workers, duration_s=seconds, seed=seed))
    own = time.process_time() - own_before
    server_cpu = cpu_seconds(server.process.pid) - server_before
    redis_cpu = sum(cpu_seconds(pid) for pid in redis_pids) - redis_before
    machine = machine_busy_seconds() - machine_before
    ran, waited = run_and_wait_seconds(server.process.pid)
    ran, waited = ran - ran_before, waited - waited_before
    accepted = max(summary.accepted, 1)
    return UploadRun(
        accepted=summary.accepted,
        rejected=summary.attempts - summary.accepted,
        seconds=summary.elapsed_s,
        server_ms_per_upload=server_cpu / accepted * 1000,
        server_utilization=server_cpu / summary.elapsed_s,
        redis_ms_per_upload=redis_cpu / accepted * 1000,
        generator_ms_per_upload=own / accepted * 1000,
        uploads_per_s=summary.uploads_per_s,
        other_cores=max(0.0, machine - server_cpu - redis_cpu - own) / summary.elapsed_s,
        waiting=waited / summary.elapsed_s,
        idle=max(0.0, 1 - (ran + waited) / summary.elapsed_s),
        p50_ms=summary.latency_ms["p50"],
        p99_ms=summary.latency_ms["p99"],
    )


def run(*, runs: int, seconds: float, workers: int) -> list[UploadRun]:
    """Warm up, then ``runs`` measured runs on one pinned server; returns them."""
    with pinned(OTHER_CPUS), stack(pin_redis=OTHER_CPUS) as bench:
        server = bench.start_server("bench", extra_args=["--ratelimit", "0s"], cpus=SERVER_CPUS)
        measure(bench, server, seconds=2.0, workers=workers, seed=0)  # warm-up
        results = []
        for i in range(runs):
            result = measure(bench, server, seconds=seconds, workers=workers, seed=i + 1)
            out(
                f"  run {i + 1}: {result.server_ms_per_upload:.3f} ms server CPU/upload, "
                f"{result.uploads_per_s:.0f} uploads/s, server {result.server_utilization:.0%} "
                f"of a core, redis {result.redis_ms_per_upload:.3f} ms/upload, generator "
                f"{result.generator_ms_per_upload:.3f} ms/upload, rejected {result.rejected}, "
                f"other processes {result.other_cores:.2f} cores; server main thread waited for a "
                f"core {result.waiting:.0%}, idle {result.idle:.0%}"
            )
            results.append(result)
    return results


def report(results: Sequence[UploadRun]) -> float:
    """Print the medians; returns the median server CPU per upload (ms)."""
    cpu = median([r.server_ms_per_upload for r in results])
    out(f"upload: server CPU per accepted upload, median of {len(results)}: {cpu:.3f} ms")
    out(
        f"  target <= 0.6 ms (stretch 0.4): {'met' if cpu <= 0.6 else 'missed'}; "
        f"Go 2019 {GO_UPLOAD_CPU_MS} ms -> ratio {cpu / GO_UPLOAD_CPU_MS:.2f} x Go"
    )
    out(
        f"  throughput {median([r.uploads_per_s for r in results]):.0f} uploads/s, "
        f"server busy {median([r.server_utilization for r in results]):.0%} of its core, "
        f"main thread waiting for a core {median([r.waiting for r in results]):.0%}, idle "
        f"{median([r.idle for r in results]):.0%}; "
        f"latency p50 {median([r.p50_ms for r in results]):.1f} ms "
        f"p99 {median([r.p99_ms for r in results]):.1f} ms"
    )
    out(
        f"  redis {median([r.redis_ms_per_upload for r in results]):.3f} ms CPU/upload (all "
        f"nodes), generator {median([r.generator_ms_per_upload for r in results]):.3f} ms/upload"
    )
    # Redis does the same work for every upload (as long as the commands sent do not change),
    # so this ratio moves much less than the CPU figures when the machine gets faster or slower.
    ratio = median([r.server_ms_per_upload / r.redis_ms_per_upload for r in results])
    out(f"  server CPU / Redis CPU per upload: {ratio:.2f} (steadier than either on this machine)")
    stick = yardstick_ms()
    out(
        f"  server CPU per upload / yardstick ({stick:.1f} ms now): {cpu / stick:.4f} "
        "(to compare runs of different days)"
    )
    return cpu


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run benchmark 1 and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    report(run(runs=args.runs, seconds=args.seconds, workers=args.workers))


if __name__ == "__main__":
    main()
