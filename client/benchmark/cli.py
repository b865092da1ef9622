"""The command line of `telemeter-benchmark` (the Go tool's flags plus the additions)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from client.benchmark.config import DEFAULT_LISTEN, DEFAULT_WORKERS, BenchmarkConfig
from client.benchmark.run import run_benchmark
from client.benchmark.stats import Summary, render_summary
from telemeter.durations import format_duration, parse_duration
from telemeter.httpclient import Endpoint

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command line: the Go tool's flags plus the fixed-length and display options."""
    p = argparse.ArgumentParser(
        prog="telemeter-benchmark",
        description="Simulate many clusters pushing metrics to a telemeter server.",
    )
    add = p.add_argument
    add("--to", help="telemeter server URL (sets --to-auth and --to-upload)")
    add("--to-auth", help="token exchange URL (default: <to>/authorize)")
    add("--to-upload", help="upload URL (default: <to>/upload)")
    add("--to-ca-file", type=Path, help="CA certificate(s) to verify an https server")
    add("--to-token", help="long-lived token exchanged at --to-auth")
    add("--to-token-file", type=Path, help="file holding the token")
    add("--metrics-file", type=Path, required=True, help="metrics to push (text format)")
    add("--workers", type=int, default=DEFAULT_WORKERS, help="simulated clusters (default 1000)")
    add("--interval", default="4m30s", help="time between pushes of a worker (default 4m30s)")
    add(
        "--listen",
        default=DEFAULT_LISTEN,
        help="host:port for /metrics and /healthz (default localhost:8080, '' for none)",
    )
    add(
        "--ramp-up",
        help="workers start at random times within this (default: --interval, as the Go tool)",
    )
    add("--duration", help="stop after this long (e.g. 30s); default: run until interrupted")
    add("--uploads", type=int, help="stop after this many upload attempts")
    add("--variants", type=int, default=16, help="randomized payloads kept ready (default 16)")
    add("--error-wait", default="1m", help="wait after a failed push (default 1m, as Go)")
    add("--timeout", default="30s", help="timeout of one request (default 30s)")
    add("--seed", type=int, help="random seed, for repeatable runs")
    add("--json", action="store_true", help="print the summary as JSON")
    add(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="live progress on stderr (auto: when stderr is a terminal)",
    )
    add("-v", "--verbose", action="count", default=0, help="more logging")
    return p


def _join(base: str, leaf: str) -> str:
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + "/" + leaf
    return urlunsplit(parts._replace(path=path))


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """A BenchmarkConfig from parsed flags (ValueError with the offending flag when invalid)."""
    to_auth: str | None = args.to_auth
    to_upload: str | None = args.to_upload
    if args.to:
        to_auth = to_auth or _join(args.to, "authorize")
        to_upload = to_upload or _join(args.to, "upload")
    if not to_upload:
        raise ValueError("either --to or --to-upload must be given")
    token: str | None = args.to_token
    if not token and args.to_token_file:
        token = args.to_token_file.read_text().strip()
    for url in (to_upload, to_auth):
        if url:
            Endpoint.parse(url)
    return BenchmarkConfig(
        to_upload=to_upload,
        to_auth=to_auth,
        token=token or None,
        metrics_text=args.metrics_file.read_bytes(),
        workers=args.workers,
        interval_s=parse_duration(args.interval),
        ramp_up_s=parse_duration(args.ramp_up) if args.ramp_up else None,
        duration_s=parse_duration(args.duration) if args.duration else None,
        uploads=args.uploads,
        variants=args.variants,
        error_wait_s=parse_duration(args.error_wait),
        timeout_s=parse_duration(args.timeout),
        ca_file=args.to_ca_file,
        seed=args.seed,
    )


async def _main(config: BenchmarkConfig, args: argparse.Namespace) -> Summary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    return await run_benchmark(
        config, progress=sys.stderr if show else None, listen=args.listen or None, stop=stop
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `telemeter-benchmark`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARN,
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
    )
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    log.info(
        "starting telemeter-benchmark upload=%s workers=%d interval=%s",
        config.to_upload,
        config.workers,
        format_duration(config.interval_s),
    )
    summary = asyncio.run(_main(config, args))
    sys.stdout.write((summary.to_json() if args.json else render_summary(summary)) + "\n")
    return 0 if summary.accepted > 0 else 1
