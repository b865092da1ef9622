"""Remote write (forwarding): server CPU per upload it adds, samples per core, Redis per entry.

At a fixed rate (``--rate`` uploads/s from ``--clusters`` simulated clusters, each pushing every
clusters/rate seconds, ``--ratelimit 0s``), A/B interleaved per run: our server without and with
``--forward-url`` to a real Prometheus receiver (``--web.enable-remote-write-receiver``), then the
Go 2019 server the same two ways, driven by the same load generator. Servers on core 0; Redis,
the receiver and the generator on the others. A run restarts its server, warms it up for 2 s,
then measures its CPU (utime + stime, all threads) over the load plus, with forwarding, until its
queue is drained (so the sending of every measured upload is counted). Last, Redis memory per
queued upload: a server forwarding to a closed port queues ``--queued`` uploads.

    python -m bench.forward [--runs 5] [--seconds 15] [--rate 100] [--clusters 200] [--no-go]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import httpx

from bench.common import (
    OTHER_CPUS,
    SERVER_CPUS,
    Stack,
    cpu_seconds,
    fill,
    load,
    load_config,
    machine_description,
    median,
    metric_sum,
    out,
    pinned,
    server,
    stack,
    wait_for_quiet_redis,
)
from dev.launch import ServerHandle
from dev.ports import free_ports
from dev.prometheus import start_receiver
from dev.upstream import go_binaries

TARGET_MS = 0.15  # forwarding may add at most this much server CPU per standard upload
# ours+fwd1: one --tenant-id for all, so a request carries up to --forward-batch-entries uploads
# (with a tenant per cluster, consecutive entries of a stream rarely share one: one upload each).
MODES = ("ours", "ours+fwd", "ours+fwd1", "go", "go+fwd")
APPENDED = "prometheus_tsdb_head_samples_appended_total"  # the receiver's count


def drain(handle: ServerHandle, *, timeout: float = 20.0) -> None:
    """Wait until ``handle`` has nothing left to forward (Go: its goroutines are done)."""
    if handle.name.startswith("go"):
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = metric_sum(handle.internal + "/metrics", "telemeter_forward_queue_length")
        if queued == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{handle.name}: forward queue not drained in {timeout} s")


def measure(
    bench: Stack, mode: str, receiver: str, *, seconds: float, rate: float, clusters: int, seed: int
) -> tuple[float, float, float, float]:
    """One run: (server ms CPU per accepted upload, forwarded samples per CPU second, uploads/s,
    samples the server forwarded in all, warm-up included). Says so when the receiver
    appended another number of samples meanwhile."""
    appended_before = metric_sum(receiver + "/metrics", APPENDED)
    with server(bench, mode, receiver + "/api/v1/write") as handle:
        config = load_config(handle, workers=clusters, interval_s=clusters / rate, seed=seed)
        config = dataclasses.replace(config, ramp_up_s=None)  # spread: a steady rate
        load(dataclasses.replace(config, duration_s=2.0, seed=seed + 1000))  # warm-up
        fwd = "+fwd" in mode
        if fwd:
            drain(handle)
        metrics = handle.internal + "/metrics"
        samples_before = metric_sum(metrics, "telemeter_forward_samples_total")
        cpu_before = cpu_seconds(handle.process.pid)
        summary = load(dataclasses.replace(config, duration_s=seconds))
        if fwd:
            drain(handle)
        cpu = cpu_seconds(handle.process.pid) - cpu_before
        samples = metric_sum(metrics, "telemeter_forward_samples_total") - samples_before
        errors = metric_sum(metrics, "telemeter_forward_request_errors_total")
        total = samples_before + samples
    if summary.accepted < summary.attempts or errors:
        refused = summary.attempts - summary.accepted
        out(f"    {mode}: {refused} uploads refused, {errors:.0f} forwarding errors")
    appended = metric_sum(receiver + "/metrics", APPENDED) - appended_before
    if appended != total:  # the server stopped: what it sent is all in (or lost)
        out(f"    {mode}: the receiver appended {appended:,.0f} samples, the server counted "
            f"{total:,.0f} as forwarded (2xx)")  # fmt: skip
    per_upload = cpu / max(1, summary.accepted) * 1000
    return per_upload, samples / max(cpu, 1e-9), summary.uploads_per_s, total


def queued_memory(bench: Stack, uploads: int) -> tuple[int, float, float]:
    """Queue ``uploads`` with the receiver unreachable: (entries, bytes/upload by used_memory
    before/after deleting the streams, bytes/upload by MEMORY USAGE of the streams)."""
    (closed,) = free_ports(1)
    args = ["--forward-url", f"http://127.0.0.1:{closed}/api/v1/write", "--forward-backoff-max",
            "1h", "--forward-queue-limit", str(uploads), "--ratelimit", "0s"]  # fmt: skip
    bench.flush()
    handle = bench.start_server("queue", extra_args=args, cpus=SERVER_CPUS)
    bench.wait_serving_all(handle)
    fill(handle, uploads)
    handle.process.stop()
    bench.servers.remove(handle)
    wait_for_quiet_redis(bench)
    entries, usage, streams = 0, 0, []
    for port in bench.primary_ports():
        with bench.cluster.client(port) as conn:
            for key in conn.scan_iter(match="telemeter:forward:*", count=1000):
                entries += int(conn.xlen(key))
                usage += int(conn.memory_usage(key, samples=0) or 0)
                streams.append((port, key))
    before = bench.used_memory()
    for port, key in streams:
        with bench.cluster.client(port) as conn:
            conn.delete(key)
    wait_for_quiet_redis(bench)
    freed = before - bench.used_memory()
    return entries, freed / max(1, entries), usage / max(1, entries)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run the forwarding benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=100.0, help="uploads per second")
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--queued", type=int, default=1000, help="uploads queued for memory")
    parser.add_argument("--no-go", action="store_true", help="our server only (no Go 2019 modes)")
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    modes = tuple(m for m in MODES if not (args.no_go and m.startswith("go")))
    if not args.no_go:
        go_binaries()
    results: dict[str, list[tuple[float, float, float, float]]] = {mode: [] for mode in modes}
    with pinned(OTHER_CPUS), stack(pin_redis=OTHER_CPUS) as bench:
        receiver = start_receiver(workdir=bench.workdir / "receiver")
        try:
            received_before = metric_sum(receiver.url + "/metrics", APPENDED)
            for i in range(args.runs):
                order = modes if i % 2 == 0 else modes[::-1]  # A/B interleaved, ABBA
                for mode in order:
                    result = measure(
                        bench, mode, receiver.url, seconds=args.seconds, rate=args.rate,
                        clusters=args.clusters, seed=i + 1,
                    )  # fmt: skip
                    results[mode].append(result)
                    out(
                        f"  run {i + 1} {mode:8}: {result[0]:.3f} ms server CPU/upload at "
                        f"{result[2]:.0f} uploads/s"
                        + (f", {result[1]:,.0f} samples forwarded/CPU s" if result[1] else "")
                    )
            time.sleep(2)
            received = metric_sum(receiver.url + "/metrics", APPENDED) - received_before
            try:  # a loaded receiver may take longer than the query's timeout: then not counted
                ids = receiver.query("count(count by (_id) ({_id!=''}))")
            except httpx.HTTPError:
                ids = []
        finally:
            receiver.process.stop()
        out(f"\nRedis memory per queued upload ({args.queued} uploads, receiver unreachable):")
        entries, freed, usage = queued_memory(bench, args.queued)
    ms = {mode: median([r[0] for r in results[mode]]) for mode in modes}
    out(f"  {entries} entries; used_memory {freed:,.0f} B/upload; MEMORY USAGE {usage:,.0f} B")
    out(f"\nforwarding at {args.rate:.0f} uploads/s, median of {args.runs}:")
    for name, base, mode in (
        ("ours", "ours", "ours+fwd"), ("ours, 1 tenant", "ours", "ours+fwd1"),
        ("Go 2019", "go", "go+fwd"),
    ):  # fmt: skip
        if mode not in modes:
            continue
        # the difference within each round (same machine state), then the median of those
        added = median([a[0] - b[0] for a, b in zip(results[mode], results[base], strict=True)])
        per_core = median([r[1] for r in results[mode]])
        out(
            f"  {name:14} server CPU/upload {ms[base]:.3f} ms without, {ms[mode]:.3f} ms "
            f"with -> forwarding adds {added:.3f} ms (median of the rounds' differences); "
            f"{per_core:,.0f} samples/s per core"
        )
        if mode == "ours+fwd":
            out(f"  target: adds <= {TARGET_MS} ms: {'met' if added <= TARGET_MS else 'missed'}")
    n_clusters = int(ids[0]["value"][1]) if ids else 0
    sent = sum(r[3] for rs in results.values() for r in rs)
    out(
        f"  receiver: {received:,.0f} samples appended of {sent:,.0f} the servers counted as "
        f"forwarded (2xx); {n_clusters} clusters (_id) stored"
    )


if __name__ == "__main__":
    main()
