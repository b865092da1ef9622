"""Soak: thousands of simulated clusters push to two server pods for minutes (not in make test).

    python -m bench.soak [--minutes 10] [--clusters 5000] [--interval 60]

A fresh local Redis Cluster (3 primaries, 3 replicas, AOF everysec) and two `telemeter-server`
processes; half the clusters push to each pod (the `telemeter-benchmark` machinery: the standard
payload, each cluster once per interval after a start spread over the first interval, one retry
wait of 5 s after a failure). The interval is shortened from the real 4m30s so that a run of a
few minutes covers several pushes per cluster; the pods' ``--ratelimit`` is 80 % of it.

Every ``--sample`` seconds it records each pod's RSS, Redis ``used_memory`` (primaries) and the
number of stored clusters. It prints the samples, then the verdicts of issue 7:

- zero 5xx answers (and which other answers came back);
- server RSS flat within 10 % after the warm-up (the first interval plus one sample);
- Redis memory proportional to the clusters stored: bytes per stored cluster (above the empty
  cluster's baseline) over the samples.

The exit status is 1 when a verdict fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import httpx
from redis.cluster import ClusterNode, RedisCluster

from app import keys
from bench.common import Stack, load_config, machine_description, out, rss_bytes, stack
from client.benchmark import Summary, run_benchmark

RSS_TOLERANCE = 0.10
ERROR_WAIT_S = 5.0


@dataclass(frozen=True)
class Sample:
    """One reading during the run."""

    at_s: float
    rss: tuple[int, ...]
    redis_used: int
    clusters: int
    rejects: dict[str, float]  # telemeter_upload_rejects_total by reason, summed over the pods


REJECT_LINE = re.compile(r'^telemeter_upload_rejects_total\{reason="([^"]+)"\} (\S+)$', re.M)


async def rejects(bench: Stack, http: httpx.AsyncClient) -> dict[str, float]:
    """Uploads refused so far, by reason (the exception type), over every pod."""
    total: dict[str, float] = {}
    for server in bench.servers:
        text = (await http.get(server.internal + "/metrics")).text
        for reason, value in REJECT_LINE.findall(text):
            total[reason] = total.get(reason, 0.0) + float(value)
    return total


def stored_clusters(client: RedisCluster) -> int:
    """Clusters in the server's index (one entry per stored cluster; expired ones are pruned)."""
    pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
    for range_id in range(keys.RANGES):
        pipe.zcard(keys.index_key(range_id))
    return sum(int(n) for n in pipe.execute())


