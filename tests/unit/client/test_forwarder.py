"""One push cycle against a recording HTTP stand-in: the Go requests, decoding, tokens, errors."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path

import pytest

from client.errors import AuthorizeError, ScrapeError, UploadError
from client.forwarder import DELIMITED_CONTENT_TYPE, USER_AGENT, Forwarder, ForwardResult
from client.metrics import ClientMetrics
from client.settings import ClientSettings, load_runtime
from client.tokens import TokenCache
from telemeter import metrics_pb2
from telemeter.delimited import read_families, write_families
from telemeter.snappy import STREAM_IDENTIFIER, decode_framed
from telemeter.textparse import parse_text
from telemeter.transforms import anonymize
from tests.unit.client.conftest import SettingsFactory
from tests.unit.client.recorder import Recorded, Recorder, Reply, text_reply, token_reply

TESTDATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "testdata").resolve()
# The match rule and tokens of the recorded Go requests (testdata/wire/*-headers.txt).
GO_MATCH = '{__name__=~".+"}'
GO_LONG_LIVED = "secret-token"
GO_JWT = "captured.jwt.token"
# Header differences we choose (see client/forwarder.py): Host carries another port,
# User-Agent names this client. The upload is chunked, with no Content-Length, as Go sends it.
DIFFERENT = {"host", "user-agent"}


def _testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip(f"shared test data not found at {TESTDATA}")
    return TESTDATA


def _now_ms() -> int:
    return int(time.time() * 1000)


def _forward(
    settings: ClientSettings,
    *,
    metrics: ClientMetrics | None = None,
    tokens: TokenCache | None = None,
) -> tuple[Forwarder, ForwardResult]:
    forwarder = Forwarder(
        settings, load_runtime(settings), metrics=metrics or ClientMetrics(), tokens=tokens
    )
    return forwarder, asyncio.run(forwarder.forward())


def _uploaded(request: Recorded) -> list[metrics_pb2.MetricFamily]:
    assert request.body.startswith(STREAM_IDENTIFIER)
    return read_families(decode_framed(request.body, max_size=10**7), max_families=10**5)


def _federate_text(*, now_ms: int) -> str:
    return (
        "# TYPE ALERTS untyped\n"
        f'ALERTS{{alertname="Watchdog",alertstate="firing",instance="10.0.0.1:9090"}} 1 {now_ms}\n'
        "# TYPE up untyped\n"
        f'up{{instance="10.0.150.196:9099",job="node"}} 1 {now_ms}\n'
        f'up{{instance="",job="empty"}} 0 {now_ms}\n'
        f'up{{instance="old",job="node"}} 1 {now_ms - 25 * 3600 * 1000}\n'
    )


def _golden(name: str) -> tuple[str, str, dict[str, str]]:
    lines = (_testdata() / "wire" / name).read_text().splitlines()
    method, target = lines[0].split(" ", 1)
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    return method, target, {key.lower(): value for key, value in headers.items()}


def _assert_like_go(
    request: Recorded,
    golden: str,
    *,
    ours_only: frozenset[str] = frozenset(),
    go_only: frozenset[str] = frozenset(),
) -> None:
    method, target, go_headers = _golden(golden)
    ours = {key.lower(): value for key, value in request.headers}
    assert (request.method, request.target) == (method, target)
    assert {k: v for k, v in ours.items() if k not in DIFFERENT | ours_only} == {
        k: v for k, v in go_headers.items() if k not in DIFFERENT | go_only
    }
    assert ours["user-agent"] == USER_AGENT


def test_requests_match_the_recorded_go_requests(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    server.script("/federate", text_reply(_federate_text(now_ms=_now_ms())))
    server.script("/authorize", token_reply(GO_JWT))
    server.script("/upload", Reply(200))
    settings = make_settings("--match", GO_MATCH, "--to-token", GO_LONG_LIVED)
    _forward(settings)
    (scrape,) = server.requests("/federate")
    (exchange,) = server.requests("/authorize")
    (upload,) = server.requests("/upload")
    _assert_like_go(scrape, "client-scrape-request-headers.txt")
    _assert_like_go(exchange, "authorize-request-headers.txt")
    _assert_like_go(upload, "upload-request-headers.txt")
    assert exchange.body == b""
    assert upload.header("Content-Length") is None
    assert upload.header("Transfer-Encoding") == "chunked"


def test_transforms_in_go_order_and_token_labels_last(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    now_ms = _now_ms()
    server.script("/federate", text_reply(_federate_text(now_ms=now_ms)))
    # The token's _id overrides a --label of the same name, after anonymization.
    server.script("/authorize", token_reply(labels={"_id": "cluster-a"}))
    server.script("/upload", Reply(200))
    settings = make_settings(
        "--label", "_id=spoofed,region=eu",
        "--anonymize-labels", "instance,_id", "--anonymize-salt", "s1",
    )  # fmt: skip
    metrics = ClientMetrics()
    forwarder, result = _forward(settings, metrics=metrics)
    families = _uploaded(server.requests("/upload")[0])
    assert [f.name for f in families] == ["alerts", "up"]  # ALERTS renamed by default
    labels = [[(p.name, p.value) for p in m.label] for f in families for m in f.metric]
    assert labels == [
        [
            ("alertname", "Watchdog"),
            ("alertstate", "firing"),
            ("instance", anonymize("s1", "10.0.0.1:9090")),
            ("_id", "cluster-a"),
            ("region", "eu"),
        ],
        [
            ("instance", "bx5-9vHZu36u"),  # the vector of the recorded Go upload
            ("job", "node"),
            ("_id", "cluster-a"),
            ("region", "eu"),
        ],
        # Empty values are not hashed; the sample older than 24 h was dropped.
        [("instance", ""), ("job", "empty"), ("_id", "cluster-a"), ("region", "eu")],
    ]
    assert result.scraped_samples == 4 and result.sent_samples == 3 and result.uploaded
    assert forwarder.last_families == families
    assert metrics.get_sample_value("federate_samples") == 4
    assert metrics.get_sample_value("federate_filtered_samples") == 1
    assert metrics.get_sample_value("federate_requests_total") == 1
    assert metrics.get_sample_value("federate_requests_failed_total") == 0
    for client in ("federate_from", "federate_authorize", "federate_to"):
        value = metrics.get_sample_value(
            "metricsclient_http_requests_total", {"client": client, "status_code": "200"}
        )
        assert value == 1


def test_go_payload_reproduced_from_the_upstream_federate_data(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    """The upstream /federate data, served as delimited protobuf, gives the Go upload's series."""
    data = _testdata()
    source = parse_text((data / "upstream" / "timeseries.txt").read_text())
    now_ms = _now_ms()
    for family in source:
        for metric in family.metric:
            metric.timestamp_ms = now_ms  # the recorded ones are years old (and far apart)
    server.script(
        "/federate", Reply(200, write_families(source), {"Content-Type": DELIMITED_CONTENT_TYPE})
    )
    server.script("/authorize", token_reply(labels={"_id": "test"}))
    server.script("/upload", Reply(200))
    settings = make_settings(
        "--match", GO_MATCH, "--anonymize-labels", "instance", "--anonymize-salt", "s1"
    )
    _forward(settings)
    ours = _series(_uploaded(server.requests("/upload")[0]))
    go_body = (data / "wire" / "upload-body.snappy-framed").read_bytes()
    go = _series(read_families(decode_framed(go_body, max_size=10**7), max_families=10**5))
    assert len(go) == 24
    # The Go recording federated one family fewer; every series it sent we send identically.
    assert {name: ours[name] for name in go} == go
    assert set(ours) - set(go) == {"node_uname_info"}


