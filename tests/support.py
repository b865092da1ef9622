"""Helpers shared by the tests: test data, payload building, and the client side of the wire."""

from __future__ import annotations

import functools
import importlib.metadata
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis.cluster import RedisCluster

from app import keys, snapshot
from dev.launch import ServerHandle, start_server
from telemeter import metrics_pb2, snappy
from telemeter.delimited import encode_varint, write_families
from telemeter.textparse import parse_text

TESTDATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata").resolve()
DELIMITED = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
UPLOAD_HEADERS = {"Content-Type": DELIMITED, "Content-Encoding": "snappy"}
RING_ARGS = ["--ring-heartbeat", "0.5s", "--ring-lease", "2s"]  # a fast ring for start_all


def shared_file(*parts: str) -> Path:
    """A file of the shared test data; skips the test with the reason when it is absent."""
    path = TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (the ../shared/testdata checkout)")
    return path


@functools.cache
def _standard_text() -> bytes:
    return shared_file("upstream", "timeseries.txt").read_bytes()


def standard_families(
    cluster_id: str, now_ms: int, *, label: str = "_id"
) -> list[metrics_pb2.MetricFamily]:
    """The standard payload (timeseries.txt, 232 series) as a client of ``cluster_id`` sends it."""
    families = parse_text(_standard_text())
    for family in families:
        for metric in family.metric:
            metric.timestamp_ms = now_ms
            pair = metric.label.add()
            pair.name, pair.value = label, cluster_id
    return families


def encode_upload(families: list[metrics_pb2.MetricFamily]) -> bytes:
    """Families as an upload body: delimited protobuf in framed snappy."""
    return snappy.encode_framed(write_families(families))