async def sample_loop(
    bench: Stack, client: RedisCluster, every_s: float, stop: asyncio.Event, began: float
) -> list[Sample]:
    """Read RSS and Redis memory every ``every_s`` seconds until ``stop`` is set.

    Redis bytes per cluster are counted above the first sample (the empty cluster's baseline).
    """
    samples: list[Sample] = []
    http = httpx.AsyncClient(timeout=30)
    while not stop.is_set():
        with_redis = await asyncio.to_thread(lambda: (bench.used_memory(), stored_clusters(client)))
        sample = Sample(
            at_s=time.monotonic() - began,
            rss=tuple(rss_bytes(s.process.pid) for s in bench.servers),
            redis_used=with_redis[0],
            clusters=with_redis[1],
            rejects=await rejects(bench, http),
        )
        samples.append(sample)
        rss = " ".join(f"{r / 2**20:6.1f}" for r in sample.rss)
        base = samples[0].redis_used  # the empty cluster (appended above on the first round)
        per = (sample.redis_used - base) / sample.clusters if sample.clusters else 0.0
        out(
            f"  t={sample.at_s:6.0f}s  rss MiB {rss}  redis {sample.redis_used / 2**20:7.1f} MiB"
            f"  clusters {sample.clusters:5d}  redis bytes/cluster {per:8.0f}"
            f"  refused {sum(sample.rejects.values()):5.0f}"
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    await http.aclose()
    return samples


async def soak(
    bench: Stack, *, clusters: int, interval_s: float, seconds: float, sample_s: float
) -> tuple[list[Summary], list[Sample]]:
    """Run the load on both pods while sampling; returns the two summaries and the samples."""
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in bench.cluster.startup_nodes],  # type: ignore[no-untyped-call]
    )
    stop = asyncio.Event()
    began = time.monotonic()
    sampler = asyncio.create_task(sample_loop(bench, client, sample_s, stop, began))
    shares = [clusters // 2, clusters - clusters // 2]
    configs = []
    for seed, (pod, workers) in enumerate(zip(bench.servers, shares, strict=True), start=1):
        base = load_config(pod, workers=workers, duration_s=seconds, seed=seed)
        configs.append(
            replace(base, interval_s=interval_s, ramp_up_s=interval_s, error_wait_s=ERROR_WAIT_S)
        )
    try:
        summaries = await asyncio.gather(*(run_benchmark(c) for c in configs))
    finally:
        stop.set()
        samples = await sampler
        client.close()
    return list(summaries), samples


def verdicts(
    summaries: list[Summary], samples: list[Sample], *, warmup_s: float, pods: int
) -> bool:
    """Print the figures and whether each verdict holds; True when all do."""
    statuses: Counter[str] = Counter()
    for summary in summaries:
        statuses.update(summary.statuses)
    accepted = sum(s.accepted for s in summaries)
    elapsed = max(s.elapsed_s for s in summaries)
    fives = sum(n for status, n in statuses.items() if status.startswith("5"))
    out(f"\n  uploads accepted {accepted} in {elapsed:.0f}s ({accepted / elapsed:.1f}/s)")
    out(f"  answers: {dict(sorted(statuses.items()))}")
    for i, summary in enumerate(summaries):
        lat = summary.latency_ms
        out(
            f"  pod {i}: upload latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
            f"max {lat['p100']:.1f} ms"
        )
    ok = fives == 0
    out(f"  zero 5xx: {'PASS' if ok else 'FAIL'} ({fives})")
    if samples:
        out(f"  refused uploads by reason (server self-metrics): {samples[-1].rejects}")

    steady = [s for s in samples if s.at_s >= warmup_s]
    if len(steady) < 2:
        out(f"  RSS flat: not judged (fewer than 2 samples after the {warmup_s:.0f}s warm-up)")
    else:
        for pod in range(pods):
            values = [s.rss[pod] for s in steady]
            first, low, high = values[0], min(values), max(values)
            drift = (high - low) / first
            flat = drift <= RSS_TOLERANCE
            ok = ok and flat
            out(
                f"  pod {pod} RSS after warm-up: first {first / 2**20:.1f} MiB, min "
                f"{low / 2**20:.1f}, max {high / 2**20:.1f}, spread {drift:.1%}: "
                f"{'PASS' if flat else 'FAIL'} (<= {RSS_TOLERANCE:.0%})"
            )
    counted = [s for s in samples if s.clusters >= 100]
    if counted:
        per_cluster = [(s.redis_used - samples[0].redis_used) / s.clusters for s in counted]
        out(
            f"  Redis bytes per stored cluster: {min(per_cluster):.0f} .. {max(per_cluster):.0f}"
            f" over {len(counted)} samples from {counted[0].clusters} to "
            f"{max(s.clusters for s in counted)} clusters"
        )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak and print its figures; exit status 1 when a verdict fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--clusters", type=int, default=5000, help="simulated clusters")
    parser.add_argument("--interval", type=float, default=60.0, help="push interval, seconds")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    out(f"machine: {machine_description()}")
    out(
        f"soak: {args.clusters} clusters, 2 pods, interval {args.interval:.0f}s, "
        f"{args.minutes:g} min"
    )
    with stack() as bench:
        ratelimit = f"{args.interval * 0.8:.1f}s"
        for name in ("soak-a", "soak-b"):
            bench.start_server(name, extra_args=["--ratelimit", ratelimit])
        summaries, samples = asyncio.run(
            soak(
                bench,
                clusters=args.clusters,
                interval_s=args.interval,
                seconds=seconds,
                sample_s=args.sample,
            )
        )
        warmup = args.interval + args.sample
        return 0 if verdicts(summaries, samples, warmup_s=warmup, pods=2) else 1


if __name__ == "__main__":
    raise SystemExit(main())
