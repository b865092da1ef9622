"""Scale: one pod's ``/federate`` of many clusters (default 10k): time, size and peak RSS.

One server (one pod, so it serves every ring range) on the Redis Cluster; ``--clusters``
clusters of the standard payload are pushed through ``/upload`` (each a worker of the benchmark
tool pushing once), then ``/federate`` is fetched plain and gzip, alternately, ``--runs`` times.
Before each fetch the server's peak RSS is reset (``5`` written to ``/proc/PID/clear_refs``), so
``VmHWM`` after it is the peak of that answer alone. The answer is read in pieces, then hashed
(the gzip one inflated) once the clock has stopped: plain and gzip must give the same text.
docs/scale.md quotes the figures.

With ``--pods 3,6`` pods join after the fill up to each count and the ring settles
(``bench.ring_settle``); then each pod's ``/federate`` (its share of the ring) is fetched in
turn, and the figures are the slowest pod's time and the highest pod's peak.

    python -m bench.scale [--clusters 10000] [--runs 3] [--pods 1]
    python -m bench.scale --clusters 100000 --runs 1 --pods 3,6
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import cpu_seconds, fill, machine_description, median, out, rss_bytes, stack
from bench.ring_settle import wait_settled
from dev.launch import ServerHandle

PIECE = 1 << 20  # bytes read from the answer at a time
# A fill of 100k clusters outlasts the default --ttl of 10 minutes; and a merge of a third of
# them holds the event loop for seconds, longer than the benchmarks' 2 s ring lease: the pods
# run with the default ring timing.
LONG_TTL = ("--ttl", "3h", "--ring-heartbeat", "2s", "--ring-lease", "10s")
STEADY_S = 1.0  # after the ring settles, before the fetches (the benchmarks' heartbeat is 0.5 s)


@dataclass(frozen=True)
class ScaleRun:
    """One ``/federate`` request."""

    encoding: str
    pod: str
    seconds: float
    server_cpu_s: float
    bytes: int  # on the wire
    text_sha256: str  # of the text (inflated when gzip)
    rss_before: int
    peak: int  # VmHWM after the answer, reset before it


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size since start or the last `reset_peak`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def reset_peak(pid: int) -> None:
    """Set the process's peak RSS back to its current RSS (Linux 4.0+, proc(5) clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5\n")


def fetch(server: ServerHandle, *, gzipped: bool) -> ScaleRun:
    """GET /federate, reading the answer in pieces; time, size, text hash and the peak RSS."""
    pid = server.process.pid
    parts = urlsplit(server.internal)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    pieces: list[bytes] = []
    reset_peak(pid)
    before = rss_bytes(pid)
    cpu = cpu_seconds(pid)
    try:
        started = time.perf_counter()
        headers = {"Accept-Encoding": "gzip" if gzipped else "identity"}
        conn.request("GET", "/federate", headers=headers)
        answer = conn.getresponse()
        if answer.status != 200:
            raise RuntimeError(f"/federate answered {answer.status}: {answer.read(200)!r}")
        if gzipped != (answer.getheader("Content-Encoding") == "gzip"):
            raise RuntimeError("/federate did not answer the encoding asked for")
        while piece := answer.read(PIECE):
            pieces.append(piece)
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    cpu = cpu_seconds(pid) - cpu
    peak = peak_rss_bytes(pid)
    digest = hashlib.sha256()
    inflate = zlib.decompressobj(31)
    for piece in pieces:  # after the clock stopped: the reader's work is not the answer's time
        digest.update(inflate.decompress(piece) if gzipped else piece)
    if gzipped and not inflate.eof:
        raise RuntimeError("the gzip answer is truncated")
    encoding = "gzip" if gzipped else "plain"
    size = sum(map(len, pieces))
    return ScaleRun(encoding, server.name, elapsed, cpu, size, digest.hexdigest(), before, peak)


