"""`app.uploads.upload` alone, against an in-memory stand-in for `app.runtime.Runtime`.

The stand-in has what `upload` uses of the runtime: the settings, the token verifier, the local
rate-limit memory, the upload slots, the store's ``save_snapshot``, the forwarder's metrics and
the self-metrics. Its store keeps snapshots in a dict and answers like the Redis one: 0, or the
milliseconds left of the rate limit, or ``QueueFull`` when the forward queue is at its limit.
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from app import snapshot, uploads
from app.errors import (
    InvalidToken,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    UnsupportedMediaType,
)
from app.forward import ForwardMetrics
from app.metrics import ServerMetrics
from app.runtime import Runtime
from app.settings import ServerSettings
from app.store import Forward
from app.tokens import TokenIssuer, TokenVerifier, generate_signing_key
from telemeter.errors import InvalidPayload
from telemeter.selectors import Whitelist
from telemeter.upload import PassConfig
from tests.support import UPLOAD_HEADERS, encode_upload, gauge_family, pair

KEY = generate_signing_key()


class MemoryStore:
    def __init__(self, *, wait_ms: int = 0, queue_room: int = 10) -> None:
        self.snapshots: dict[str, bytes] = {}
        self.queued: list[Forward] = []
        self.wait_ms, self.queue_room = wait_ms, queue_room

    async def save_snapshot(
        self,
        cluster_id: str,
        value: bytes,
        *,
        now_ms: int,
        forward: Forward | None = None,
        queue_limit: int = 0,
    ) -> int:
        if self.wait_ms:
            return self.wait_ms
        if forward is not None:
            if len(self.queued) >= min(queue_limit, self.queue_room):
                raise QueueFull("full")
            self.queued.append(forward)
        self.snapshots[cluster_id] = value
        return 0


class FakeForwarder:
    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = ForwardMetrics(metrics.registry)


class FakeRuntime:
    """The runtime's interface as `upload` uses it; nothing here talks to Redis."""

    def __init__(self, store: MemoryStore | None = None, **settings: object) -> None:
        self.settings = ServerSettings.model_validate({"ratelimit": "0s", **settings})
        self.verifier = TokenVerifier([KEY])
        self.metrics = ServerMetrics()
        self.store = store or MemoryStore()
        self.forwarder = FakeForwarder(self.metrics) if self.settings.forward_url else None
        self.upload_slots = asyncio.Semaphore(self.settings.max_concurrent_uploads)
        self.limits: dict[str, float] = {}

    def pass_config(self, token_labels: dict[str, str]) -> PassConfig:
        return PassConfig(
            whitelist=Whitelist.from_strings(['{__name__=~".+"}']),
            token_labels=tuple(token_labels.items()),
            max_series=self.settings.limit_series,
        )

    def limited_for(self, cluster_id: str) -> float:
        return self.limits.get(cluster_id, 0.0)

    def remember_limit(self, cluster_id: str, seconds: float) -> None:
        self.limits[cluster_id] = seconds


def token(cluster_id: str = "c1", label: str = "_id") -> str:
    return TokenIssuer(KEY).issue(account_id="a", labels={label: cluster_id})


def body(cluster_id: str = "c1", series: int = 1) -> bytes:
    me = pair("_id", cluster_id)
    return encode_upload([gauge_family(f"m{i}", [me]) for i in range(series)])


def headers(jwt: str | None = None, **overrides: str) -> dict[str, str]:
    out = {k.lower(): v for k, v in UPLOAD_HEADERS.items()}
    out["authorization"] = f"Bearer {token() if jwt is None else jwt}"
    out.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return out


def counted(rt: FakeRuntime, name: str) -> float:
    return rt.metrics.registry.get_sample_value(name) or 0.0


def send(rt: FakeRuntime, head: dict[str, str], data: bytes | None = None) -> list[int]:
    """Run one upload; return the limits the body reader was called with (empty: not read)."""
    reads: list[int] = []

    async def read_body(limit: int, seconds: float) -> bytes:
        reads.append(limit)
        return body() if data is None else data

    asyncio.run(uploads.upload(cast(Runtime, rt), head, read_body))  # the stand-in's interface
    return reads


