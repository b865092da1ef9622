"""Remote write: forward every queued upload of the ranges this pod leases, at least once.

An accepted upload is queued, before its 200, as a ready-made Remote-Write request in the Redis
Stream of its ring range (`app.store.Store.save_snapshot`). Here the pod that holds a range's
lease sends that stream's entries to ``--forward-url`` in order, oldest first, and deletes an
entry only once the receiver answered 2xx for it, or dropped it for good (docs/architecture.md,
D13; docs/operations.md, "Remote write"):

- a batch is several entries' requests concatenated (``timeseries`` is a repeated field), of one
  tenant, up to ``--forward-batch-entries`` and ``--forward-batch-bytes``; a single entry is sent
  as it was stored, so a retry sends the same bytes;
- 5xx, 429, timeouts and connection errors are retried after a capped, full-jitter exponential
  backoff, or after ``Retry-After`` when the receiver gives one; nothing later is sent meanwhile,
  so a range's entries arrive in order;
- another 4xx refuses the data itself: a batch is then sent entry by entry, so one bad entry
  loses nothing else, and each entry still refused is dropped and counted;
- entries older than ``--forward-max-age`` are dropped and counted (receivers refuse such samples).

No consumer group is needed: only the lease holder reads a stream, and entries stay in it until
they are deleted, so a new owner (after a hand-over or a crash) starts again at the stream's head,
which holds exactly what the old owner had not finished. At worst the batch in flight at a crash
is sent twice, byte for byte the same, which receivers take as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from app.errors import StoreUnavailable
from app.settings import ServerSettings
from app.store import QueuedEntry, Store
from telemeter import remotewrite, snappy
from telemeter.httpclient import Answer, Endpoint, HTTPError
from telemeter.pipelining import Pipeline
from telemeter.selfmetrics import MetricSet, counter, gauge, histogram

log = logging.getLogger(__name__)

USER_AGENT = "telemeter-server/0.1.0"
BACKOFF_BASE_S = 0.25
RETRY_AFTER_MAX_S = 300.0
PIPELINE_DEPTH = 16  # requests of a lane written at once (docs/architecture.md, D13)


@dataclass(frozen=True)
class Outcome:
    """How the receiver answered one request."""

    sent: bool  # 2xx: acknowledged
    retry: bool  # worth retrying later (5xx, 429, timeout, connection)
    reason: str  # for the metrics: "2xx", "status_500", "timeout", ...
    retry_after: float | None = None


SENT = Outcome(sent=True, retry=False, reason="2xx")


class ForwardMetrics(MetricSet):
    """The forwarding self-metrics; the Go server's names where it has them."""

    samples = counter("telemeter_forward_samples_total", "Samples forwarded (2xx).")
    errors = counter(
        "telemeter_forward_request_errors_total", "Remote-write requests that did not get a 2xx."
    )
    duration = histogram(
        "telemeter_forward_request_duration_seconds",
        "Remote-write request latency, by status code.",
        "status_code",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    retries = counter(
        "telemeter_forward_retries_total", "Requests to be retried, by reason.", "reason"
    )
    dropped = counter(
        "telemeter_forward_dropped_samples_total",
        "Queued samples dropped without a 2xx, by reason.",
        "reason",
    )
    queue_length = gauge(
        "telemeter_forward_queue_length",
        "Uploads queued in the streams of the ranges this pod forwards.",
    )
    oldest_age = gauge(
        "telemeter_forward_queue_oldest_age_seconds",
        "Age of the oldest upload queued in the ranges this pod forwards.",
    )
    queue_limit = gauge("telemeter_forward_queue_limit", "Queued uploads allowed per ring range.")
    queue_full = counter(
        "telemeter_forward_queue_full_total",
        "Uploads refused with 503 because their range's queue was full.",
    )


def client_tls(settings: ServerSettings) -> ssl.SSLContext | None:
    """The TLS settings for an https receiver: its CA and our client certificate, when given."""
    if not (settings.forward_url or "").startswith("https://"):
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.forward_ca_file) if settings.forward_ca_file else None
    )
    if settings.forward_client_crt is not None and settings.forward_client_key is not None:
        ctx.load_cert_chain(str(settings.forward_client_crt), str(settings.forward_client_key))
    return ctx


