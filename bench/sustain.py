"""The upload rate one pod sustains with p99 latency at most ``--p99-ms`` (100 ms by default).

One server of ours on core 0 (one pod: it serves every ring range) on the Redis Cluster, which
shares core 1 with the load generator (``client/benchmark``, in this process): ``rate`` clusters
each pushing the standard payload every second, spread over the first second, on kept-alive
connections, for ``--seconds`` at each rate of ``--rates``, lowest first. A rate is sustained
when the uploads answered 200 arrive at 95% of it or more, none is refused, and the p99 of the
answered uploads is within the bound. The generator's own limit shows as a rate it cannot reach
while the server's core is not busy: the server's busy share of its core is printed too.

    python -m bench.sustain [--rates 250,500,1000,2000,3000,4000] [--seconds 8] [--p99-ms 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

from bench.common import (
    OTHER_CPUS,
    SERVER_CPUS,
    cpu_seconds,
    load,
    load_config,
    machine_description,
    out,
    pinned,
    stack,
)


def main(argv: Sequence[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="250,500,1000,2000,3000,4000")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--p99-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    out(f"machine: {machine_description()}")
    best = 0.0
    with pinned(OTHER_CPUS), stack(pin_redis=OTHER_CPUS) as bench:
        server = bench.start_server("sustain", extra_args=["--ratelimit", "0s"], cpus=SERVER_CPUS)
        bench.wait_serving_all(server)
        for rate in sorted(float(r) for r in args.rates.split(",")):
            workers = round(rate)
            config = dataclasses.replace(
                load_config(server, workers=workers, interval_s=1.0),
                ramp_up_s=1.0,
                duration_s=args.seconds,
            )
            cpu_before, began = cpu_seconds(server.process.pid), time.monotonic()
            summary = load(config)
            busy = (cpu_seconds(server.process.pid) - cpu_before) / (time.monotonic() - began)
            refused = summary.attempts - summary.accepted
            p99 = summary.latency_ms["p99"]
            ok = summary.uploads_per_s >= 0.95 * rate and refused == 0 and p99 <= args.p99_ms
            best = rate if ok else best
            verdict = "sustained" if ok else "not sustained"
            out(f"  {rate:6.0f}/s asked: {summary.uploads_per_s:7.1f}/s answered 200, "
                f"{refused} not, p50 {summary.latency_ms['p50']:.1f} ms, p99 {p99:.1f} ms, "
                f"server busy {busy:.2f} of its core: {verdict}")  # fmt: skip
            if not ok:
                break
    out(f"\none pod sustains {best:.0f} uploads/s with p99 <= {args.p99_ms:.0f} ms "
        f"(the highest rate tried that held)")  # fmt: skip
    return best


if __name__ == "__main__":
    main()