def authorize_at(server: ServerHandle, cluster_id: str, token: str = "a") -> httpx.Response:
    """The server's answer to a token exchange for ``cluster_id``."""
    return httpx.post(
        f"{server.external}/authorize",
        params={"id": cluster_id},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def authorize(server: ServerHandle, cluster_id: str, token: str = "a") -> str:
    """Exchange a long-lived token for an upload JWT at the server."""
    answer = authorize_at(server, cluster_id, token)
    assert answer.status_code == 200, answer.text
    jwt: str = answer.json()["token"]
    return jwt


def chunks(body: bytes, size: int = 4096) -> Iterator[bytes]:
    """The body as an iterator, so httpx sends it chunked as the Go client does."""
    for i in range(0, len(body), size):
        yield body[i : i + size]


def upload(
    server: ServerHandle, jwt: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST an upload the way the Go client does (chunked, framed snappy)."""
    return httpx.post(
        f"{server.external}/upload",
        content=chunks(body),
        headers={
            "Authorization": f"Bearer {jwt}",
            **(UPLOAD_HEADERS if headers is None else headers),
        },
    )


def upload_headers(jwt: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The headers of an upload with ``jwt``: snappy-framed delimited protobuf unless ``extra``."""
    return {"Authorization": f"Bearer {jwt}", **(UPLOAD_HEADERS if extra is None else extra)}


def post_upload(
    server: ServerHandle, jwt: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST an upload in one piece (Content-Length), as an arbitrary client may."""
    return httpx.post(
        f"{server.external}/upload", content=body, headers=upload_headers(jwt, headers), timeout=10
    )


def federate(server: ServerHandle, *, gzip: bool = False) -> str:
    """The text of the server's ``/federate``."""
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    answer = httpx.get(f"{server.internal}/federate", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.text


def series_of(text: str, cluster_id: str, label: str = "_id") -> list[str]:
    """The sample lines of ``cluster_id`` in a federate text."""
    needle = f'{label}="{cluster_id}"'
    return [line for line in text.splitlines() if not line.startswith("#") and needle in line]


def now_ms() -> int:
    return int(time.time()) * 1000


def new_id(prefix: str = "c") -> str:
    """A fresh cluster id, so tests sharing the Redis Cluster never meet."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def pb_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def pair(name: str | bytes, value: str | bytes) -> metrics_pb2.LabelPair:
    """A label pair; bytes are set through the wire format so invalid UTF-8 can be sent."""
    if isinstance(name, str) and isinstance(value, str):
        return metrics_pb2.LabelPair(name=name, value=value)
    raw_name = name.encode() if isinstance(name, str) else name
    raw_value = value.encode() if isinstance(value, str) else value
    out = metrics_pb2.LabelPair()
    out.ParseFromString(pb_field(1, raw_name) + pb_field(2, raw_value))  # upb keeps the bytes
    return out


def gauge_family(
    name: str, labels: list[metrics_pb2.LabelPair], *, value: float = 1.0, ts: int | None = None
) -> metrics_pb2.MetricFamily:
    """A gauge family of one metric, stamped now unless ``ts``."""
    return metrics_pb2.MetricFamily(
        name=name,
        type=metrics_pb2.GAUGE,
        metric=[
            metrics_pb2.Metric(
                label=labels,
                gauge=metrics_pb2.Gauge(value=value),
                timestamp_ms=now_ms() if ts is None else ts,
            )
        ],
    )


def valid_families(cluster_id: str) -> list[metrics_pb2.MetricFamily]:
    """A small valid upload of ``cluster_id``: 3 families of 5 series."""
    families = []
    for f in range(3):
        family = metrics_pb2.MetricFamily(name=f"abuse_metric_{f}", type=metrics_pb2.COUNTER)
        for i in range(5):
            family.metric.add(
                label=[pair("_id", cluster_id), pair("instance", f"i{i}")],
                counter=metrics_pb2.Counter(value=float(i)),
                timestamp_ms=now_ms(),
            )
        families.append(family)
    return families


def empty_forward_queues(startup_nodes: list[tuple[str, int]], password: str | None) -> None:
    """Delete every range's remote-write stream, so that a forwarding test's receiver gets only
    that test's uploads: the suite shares one Redis Cluster, and a stopped server leaves what it
    had not forwarded queued (at least once), for the next owner of the range."""
    from tests.integration.test_redis_cluster import cluster_client

    with cluster_client(startup_nodes, password) as client:
        client.delete(*[keys.forward_key(r) for r in range(keys.RANGES)])


def stored(rclient: RedisCluster, cluster_id: str) -> bytes | None:
    """The snapshot value stored for ``cluster_id``, if any."""
    value = rclient.get(keys.snapshot_key(cluster_id))
    assert value is None or isinstance(value, bytes)
    return value


def stored_text(value: bytes) -> str:
    """The exposition text held by a stored snapshot value."""
    snap = snapshot.decode(value)
    return b"".join(f.text for f in snap.families).decode()


def start_all(
    redis_url: str, workdir: Path, key: Path, specs: dict[str, list[str]]
) -> list[ServerHandle]:
    """Start servers (name -> extra flags; a fast ring) in parallel, wait until each answers."""
    handles = [
        start_server(
            redis_url=redis_url,
            workdir=workdir,
            name=name,
            shared_key=key,
            extra_args=[*RING_ARGS, *args],
            wait=False,
        )
        for name, args in specs.items()
    ]
    try:
        for handle in handles:
            handle.process.wait_http(handle.external + "/healthz")
            handle.process.wait_http(handle.internal + "/healthz")
    except BaseException:
        for handle in handles:
            handle.process.stop()
        raise
    return handles


def wait_for(check: Callable[[], str | None], *, timeout: float, what: str) -> float:
    """Poll ``check`` (None: done; a string: what is still missing) every 0.2 s until ``timeout``;
    return the seconds it took."""
    began = time.monotonic()
    while True:
        missing = check()
        if missing is None:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what} not reached within {timeout}s: still {missing}")
        time.sleep(0.2)


def console_scripts() -> dict[str, str]:
    """The console scripts the installed project declares (setup.py): name -> module:function."""
    return {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name == "telemeter"
    }
