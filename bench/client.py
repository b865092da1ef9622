"""The client's footprint: CPU per push and RSS of our client and the Go 2019 client, one run.

Both clients federate every series of a real Prometheus (the source, scraping itself every
second: its own few hundred series), anonymize ``instance`` with a salt and push every
``--interval`` to our server, one client at a time, A/B interleaved over ``--runs`` rounds
(ABBA order). A round starts its client, waits for its first push (start-up and imports are
not counted), then measures the client's CPU (utime + stime, all threads) over ``--seconds``
and divides by the uploads the server accepted for that client's cluster id meanwhile. RSS is
the client's ``VmRSS`` at the end of the round, and ``VmHWM`` its peak. The series stored per
push are counted on the server's ``/federate``.

    python -m bench.client [--runs 3] [--seconds 20] [--interval 1s]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from bench.common import (
    OTHER_CPUS,
    SERVER_CPUS,
    machine_description,
    median,
    metric_sum,
    out,
    pin,
    stack,
)
from dev.launch import ServerHandle
from dev.ports import free_port
from dev.processes import ManagedProcess
from dev.prometheus import start_prometheus, wait_for
from dev.upstream import go_binaries

CLIENTS = ("ours", "go")
MATCH = '{__name__=~".+"}'
SALT = "bench-salt"


def _status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # USER_HZ is 100 on Linux


def stored_series(server: ServerHandle, cluster: str) -> int:
    """The series of ``cluster`` on the server's ``/federate`` (without its push time)."""
    text = httpx.get(f"{server.internal}/federate", timeout=30).text
    needle = f'_id="{cluster}"'
    return sum(
        1
        for line in text.splitlines()
        if needle in line and not line.startswith("#") and "push_time" not in line
    )


def uploads(server: ServerHandle) -> float:
    """Uploads the server has accepted so far."""
    return metric_sum(f"{server.internal}/metrics", "telemeter_uploads_total")


@contextlib.contextmanager
def client(kind: str, workdir: Path, source: str, server: ServerHandle, cluster: str,
           interval: str) -> Iterator[ManagedProcess]:  # fmt: skip
    """One client of ``kind`` pushing the source's series to ``server`` as ``cluster``."""
    binary = (
        str(go_binaries() / "telemeter-client")
        if kind == "go"
        else shutil.which("telemeter-client", path=str(Path(__file__).parents[1] / ".venv/bin"))
    )
    assert binary, "telemeter-client is not installed in .venv"
    argv = [
        binary, "--from", source, "--to", server.external, "--id", cluster, "--to-token", "bench",
        "--interval", interval, "--match", MATCH, "--anonymize-labels", "instance",
        "--anonymize-salt", SALT, "--listen", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    process = ManagedProcess(f"client-{kind}", argv, log_path=workdir / f"{cluster}.log").start()
    pin(process.pid, SERVER_CPUS)
    try:
        yield process
    finally:
        process.stop()


def measure(
    kind: str,
    workdir: Path,
    source: str,
    server: ServerHandle,
    cluster: str,
    args: argparse.Namespace,
) -> dict[str, float]:
    """One round of one client: CPU per push, pushes, RSS, peak RSS, series stored."""
    with client(kind, workdir, source, server, cluster, args.interval) as process:
        start = uploads(server)
        deadline = time.monotonic() + 60
        while uploads(server) == start:  # the first push: start-up is done
            if not process.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} client never pushed:\n{process.log_tail()}")
            time.sleep(0.05)
        cpu0, pushes0 = _cpu_seconds(process.pid), uploads(server)
        time.sleep(args.seconds)
        cpu1, pushes1 = _cpu_seconds(process.pid), uploads(server)
        rss, peak = _status(process.pid, "VmRSS"), _status(process.pid, "VmHWM")
    pushes = pushes1 - pushes0
    return {
        "cpu_ms": (cpu1 - cpu0) * 1000 / max(pushes, 1),
        "pushes": pushes,
        "rss": rss,
        "peak": peak,
        "series": stored_series(server, cluster),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", default="1s", help="push interval of both clients")
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    go_binaries()
    results: dict[str, list[dict[str, float]]] = {k: [] for k in CLIENTS}
    with stack(pin_redis=OTHER_CPUS) as bench, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = bench.start_server("clients", extra_args=["--ratelimit", "0s"], cpus=OTHER_CPUS)
        source = start_prometheus(
            workdir=workdir / "source", federate_targets=[], server_targets={}
        )
        try:
            pin(source.process.pid, OTHER_CPUS)
            wait_for(source.url, "up", timeout=30)
            time.sleep(3)  # a few scrapes, so every series of the source exists
            for round_no in range(args.runs):
                order = CLIENTS if round_no % 2 == 0 else CLIENTS[::-1]
                for kind in order:
                    cluster = f"bench-{kind}-{round_no}"
                    r = measure(kind, workdir, source.url, server, cluster, args)
                    results[kind].append(r)
                    out(f"  run {round_no + 1} {kind:4s}: {r['cpu_ms']:.2f} ms CPU/push over "
                        f"{r['pushes']:.0f} pushes, RSS {r['rss'] / 2**20:.1f} MiB (peak "
                        f"{r['peak'] / 2**20:.1f}), {r['series']:.0f} series stored")  # fmt: skip
        finally:
            source.process.stop()
    out(f"\nclient footprint, push every {args.interval}, median of {args.runs}:")
    med = {k: {f: median([r[f] for r in v]) for f in v[0]} for k, v in results.items()}
    for kind in CLIENTS:
        m = med[kind]
        out(f"  {kind:4s} CPU/push {m['cpu_ms']:.2f} ms, RSS {m['rss'] / 2**20:.1f} MiB "
            f"(peak {m['peak'] / 2**20:.1f}), series stored {m['series']:.0f}")  # fmt: skip
    ours, go = med["ours"], med["go"]
    out(f"  ratio ours/Go: CPU/push {ours['cpu_ms'] / go['cpu_ms']:.1f}x, "
        f"RSS {ours['rss'] / go['rss']:.1f}x")  # fmt: skip
    verdict = "met" if ours["cpu_ms"] <= go["cpu_ms"] and ours["rss"] <= 25 * 2**20 else "missed"
    out(f"  target: CPU/push <= Go's and RSS <= 25 MiB: {verdict}")


if __name__ == "__main__":
    main()