def _series(families: list[metrics_pb2.MetricFamily]) -> dict[str, list[list[tuple[str, str]]]]:
    return {
        f.name: sorted(sorted((p.name, p.value) for p in m.label) for m in f.metric)
        for f in families
    }


def test_token_is_cached_and_dropped_on_401(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    server.script("/federate", text_reply(_federate_text(now_ms=_now_ms())))
    server.script("/authorize", token_reply("jwt-1"), token_reply("jwt-2"))
    server.script("/upload", Reply(200), Reply(200), Reply(401, b"expired"), Reply(200))
    settings = make_settings()
    forwarder = Forwarder(settings, load_runtime(settings), metrics=ClientMetrics())
    asyncio.run(forwarder.forward())
    asyncio.run(forwarder.forward())  # the cached token, refused
    assert len(server.requests("/authorize")) == 1
    assert forwarder.runtime.to_token == "secret-token"
    with pytest.raises(UploadError) as refused:
        asyncio.run(forwarder.forward())
    assert refused.value.status == 401 and not refused.value.payload_rejected
    asyncio.run(forwarder.forward())  # a new exchange, a new token
    tokens = [r.header("Authorization") for r in server.requests("/upload")]
    assert tokens == ["Bearer jwt-1", "Bearer jwt-1", "Bearer jwt-1", "Bearer jwt-2"]
    assert len(server.requests("/authorize")) == 2


def test_token_is_exchanged_again_15_seconds_before_expiry(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    server.script("/federate", text_reply(_federate_text(now_ms=_now_ms())))
    server.script("/authorize", token_reply("jwt-1", expires=60), token_reply("jwt-2"))
    server.script("/upload", Reply(200))
    clock = [0.0]
    tokens = TokenCache(clock=lambda: clock[0])
    settings = make_settings()
    forwarder = Forwarder(settings, load_runtime(settings), metrics=ClientMetrics(), tokens=tokens)
    asyncio.run(forwarder.forward())
    clock[0] = 44.9
    asyncio.run(forwarder.forward())
    clock[0] = 45.0
    asyncio.run(forwarder.forward())
    tokens_sent = [r.header("Authorization") for r in server.requests("/upload")]
    assert tokens_sent == ["Bearer jwt-1", "Bearer jwt-1", "Bearer jwt-2"]


@pytest.mark.parametrize(
    ("status", "headers", "rejected", "retry_after"),
    [
        (400, {}, True, None),
        (413, {}, True, None),
        (429, {"Retry-After": "2"}, False, 2.0),
        (503, {"Retry-After": "7"}, False, 7.0),
        (503, {}, False, None),
        (500, {"Retry-After": "9"}, False, None),
    ],
)
def test_upload_errors_tell_the_loop_what_to_do(
    server: Recorder,
    make_settings: SettingsFactory,
    status: int,
    headers: dict[str, str],
    rejected: bool,
    retry_after: float | None,
) -> None:
    server.script("/federate", text_reply(_federate_text(now_ms=_now_ms())))
    server.script("/authorize", token_reply())
    server.script("/upload", Reply(status, b"reason " * 500, headers))
    metrics = ClientMetrics()
    with pytest.raises(UploadError) as failed:
        _forward(make_settings(), metrics=metrics)
    error = failed.value
    assert (error.status, error.payload_rejected, error.retry_after) == (
        status,
        rejected,
        retry_after,
    )
    assert len(str(error)) < 1200  # the answer is cut, as Go cuts it at 1 KiB
    assert metrics.get_sample_value("federate_requests_failed_total") == 1
    count = metrics.get_sample_value(
        "metricsclient_http_requests_total", {"client": "federate_to", "status_code": str(status)}
    )
    assert count == 1


def test_scrape_is_capped_at_limit_bytes(server: Recorder, make_settings: SettingsFactory) -> None:
    text = _federate_text(now_ms=_now_ms())
    server.script("/federate", text_reply(text))
    with pytest.raises(ScrapeError, match="larger than --limit-bytes"):
        _forward(make_settings("--limit-bytes", str(len(text) - 1)))
    assert server.requests("/authorize") == []


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(401), "Prometheus answered 401"),
        (Reply(200, b"garbage{{{", {"Content-Type": "text/plain"}), "cannot decode"),
        (Reply(200, b"\x05abc", {"Content-Type": DELIMITED_CONTENT_TYPE}), "cannot decode"),
    ],
)
def test_scrape_failures(
    server: Recorder, make_settings: SettingsFactory, reply: Reply, message: str
) -> None:
    server.script("/federate", reply)
    with pytest.raises(ScrapeError, match=message):
        _forward(make_settings())


