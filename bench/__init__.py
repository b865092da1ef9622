"""Benchmark scripts of the server (``make bench``; not part of ``make test``).

Each module is runnable on its own (``python -m bench.upload_cpu`` ...) and ``python -m bench``
runs them all. They start their own Redis Cluster and servers on free loopback ports and stop
them at the end; docs/benchmarks.md has the figures and how they were measured.
"""