class ClientCredentials:
    """An OAuth2 client-credentials token for the receiver, from the OIDC issuer's token
    endpoint (found by discovery), cached until shortly before it expires."""

    def __init__(self, settings: ServerSettings, http: httpx.AsyncClient) -> None:
        assert settings.oidc_issuer and settings.client_id
        self._issuer = settings.oidc_issuer.rstrip("/")
        self._form = {"grant_type": "client_credentials", "client_id": settings.client_id}
        secret = settings.oidc_secret()
        if secret:
            self._form["client_secret"] = secret
        if settings.oidc_audience:
            self._form["audience"] = settings.oidc_audience
        self._http = http
        self._endpoint: str | None = None
        self._token: str | None = None
        self._until = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget the token (the receiver answered 401)."""
        self._token = None

    async def header(self) -> str:
        """The ``Authorization`` header value; raises httpx.HTTPError when it cannot get one."""
        if self._token is None or time.monotonic() >= self._until:
            async with self._lock:  # the lanes ask at once: one grant for them all
                if self._token is None or time.monotonic() >= self._until:
                    await self._grant()
        return f"Bearer {self._token}"

    async def _grant(self) -> None:
        if self._endpoint is None:
            found = await self._http.get(f"{self._issuer}/.well-known/openid-configuration")
            found.raise_for_status()
            self._endpoint = str(found.json()["token_endpoint"])
        answer = await self._http.post(self._endpoint, data=self._form)
        answer.raise_for_status()
        body = answer.json()
        self._token = str(body["access_token"])
        lifetime = float(body.get("expires_in", 300))
        self._until = time.monotonic() + max(lifetime * 0.9, lifetime - 60)


def batches(
    entries: Sequence[QueuedEntry], *, max_entries: int, max_bytes: int, by_tenant: bool
) -> list[list[QueuedEntry]]:
    """Consecutive entries grouped into requests: one tenant each, within the limits."""
    out: list[list[QueuedEntry]] = []
    size = 0
    for e in entries:
        last = out[-1] if out else None
        if (
            last is None
            or len(last) >= max_entries
            or size + e.size > max_bytes
            or (by_tenant and last[0].tenant != e.tenant)
        ):
            out.append([e])
            size = e.size
        else:
            last.append(e)
            size += e.size
    return out


def request_body(batch: Sequence[QueuedEntry]) -> bytes:
    """The snappy-compressed request of a batch: one entry's stored bytes as they are, several
    entries' blocks joined without inflating them (``snappy.concat_blocks``)."""
    if len(batch) == 1:
        return batch[0].body
    return snappy.concat_blocks([e.body for e in batch])


def lanes(entries: Sequence[QueuedEntry], count: int) -> list[list[QueuedEntry]]:
    """Entries split into ``count`` lanes by cluster, each in queue order: a cluster's entries
    always share a lane, so sending the lanes side by side keeps every cluster's order."""
    out: list[list[QueuedEntry]] = [[] for _ in range(count)]
    for e in entries:
        out[zlib.crc32(e.tenant.encode()) % count].append(e)
    return [lane for lane in out if lane]


@dataclass
class _Pause:
    until: float  # time.monotonic()
    attempt: int


