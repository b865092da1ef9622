"""``POST /metrics/v1/receive`` with a real server and Redis Cluster, forwarding to a scripted
receiver: what is accepted is forwarded, and each refusal has its status and forwards nothing."""

from __future__ import annotations

import base64
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import cramjam
import httpx
import pytest

from dev.launch import ServerHandle, start_server
from telemeter import remotewrite
from tests.conftest import RedisClusterHandle
from tests.e2e.test_forward import FORWARD_ARGS, ScriptedReceiver, serve_scripted
from tests.support import authorize

pytestmark = pytest.mark.integration

HEADERS = {**remotewrite.HEADERS}


def write_request(cluster_id: str, *, name: str = "rw_up", age_ms: int = 0, n: int = 3) -> bytes:
    now = int(time.time() * 1000) - age_ms
    series = [
        ([("__name__", name), ("_id", cluster_id), ("job", f"j{i}")], [(float(i), now)])
        for i in range(n)
    ]
    return remotewrite.encode_series(series)


def post(server: ServerHandle, token: str | None, body: bytes, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(
        f"{server.external}/metrics/v1/receive",
        content=body,
        headers={**HEADERS, **auth, **headers},
        timeout=10,
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[ScriptedReceiver]:
    yield from serve_scripted(ScriptedReceiver())


@pytest.fixture(scope="module")
def server(
    redis_cluster: RedisClusterHandle,
    signing_key: Path,
    tmp_path_factory: pytest.TempPathFactory,
    receiver: ScriptedReceiver,
) -> Iterator[ServerHandle]:
    handle = start_server(
        redis_url=redis_cluster.url,
        workdir=tmp_path_factory.mktemp("receive"),
        name="receive",
        shared_key=signing_key,
        extra_args=[
            *FORWARD_ARGS, "--forward-url", receiver.url, "--limit-receive-bytes", "4096",
            "--limit-receive-uncompressed-bytes", "65536", "--limit-receive-requests", "3",
        ],
    )  # fmt: skip
    try:
        yield handle
    finally:
        handle.process.stop()


def forwarded(receiver: ScriptedReceiver, cluster_id: str, *, wait: float = 10.0) -> int:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with receiver.lock:
            count = receiver.accepted.count(cluster_id)
        if count:
            return count
        time.sleep(0.1)
    return 0


def test_a_matching_id_is_forwarded(server: ServerHandle, receiver: ScriptedReceiver) -> None:
    jwt = authorize(server, "rx-ok")
    answer = post(server, jwt, remotewrite_block(write_request("rx-ok")))
    assert answer.status_code == 204, answer.text
    assert forwarded(receiver, "rx-ok") == 3


def test_the_go_token_scheme_is_accepted(server: ServerHandle, receiver: ScriptedReceiver) -> None:
    token = base64.b64encode(
        json.dumps({"authorization_token": "a", "cluster_id": "rx-go"}).encode()
    ).decode()
    answer = post(server, token, remotewrite_block(write_request("rx-go")))
    assert answer.status_code == 204, answer.text
    assert forwarded(receiver, "rx-go") == 3


def test_another_clusters_id_is_refused_and_nothing_is_forwarded(
    server: ServerHandle, receiver: ScriptedReceiver
) -> None:
    jwt = authorize(server, "rx-me")
    answer = post(server, jwt, remotewrite_block(write_request("rx-victim")))
    assert answer.status_code == 400 and "rx-me" in answer.text
    assert forwarded(receiver, "rx-victim", wait=2) == 0


@pytest.mark.parametrize("token", [None, "not-a-token", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"])
def test_no_or_a_bad_token_is_401(server: ServerHandle, token: str | None) -> None:
    assert post(server, token, remotewrite_block(write_request("rx-x"))).status_code == 401


def remotewrite_block(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def test_each_limit_has_its_code(server: ServerHandle) -> None:
    jwt = authorize(server, "rx-limits")
    big = remotewrite_block(os.urandom(8000))  # incompressible: > 4096 bytes on the wire
    assert post(server, jwt, big).status_code == 413
    # A block whose preamble declares 100000 bytes (> 65536): refused before it is inflated.
    bomb = b"\xa0\x8d\x06" + remotewrite_block(b"\0" * 60_000)[3:]
    assert len(bomb) < 4096 and post(server, jwt, bomb).status_code == 413
    ok = remotewrite_block(write_request("rx-limits"))
    v2 = {"Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"}
    assert post(server, jwt, ok, **v2).status_code == 415
    assert (
        post(server, jwt, ok, **{"X-Prometheus-Remote-Write-Version": "2.0.0"}).status_code == 415
    )
    assert post(server, jwt, ok, **{"Content-Encoding": "gzip"}).status_code == 415
    assert post(server, jwt, b"\x05not snappy").status_code == 400
    assert post(server, jwt, remotewrite_block(b"\x0a\x05ab")).status_code == 400  # truncated
    old = remotewrite_block(write_request("rx-limits", age_ms=25 * 3600 * 1000))
    assert post(server, jwt, old).status_code == 400
    bad_name = remotewrite_block(write_request("rx-limits", name="0bad"))
    assert post(server, jwt, bad_name).status_code == 400


def test_metadata_only_is_accepted_and_dropped(server: ServerHandle) -> None:
    jwt = authorize(server, "rx-meta")
    metadata = b"\x1a\x04\x0a\x02up"  # WriteRequest.metadata = 3, no timeseries
    assert post(server, jwt, remotewrite_block(metadata)).status_code == 204


def test_the_cluster_wide_rate_limit_is_429_with_retry_after(server: ServerHandle) -> None:
    jwt = authorize(server, "rx-rate")
    codes = [post(server, jwt, remotewrite_block(write_request("rx-rate"))) for _ in range(4)]
    assert [a.status_code for a in codes] == [204, 204, 204, 429]
    assert 1 <= int(codes[-1].headers["Retry-After"]) <= 60


def malformed_receive_bodies(cluster_id: str, rng: random.Random) -> list[bytes]:
    """Hostile remote-write bodies: random bytes, truncations and bit flips of a valid request,
    compressed garbage, absurd varints, and valid requests of wrong content."""
    valid = write_request(cluster_id, n=20)
    block = remotewrite_block(valid)
    cases = [rng.randbytes(rng.randint(0, 3000)) for _ in range(150)]
    cases += [block[: rng.randint(0, len(block) - 1)] for _ in range(100)]
    for _ in range(150):
        flipped = bytearray(block)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))
    for _ in range(150):
        raw = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        cases.append(remotewrite_block(bytes(raw)))
    cases += [remotewrite_block(rng.randbytes(rng.randint(1, 2000))) for _ in range(100)]
    cases += [remotewrite_block(b"\x0a\xff\xff\xff\xff\x0f" + rng.randbytes(10)) for _ in range(20)]
    cases += [
        remotewrite_block(write_request("someone-else")),
        remotewrite_block(write_request(cluster_id, name="")),
        remotewrite_block(write_request(cluster_id, age_ms=-3600 * 1000)),  # an hour ahead
    ]
    return cases


def test_malformed_remote_write_is_refused_with_4xx(server: ServerHandle) -> None:
    cluster_id = "rx-fuzz"
    jwt = authorize(server, cluster_id)
    rng = random.Random(20261202)
    wrong = []
    with httpx.Client(timeout=10, headers={**HEADERS, "Authorization": f"Bearer {jwt}"}) as c:
        for body in malformed_receive_bodies(cluster_id, rng):
            answer = c.post(f"{server.external}/metrics/v1/receive", content=body)
            if not 400 <= answer.status_code < 500 and answer.status_code != 204:
                wrong.append((answer.status_code, answer.text[:100], body[:40]))
    assert not wrong, wrong[:5]
    assert server.process.alive
    assert "Traceback" not in server.process.log_path.read_text(errors="replace")
