"""`telemeter-benchmark`: many simulated clusters push one metrics file to a telemeter server.

The Go tool's behaviour and flags (``--to``, ``--to-auth``, ``--to-upload``, ``--to-token``,
``--to-token-file``, ``--metrics-file``, ``--workers``, ``--interval``, ``--listen``): each worker
is a cluster with a random UUID, exchanges the token at ``/authorize``, starts after a random
delay within the interval and then pushes once per interval (one minute after a failure, like
Go), with values and timestamps randomized each cycle and the token's labels on every metric.

Additions: a fixed-length mode (``--duration``, ``--uploads``), a live progress line on a
terminal, and a final summary (uploads/s, latency percentiles, answers by status code; ``--json``
prints it as JSON). `run_benchmark` is the same run as a coroutine, for the scripts in
``bench/``.

The generator is built so that it is not the bottleneck of a saturation run on the same machine:

- payloads come from a pool of ``--variants`` randomized, pre-encoded bodies (regenerated every
  ``POOL_REFRESH_S``); a worker's label values are patched in by a byte replacement of
  same-length placeholders, checked once per pool by counting them, so a cycle costs one
  ``bytes.replace`` and one snappy compression (~0.15 ms for the standard payload);
- HTTP/1.1 is spoken directly over asyncio streams with keep-alive, one connection per worker
  and endpoint (a few tens of microseconds per request instead of an HTTP library's ~0.5 ms).
"""

from client.benchmark.cli import build_parser, config_from_args, main
from client.benchmark.config import BenchmarkConfig
from client.benchmark.payloads import PayloadPool
from client.benchmark.run import run_benchmark
from client.benchmark.stats import Summary, render_summary

__all__ = [
    "BenchmarkConfig",
    "PayloadPool",
    "Summary",
    "build_parser",
    "config_from_args",
    "main",
    "render_summary",
    "run_benchmark",
]