def run(
    *, clusters: int, runs: int, pods: Sequence[int] = (1,)
) -> tuple[dict[int, list[ScaleRun]], dict[str, float]]:
    """Fill ``clusters`` clusters, then for each count of ``pods`` (pods join up to it and the
    ring settles) ``runs`` plain and gzip fetches from every pod; the fetches by pod count and
    the first pod's RSS (MiB), the fill and settle times (s)."""
    by_pods: dict[int, list[ScaleRun]] = {}
    with stack() as bench:
        server = bench.start_server("scale", extra_args=["--ratelimit", "0s", *LONG_TTL])
        bench.wait_serving_all(server)
        pid = server.process.pid
        facts = {"RSS before fill MiB": rss_bytes(pid) / 2**20}
        began = time.monotonic()
        fill(server, clusters)
        facts["fill s"] = time.monotonic() - began
        facts["RSS after fill MiB"] = rss_bytes(pid) / 2**20
        facts["Redis used_memory MiB"] = bench.used_memory() / 2**20
        everyone = [server]
        for count in pods:
            if count > len(everyone):
                began = time.monotonic()
                everyone += [
                    bench.start_server(f"scale-{i}", extra_args=LONG_TTL)
                    for i in range(len(everyone), count)
                ]
                facts[f"settle at {count} pods s"] = wait_settled(everyone, began)
                time.sleep(STEADY_S)  # two heartbeats more: the assignment holds still
                wait_settled(everyone, time.monotonic())
            results = by_pods[count] = []
            for _ in range(runs):
                for gzipped in (False, True):
                    results += [fetch(pod, gzipped=gzipped) for pod in everyone]
            for pod in everyone:
                mine = [
                    (r.encoding, r.bytes, r.text_sha256[:12]) for r in results if r.pod == pod.name
                ]
                if len({digest for _, _, digest in mine}) != 1:
                    raise RuntimeError(f"{pod.name}: the answers differ: {mine}")
        facts["RSS after fetches MiB"] = rss_bytes(pid) / 2**20
    return by_pods, facts


def report(results: Sequence[ScaleRun], clusters: int, idle_rss_mib: float) -> None:
    """Print each run and the medians per encoding (with several pods, of the slowest pod's time
    and the highest pod's peak); the peak per 1000 clusters is the peak's rise over the pod's RSS
    before any cluster was stored, over the clusters a pod serves."""
    pods = len({r.pod for r in results})
    per_pod = clusters / pods
    for encoding in ("plain", "gzip"):
        mine = [r for r in results if r.encoding == encoding]
        rounds = [mine[i : i + pods] for i in range(0, len(mine), pods)]
        worst = [
            (max(r.seconds for r in g), max(r.peak for r in g), sum(r.bytes for r in g))
            for g in rounds
        ]
        out(f"  {encoding} runs: " + ", ".join(
            f"{r.pod} {r.seconds:.2f} s (CPU {r.server_cpu_s:.2f}) peak {r.peak / 2**20:.0f} MiB"
            for r in mine
        ))  # fmt: skip
        peak = median([w[1] for w in worst])
        rise = peak / 2**20 - idle_rss_mib
        out(
            f"scale {encoding}: {clusters} clusters on {pods} pod(s), median of {len(rounds)}: "
            f"{median([w[0] for w in worst]):.2f} s (slowest pod), server CPU "
            f"{median([r.server_cpu_s for r in mine]):.2f} s per pod, "
            f"{median([w[2] for w in worst]) / 1e6:.1f} MB in all; highest pod peak RSS "
            f"{peak / 2**20:.0f} MiB ({rise:.0f} MiB over the idle pod, "
            f"{rise / per_pod * 1000:.1f} MiB per 1000 clusters it serves)"
            + (f"; target <= 400 MiB {'met' if peak <= 400 * 2**20 else 'missed'}"
               if clusters == 10_000 and pods == 1 else "")
        )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: fill, fetch, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pods", default="1", help="pod counts, comma-separated (e.g. 3,6)")
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    counts = sorted(int(n) for n in args.pods.split(","))
    by_pods, facts = run(clusters=args.clusters, runs=args.runs, pods=counts)
    out("  " + ", ".join(f"{k} {v:.0f}" for k, v in facts.items()))
    for results in by_pods.values():
        report(results, args.clusters, facts["RSS before fill MiB"])


if __name__ == "__main__":
    main()