def test_an_upload_is_stored_counted_and_limits_the_cluster() -> None:
    rt = FakeRuntime(ratelimit="4m30s")
    assert send(rt, headers()) == [rt.settings.limit_bytes]
    text = b"".join(f.text for f in snapshot.decode(rt.store.snapshots["c1"]).families).decode()
    assert text.startswith('m0{_id="c1"} 1 ') and "\ntelemeter_push_time_seconds{" in text
    assert counted(rt, "telemeter_uploads_total") == 1
    assert counted(rt, "telemeter_upload_series_total") == 1
    assert rt.limits == {"c1": 270.0}
    assert rt.upload_slots._value == rt.settings.max_concurrent_uploads  # the slot is back


@pytest.mark.parametrize(
    ("head", "error"),
    [
        ({"content-type": UPLOAD_HEADERS["Content-Type"]}, InvalidToken),  # no Authorization
        (headers("not-a-jwt"), InvalidToken),
        (headers(token(label="cluster")), InvalidToken),  # no _id label
        (headers(token("a}{b")), InvalidToken),  # an id that breaks the key's hash tag
        (headers(content_type="text/plain"), UnsupportedMediaType),
        (headers(content_encoding="gzip"), UnsupportedMediaType),
    ],
)
def test_head_refusals_do_not_read_the_body(head: dict[str, str], error: type[Exception]) -> None:
    rt = FakeRuntime()
    with pytest.raises(error):
        send(rt, head)
    assert rt.store.snapshots == {} and counted(rt, "telemeter_uploads_total") == 0


def test_a_cluster_known_to_be_limited_is_refused_before_its_body() -> None:
    rt = FakeRuntime()
    rt.limits["c1"] = 12.5
    with pytest.raises(RateLimited) as refused:
        send(rt, headers())
    assert refused.value.retry_after == 13 and rt.store.snapshots == {}


def test_the_store_limit_is_answered_and_remembered() -> None:
    rt = FakeRuntime(MemoryStore(wait_ms=61_500))
    with pytest.raises(RateLimited) as refused:
        send(rt, headers())
    assert refused.value.retry_after == 62 and rt.limits == {"c1": 61.5}
    assert counted(rt, "telemeter_uploads_total") == 0


@pytest.mark.parametrize(
    ("data", "encoding", "error"),
    [
        pytest.param(b"\xff" * 100, "snappy", InvalidPayload, id="not framed snappy"),
        pytest.param(body(series=3), "snappy", InvalidPayload, id="over --limit-series 2"),
        pytest.param(body("other"), "snappy", InvalidPayload, id="another cluster's series"),
        pytest.param(b"\0" * 2048, "identity", PayloadTooLarge, id="over the uncompressed limit"),
    ],
)
def test_body_refusals_store_nothing(data: bytes, encoding: str, error: type[Exception]) -> None:
    # InvalidPayload is the core's error, translated to a 400 by app.protocol.
    rt = FakeRuntime(limit_series=2, limit_uncompressed_bytes=1024)
    with pytest.raises(error):
        send(rt, headers(content_encoding=encoding), data)
    assert rt.store.snapshots == {} and rt.limits == {}
    assert rt.upload_slots._value == rt.settings.max_concurrent_uploads


def test_all_slots_taken_is_overloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploads, "UPLOAD_SLOT_WAIT_S", 0.05)
    rt = FakeRuntime(max_concurrent_uploads=1)

    async def with_the_slot_held() -> None:
        await rt.upload_slots.acquire()
        with pytest.raises(Overloaded):
            await uploads.upload(cast(Runtime, rt), headers(), lambda limit, s: _ready(body()))

    asyncio.run(with_the_slot_held())
    assert rt.store.snapshots == {}


async def _ready(data: bytes) -> bytes:
    return data


def test_a_full_forward_queue_is_refused_and_counted() -> None:
    rt = FakeRuntime(MemoryStore(queue_room=1), forward_url="http://receiver/api/v1/write")
    send(rt, headers())
    assert len(rt.store.queued) == 1 and rt.store.queued[0].tenant == "c1"
    with pytest.raises(QueueFull):
        send(rt, headers(token("c2")), body("c2"))
    assert counted(rt, "telemeter_forward_queue_full_total") == 1
    assert set(rt.store.snapshots) == {"c1"}
