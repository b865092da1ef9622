"""How long the ring takes to settle at ``--pods`` pods: first start, a pod joining, a pod
leaving (SIGTERM) and a pod crashing (SIGKILL), with the ring's default timing.

Settled means: every pod's ``/debug/ring`` holds exactly the ranges its last heartbeat assigned
it, the pods' ranges are disjoint and cover all of them, and every pod sees the same members.
The time is from the event (the start of the new pod's process, the signal) to the first poll
(every 50 ms) that finds the ring settled. ``--runs`` rounds, medians printed.

    python -m bench.ring_settle [--pods 10] [--runs 3] [--heartbeat 2s] [--lease 10s]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from collections.abc import Sequence

import httpx

from app import keys
from bench.common import Stack, median, out, stack
from dev.launch import ServerHandle, start_server

POLL_S = 0.05


def settled(pods: Sequence[ServerHandle]) -> bool:
    """Whether the pods' ring views agree and cover every range once."""
    views = []
    for pod in pods:
        try:
            views.append(httpx.get(pod.internal + "/debug/ring", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return False
    owned = [r for view in views for r in view["ranges"]]
    members = {frozenset(m["name"] for m in view["members"]) for view in views}
    return (
        sorted(owned) == list(range(keys.RANGES))
        and all(view["ranges"] == view["assigned_ranges"] for view in views)
        and members == {frozenset(pod.name for pod in pods)}
    )


def wait_settled(pods: Sequence[ServerHandle], since: float, *, timeout: float = 120.0) -> float:
    """Seconds from ``since`` until the ring of ``pods`` is settled."""
    while not settled(pods):
        if time.monotonic() - since > timeout:
            raise TimeoutError(f"the ring of {len(pods)} pods did not settle in {timeout} s")
        time.sleep(POLL_S)
    return time.monotonic() - since


def start(bench: Stack, name: str, ring: Sequence[str]) -> ServerHandle:
    handle = start_server(
        redis_url=bench.cluster.url,
        workdir=bench.workdir,
        name=name,
        shared_key=bench.key,
        extra_args=list(ring),
        wait=False,
    )
    bench.servers.append(handle)
    return handle


def round_(bench: Stack, pods: int, ring: Sequence[str], n: int) -> dict[str, float]:
    """One round: start, join, leave, crash; the seconds each took to settle."""
    began = time.monotonic()
    live = [start(bench, f"pod-{n}-{i}", ring) for i in range(pods)]
    times = {"start": wait_settled(live, began)}
    began = time.monotonic()
    live.append(start(bench, f"pod-{n}-join", ring))
    times["join"] = wait_settled(live, began)
    leaving = live.pop(0)
    began = time.monotonic()
    leaving.process.stop(signal.SIGTERM)
    times["leave"] = wait_settled(live, began)
    crashing = live.pop(0)
    began = time.monotonic()
    crashing.process.stop(signal.SIGKILL)
    times["crash"] = wait_settled(live, began)
    bench.stop_servers()
    return times


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--heartbeat", default="2s", help="--ring-heartbeat of every pod")
    parser.add_argument("--lease", default="10s", help="--ring-lease of every pod")
    args = parser.parse_args(argv)
    ring = ["--ring-heartbeat", args.heartbeat, "--ring-lease", args.lease]
    results: dict[str, list[float]] = {}
    with stack() as bench:
        for n in range(args.runs):
            with contextlib.ExitStack() as cleanup:
                cleanup.callback(bench.stop_servers)
                for event, seconds in round_(bench, args.pods, ring, n).items():
                    results.setdefault(event, []).append(seconds)
                    out(f"  run {n + 1} {event:5}: settled in {seconds:.2f} s")
    out(f"\nring of {args.pods} pods (heartbeat {args.heartbeat}, lease {args.lease}), "
        f"median of {args.runs}:")  # fmt: skip
    med = {event: median(values) for event, values in results.items()}
    for event, seconds in med.items():
        out(f"  {event:5}: {seconds:.2f} s (range {min(results[event]):.2f}-"
            f"{max(results[event]):.2f})")  # fmt: skip
    return med


if __name__ == "__main__":
    main()
