"""Benchmark 3: Redis memory per stored series, and the server's RSS as clusters grow.

A fresh server (default flags: rate limit and TTL on, as in production) pushes clusters of the
standard payload in steps; after each step the ``used_memory`` of every primary is summed and
the growth since the empty cluster is divided by the series stored (the 232 series plus the
per-cluster push-time series, checked against ``/federate`` at the end). The server's RSS is
read at each step too: pods hold no data, so it should stay flat.

    python -m bench.redis_memory [--runs 3] [--steps 250,500,1000,2000]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from app import keys
from bench.common import (
    GO_RSS_PER_SERIES,
    Stack,
    fill,
    machine_description,
    median,
    out,
    rss_bytes,
    stack,
    wait_for_quiet_redis,
)
from bench.federate import fetch, sample_lines

PUSH_TIME_SERIES = 1  # telemeter_push_time_seconds, one per cluster


@dataclass(frozen=True)
class Step:
    """Readings after ``clusters`` clusters were stored."""

    clusters: int
    series: int
    bytes_per_series: float
    server_rss: int
    keys: int
    used_memory: int  # growth since the empty cluster


def snapshot_sizes(bench: Stack, *, sample: int = 20) -> tuple[float, float]:
    """Mean value length and mean ``MEMORY USAGE`` of up to ``sample`` snapshot keys."""
    lengths: list[int] = []
    usages: list[int] = []
    for port in bench.primary_ports():
        with bench.cluster.client(port) as conn:
            for key in conn.scan_iter(match=f"{keys.PREFIX}:*:snapshot", count=100):
                lengths.append(int(conn.strlen(key)))
                usages.append(int(conn.memory_usage(key) or 0))
                if len(lengths) % sample == 0:
                    break
    if not lengths:
        return 0.0, 0.0
    return sum(lengths) / len(lengths), sum(usages) / len(usages)


def run(*, runs: int, steps: Sequence[int]) -> list[list[Step]]:
    """``runs`` times: empty the cluster, start a server, store clusters step by step."""
    all_runs = []
    with stack() as bench:
        for i in range(runs):
            bench.flush()
            wait_for_quiet_redis(bench)
            base = bench.used_memory()
            server = bench.start_server(f"mem{i}")
            stored = 0
            series = 0
            readings = []
            for target in steps:
                series += fill(server, target - stored) + (target - stored) * PUSH_TIME_SERIES
                stored = target
                wait_for_quiet_redis(bench)
                grown = bench.used_memory() - base
                readings.append(
                    Step(
                        clusters=stored,
                        series=series,
                        bytes_per_series=grown / series,
                        server_rss=rss_bytes(server.process.pid),
                        keys=bench.keys(),
                        used_memory=grown,
                    )
                )
            bench.wait_serving_all(server)
            _, text = fetch(server, gzipped=False)
            served = sample_lines(text)
            if served != series:
                raise RuntimeError(f"/federate serves {served} series, expected {series}")
            if i == 0:
                length, usage = snapshot_sizes(bench)
                per = series / stored
                out(
                    f"  a snapshot: {length:.0f} bytes of value ({length / per:.1f} B/series), "
                    f"MEMORY USAGE {usage:.0f} bytes ({usage / per:.1f} B/series)"
                )
            bench.stop_servers()
            out(
                f"  run {i + 1}: "
                + ", ".join(
                    f"{s.clusters} clusters {s.bytes_per_series:.1f} B/series "
                    f"RSS {s.server_rss / 2**20:.0f} MiB"
                    for s in readings
                )
            )
            all_runs.append(readings)
    return all_runs


def report(all_runs: Sequence[Sequence[Step]]) -> float:
    """Print the medians per step; returns the median bytes per series at the largest step."""
    for index, first in enumerate(all_runs[0]):
        steps = [run[index] for run in all_runs]
        out(
            f"  {first.clusters:5d} clusters, {first.series:7d} series, {first.keys} keys: "
            f"{median([s.bytes_per_series for s in steps]):6.1f} B/series in Redis, "
            f"server RSS {median([s.server_rss for s in steps]) / 2**20:.0f} MiB"
        )
    last = median([run[-1].bytes_per_series for run in all_runs])
    first = all_runs[0][0]
    if len(all_runs[0]) > 1:
        # The slope between the first and the last step leaves out fixed costs (Lua script
        # cache, client buffers, the 256 index keys) that the average spreads over few clusters.
        slope = median(
            [
                (run[-1].used_memory - run[0].used_memory) / (run[-1].series - run[0].series)
                for run in all_runs
            ]
        )
        out(
            f"  marginal: {slope:.1f} B per additional series "
            f"({first.clusters} -> {all_runs[0][-1].clusters} clusters)"
        )
    out(
        f"redis memory: {last:.1f} bytes per stored series (median of {len(all_runs)}, "
        f"used_memory over all primaries); target <= 40: {'met' if last <= 40 else 'missed'}; "
        f"Go ~{GO_RSS_PER_SERIES} B of RSS per series -> ratio {last / GO_RSS_PER_SERIES:.3f}"
    )
    return last


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run benchmark 3 and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", default="250,500,1000,2000")
    args = parser.parse_args(argv)
    steps = sorted(int(s) for s in args.steps.split(","))
    out(f"machine: {machine_description()}")
    report(run(runs=args.runs, steps=steps))


if __name__ == "__main__":
    main()