def test_scrape_sends_the_from_token(server: Recorder, make_settings: SettingsFactory) -> None:
    server.script("/federate", text_reply(""))
    _, result = _forward(make_settings("--from-token", "prom-secret"))
    assert server.requests("/federate")[0].header("Authorization") == "Bearer prom-secret"
    # Nothing scraped: nothing exchanged, nothing uploaded, not a failure.
    assert not result.uploaded
    assert server.requests("/authorize") == [] and server.requests("/upload") == []


def test_unreachable_servers_are_forward_errors(make_settings: SettingsFactory) -> None:
    from dev.ports import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ScrapeError, match="cannot read"):
        _forward(make_settings("--from", dead))


def test_authorize_failures(server: Recorder, make_settings: SettingsFactory) -> None:
    server.script("/federate", text_reply(_federate_text(now_ms=_now_ms())))
    server.script("/authorize", Reply(401), Reply(429, b"slow down", {"Retry-After": "300"}))
    with pytest.raises(AuthorizeError, match="expired or invalid") as denied:
        _forward(make_settings())
    assert denied.value.status == 401
    with pytest.raises(AuthorizeError) as limited:
        _forward(make_settings())
    assert limited.value.retry_after == 300.0
    assert server.requests("/upload") == []


def test_scrape_follows_redirects_and_reads_gzip(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    text = _federate_text(now_ms=_now_ms()).encode()
    server.script("/federate", Reply(302, b"", {"Location": "/moved/federate?x=1"}))
    gzipped = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    server.script("/moved/federate", Reply(200, gzip.compress(text), gzipped))
    server.script("/authorize", token_reply())
    server.script("/upload", Reply(200))
    _, result = _forward(make_settings("--from-token", "prom-secret"))
    assert result.uploaded and result.sent_samples == 3
    (moved,) = server.requests("/moved/federate")
    # Same host: the token goes along, as Go's http.Client sends it.
    assert moved.header("Authorization") == "Bearer prom-secret"


def test_a_gzip_answer_is_capped_once_inflated(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    text = _federate_text(now_ms=_now_ms()).encode() * 50
    gzipped = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    server.script("/federate", Reply(200, gzip.compress(text), gzipped))
    assert len(gzip.compress(text)) < len(text) // 10
    with pytest.raises(ScrapeError, match="larger than --limit-bytes"):
        _forward(make_settings("--limit-bytes", str(len(text) // 2)))
    assert server.requests("/authorize") == []


def test_a_redirect_loop_is_a_scrape_error(
    server: Recorder, make_settings: SettingsFactory
) -> None:
    server.script("/federate", Reply(302, b"", {"Location": "/federate"}))
    with pytest.raises(ScrapeError, match="redirects"):
        _forward(make_settings())
    assert len(server.requests("/federate")) == 10
