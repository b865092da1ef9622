"""Where the server's time goes on the upload and the ``/federate`` paths.

Two views of each path:

- py-spy samples the running server (100 Hz, wall time while the thread is not idle) during a
  saturation load of uploads, then during back-to-back ``/federate`` fetches of 1000 stored
  clusters; the top functions by own time and by inclusive time are printed (line numbers
  folded into functions).
- cProfile counts Python-level calls in a server run under ``python -m cProfile``: if any
  Python function were called per sample, it would show at least 232 calls per upload (or one
  per served series on ``/federate``). The largest counts per request are printed, and their
  sum; for uploads also at a real rate (100/s from the Go benchmark, a new connection each).

py-spy is a bench-only dependency (``pip install py-spy``); without it that part is skipped.

    python -m bench.profiles [--seconds 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import realrate
from bench.common import (
    PRODUCTION_RING,
    RING_ARGS,
    Stack,
    fill,
    load,
    load_config,
    machine_description,
    metric_sum,
    out,
    stack,
)
from bench.federate import fetch
from dev.launch import KEEP_ALL, ServerHandle
from dev.ports import free_ports
from dev.processes import ManagedProcess

SERIES_PER_UPLOAD = 232
TOP = 15
_LINE = re.compile(r":\d+\)$")


def _package(frame: str) -> str:
    """The top-level package of a py-spy frame such as ``f (redis/asyncio/cluster.py)``."""
    path = frame.rpartition("(")[2].rstrip(")")
    head = path.split("/", 1)[0] if "/" in path else path
    return head.removesuffix(".py") or "?"


def top_frames(raw: Path, *, top: int = TOP) -> dict[str, list[tuple[str, float]]]:
    """Top functions by own time, telemeter functions by inclusive time, own time by package.

    Shares are of all samples of a py-spy raw recording (line numbers folded into functions).
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE.sub(")", frame) for frame in stack_text.split(";")]
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    total = max(total, 1)
    ours = [
        (f, n / total)
        for f, n in inclusive.most_common()
        if "(telemeter/" in f and "(app/main.py)" not in f
    ]
    return {
        "samples": [("", float(total))],
        "own": [(f, n / total) for f, n in own.most_common(top)],
        "inclusive": ours[:top],
        "packages": [(p, n / total) for p, n in packages.most_common(top)],
    }


