"""Helpers shared by the tests: test data, payload building, and the client side of the wire."""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dev.launch import ServerHandle
from telemeter import metrics_pb2, snappy
from telemeter.delimited import write_families
from telemeter.textparse import parse_text

TESTDATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "testdata").resolve()
DELIMITED = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
UPLOAD_HEADERS = {"Content-Type": DELIMITED, "Content-Encoding": "snappy"}


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


def authorize(server: ServerHandle, cluster_id: str, token: str = "a") -> str:
    """Exchange a long-lived token for an upload JWT at the server."""
    answer = httpx.post(
        f"{server.external}/authorize",
        params={"id": cluster_id},
        headers={"Authorization": f"Bearer {token}"},
    )
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


def console_scripts() -> dict[str, str]:
    """The console scripts the installed project declares (setup.py): name -> module:function."""
    return {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name == "telemeter"
    }
