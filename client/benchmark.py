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

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import signal
import ssl
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import SplitResult, urlencode, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from telemeter import metrics_pb2, snappy
from telemeter.delimited import write_families
from telemeter.durations import format_duration, parse_duration
from telemeter.textparse import parse_text

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

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 270.0
DEFAULT_WORKERS = 1000
DEFAULT_LISTEN = "localhost:8080"
ERROR_WAIT_S = 60.0  # Go waits a minute after a failed push
POOL_REFRESH_S = 30.0
PROGRESS_PERIOD_S = 1.0
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
UPLOAD_CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
# Status keys of attempts that got no HTTP answer from /upload.
NO_ANSWER = "error"
AUTHORIZE_FAILED = "authorize"


# ----- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark run; durations in seconds, ``None`` limits mean "until interrupted"."""

    to_upload: str
    to_auth: str | None
    token: str | None
    metrics_text: bytes
    workers: int = DEFAULT_WORKERS
    interval_s: float = DEFAULT_INTERVAL_S
    ramp_up_s: float | None = None  # None: the interval, as the Go tool
    duration_s: float | None = None
    uploads: int | None = None
    variants: int = 16
    error_wait_s: float = ERROR_WAIT_S
    timeout_s: float = 30.0
    ca_file: Path | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if min(self.interval_s, self.error_wait_s, self.ramp_up_s or 0.0) < 0:
            raise ValueError("--interval, --ramp-up and --error-wait must not be negative")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("--duration must be positive")
        if self.uploads is not None and self.uploads < 1:
            raise ValueError("--uploads must be at least 1")
        if self.variants < 1:
            raise ValueError("--variants must be at least 1")
        if (self.token is not None) != (self.to_auth is not None):
            raise ValueError(
                "an authorization URL and an authorization token must both be given or neither"
            )


# ----- payloads ---------------------------------------------------------------------------------


def _randomize(
    base: Sequence[metrics_pb2.MetricFamily],
    labels: Sequence[tuple[str, str]],
    *,
    now_ms: int,
    spread_ms: int,
    rng: random.Random,
) -> list[metrics_pb2.MetricFamily]:
    """A copy of ``base`` as the Go benchmark generates it for one cycle.

    Untyped and gauge values become ``round(rand * value)``, counters go up by one half of the
    time, every timestamp is ``now - rand(spread)`` (sorted within a family, since the server
    refuses decreasing timestamps) and ``labels`` are set on every metric.
    """
    out = []
    for original in base:
        family = metrics_pb2.MetricFamily()
        family.CopyFrom(original)
        # Go sorts the metrics by their random timestamps; handing out sorted random timestamps
        # in order gives the same (non-decreasing) timestamps without reordering messages.
        stamps = sorted(
            now_ms - (rng.randrange(spread_ms) if spread_ms > 0 else 0) for _ in family.metric
        )
        for metric, stamp in zip(family.metric, stamps, strict=True):
            if metric.HasField("untyped"):
                metric.untyped.value = round(rng.random() * metric.untyped.value)
            elif metric.HasField("gauge"):
                metric.gauge.value = round(rng.random() * metric.gauge.value)
            elif metric.HasField("counter") and rng.random() < 0.5:
                metric.counter.value += 1
            metric.timestamp_ms = stamp
            for name, value in labels:
                pair = next((p for p in metric.label if p.name == name), None)
                if pair is None:
                    pair = metric.label.add()
                    pair.name = name
                pair.value = value
        out.append(family)
    return out


@dataclass
class _Shape:
    """The variants of one label shape (names and value lengths) and their placeholders."""

    placeholders: list[tuple[str, bytes]]
    variants: list[bytes]
    refreshed_at: float
    patchable: bool