def py_spy_during(pid: int, seconds: float, raw: Path, work: Callable[[], object]) -> bool:
    """Sample ``pid`` with py-spy for ``seconds`` while ``work`` runs; False without py-spy."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        out("  py-spy not installed (pip install py-spy): sampling profile skipped")
        return False
    argv = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100"]
    argv += ["-f", "raw", "-o", str(raw), "--nonblocking"]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # let py-spy attach before the load starts
        work()
        _, err = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not raw.exists():
        out(f"  py-spy failed: {err.decode(errors='replace')[-300:]}")
        return False
    return True


def print_frames(title: str, raw: Path) -> None:
    """Print the top frames of a py-spy recording."""
    tops = top_frames(raw)
    out(f"{title}: {tops['samples'][0][1]:.0f} samples")
    for key, heading in (
        ("packages", "own time by package"),
        ("own", "own time by function"),
        ("inclusive", "inclusive time of telemeter functions"),
    ):
        out(f"  {heading}:")
        for frame, share in tops[key]:
            out(f"    {share:6.1%}  {frame}")


def start_profiled_server(
    bench: Stack, name: str, prof: Path, extra: Sequence[str], ring: Sequence[str] = RING_ARGS
) -> ServerHandle:
    """A server run under ``python -m cProfile`` (the stats are written when it stops)."""
    ext, internal = free_ports(2)
    argv = [
        sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "app.main",
        "--name", name, "--redis-url", bench.cluster.url,
        "--listen", f"127.0.0.1:{ext}", "--listen-internal", f"127.0.0.1:{internal}",
        "--shared-key", str(bench.key), "--whitelist", KEEP_ALL, *ring, *extra,
    ]  # fmt: skip
    proc = ManagedProcess(name, argv, log_path=bench.workdir / f"{name}.log").start()
    handle = ServerHandle(proc, name, f"http://127.0.0.1:{ext}", f"http://127.0.0.1:{internal}")
    try:
        proc.wait_http(handle.external + "/healthz", timeout=60)
        proc.wait_http(handle.internal + "/healthz", timeout=60)
    except BaseException:
        proc.stop()
        raise
    return handle


def _call_counts(prof: Path) -> dict[str, int]:
    stats = pstats.Stats(str(prof))
    counts = {}
    for (filename, line, func), row in stats.stats.items():  # type: ignore[attr-defined]
        counts[f"{func} ({Path(filename).name}:{line})"] = int(row[1])
    return counts


def print_call_counts(
    title: str, few: tuple[Path, int], many: tuple[Path, int], *, per: str
) -> None:
    """The Python functions with the most calls per request, start-up excluded.

    Two server runs differ only in their number of requests; the difference of the call counts
    divided by the difference of the requests is what one request costs.
    """
    small, large = _call_counts(few[0]), _call_counts(many[0])
    extra = many[1] - few[1]
    rows = sorted(((large[name] - small.get(name, 0)) / extra, name) for name in large)[::-1]
    out(f"{title}: most-called functions per {per} (cProfile, {few[1]} vs {many[1]} {per}s)")
    out(f"    {sum(calls for calls, _ in rows):9.1f} calls/{per} in all")
    for calls, name in rows[:TOP]:
        out(f"    {calls:9.1f} calls/{per}  {name}")


def profile_uploads(bench: Stack, workdir: Path, seconds: float) -> None:
    """py-spy and cProfile of the upload path at saturation."""
    server = bench.start_server("spy-upload", extra_args=["--ratelimit", "0s"])
    raw = workdir / "upload.raw"
    config = load_config(server, workers=16, duration_s=seconds)
    if py_spy_during(server.process.pid, seconds, raw, lambda: load(config)):
        print_frames("upload path (py-spy)", raw)
    bench.stop_servers()
    runs = []
    for uploads in (100, 400):
        prof = workdir / f"upload-{uploads}.prof"
        profiled = start_profiled_server(bench, "prof-upload", prof, ["--ratelimit", "0s"])
        summary = load(load_config(profiled, workers=8, uploads=uploads))
        profiled.process.stop()
        if summary.accepted != uploads:
            raise RuntimeError(f"profiled uploads: {summary.statuses}")
        runs.append((prof, uploads))
    print_call_counts("upload path", runs[0], runs[1], per="upload")


def profile_real_rate(bench: Stack, workdir: Path, rate: float = 100.0) -> None:
    """cProfile of the upload path at a real rate: the Go ``telemeter-benchmark`` pushing
    ``rate`` uploads/s, each on a new connection (`bench.realrate`), to a server with the ring at
    its default times; two runs of different lengths, as for the saturation counts."""
    runs = []
    for seconds in (4.0, 14.0):
        prof = workdir / f"realrate-{seconds:.0f}.prof"
        profiled = start_profiled_server(
            bench, "prof-realrate", prof, ["--ratelimit", "0s"], ring=PRODUCTION_RING
        )
        try:
            with realrate.go_benchmark(bench, profiled, clusters=round(rate * 3), interval=3):
                time.sleep(seconds)
            uploads = round(metric_sum(profiled.internal + "/metrics", "telemeter_uploads_total"))
        finally:
            profiled.process.stop()
        runs.append((prof, uploads))
    print_call_counts(f"upload path at {rate:.0f} uploads/s, new connections", *runs, per="upload")


def profile_federate(bench: Stack, workdir: Path, seconds: float, clusters: int) -> None:
    """py-spy and cProfile of ``/federate`` over ``clusters`` stored clusters."""
    bench.flush()
    server = bench.start_server("spy-federate")
    fill(server, clusters)
    bench.wait_serving_all(server)
    raw = workdir / "federate.raw"

    def fetch_loop() -> None:
        deadline = time.monotonic() + seconds - 1
        while time.monotonic() < deadline:
            for gzipped in (False, True):
                fetch(server, gzipped=gzipped)

    if py_spy_during(server.process.pid, seconds, raw, fetch_loop):
        print_frames(f"/federate path, {clusters} clusters, plain and gzip (py-spy)", raw)
    bench.stop_servers()
    runs = []
    for fetches in (2, 6):
        prof = workdir / f"federate-{fetches}.prof"
        profiled = start_profiled_server(bench, "prof-federate", prof, [])
        bench.wait_serving_all(profiled, timeout=60)
        for i in range(fetches):
            fetch(profiled, gzipped=i % 2 == 1)
        profiled.process.stop()
        runs.append((prof, fetches))
    print_call_counts(
        f"/federate path ({clusters} clusters, {clusters * (SERIES_PER_UPLOAD + 1)} series)",
        runs[0],
        runs[1],
        per="federate",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print the profiles of both paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="keep the raw profiles here")
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    with tempfile.TemporaryDirectory(prefix="telemeter-profiles-") as tmp:
        workdir = args.out or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with stack() as bench:
            profile_uploads(bench, workdir, args.seconds)
            profile_real_rate(bench, workdir)
            profile_federate(bench, workdir, args.seconds, args.clusters)


if __name__ == "__main__":
    main()
