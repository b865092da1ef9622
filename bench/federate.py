"""Benchmark 2: ``/federate`` latency and throughput, 1000 stored clusters of the standard payload,
ours and the Go 2019 server in the same run.

One server of ours (one pod, so it serves every ring range) on the Redis Cluster, then the Go
2019 ``telemeter-server`` (in memory), each on core 0; 1000 clusters are pushed through
``/upload`` (each a worker of the benchmark tool pushing once), then ``/federate`` is fetched
plain and gzip, alternately (Go: the encodings it answers). Latency is the wall time from
sending the request to the last byte of the answer (read without decoding); the server CPU per
request comes from /proc.

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
    cpu_seconds,
    fill,
    machine_description,
    median,
    out,
    rss_bytes,
    server,
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


def run(
    *, runs: int, clusters: int, mode: str = "ours"
) -> tuple[list[FederateRun], int, dict[str, int]]:
    """Fill ``clusters`` clusters on a server of ``mode`` (``ours`` or ``go``), then ``runs``
    plain and gzip fetches (plain only if it does not answer gzip).

    Returns the fetches, the number of series served and the server's RSS at points of interest.
    """
    with stack() as bench, server(bench, mode) as handle:
        if mode == "ours":
            bench.wait_serving_all(handle)
        pid = handle.process.pid
        rss = {"before fill": rss_bytes(pid)}
        fill(handle, clusters)
        rss["after fill"] = rss_bytes(pid)
        _, plain = fetch(handle, gzipped=False)  # warm-up, and the reference answer
        encodings = [False]
        try:
            _, packed = fetch(handle, gzipped=True)
        except RuntimeError:
            if mode == "ours":
                raise
        else:
            if gzip.decompress(packed) != plain:
                raise RuntimeError("gzip and plain /federate answers differ")
            encodings.append(True)
        series = sample_lines(plain)
        results = []
        for _ in range(runs):
            for gzipped in encodings:
                before = cpu_seconds(pid)
                seconds, body = fetch(handle, gzipped=gzipped)
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


def report(
    results: Sequence[FederateRun], series: int, clusters: int, mode: str = "ours"
) -> dict[str, float]:
    """Print the medians per encoding; returns the median latency of each."""
    medians = {}
    for encoding in ("plain", "gzip"):
        mine = [r for r in results if r.encoding == encoding]
        if not mine:
            continue
        out(
            f"  {mode} {encoding} runs: "
            + ", ".join(f"{r.seconds:.3f} s (CPU {r.server_cpu_s:.2f})" for r in mine)
        )
        seconds = median([r.seconds for r in mine])
        medians[encoding] = seconds
        out(
            f"federate {mode} {encoding}: {clusters} clusters, {series} series, median of "
            f"{len(mine)}: {seconds:.3f} s ({series / seconds:,.0f} series/s, "
            f"{median([r.bytes for r in mine]) / seconds / 2**20:.0f} MiB/s on the wire, "
            f"{median([r.bytes for r in mine]) / 2**20:.1f} MiB), server CPU "
            f"{median([r.server_cpu_s for r in mine]):.3f} s"
            + (f"; target <= 0.1 s {'met' if seconds <= 0.1 else 'missed'}" if mode == "ours"
               else "")
        )  # fmt: skip
    return medians


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Command line: run benchmark 2, ours then Go, and print the figures and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clusters", type=int, default=1000)
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    medians = {}
    for mode in ("ours", "go"):
        results, series, rss = run(runs=args.runs, clusters=args.clusters, mode=mode)
        medians[mode] = report(results, series, args.clusters, mode)
        out(
            f"  {mode} server RSS: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in rss.items())
        )
    go_plain = medians["go"]["plain"]
    for encoding, seconds in medians["ours"].items():
        out(f"federate {encoding}: ours {seconds:.3f} s against Go's plain {go_plain:.3f} s in "
            f"the same run: {seconds / go_plain:.2f}x")  # fmt: skip
    return medians


if __name__ == "__main__":
    main()
