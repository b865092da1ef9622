"""The run: workers that authorize and push, `run_benchmark`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
import uuid
from typing import TextIO
from urllib.parse import SplitResult, urlencode, urlsplit, urlunsplit

from client.benchmark.config import (
    AUTHORIZE_FAILED,
    NO_ANSWER,
    PROGRESS_PERIOD_S,
    UPLOAD_CONTENT_TYPE,
    BenchmarkConfig,
)
from client.benchmark.metrics import Metrics, serve_metrics
from client.benchmark.payloads import PayloadPool
from client.benchmark.stats import Progress, Stats, Summary
from telemeter.httpclient import Connection, Endpoint, HTTPError
from telemeter.textparse import parse_text

log = logging.getLogger(__name__)


class _Run:
    """The workers of one benchmark run and what they share."""

    def __init__(self, config: BenchmarkConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.rng = random.Random(config.seed)
        self.pool = PayloadPool(
            parse_text(config.metrics_text),
            variants=config.variants,
            spread_s=config.interval_s,
            rng=self.rng,
        )
        self.upload = Endpoint.parse(config.to_upload)
        self.auth = Endpoint.parse(config.to_auth) if config.to_auth else None
        self.ssl_context = (
            ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
            if "https" in (self.upload.scheme, self.auth.scheme if self.auth else "")
            else None
        )
        self.stop = asyncio.Event()
        self.stats = Stats(started=time.monotonic())
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
        upload = Connection(self.upload, self.ssl_context)
        auth = upload
        if self.auth is not None and (self.auth.host, self.auth.port) != (
            self.upload.host,
            self.upload.port,
        ):
            auth = Connection(self.auth, self.ssl_context)
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
        self, conn: Connection, cluster_id: str
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
        self, conn: Connection, token: tuple[str, dict[str, str]] | None
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
    metrics = Metrics()
    run = _Run(config, metrics)
    display = Progress(run.stats, progress) if progress is not None else None
    server = await serve_metrics(listen, metrics) if listen else None
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


async def _redraw(display: Progress) -> None:
    while True:
        await asyncio.sleep(PROGRESS_PERIOD_S)
        display.draw()
