"""Real rate: server CPU per upload at a fleet's steady trickle, ours against Go 2019 in one run.

A fleet pod does not see uploads back to back on kept connections (benchmark 1, saturation) but a
steady rate of independent ones: 100k clusters every 4m30s are ~370 uploads/s for the fleet. For
each of ``--rates`` (uploads/s), our server and the Go 2019 ``telemeter-server`` (in memory,
stub authorization) are driven by the Go project's own ``telemeter-benchmark``, which makes its
connections as the Go client does: a new TCP connection for every upload (keep-alives disabled).
Its only rate knob is the number of clusters, each pushing every ``--interval``:
rate = clusters / interval. Servers on core 0 (Go started under ``taskset``: GOMAXPROCS 1); Redis
and the load generators on the other core. A/B interleaved: every round restarts each server,
waits until every simulated cluster has pushed once (so every ``/authorize`` is behind), then
measures ``--seconds``: the server's utime and stime (all threads) and the CPU of the six Redis
processes (ours only: Go keeps its state in memory), divided by the uploads the Go benchmark saw
accepted in the window. The order of a round is reversed in the next (ABBA).

The Go benchmark reports no latency, so after each window our generator (``client/benchmark``,
keep-alive connections) pushes at the same rate for ``--latency-seconds`` and its p50/p99 are
the latency figures (its first push per cluster authorizes; see docs/benchmarks.md).

    python -m bench.realrate [--rates 100,370] [--runs 3] [--seconds 15] [--interval 3]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    OTHER_CPUS,
    STANDARD_PAYLOAD,
    Stack,
    cpu_seconds,
    cpu_times,
    load,
    load_config,
    machine_description,
    median,
    out,
    pinned,
    server,
    stack,
    standard_payload,
    yardstick_ms,
)
from dev.launch import ServerHandle
from dev.ports import free_ports
from dev.processes import ManagedProcess
from dev.upstream import go_binaries

SERVERS = ("ours", "go")
Results = dict[tuple[float, str], list["Window"]]  # by (rate, server)
LATENCY_INTERVAL_S = 1.0  # our generator: rate clusters, each pushing every second


@dataclass(frozen=True)
class Window:
    """One measured window of one server at one rate."""

    user_ms: float  # server CPU per accepted upload
    system_ms: float
    redis_ms: float  # the six Redis processes' CPU per accepted upload (idle work for Go)
    uploads_per_s: float  # accepted by the server, as the Go benchmark counted them
    failed: int  # Go benchmark pushes in the window that were refused or got no answer
    p50_ms: float  # our generator's, in the latency phase after the window
    p99_ms: float
    latency_per_s: float  # uploads/s our generator achieved then
    generator_ms: float  # the Go benchmark's own CPU per accepted upload (on the other core)

    @property
    def server_ms(self) -> float:
        """User plus system."""
        return self.user_ms + self.system_ms


def pushes(url: str) -> tuple[float, float]:
    """The Go benchmark's pushes so far: (accepted, refused or unanswered), from one reading."""
    ok = failed = 0.0
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in family.samples:
            if s.name == "metricsclient_request_send":
                ok += s.value if s.labels.get("status_code") == "200" else 0.0
                failed += s.value if s.labels.get("status_code") != "200" else 0.0
            elif s.name == "forward_errors":
                failed += s.value
    return ok, failed


@contextlib.contextmanager
def go_benchmark(
    bench: Stack, target: ServerHandle, *, clusters: int, interval: float
) -> Iterator[tuple[str, int]]:
    """``telemeter-benchmark`` pushing to ``target`` until the block ends; yields its /metrics URL
    and pid once every cluster has pushed once."""
    (port,) = free_ports(1)
    argv = [
        str(go_binaries() / "telemeter-benchmark"), "--to", target.external,
        "--to-token", "bench", "--metrics-file", str(STANDARD_PAYLOAD),
        "--workers", str(clusters), "--interval", f"{interval}s", "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    log = bench.workdir / f"go-benchmark-{target.name}.log"
    proc = ManagedProcess("telemeter-benchmark", argv, log_path=log).start()
    try:
        url = f"http://127.0.0.1:{port}"
        proc.wait_http(url + "/healthz")
        deadline = time.monotonic() + 3 * interval + 20
        while sum(pushes(url + "/metrics")) < clusters:  # every worker starts within an interval
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target.name}: not every cluster pushed:\n{proc.log_tail()}")
            time.sleep(0.2)
        yield url + "/metrics", proc.pid
    finally:
        proc.stop()


def measure(
    bench: Stack, mode: str, *, rate: float, seconds: float, interval: float, latency_s: float
) -> Window:
    """One window of ``mode`` at ``rate``, then its latency phase."""
    with server(bench, mode) as handle:
        pid, redis_pids = handle.process.pid, bench.redis_pids()
        clusters = max(1, round(rate * interval))
        with go_benchmark(bench, handle, clusters=clusters, interval=interval) as (metrics, gen):
            ok_before, failed_before = pushes(metrics)
            user_before, system_before = cpu_times(pid)
            redis_before = sum(cpu_seconds(p) for p in redis_pids)
            gen_before = cpu_seconds(gen)
            began = time.monotonic()
            time.sleep(seconds)  # the measured window: the Go benchmark pushes meanwhile
            user, system = cpu_times(pid)
            redis_cpu = sum(cpu_seconds(p) for p in redis_pids) - redis_before
            gen_cpu = cpu_seconds(gen) - gen_before
            elapsed = time.monotonic() - began
            ok, failed = pushes(metrics)
        accepted = max(1.0, ok - ok_before)
        workers = max(1, round(rate * LATENCY_INTERVAL_S))
        config = load_config(handle, workers=workers, interval_s=LATENCY_INTERVAL_S)
        summary = load(dataclasses.replace(config, ramp_up_s=None, duration_s=latency_s))
    return Window(
        user_ms=(user - user_before) / accepted * 1000,
        system_ms=(system - system_before) / accepted * 1000,
        redis_ms=redis_cpu / accepted * 1000,
        uploads_per_s=accepted / elapsed,
        failed=round(failed - failed_before),
        p50_ms=summary.latency_ms["p50"],
        p99_ms=summary.latency_ms["p99"],
        latency_per_s=summary.uploads_per_s,
        generator_ms=gen_cpu / accepted * 1000,
    )


