"""One push cycle: scrape ``/federate``, exchange the token, transform, upload.

The requests are those of the Go client (docs/protocol.md sections 1-3, checked against traffic
recorded from the Go client): same method, path, query and headers (the upload is sent with
``Transfer-Encoding: chunked`` and no ``Content-Length``, as the Go client does), with one
deliberate difference: ``User-Agent`` names this client. Like the Go client we send
``Accept-Encoding: gzip`` and ``Connection: close``: one push every 4.5 minutes gains nothing
from pooled connections, which idle out in between anyway. Each request is one
`telemeter.httpclient.fetch` on a connection of its own; the scrape follows redirects, as Go's
``http.Client`` does, and the uploads and token exchanges don't.

Network errors are translated into :mod:`client.errors` here, and only here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from client.backoff import parse_retry_after
from client.errors import AuthorizeError, ForwardError, ScrapeError, UploadError
from client.metrics import ClientMetrics
from client.settings import ClientSettings, Runtime, Trust, federate_url
from client.tokens import (
    MAX_RESPONSE_BYTES,
    TokenCache,
    UploadToken,
    parse_token_response,
)
from telemeter import __version__
from telemeter._clientpass import frames, text_families
from telemeter._framed import encode_framed
from telemeter.clientpass import ClientPass, Cycle
from telemeter.errors import InvalidPayload, TooLarge
from telemeter.httpclient import Answer, AnswerTooLarge, HTTPError, fetch

if TYPE_CHECKING:
    from telemeter import metrics_pb2

__all__ = [
    "DELIMITED_CONTENT_TYPE",
    "SCRAPE_ACCEPT",
    "USER_AGENT",
    "ForwardResult",
    "Forwarder",
    "decode_federate",
]

logger = logging.getLogger(__name__)

DELIMITED_CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
# Exactly Go's expfmt.FmtProtoDelim + " , " + expfmt.FmtText.
SCRAPE_ACCEPT = DELIMITED_CONTENT_TYPE + " , text/plain; version=0.0.4; charset=utf-8"


USER_AGENT = f"telemeter-client/{__version__}"
# How much of an error answer is kept for the log (Go keeps 1 KiB).
_ERROR_BODY_BYTES = 1024
# The longest any single request may take; shorter intervals shorten it further.
_MAX_REQUEST_SECONDS = 60.0
_MAX_REDIRECTS = 10  # as Go's http.Client
_MAX_ANSWER_BYTES = 1024 * 1024  # of a token exchange or upload answer
# What a request can fail with: the network, TLS, a cut or malformed answer, the timeout.
_NETWORK_ERRORS = (
    OSError, EOFError, HTTPError, TimeoutError, ValueError, asyncio.LimitOverrunError
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """What one successful cycle did."""

    families: int
    scraped_samples: int
    sent_samples: int
    uploaded: bool


class Forwarder:
    """Scrape, transform and upload, with the current :class:`Runtime` (swapped on reload).

    ``wall_clock`` gives Unix seconds (sample ages), ``tokens`` the upload-token cache (with its
    own monotonic clock).
    """

    def __init__(
        self,
        settings: ClientSettings,
        runtime: Runtime,
        *,
        metrics: ClientMetrics,
        timeout_seconds: float | None = None,
        tokens: TokenCache | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._timeout = timeout_seconds or min(settings.interval_seconds, _MAX_REQUEST_SECONDS)
        self._tokens = tokens or TokenCache()
        self._wall_clock = wall_clock
        self._last = b""
        self.reconfigure(runtime)

    @property
    def runtime(self) -> Runtime:
        """The configuration the next cycle uses."""
        return self._runtime

    def reconfigure(self, runtime: Runtime) -> None:
        """Use ``runtime`` from the next cycle on (a cycle in flight keeps its own)."""
        self._runtime = runtime
        self._pass = ClientPass(
            labels=self._settings.labels,
            renames=self._settings.renames,
            anonymize_labels=self._settings.anonymize_labels,
            salt=runtime.salt,
        )

    @property
    def last_families(self) -> list[metrics_pb2.MetricFamily]:
        """The families of the last cycle after the transforms (what was, or would be, sent)."""
        from telemeter.delimited import read_families  # protobuf only when asked

        return read_families(self._last, max_families=len(self._last))

    async def forward(self) -> ForwardResult:
        """Run one cycle; raise a ForwardError subclass when it fails."""
        runtime, transforms = self._runtime, self._pass
        self._metrics.requests.inc()
        try:
            return await self._forward(runtime, transforms)
        except ForwardError:
            self._metrics.requests_failed.inc()
            raise

    async def _forward(self, runtime: Runtime, transforms: ClientPass) -> ForwardResult:
        scraped = await self.scrape(runtime)
        if not scraped:
            self._record(b"", before=0, after=0)
            logger.warning("no metrics to send, doing nothing")
            return ForwardResult(families=0, scraped_samples=0, sent_samples=0, uploaded=False)
        token = await self.authorize(runtime)
        try:
            cycle = Cycle(
                token_labels=token.labels,
                now_ms=round(self._wall_clock() * 1000),
                max_families=self._settings.limit_bytes,
            )
            result = transforms.run(scraped, cycle)
        except InvalidPayload as exc:
            raise ScrapeError(f"cannot decode /federate answer: {exc}") from None
        before, after = result.scraped, result.scraped - result.dropped
        self._record(result.body, before=before, after=after)
        if not result.families:
            logger.warning("no metrics to send after transforms, doing nothing")
            return ForwardResult(families=0, scraped_samples=before, sent_samples=0, uploaded=False)
        await self.upload(runtime, token, result.body)
        logger.info(
            "pushed families=%d samples=%d dropped=%d", result.families, after, result.dropped
        )
        return ForwardResult(
            families=result.families, scraped_samples=before, sent_samples=after, uploaded=True
        )

    def _record(self, body: bytes, *, before: int, after: int) -> None:
        self._metrics.samples.set(before)
        self._metrics.filtered_samples.set(before - after)
        self._last = body

    async def scrape(self, runtime: Runtime) -> bytes:
        """GET ``/federate`` with the match rules, at most limit-bytes; the answer as delimited
        MetricFamily messages (a text answer is parsed and written so)."""
        url = federate_url(self._settings.from_url, runtime.rules)
        headers = {"Accept": SCRAPE_ACCEPT}
        if runtime.from_token:
            headers["Authorization"] = f"Bearer {runtime.from_token}"
        limit = self._settings.limit_bytes
        try:
            answer = await self._get_following(url, headers, runtime.from_trust, limit)
        except AnswerTooLarge:
            raise ScrapeError(f"/federate answer is larger than --limit-bytes={limit}") from None
        except _NETWORK_ERRORS as exc:
            raise ScrapeError(f"cannot read {_redact(url)}: {_describe(exc)}") from None
        self._metrics.count_http("federate_from", answer.status)
        if answer.status != 200:
            raise ScrapeError(
                f"Prometheus answered {answer.status}: {_detail(answer)}", status=answer.status
            )
        try:
            return decode_federate(
                _decoded(answer, limit), answer.headers.get("content-type", ""), max_families=limit
            )
        except AnswerTooLarge:
            raise ScrapeError(f"/federate answer is larger than --limit-bytes={limit}") from None
        except InvalidPayload as exc:
            raise ScrapeError(f"cannot decode /federate answer: {exc}") from None

    async def _get_following(
        self, url: str, headers: dict[str, str], trust: Trust, limit: int
    ) -> Answer:
        """GET, following up to 10 redirects as Go's http.Client does; the Authorization header
        goes to the same host only."""
        host = urlsplit(url).netloc
        for _ in range(_MAX_REDIRECTS):
            answer = await self._fetch("GET", url, headers, b"", trust, limit=limit)
            location = answer.headers.get("location")
            if answer.status not in (301, 302, 303, 307, 308) or not location:
                return answer
            url = urljoin(url, location)
            if urlsplit(url).netloc != host:
                headers = {k: v for k, v in headers.items() if k != "Authorization"}
        raise HTTPError(f"stopped after {_MAX_REDIRECTS} redirects")

    async def authorize(self, runtime: Runtime) -> UploadToken:
        """The cached upload token, or a new one from ``POST <to-auth>`` (empty body)."""
        cached = self._tokens.get(runtime.to_token)
        if cached is not None:
            return cached
        headers = {"Authorization": f"Bearer {runtime.to_token}"}
        try:
            answer = await self._fetch(
                "POST", self._settings.authorize_url, headers, b"", runtime.to_trust
            )
        except _NETWORK_ERRORS as exc:
            raise AuthorizeError(f"token exchange failed: {_describe(exc)}") from None
        self._metrics.count_http("federate_authorize", answer.status)
        status = answer.status
        if status not in (200, 201):
            reason = (
                "the long-lived token is expired or invalid" if status == 401 else _detail(answer)
            )
            raise AuthorizeError(
                f"token exchange answered {status}: {reason}",
                status=status,
                retry_after=_retry_after(status, answer.headers.get("retry-after")),
            )
        try:
            body = _decoded(answer, MAX_RESPONSE_BYTES)
        except AnswerTooLarge:
            raise AuthorizeError(
                f"token exchange answer is larger than {MAX_RESPONSE_BYTES} bytes"
            ) from None
        token = parse_token_response(body, now=self._tokens.now())
        self._tokens.put(runtime.to_token, token)
        logger.info("upload token obtained labels=%s", ",".join(sorted(token.labels)))
        return token

    async def upload(self, runtime: Runtime, token: UploadToken, delimited: bytes) -> None:
        """POST the delimited MetricFamily messages in a snappy framed stream, chunked."""
        headers = {
            "Authorization": f"Bearer {token.value}",
            "Content-Type": DELIMITED_CONTENT_TYPE,
            "Content-Encoding": "snappy",
        }
        try:
            answer = await self._fetch(
                "POST",
                self._settings.upload_url,
                headers,
                encode_framed(delimited),
                runtime.to_trust,
                chunked=True,
            )
        except _NETWORK_ERRORS as exc:
            raise UploadError(f"upload failed: {_describe(exc)}") from None
        self._metrics.count_http("federate_to", answer.status)
        status = answer.status
        if 200 <= status < 300:
            return
        if status == 401:
            # The server no longer takes this token: the next attempt exchanges a new one.
            self._tokens.invalidate(token.value)
        raise UploadError(
            f"upload answered {status}: {_detail(answer)}",
            status=status,
            retry_after=_retry_after(status, answer.headers.get("retry-after")),
            # The server refused this data: resending it cannot help (docs/architecture.md, D9).
            payload_rejected=status in (400, 413),
        )

    async def _fetch(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        trust: Trust,
        *,
        chunked: bool = False,
        limit: int = _MAX_ANSWER_BYTES,
    ) -> Answer:
        """One request with the Go client's headers, within the cycle's timeout."""
        headers = {"User-Agent": USER_AGENT, **headers}
        headers["Accept-Encoding"] = "gzip"
        headers["Connection"] = "close"
        context = trust.context() if url.startswith("https:") else None
        async with asyncio.timeout(self._timeout):
            return await fetch(
                method, url, headers, body, ssl_context=context, chunked=chunked, limit=limit
            )


def decode_federate(body: bytes, content_type: str, *, max_families: int) -> bytes:
    """A ``/federate`` answer as delimited MetricFamily messages, by its Content-Type: delimited
    protobuf as it came (decoded with the transforms), else text 0.0.4, parsed and written.

    Raises InvalidPayload when a text body does not parse or protobuf is in another encoding.
    """
    media, params = _media_type(content_type)
    if media == "application/vnd.google.protobuf":
        if (
            params.get("proto") != "io.prometheus.client.MetricFamily"
            or params.get("encoding") != "delimited"
        ):
            raise InvalidPayload(f"unsupported protobuf answer {content_type!r}")
        # The framing is checked here, before a token is exchanged for it; the messages are
        # decoded with the transforms.
        count = frames(body)
        if count < 0:
            raise InvalidPayload("delimited: a message length runs past the end of the answer")
        if count > max_families:
            raise TooLarge(f"delimited: more than {max_families} metric families")
        return body
    # Go's expfmt falls back to the text format for any other (or missing) type. The compiled
    # reading covers the form Prometheus writes; protobuf and the reference parser are imported
    # only for the rest (docs/architecture.md, "The client's pass").
    delimited = text_families(body)
    if delimited is not None:
        return delimited
    from telemeter.delimited import write_families
    from telemeter.textparse import parse_text

    return write_families(parse_text(body))


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    media, *rest = value.split(";")
    params: dict[str, str] = {}
    for item in rest:
        key, _, val = item.partition("=")
        params[key.strip().lower()] = val.strip().strip('"')
    return media.strip().lower(), params


def _decoded(answer: Answer, limit: int) -> bytes:
    """The answer's body, gunzipped if it came so; AnswerTooLarge past ``limit`` bytes."""
    if answer.headers.get("content-encoding", "").lower() != "gzip":
        if len(answer.body) > limit:
            raise AnswerTooLarge(f"answer longer than {limit} bytes")
        return answer.body
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflate.decompress(answer.body, limit + 1)
    except zlib.error as exc:
        raise InvalidPayload(f"gzip: {exc}") from None
    if len(body) > limit:
        raise AnswerTooLarge(f"answer longer than {limit} bytes")
    return body


def _detail(answer: Answer) -> str:
    """The start of an error answer, for the log (Go keeps 1 KiB)."""
    try:
        body = _decoded(answer, _ERROR_BODY_BYTES)
    except (AnswerTooLarge, InvalidPayload):
        body = answer.body
    return _text(body[:_ERROR_BODY_BYTES])


def _retry_after(status: int, header: str | None) -> float | None:
    if status not in (429, 503):
        return None
    return parse_retry_after(header, now=time.time())


def _text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace").strip()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _redact(url: str) -> str:
    return url.split("?", 1)[0]
