"""Benchmark 2: ``/federate`` latency and throughput, 1000 stored clusters of the standard payload.

One server (one pod, so it serves every ring range) on the Redis Cluster; 1000 clusters are
pushed through ``/upload`` (each a worker of the benchmark tool pushing once), then ``/federate``
is fetched plain and gzip, alternately. Latency is the wall time from sending the request to
the last byte of the answer (read without decoding); the server CPU per request comes from /proc.

    python -m bench.federate [--runs 5] [--clusters 1000]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.common import (
    GO_FEDERATE_S,
    cpu_seconds,
    fill,
    machine_description,
    median,
    out,
    rss_bytes,
    stack,
)
from dev.launch import ServerHandle


@dataclass(frozen=True)
class FederateRun:
    """One ``/federate`` request."""

    encoding: str
    seconds: float
    server_cpu_s: float
    bytes: int


def fetch(server: ServerHandle, *, gzipped: bool) -> tuple[float, bytes]:
    """GET /federate; returns the wall time to the last byte and the raw (maybe gzip) body."""
    parts = urlsplit(server.internal)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        headers = {"Accept-Encoding": "gzip" if gzipped else "identity"}
        started = time.perf_counter()
        conn.request("GET", "/federate", headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if answer.status != 200:
        raise RuntimeError(f"/federate answered {answer.status}: {body[:200]!r}")
    if gzipped != (answer.getheader("Content-Encoding") == "gzip"):
        raise RuntimeError("/federate did not answer the encoding asked for")
    return elapsed, body


def sample_lines(text: bytes) -> int:
    """Number of sample lines in an exposition."""
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def run(*, runs: int, clusters: int) -> tuple[list[FederateRun], int, dict[str, int]]:
    """Fill ``clusters`` clusters, then ``runs`` plain and gzip fetches.

    Returns the fetches, the number of series served and the server's RSS at points of interest.
    """
    with stack() as bench:
        server = bench.start_server("bench")
        bench.wait_serving_all(server)
        pid = server.process.pid
        rss = {"before fill": rss_bytes(pid)}
        fill(server, clusters)
        rss["after fill"] = rss_bytes(pid)
        _, plain = fetch(server, gzipped=False)  # warm-up, and the reference answer
        _, packed = fetch(server, gzipped=True)
        if gzip.decompress(packed) != plain:
            raise RuntimeError("gzip and plain /federate answers differ")
        series = sample_lines(plain)
        results = []
        for _ in range(runs):
            for gzipped in (False, True):
                before = cpu_seconds(pid)
                seconds, body = fetch(server, gzipped=gzipped)
                results.append(
                    FederateRun(
                        "gzip" if gzipped else "plain",
                        seconds,
                        cpu_seconds(pid) - before,
                        len(body),
                    )
                )
        rss["after federates"] = rss_bytes(pid)
    return results, series, rss


def report(results: Sequence[FederateRun], series: int, clusters: int) -> dict[str, float]:
    """Print the medians per encoding; returns the median latency of each."""
    medians = {}
    for encoding in ("plain", "gzip"):
        mine = [r for r in results if r.encoding == encoding]
        out(
            f"  {encoding} runs: "
            + ", ".join(f"{r.seconds:.3f} s (CPU {r.server_cpu_s:.2f})" for r in mine)
        )
        seconds = median([r.seconds for r in mine])
        medians[encoding] = seconds
        out(
            f"federate {encoding}: {clusters} clusters, {series} series, median of {len(mine)}: "
            f"{seconds:.3f} s ({series / seconds:,.0f} series/s, "
            f"{median([r.bytes for r in mine]) / seconds / 2**20:.0f} MiB/s on the wire, "
            f"{median([r.bytes for r in mine]) / 2**20:.1f} MiB), server CPU "
            f"{median([r.server_cpu_s for r in mine]):.3f} s; target <= 0.1 s "
            f"{'met' if seconds <= 0.1 else 'missed'}; Go {GO_FEDERATE_S} s -> ratio "
            f"{seconds / GO_FEDERATE_S:.2f} x Go"
        )
    return medians


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run benchmark 2 and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clusters", type=int, default=1000)
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    results, series, rss = run(runs=args.runs, clusters=args.clusters)
    report(results, series, args.clusters)
    out("  server RSS: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in rss.items()))


if __name__ == "__main__":
    main()