def spread(values: Sequence[float], fmt: str = ".3f") -> str:
    """Median and range, as docs/benchmarks.md quotes them."""
    return f"{median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def report(results: Results, rates: Sequence[float]) -> dict[float, tuple[float, float]]:
    """Print the table of medians and ranges; returns server CPU per upload (ms), ours and Go,
    per rate."""
    runs = len(next(iter(results.values())))
    out(f"\nreal rate, median (range) of {runs} rounds; ms of CPU per accepted upload")
    out(
        "| Rate | Server | Server CPU user | system | user+system | Redis CPU | server+Redis "
        "| p50 / p99 latency (our generator) | uploads/s |"
    )
    out("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    medians = {}
    for rate in rates:
        for mode in SERVERS:
            ws = results[(rate, mode)]
            redis = [w.redis_ms for w in ws] if mode == "ours" else [0.0] * len(ws)
            both = [w.server_ms + r for w, r in zip(ws, redis, strict=True)]
            out(
                f"| {rate:.0f}/s | {'ours' if mode == 'ours' else 'Go 2019'} "
                f"| {spread([w.user_ms for w in ws])} | {spread([w.system_ms for w in ws])} "
                f"| **{spread([w.server_ms for w in ws])}** "
                f"| {spread(redis) if mode == 'ours' else 'none'} | {spread(both)} "
                f"| {median([w.p50_ms for w in ws]):.1f} / {median([w.p99_ms for w in ws]):.1f} ms "
                f"| {spread([w.uploads_per_s for w in ws], '.1f')} |"
            )
        ours, go = results[(rate, "ours")], results[(rate, "go")]
        go_ms = median([w.server_ms for w in go])
        alone = median([w.server_ms for w in ours]) / go_ms
        total = median([w.server_ms + w.redis_ms for w in ours]) / go_ms
        idle = median([w.redis_ms for w in go])  # what Redis burns anyway, per upload
        net = (median([w.server_ms + w.redis_ms for w in ours]) - idle) / go_ms
        per_round = [a.server_ms / b.server_ms for a, b in zip(ours, go, strict=True)]
        medians[rate] = (median([w.server_ms for w in ours]), go_ms)
        out(
            f"  {rate:.0f}/s: ours/Go {alone:.2f}x server alone (per round "
            f"{spread(per_round, '.2f')}), {total:.2f}x with Redis ({net:.2f}x without the "
            f"{idle:.3f} ms/upload Redis spends idle, measured in the Go windows)"
        )
    for rate in rates:
        failed = sum(w.failed for mode in SERVERS for w in results[(rate, mode)])
        out(
            f"  {rate:.0f}/s: Go benchmark pushes refused or unanswered, all windows: {failed}; "
            f"our generator's rate in the latency phases "
            f"{spread([w.latency_per_s for m in SERVERS for w in results[(rate, m)]], '.1f')}/s"
        )
    out(f"  yardstick {yardstick_ms():.1f} ms at the end")
    return medians


def main(argv: Sequence[str] | None = None) -> dict[float, tuple[float, float]]:
    """Command line: run the real-rate benchmark; returns what :func:`report` returns."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,370", help="uploads per second, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window")
    parser.add_argument("--interval", type=float, default=3.0, help="each cluster's interval")
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    out(f"machine: {machine_description()}")
    standard_payload()  # exits with the reason when the test data is absent
    go_binaries()
    cells = [(rate, mode) for rate in rates for mode in SERVERS]
    results: Results = {cell: [] for cell in cells}
    with pinned(OTHER_CPUS), stack(pin_redis=OTHER_CPUS) as bench:
        for i in range(args.runs):
            for rate, mode in cells if i % 2 == 0 else cells[::-1]:  # A/B interleaved, ABBA
                w = measure(
                    bench, mode, rate=rate, seconds=args.seconds, interval=args.interval,
                    latency_s=args.latency_seconds,
                )  # fmt: skip
                results[(rate, mode)].append(w)
                out(
                    f"  run {i + 1} {mode:4} at {rate:.0f}/s: server {w.server_ms:.3f} ms/upload "
                    f"(user {w.user_ms:.3f}, system {w.system_ms:.3f}), Redis {w.redis_ms:.3f} ms"
                    f"{' (idle work, not counted)' if mode == 'go' else ''}, "
                    f"{w.uploads_per_s:.1f} uploads/s, {w.failed} failed, Go benchmark "
                    f"{w.generator_ms:.3f} ms CPU/upload; our generator "
                    f"p50 {w.p50_ms:.1f} ms p99 {w.p99_ms:.1f} ms at {w.latency_per_s:.1f}/s"
                )
    return report(results, rates)


if __name__ == "__main__":
    main()
