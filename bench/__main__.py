"""``python -m bench`` (``make bench``): every benchmark, then the figures against their targets.

    python -m bench [--quick] [--no-profiles]

``--quick`` runs fewer and shorter rounds (a smoke run, not figures to quote).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from bench import (
    client,
    federate,
    forward,
    profiles,
    realrate,
    redis_memory,
    upload_cpu,
    upload_scaling,
)
from bench.common import machine_description, out, steal_ticks, yardstick_ms


def main(argv: Sequence[str] | None = None) -> None:
    """Run the seven benchmarks (and the profiles) and print a summary of the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--no-profiles", action="store_true", help="skip the profiles")
    args = parser.parse_args(argv)
    runs, seconds = (2, 3.0) if args.quick else (5, 8.0)
    began = time.monotonic()
    ticks_before, stolen_before = steal_ticks()
    out(f"machine: {machine_description()}")

    out("\n== 1. upload: server CPU per accepted upload at saturation ==")
    upload = upload_cpu.report(upload_cpu.run(runs=runs, seconds=seconds, workers=16))

    out("\n== 2. /federate: 1000 clusters of the standard payload, one pod, ours and Go 2019 ==")
    latency = federate.main(["--runs", str(runs)])["ours"]

    out("\n== 3. Redis memory per stored series; server RSS as clusters grow ==")
    steps = [250, 500, 1000] if args.quick else [250, 500, 1000, 2000]
    memory = redis_memory.report(redis_memory.run(runs=min(runs, 3), steps=steps))

    out("\n== 4. upload throughput: two server processes against one ==")
    ratio = upload_scaling.report(
        upload_scaling.run(runs=min(runs, 3), seconds=seconds, workers=16)
    )

    out("\n== 5. remote write: server CPU forwarding adds per upload, ours and Go 2019 ==")
    forward.main(["--runs", str(min(runs, 3)), "--seconds", str(seconds + 2)])

    out("\n== 6. real rate: server CPU per upload at 100 and 370 uploads/s, ours and Go 2019 ==")
    real = realrate.main(["--runs", str(min(runs, 3)), "--seconds", "5" if args.quick else "15"])

    out("\n== 7. the client: CPU per push and RSS, ours and Go 2019, one Prometheus source ==")
    client.main(["--runs", str(min(runs, 3)), "--seconds", str(seconds * 2)])

    if not args.no_profiles:
        out("\n== profiles ==")
        profiles.main(["--seconds", str(seconds)])

    out("\n== summary ==")
    out(
        "  real rate       server CPU/upload "
        + ", ".join(f"{r:.0f}/s: ours {a:.3f} ms, Go {b:.3f} ms" for r, (a, b) in real.items())
        + "   (the headline)"
    )
    out(f"  upload CPU      {upload:.3f} ms/upload at saturation   (target <= 0.6, Go 1.84)")
    out(
        f"  /federate       plain {latency['plain']:.3f} s, gzip {latency['gzip']:.3f} s   "
        "(target <= 0.1, Go 0.97)"
    )
    out(f"  Redis memory    {memory:.1f} B/series   (target <= 40)")
    out(f"  2 servers / 1   {ratio:.2f} x uploads/s")
    ticks, stolen = steal_ticks()
    out(
        f"  machine         yardstick {yardstick_ms():.1f} ms at the end; hypervisor stole "
        f"{(stolen - stolen_before) / max(1, ticks - ticks_before):.1%} of the CPU time"
    )
    out(f"  took {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
