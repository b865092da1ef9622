"""Where Redis's CPU per upload goes, at a real rate: commands, the rest of the primaries' work,
the replicas, AOF, and what the cluster costs with no load at all.

One server of ours on core 0, the Redis Cluster (3 primaries, 3 replicas, AOF ``everysec``) and
the Go project's ``telemeter-benchmark`` on core 1, as in ``bench.realrate``. Three windows of
``--seconds`` each, ``--runs`` times (ABC order, then CBA):

- ``idle``: the server runs (ring heartbeats), nothing pushes: the cluster's own cost (cron,
  the cluster bus, replication pings), quoted per upload at ``--rate``;
- ``aof``: ``--rate`` uploads/s, the default configuration;
- ``no-aof``: the same after ``CONFIG SET appendonly no`` on every node (restored after).

For each window: the CPU (utime + stime) of the primaries and of the replicas per accepted
upload, and on the primaries the time Redis itself accounts to commands (``INFO commandstats``
``usec``, which excludes reading requests, writing replies, replication and AOF), by command.

    python -m bench.redis_cpu [--rate 100] [--runs 2] [--seconds 15]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time
from collections.abc import Iterator, Sequence

from bench.common import (
    OTHER_CPUS,
    Stack,
    cpu_seconds,
    machine_description,
    median,
    out,
    pinned,
    server,
    stack,
    standard_payload,
)
from bench.realrate import go_benchmark, pushes
from dev.upstream import go_binaries

MODES = ("idle", "aof", "no-aof")
INTERVAL_S = 3.0


def command_usec(bench: Stack) -> collections.Counter[str]:
    """``usec`` of every command over the primaries, from ``INFO commandstats``."""
    total: collections.Counter[str] = collections.Counter()
    for port in bench.primary_ports():
        with bench.cluster.client(port) as conn:
            for name, stats in conn.info("commandstats").items():
                total[name.removeprefix("cmdstat_")] += int(stats["usec"])
    return total


def roles(bench: Stack) -> dict[str, list[int]]:
    """Process ids of the primaries and of the replicas."""
    out: dict[str, list[int]] = {"primary": [], "replica": []}
    for node in bench.cluster.nodes:
        if node.pid is not None and node.role in out:
            out[node.role].append(node.pid)
    return out


@contextlib.contextmanager
def appendonly(bench: Stack, value: str) -> Iterator[None]:
    """Every node with ``appendonly`` set to ``value``, restored to ``yes`` after."""
    ports = [node.port for node in bench.cluster.nodes]
    for port in ports:
        with bench.cluster.client(port) as conn:
            conn.config_set("appendonly", value)
    try:
        yield
    finally:
        for port in ports:
            with bench.cluster.client(port) as conn:
                conn.config_set("appendonly", "yes")


def window(bench: Stack, seconds: float) -> tuple[dict[str, float], collections.Counter[str]]:
    """CPU seconds of the primaries and replicas, and command usec, over ``seconds``."""
    pids = roles(bench)
    before = {role: sum(cpu_seconds(p) for p in ps) for role, ps in pids.items()}
    usec = command_usec(bench)
    time.sleep(seconds)
    after = {role: sum(cpu_seconds(p) for p in ps) for role, ps in pids.items()}
    return {role: after[role] - before[role] for role in pids}, command_usec(bench) - usec


def measure(bench: Stack, mode: str, *, rate: float, seconds: float) -> dict[str, float]:
    """One window of ``mode``: ms of Redis CPU per upload, by part."""
    with server(bench, "ours") as handle:
        if mode == "idle":
            cpu, usec = window(bench, seconds)
            uploads = rate * seconds  # the idle cost, spread as if it carried the rate
        else:
            clusters = round(rate * INTERVAL_S)
            setting = "yes" if mode == "aof" else "no"
            with (
                appendonly(bench, setting),
                go_benchmark(bench, handle, clusters=clusters, interval=INTERVAL_S) as (metrics, _),
            ):
                ok_before, _failed = pushes(metrics)
                cpu, usec = window(bench, seconds)
                uploads = max(1.0, pushes(metrics)[0] - ok_before)
    result = {
        "primaries": cpu["primary"] / uploads * 1000,
        "replicas": cpu["replica"] / uploads * 1000,
        "commands": sum(usec.values()) / 1000 / uploads,
    }
    for name, value in usec.items():
        result["cmd:" + name] = value / 1000 / uploads
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="uploads per second")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    standard_payload()
    go_binaries()
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with pinned(OTHER_CPUS), stack(pin_redis=OTHER_CPUS) as bench:
        for i in range(args.runs):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                r = measure(bench, mode, rate=args.rate, seconds=args.seconds)
                results[mode].append(r)
                out(f"  run {i + 1} {mode:6}: primaries {r['primaries']:.3f} ms/upload (commands "
                    f"{r['commands']:.3f}), replicas {r['replicas']:.3f}")  # fmt: skip
    out(f"\nRedis CPU per upload at {args.rate:.0f}/s, ms, median of {args.runs}:")
    med = {
        mode: {k: median([r.get(k, 0.0) for r in rs]) for k in {k for r in rs for k in r}}
        for mode, rs in results.items()
    }
    for mode in MODES:
        m = med[mode]
        out(f"  {mode:6}  primaries {m['primaries']:.3f} (commands {m['commands']:.3f})  "
            f"replicas {m['replicas']:.3f}  all {m['primaries'] + m['replicas']:.3f}")  # fmt: skip
    aof, no_aof, idle = med["aof"], med["no-aof"], med["idle"]
    total = aof["primaries"] + aof["replicas"]
    commands = aof["commands"] - idle["commands"]
    parts = {
        "the uploads' commands on the primaries (INFO commandstats)": commands,
        "the rest of the primaries' work for them (requests, replies, feeding replicas)": (
            aof["primaries"] - idle["primaries"] - commands
        ),
        "the replicas applying them": aof["replicas"] - idle["replicas"],
        "no load: the ring's heartbeat commands": idle["commands"],
        "no load: the rest (cron, cluster bus, replication pings)": (
            idle["primaries"] + idle["replicas"] - idle["commands"]
        ),
    }
    out(f"\nwhere the {total:.3f} ms go:")
    for name, value in parts.items():
        out(f"  {value:6.3f} ms  {100 * value / total:5.1f}%  {name}")
    aof_share = total - no_aof["primaries"] - no_aof["replicas"]
    out(f"  of all of it, AOF (aof - no-aof): {aof_share:.3f} ms ({100 * aof_share / total:.1f}%)")
    by_command = sorted(
        ((k[4:], v - idle.get(k, 0.0)) for k, v in aof.items() if k.startswith("cmd:")),
        key=lambda kv: -kv[1],
    )
    listed = ", ".join(f"{k} {v * 1000:.0f} us" for k, v in by_command[:8])
    out(f"  the uploads' commands: {listed}")


if __name__ == "__main__":
    main()
