"""Limits across three pods: a burst of bad token exchanges is throttled (the upstream
authorization service, behind a small counting proxy, sees few calls), good exchanges are cached
across pods, and the upload rate limit holds cluster-wide.

The counting proxy is a Starlette app under uvicorn in a thread of this process, in front of the
real authorization stand-in process, so the tests can count upstream calls.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from redis.cluster import RedisCluster
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dev.launch import ServerHandle, start_authorization_server
from dev.ports import free_port
from tests.conftest import RedisClusterHandle
from tests.support import (
    authorize,
    authorize_at,
    encode_upload,
    gauge_family,
    new_id,
    pair,
    start_all,
    stored,
    stored_text,
    upload_headers,
)

pytestmark = pytest.mark.integration


# ---- token exchange abuse, counted at the upstream ---------------------------------------------


class CountingProxy:
    """A real HTTP proxy (Starlette under uvicorn, in a thread) in front of the authorization
    stand-in, counting the calls per cluster id that reach the upstream."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: Counter[str] = Counter()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        self.calls[str(json.loads(body).get("cluster_id"))] += 1
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                self.upstream,
                content=body,
                headers={"Content-Type": request.headers.get("content-type", "")},
            )
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the counting proxy did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


AUTH_FAILURE_LIMIT = 5


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingProxy]:
    stand_in, url = start_authorization_server(
        workdir=tmp_path_factory.mktemp("auth"), tokens=["good"]
    )
    try:
        with CountingProxy(url) as proxy:
            yield proxy
    finally:
        stand_in.stop()


@pytest.fixture(scope="module")
def trio(
    redis_cluster: RedisClusterHandle,
    signing_key: Path,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: CountingProxy,
) -> Iterator[list[ServerHandle]]:
    """Three pods with the default rate limit, behind the counting proxy."""
    args = ["--authorize", upstream.url, "--auth-failure-limit", str(AUTH_FAILURE_LIMIT)]
    handles = start_all(
        redis_cluster.url,
        tmp_path_factory.mktemp("trio"),
        signing_key,
        {f"pod{i}": args for i in range(3)},
    )
    yield handles
    for handle in handles:
        handle.process.stop()


def test_bad_token_burst_is_throttled_and_upstream_sees_few_calls(
    trio: list[ServerHandle], upstream: CountingProxy
) -> None:
    victim = new_id("burst")
    concurrency = 8

    async def burst() -> list[httpx.Response]:
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30) as http:

            async def one(i: int) -> httpx.Response:
                async with semaphore:
                    return await http.post(
                        f"{trio[i % 3].external}/authorize",
                        params={"id": victim},
                        headers={"Authorization": f"Bearer bad-{i}"},
                    )

            return await asyncio.gather(*(one(i) for i in range(60)))

    answers = asyncio.run(burst())
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {401, 429}, statuses
    assert statuses[429] >= 60 - AUTH_FAILURE_LIMIT - concurrency, statuses
    assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status_code == 429)
    # Bounded upstream load: the limit, plus the requests already past the check when it tripped.
    assert upstream.calls[victim] <= AUTH_FAILURE_LIMIT + concurrency, upstream.calls[victim]
    throttled = 0
    for pod in trio:
        text = httpx.get(f"{pod.internal}/metrics").text
        found = re.search(
            r'^telemeter_authorizations_total\{result="throttled"\} (\S+)', text, re.M
        )
        throttled += int(float(found.group(1))) if found else 0
    assert throttled == statuses[429]
    # Another cluster is not throttled by the burst.
    assert authorize_at(trio[0], new_id("bystander"), "good").status_code == 200


def test_good_token_exchanges_are_cached_across_pods(
    trio: list[ServerHandle], upstream: CountingProxy
) -> None:
    cluster_id = new_id("cached")
    for i in range(12):
        answer = authorize_at(trio[i % 3], cluster_id, "good")
        assert answer.status_code == 200, answer.text
    assert upstream.calls[cluster_id] == 1


# ---- the rate limit with three pods ---------------------------------------------------------


def _numbered_body(cluster_id: str, n: int) -> bytes:
    return encode_upload([gauge_family("abuse_try", [pair("_id", cluster_id)], value=float(n))])


def test_rate_limit_holds_across_three_pods(
    trio: list[ServerHandle], rclient: RedisCluster
) -> None:
    ids = [new_id("limit") for _ in range(4)]
    jwts = {cid: authorize(trio[0], cid, "good") for cid in ids}

    async def race(round_: int) -> dict[str, list[tuple[int, int, str | None]]]:
        async with httpx.AsyncClient(timeout=30) as http:

            async def one(cid: str, n: int) -> tuple[int, int, str | None]:
                answer = await http.post(
                    f"{trio[n % 3].external}/upload",
                    content=_numbered_body(cid, round_ * 100 + n),
                    headers=upload_headers(jwts[cid]),
                )
                return round_ * 100 + n, answer.status_code, answer.headers.get("retry-after")

            results = await asyncio.gather(*(one(cid, n) for cid in ids for n in range(9)))
        return {cid: [r for i, r in enumerate(results) if i // 9 == k] for k, cid in enumerate(ids)}

    first = asyncio.run(race(0))
    for cid, answers in first.items():
        statuses = Counter(status for _, status, _ in answers)
        assert statuses == {200: 1, 429: 8}, (cid, answers)
        assert all(int(ra or 0) > 0 for _, status, ra in answers if status == 429)
        (winner,) = [n for n, status, _ in answers if status == 200]
        value = stored(rclient, cid)
        assert value is not None
        assert re.search(rf"^abuse_try\{{[^}}]*\}} {winner} ", stored_text(value), re.M)
    # Nine more pushes a moment later, on all three pods: the allowance is spent cluster-wide.
    second = asyncio.run(race(1))
    assert all(status == 429 for answers in second.values() for _, status, _ in answers)