class PayloadPool:
    """Pre-encoded, randomized upload bodies, patched per worker with its labels.

    A shape is the label names plus the byte length of each value; its variants are encoded with
    same-length placeholder values, so patching a worker's values in keeps every protobuf length
    valid. If a placeholder's byte string shows up anywhere but in the label values (counted
    once per refresh) the shape falls back to encoding each body from scratch.
    """

    def __init__(
        self,
        families: Sequence[metrics_pb2.MetricFamily],
        *,
        variants: int,
        spread_s: float,
        rng: random.Random,
    ) -> None:
        self.families = list(families)
        self.series = sum(len(f.metric) for f in self.families)
        self.variants = variants
        self.spread_ms = int(spread_s * 1000)
        self.rng = rng
        self._shapes: dict[tuple[tuple[str, int], ...], _Shape] = {}

    def body(self, labels: Mapping[str, str]) -> bytes:
        """A snappy-framed, delimited upload body carrying ``labels`` on every metric."""
        encoded = [(name, value.encode()) for name, value in sorted(labels.items())]
        key = tuple((name, len(value)) for name, value in encoded)
        shape = self._shapes.get(key)
        if shape is None or time.monotonic() - shape.refreshed_at > POOL_REFRESH_S:
            shape = self._build(key)
            self._shapes[key] = shape
        if not shape.patchable:
            fresh = _randomize(
                self.families,
                sorted(labels.items()),
                now_ms=int(time.time() * 1000),
                spread_ms=self.spread_ms,
                rng=self.rng,
            )
            return snappy.encode_framed(write_families(fresh))
        data = self.rng.choice(shape.variants)
        for (_, placeholder), (_, value) in zip(shape.placeholders, encoded, strict=True):
            data = data.replace(placeholder, value)
        return snappy.encode_framed(data)

    def _build(self, key: tuple[tuple[str, int], ...]) -> _Shape:
        # One distinct filler byte per label; ASCII control characters never occur in the text
        # format's label values, and a counted check below catches any other collision.
        placeholders = [
            (name, bytes([1 + i % 30]) * length) for i, (name, length) in enumerate(key)
        ]
        labels = [(name, ph.decode()) for name, ph in placeholders]
        now_ms = int(time.time() * 1000)
        variants = [
            write_families(
                _randomize(
                    self.families, labels, now_ms=now_ms, spread_ms=self.spread_ms, rng=self.rng
                )
            )
            for _ in range(self.variants)
        ]
        distinct = len({ph for _, ph in placeholders}) == len(placeholders)
        patchable = (
            distinct
            and all(length > 0 for _, length in key)
            and all(v.count(ph) == self.series for v in variants for _, ph in placeholders)
        )
        if not patchable:
            log.info("labels cannot be patched into pre-encoded bodies; encoding each upload")
        return _Shape(placeholders, variants, time.monotonic(), patchable)


# ----- a minimal HTTP/1.1 client ----------------------------------------------------------------


class HTTPError(Exception):
    """The server's answer could not be read as HTTP."""


@dataclass(frozen=True)
class _Endpoint:
    scheme: str
    host: str
    port: int
    path: str  # path plus query, as sent on the request line

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes


class _Connection:
    """One keep-alive connection to one endpoint's host, re-opened when the server closed it."""

    def __init__(self, endpoint: _Endpoint, ssl_context: ssl.SSLContext | None) -> None:
        self.endpoint = endpoint
        self.ssl_context = ssl_context
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> _Answer:
        """Send one request and read the whole answer; one retry if a reused socket was dead."""
        reused = self._writer is not None and not self._reader_done()
        if not reused:
            await self._open()
        try:
            return await self._exchange(method, path, headers, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            if not reused:
                raise
        # A keep-alive connection the server had already closed: one fresh try, as browsers do.
        await self._open()
        return await self._exchange(method, path, headers, body)

    def _reader_done(self) -> bool:
        return self._reader is None or self._reader.at_eof()

    async def _open(self) -> None:
        self.close()
        ep = self.endpoint
        context = self.ssl_context if ep.scheme == "https" else None
        self._reader, self._writer = await asyncio.open_connection(
            ep.host, ep.port, ssl=context, limit=MAX_HEAD_BYTES
        )

    async def _exchange(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> _Answer:
        assert self._reader is not None and self._writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.endpoint.host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self._writer.drain()
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HTTPError("answer headers too long") from exc
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise HTTPError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        fields: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        answer = await self._read_body(fields)
        if fields.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            self.close()
        return _Answer(int(rest[:3]), answer)

    async def _read_body(self, fields: Mapping[str, str]) -> bytes:
        assert self._reader is not None
        if fields.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size_line = await self._reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size > MAX_BODY_BYTES:
                    raise HTTPError("answer chunk too large")
                if size == 0:
                    while (await self._reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailer fields
                    return b"".join(parts)
                parts.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
        length = fields.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                raise HTTPError(f"bad Content-Length {length[:20]!r}")
            return await self._reader.readexactly(int(length))
        data = await self._reader.read(MAX_BODY_BYTES)  # no length: the body ends with the socket
        self.close()
        return data

    def close(self) -> None:
        """Close the socket (a later request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


# ----- statistics -------------------------------------------------------------------------------


@dataclass
class Summary:
    """The outcome of a run. ``statuses`` counts upload attempts by answer.

    Keys are the HTTP status of ``/upload`` (``"200"``, ``"429"``...), ``"authorize <status>"``
    when the token exchange failed, ``"error <Exception>"`` when no answer came back.
    Latencies (ms) are those of ``/upload`` requests that got an answer.
    """

    elapsed_s: float
    workers: int
    attempts: int
    accepted: int
    uploads_per_s: float
    series_per_upload: int
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    authorizations: dict[str, int]

    def to_json(self) -> str:
        """The summary as one JSON object."""
        return json.dumps(asdict(self), sort_keys=True)


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted data (0 for no data)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies_s)
    return {
        f"p{q:g}": round(_percentile(ordered, q) * 1000, 3) for q in (50, 90, 99, 99.9, 100)
    } | {"mean": round(sum(ordered) / len(ordered) * 1000, 3) if ordered else 0.0}


@dataclass
class _Stats:
    started: float
    attempts: int = 0
    accepted: int = 0
    finished_at: float | None = None
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    authorizations: Counter[str] = field(default_factory=Counter)

    def record(self, status: str, latency_s: float | None) -> None:
        self.attempts += 1
        self.statuses[status] += 1
        if status == "200":
            self.accepted += 1
        if latency_s is not None:
            self.latencies.append(latency_s)
        self.finished_at = time.monotonic()

    def summary(self, *, workers: int, series: int) -> Summary:
        end = self.finished_at or time.monotonic()
        elapsed = max(end - self.started, 1e-9)
        return Summary(
            elapsed_s=round(elapsed, 3),
            workers=workers,
            attempts=self.attempts,
            accepted=self.accepted,
            uploads_per_s=round(self.accepted / elapsed, 2),
            series_per_upload=series,
            latency_ms=_latency_summary(self.latencies),
            statuses=dict(sorted(self.statuses.items())),
            authorizations=dict(sorted(self.authorizations.items())),
        )


def render_summary(summary: Summary) -> str:
    """The summary as a few lines of text."""
    lat = summary.latency_ms
    lines = [
        f"workers:      {summary.workers}",
        f"elapsed:      {summary.elapsed_s:.2f} s",
        f"attempts:     {summary.attempts}",
        f"accepted:     {summary.accepted} ({summary.series_per_upload} series each)",
        f"uploads/s:    {summary.uploads_per_s:.1f} accepted",
        "latency (ms): "
        + "  ".join(f"{k} {lat[k]:.2f}" for k in ("p50", "p90", "p99", "p99.9", "p100", "mean")),
        "responses:    " + ", ".join(f"{k}: {v}" for k, v in summary.statuses.items()),
        "authorize:    " + ", ".join(f"{k}: {v}" for k, v in summary.authorizations.items()),
    ]
    return "\n".join(lines)


class _Progress:
    """A one-line live display, redrawn every second on a terminal."""

    def __init__(self, stats: _Stats, stream: TextIO) -> None:
        self.stats = stats
        self.stream = stream
        self._seen = 0
        self._accepted = 0
        self._at = stats.started

    def draw(self) -> None:
        s = self.stats
        now = time.monotonic()
        window = s.latencies[self._seen :]
        rate = (s.accepted - self._accepted) / max(now - self._at, 1e-9)
        self._seen, self._accepted, self._at = len(s.latencies), s.accepted, now
        ordered = sorted(window)
        failed = s.attempts - s.accepted
        line = (
            f"{now - s.started:7.1f}s  accepted {s.accepted}  failed {failed}  "
            f"now {rate:7.1f}/s  p50 {_percentile(ordered, 50) * 1000:6.1f} ms  "
            f"p99 {_percentile(ordered, 99) * 1000:6.1f} ms"
        )
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()

    def finish(self) -> None:
        self.draw()
        self.stream.write("\n")
        self.stream.flush()


# ----- the run ----------------------------------------------------------------------------------


class _Metrics:
    """The tool's own metrics on ``--listen`` (the Go tool's counter names)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.errors = PromCounter(
            "forward_errors", "Failed pushes of all workers", registry=self.registry
        )
        self.samples = PromCounter(
            "forwarded_samples", "Samples pushed by all workers", registry=self.registry
        )
        self.uploads = PromCounter(
            "benchmark_uploads", "Upload attempts by answer", ["status"], registry=self.registry
        )


class _Run:
    """The workers of one benchmark run and what they share."""

    def __init__(self, config: BenchmarkConfig, metrics: _Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.rng = random.Random(config.seed)
        self.pool = PayloadPool(
            parse_text(config.metrics_text),
            variants=config.variants,
            spread_s=config.interval_s,
            rng=self.rng,
        )
        self.upload = _Endpoint.parse(config.to_upload)
        self.auth = _Endpoint.parse(config.to_auth) if config.to_auth else None
        self.ssl_context = (
            ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
            if "https" in (self.upload.scheme, self.auth.scheme if self.auth else "")
            else None
        )
        self.stop = asyncio.Event()
        self.stats = _Stats(started=time.monotonic())
        self.remaining = config.uploads
        self.in_flight = 0

    async def pause(self, seconds: float) -> bool:
        """Sleep unless the run stops first; returns whether to go on."""
        if self.stop.is_set():
            return False
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)
        return not self.stop.is_set()

    def take_attempt(self) -> bool:
        """Reserve one attempt of the ``--uploads`` budget (always granted without one)."""
        if self.stop.is_set():
            return False
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        self.in_flight += 1
        return True

    def done_attempt(self) -> None:
        """Close an attempt; the last one of the budget ends the run (sleepers need not wake)."""
        if self.remaining is None:
            return
        self.in_flight -= 1
        if self.remaining <= 0 and self.in_flight == 0:
            self.stop.set()

    async def worker(self) -> None:
        """One simulated cluster: random id, random start, then one push per interval."""
        cluster_id = str(uuid.uuid4())
        upload = _Connection(self.upload, self.ssl_context)
        auth = upload
        if self.auth is not None and (self.auth.host, self.auth.port) != (
            self.upload.host,
            self.upload.port,
        ):
            auth = _Connection(self.auth, self.ssl_context)
        token: tuple[str, dict[str, str]] | None = None
        try:
            ramp_up = (
                self.config.interval_s if self.config.ramp_up_s is None else self.config.ramp_up_s
            )
            if not await self.pause(self.rng.uniform(0, ramp_up)):
                return
            while self.take_attempt():
                failure = None
                try:
                    if token is None and self.auth is not None:
                        token, failure = await self._authorize(auth, cluster_id)
                    if failure is None:
                        ok, keep = await self._push(upload, token)
                        token = token if keep else None
                    else:
                        ok = False
                        self.stats.record(failure, None)
                        self.metrics.uploads.labels(failure).inc()
                finally:
                    self.done_attempt()
                if not ok:
                    self.metrics.errors.inc()
                wait = self.config.interval_s if ok else self.config.error_wait_s
                if not await self.pause(wait):
                    return
        finally:
            upload.close()
            auth.close()

    async def _authorize(
        self, conn: _Connection, cluster_id: str
    ) -> tuple[tuple[str, dict[str, str]] | None, str | None]:
        """Exchange the token: returns (token and labels, None) or (None, the failure's key)."""
        assert self.auth is not None and self.config.token is not None
        base = urlsplit(self.auth.path)
        query = "&".join(q for q in (base.query, urlencode({"id": cluster_id})) if q)
        path = urlunsplit(SplitResult("", "", base.path, query, ""))
        headers = {"Authorization": f"Bearer {self.config.token}"}
        try:
            async with asyncio.timeout(self.config.timeout_s):
                answer = await conn.request("POST", path, headers, b"")
        except (OSError, TimeoutError, HTTPError, asyncio.IncompleteReadError) as exc:
            conn.close()
            log.debug("authorize failed cluster=%s error=%r", cluster_id, exc)
            outcome = f"{NO_ANSWER} {type(exc).__name__}"
            self.stats.authorizations[outcome] += 1
            return None, f"{AUTHORIZE_FAILED} {outcome}"
        outcome = str(answer.status)
        if answer.status == 200:
            try:
                document = json.loads(answer.body)
                labels = {str(k): str(v) for k, v in (document.get("labels") or {}).items()}
                token = str(document["token"])
            except (ValueError, KeyError, AttributeError):
                outcome = "200 unreadable"
            else:
                self.stats.authorizations[outcome] += 1
                return (token, labels), None
        self.stats.authorizations[outcome] += 1
        return None, f"{AUTHORIZE_FAILED} {outcome}"

    async def _push(
        self, conn: _Connection, token: tuple[str, dict[str, str]] | None
    ) -> tuple[bool, bool]:
        """One upload; returns (accepted, whether the token is still good)."""
        body = self.pool.body(token[1] if token else {})
        headers = {"Content-Type": UPLOAD_CONTENT_TYPE, "Content-Encoding": "snappy"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token[0]}"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                answer = await conn.request("POST", self.upload.path, headers, body)
        except (OSError, TimeoutError, HTTPError, asyncio.IncompleteReadError) as exc:
            conn.close()
            status = f"{NO_ANSWER} {type(exc).__name__}"
            self.stats.record(status, None)
            self.metrics.uploads.labels(status).inc()
            log.debug("upload failed error=%r", exc)
            return False, True
        latency = time.perf_counter() - started
        status = str(answer.status)
        self.stats.record(status, latency)
        self.metrics.uploads.labels(status).inc()
        if answer.status == 200:
            self.metrics.samples.inc(self.pool.series)
        return answer.status == 200, answer.status != 401


async def run_benchmark(
    config: BenchmarkConfig,
    *,
    progress: TextIO | None = None,
    listen: str | None = None,
    stop: asyncio.Event | None = None,
) -> Summary:
    """Run the workers until the duration or upload budget is used up, or ``stop`` is set.

    ``progress`` gets a live status line each second; ``listen`` (``host:port``) serves the
    tool's ``/metrics`` and ``/healthz`` while it runs.
    """
    metrics = _Metrics()
    run = _Run(config, metrics)
    display = _Progress(run.stats, progress) if progress is not None else None
    server = await _serve_metrics(listen, metrics) if listen else None
    helpers: list[asyncio.Task[None]] = []
    if stop is not None:
        helpers.append(asyncio.create_task(_relay(stop, run.stop)))
    if config.duration_s is not None:
        helpers.append(asyncio.create_task(_stop_after(config.duration_s, run.stop)))
    if display is not None:
        helpers.append(asyncio.create_task(_redraw(display)))
    try:
        await asyncio.gather(*(run.worker() for _ in range(config.workers)))
    finally:
        run.stop.set()
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if server is not None:
            server.close()
            await server.wait_closed()
        if display is not None:
            display.finish()
    return run.stats.summary(workers=config.workers, series=run.pool.series)


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _stop_after(seconds: float, event: asyncio.Event) -> None:
    await asyncio.sleep(seconds)
    event.set()


async def _redraw(display: _Progress) -> None:
    while True:
        await asyncio.sleep(PROGRESS_PERIOD_S)
        display.draw()


async def _serve_metrics(listen: str, metrics: _Metrics) -> asyncio.Server:
    """A tiny HTTP server for ``/metrics``, ``/healthz`` and ``/healthz/ready``."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--listen must be host:port, got {listen!r}")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b" ", 2)
            path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
            if path == b"/metrics":
                status, kind, body = (
                    "200 OK",
                    CONTENT_TYPE_LATEST,
                    generate_latest(metrics.registry),
                )
            elif path in (b"/healthz", b"/healthz/ready"):
                status, kind, body = "200 OK", "text/plain", b"ok\n"
            else:
                status, kind, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a broken probe connection is the prober's problem
        finally:
            writer.close()

    return await asyncio.start_server(handle, host.strip("[]") or None, int(port))


# ----- command line -----------------------------------------------------------------------------


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
            _Endpoint.parse(url)
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


if __name__ == "__main__":
    sys.exit(main())