class Forwarder:
    """Sends the queued uploads of the ranges this pod leases (see the module docstring)."""

    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        owned_ranges: Callable[[], frozenset[int]],
        metrics: ForwardMetrics,
    ) -> None:
        assert settings.forward_url
        self._s = settings
        self._endpoint = Endpoint.parse(settings.forward_url)
        self._store = store
        self._owned = owned_ranges
        self.metrics = metrics
        metrics.queue_limit.set(settings.forward_queue_limit)
        tls = client_tls(settings)
        self._pool = [Pipeline(self._endpoint, tls) for _ in range(settings.forward_concurrency)]
        self._http: httpx.AsyncClient | None = None
        self._auth: ClientCredentials | None = None
        if settings.oidc_issuer:
            self._http = httpx.AsyncClient(timeout=settings.forward_timeout, verify=tls or True)
            self._auth = ClientCredentials(settings, self._http)
        self._task: asyncio.Task[None] | None = None
        self._attempt = 0
        self._paused: dict[str, _Pause] = {}  # tenant -> when it may send again (429)
        self._durations: dict[int, Any] = {}
        # Every request's head but its tenant, length and token, written once (sent as is).
        ep = self._endpoint
        fields = {"Host": ep.host_header, **remotewrite.HEADERS, "User-Agent": USER_AGENT}
        self._head = "".join(
            [f"POST {ep.path} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in fields.items())]
        ).encode("latin-1")
        self._tenant_field = f"{settings.tenant_header}: ".encode("latin-1")

    async def start(self) -> None:
        """Start the forwarding loop."""
        self._task = asyncio.create_task(self._run(), name="forwarder")

    async def stop(self) -> None:
        """Stop the loop (an entry in flight stays queued) and close the connections."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for conn in self._pool:
            conn.close()
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                delay = await self.cycle()
            except StoreUnavailable as exc:
                log.warning("forwarding: redis unavailable error=%s", exc)
                delay = self._backoff(None)
            except Exception:  # the loop must outlive any one bad turn
                log.exception("forwarding: unexpected error")
                delay = self._backoff(None)
            await asyncio.sleep(delay)

    def _backoff(self, retry_after: float | None) -> float:
        """Full-jitter exponential backoff, capped; a receiver's Retry-After wins."""
        self._attempt += 1
        return _delay(self._attempt, retry_after, self._s.forward_backoff_max)

    def _tenant(self, entry: QueuedEntry) -> str:
        return self._s.tenant_id or entry.tenant

    async def cycle(self) -> float:
        """Send what the owned ranges' streams hold; returns the seconds to wait before the next."""
        s = self._s
        count = s.forward_batch_entries
        heads = await self._store.read_queues(sorted(self._owned()), count=count)
        now_ms = time.time() * 1000
        oldest = min((q[0].stamp_ms for q in heads), default=None)
        self.metrics.oldest_age.set(0 if oldest is None else max(0.0, (now_ms - oldest) / 1000))
        full = [q[0].range_id for q in heads if len(q) >= count]
        lengths = await self._store.queue_lengths(full)  # the others hold what was read
        self.metrics.queue_length.set(sum(lengths) + sum(len(q) for q in heads if len(q) < count))
        max_age_ms = s.forward_max_age * 1000
        expired = [e for q in heads for e in q if now_ms - e.stamp_ms > max_age_ms]
        if expired:
            await self._store.ack(expired)
            self.metrics.dropped.labels("too_old").inc(sum(e.series for e in expired))
            log.warning("forwarding: dropped entries older than --forward-max-age count=%d",
                        len(expired))  # fmt: skip
        gone = {id(e) for e in expired}
        now = time.monotonic()
        self._paused = {
            t: p for t, p in self._paused.items() if p.until > now - 2 * s.forward_backoff_max
        }  # a tenant throttled long ago starts its backoff afresh
        waiting = {t for t, p in self._paused.items() if p.until > now}
        live = [e for q in heads for e in q]
        if gone or waiting:
            live = [e for e in live if id(e) not in gone and self._tenant(e) not in waiting]
        if not live:
            return self._idle(s.forward_interval)
        done: list[QueuedEntry] = []
        failures = await asyncio.gather(
            *(self._lane(lane, conn, done) for lane, conn in zip(
                lanes(live, len(self._pool)), self._pool, strict=False))
        )  # fmt: skip
        await self._store.ack(done)  # one delete per turn, after every 2xx or drop
        failure = next((f for f in failures if f is not None), None)
        if failure is not None:
            return self._backoff(failure.retry_after)
        self._attempt = 0
        return 0.0 if full else self._idle(s.forward_interval)

    def _idle(self, interval: float) -> float:
        """The wait before the next turn: the interval, or less when a paused tenant resumes."""
        now = time.monotonic()
        resume = [p.until - now for p in self._paused.values() if p.until > now]
        return min([interval, *resume])

    async def _lane(
        self, lane: list[QueuedEntry], conn: Pipeline, done: list[QueuedEntry]
    ) -> Outcome | None:
        """Send a lane's batches in order, pipelined in rounds of at most one batch per tenant
        (a tenant's next batch waits for the answer to its last); stop after the round of the
        first failure that is not one tenant's throttling (returned), skipping a throttled
        tenant's later entries."""
        s = self._s
        throttled: set[str] = set()
        pending = batches(
            lane,
            max_entries=s.forward_batch_entries,
            max_bytes=s.forward_batch_bytes,
            by_tenant=s.tenant_id is None,
        )
        while pending:
            round_: list[list[QueuedEntry]] = []
            later: list[list[QueuedEntry]] = []
            tenants: set[str] = set()
            for batch in pending:
                tenant = self._tenant(batch[0])
                if tenant in throttled:
                    continue
                if tenant in tenants or len(round_) >= PIPELINE_DEPTH:
                    later.append(batch)
                else:
                    tenants.add(tenant)
                    round_.append(batch)
            pending = later
            failure = None
            outcomes = await self._send(round_, conn)
            for batch, outcome in zip(round_, outcomes, strict=True):
                tenant = self._tenant(batch[0])
                if outcome is SENT:
                    done.extend(batch)
                    left = None
                else:
                    left = await self._settle(batch, outcome, conn, done)
                if left is None:
                    if self._paused:
                        self._paused.pop(tenant, None)
                elif left.reason == "status_429":
                    self._pause(tenant, left.retry_after)
                    throttled.add(tenant)
                else:
                    failure = failure or left
            if failure is not None:
                return failure
        return None

    def _pause(self, tenant: str, retry_after: float | None) -> None:
        """A tenant the receiver throttled waits alone: the others go on sending."""
        pause = self._paused.get(tenant) or _Pause(0.0, 0)
        pause.attempt += 1
        pause.until = time.monotonic() + _delay(
            pause.attempt, retry_after, self._s.forward_backoff_max
        )
        self._paused[tenant] = pause

    async def _settle(
        self, batch: list[QueuedEntry], outcome: Outcome, conn: Pipeline,
        done: list[QueuedEntry],
    ) -> Outcome | None:  # fmt: skip
        """Act on a batch's answer; None when it is done with (sent or dropped: its entries go
        to ``done``), else the retryable answer."""
        if outcome.sent:
            done.extend(batch)
            return None
        if outcome.retry:
            return outcome
        if len(batch) > 1:  # one bad entry must not take the others with it
            log.info("forwarding: batch refused, sending its entries alone entries=%d", len(batch))
            for entry in batch:
                (alone,) = await self._send([[entry]], conn)
                left = await self._settle([entry], alone, conn, done)
                if left is not None:
                    return left
            return None
        self.metrics.dropped.labels("refused").inc(batch[0].series)
        log.warning("forwarding: the receiver refused an entry; dropped reason=%s tenant=%s",
                    outcome.reason, batch[0].tenant)  # fmt: skip
        done.extend(batch)
        return None

    def _requests(self, round_: list[list[QueuedEntry]], auth: bytes) -> list[bytes]:
        """The batches' requests as written: for each its head, then its body."""
        out = []
        head, tenant_field, tenant_id = self._head, self._tenant_field, self._s.tenant_id
        for batch in round_:
            body = request_body(batch)
            tenant = (tenant_id or batch[0].tenant).encode("latin-1")
            out.append(b"%s%s%s%s\r\nContent-Length: %d\r\n\r\n"
                       % (head, auth, tenant_field, tenant, len(body)))  # fmt: skip
            out.append(body)
        return out

    async def _send(self, round_: list[list[QueuedEntry]], conn: Pipeline) -> list[Outcome]:
        """Send batches pipelined on one connection: an outcome per batch, in order."""
        answers: list[Answer] = []
        start = time.perf_counter()
        failed, error = "", None
        try:
            auth = b""
            if self._auth is not None:
                auth = b"Authorization: %s\r\n" % (await self._auth.header()).encode("latin-1")
            async with asyncio.timeout(self._s.forward_timeout):
                await conn.round(self._requests(round_, auth), len(round_), answers)
        except TimeoutError:
            conn.close()  # the answers may still come: this connection is out of step
            failed = "timeout"
        except (OSError, EOFError, ValueError, HTTPError, httpx.HTTPError) as exc:
            conn.close()
            failed, error = "connection", repr(exc)
        elapsed = time.perf_counter() - start
        outcomes = [self._outcome(a, elapsed) for a in answers]
        sent = [b for b, o in zip(round_, outcomes, strict=False) if o is SENT]
        if sent:
            self.metrics.samples.inc(sum([e.series for b in sent for e in b]))
        if failed:
            log.info("forwarding: request failed; retrying later reason=%s error=%s requests=%d",
                     failed, error, len(round_) - len(answers))  # fmt: skip
            outcomes += [self._failed(failed, elapsed) for _ in round_[len(answers) :]]
        return outcomes

    def _outcome(self, answer: Answer, elapsed: float) -> Outcome:
        """What an answer means (the samples of a 2xx are counted by the caller)."""
        code = answer.status
        self._observe(code, elapsed)
        if 200 <= code < 300:
            return SENT
        self.metrics.errors.inc()
        if code == 401 and self._auth is not None:
            self._auth.invalidate()  # a stale token: get a new one and try again
            self.metrics.retries.labels("status_401").inc()
            return Outcome(sent=False, retry=True, reason="status_401")
        if code == 429 or code >= 500:
            reason = "status_429" if code == 429 else "status_5xx"
            self.metrics.retries.labels(reason).inc()
            log.info("forwarding: the receiver answered %d; retrying later", code)
            retry_after = _seconds(answer.headers.get("retry-after", ""))
            return Outcome(sent=False, retry=True, reason=reason, retry_after=retry_after)
        return Outcome(sent=False, retry=False, reason=f"status_{code}")

    def _observe(self, code: int, elapsed: float) -> None:
        child = self._durations.get(code)
        if child is None:  # observed on every answer: a front, added up at scrape time
            child = self.metrics.histogram_front(self.metrics.duration.labels(str(code)))
            self._durations[code] = child
        child.observe(elapsed)

    def _failed(self, reason: str, elapsed: float) -> Outcome:
        self._observe(0, elapsed)
        self.metrics.errors.inc()
        self.metrics.retries.labels(reason).inc()
        return Outcome(sent=False, retry=True, reason=reason)


def _delay(attempt: int, retry_after: float | None, cap_s: float) -> float:
    """Full-jitter exponential backoff of the ``attempt``-th retry, capped; Retry-After wins."""
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_MAX_S)
    return random.uniform(0, min(cap_s, BACKOFF_BASE_S * 2**attempt))


def _seconds(value: str) -> float | None:
    """A ``Retry-After`` given in seconds (an HTTP date is taken as absent)."""
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
