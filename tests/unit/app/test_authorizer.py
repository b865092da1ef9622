"""Tests of app.authorizer against the real stand-in app and small upstream apps."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from app.authorizer import (
    HttpAuthorizer,
    StubAuthorizer,
    stable_account_id,
)
from app.errors import AuthorizationDenied, AuthorizationUnavailable
from dev.authorization_server import create_app

pytestmark = pytest.mark.anyio

UPSTREAM_URL = "http://tollbooth.test/api/accounts_mgmt/v1/cluster_registrations"
SECRET_DETAIL = "upstream-secret-detail-7f3a"
JSON = "application/json"
KNOWN_TOKEN = "a"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _upstream(status_code: int, body: str, content_type: str = "application/json") -> Starlette:
    """An upstream that answers every POST with a fixed response."""

    async def answer(request: Request) -> Response:
        return Response(
            content=body, status_code=status_code, headers={"Content-Type": content_type}
        )

    return Starlette(routes=[Route("/{path:path}", answer, methods=["POST"])])


@asynccontextmanager
async def _authorizer_for(app: ASGIApp) -> AsyncIterator[HttpAuthorizer]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        yield HttpAuthorizer(UPSTREAM_URL, client=client)


@pytest.fixture
async def stand_in() -> AsyncIterator[HttpAuthorizer]:
    async with _authorizer_for(create_app([KNOWN_TOKEN])) as authorizer:
        yield authorizer


async def _authorize_against(
    app: ASGIApp, *, cluster_id: str = "cluster-a", token: str = KNOWN_TOKEN
) -> str:
    async with _authorizer_for(app) as authorizer:
        return await authorizer.authorize(cluster_id=cluster_id, token=token)


# --- the account id ---------------------------------------------------------------------------


def test_stable_account_id_matches_the_go_stand_in() -> None:
    # The "sub" of ../shared/testdata/wire/authorize-response.json, issued for cluster-a.
    assert stable_account_id("cluster-a") == "3ludi27ck5rj"
    # FNV-1a 64 offset basis in base 32, for the empty string.
    assert int(stable_account_id(""), 32) == 0xCBF29CE484222325
    assert stable_account_id("cluster-b") != stable_account_id("cluster-a")


async def test_stub_accepts_any_token() -> None:
    stub = StubAuthorizer()
    assert await stub.authorize(cluster_id="cluster-a", token="anything") == "3ludi27ck5rj"
    assert await stub.authorize(cluster_id="cluster-a", token="") == "3ludi27ck5rj"


# --- against the real stand-in ------------------------------------------------------------


async def test_stand_in_authorizes_a_known_token(stand_in: HttpAuthorizer) -> None:
    assert await stand_in.authorize(cluster_id="cluster-a", token="a") == "3ludi27ck5rj"
    # The repeat is a 200 rather than a 201: both mean authorized.
    assert await stand_in.authorize(cluster_id="cluster-a", token="a") == "3ludi27ck5rj"


async def test_stand_in_refuses_an_unknown_token(stand_in: HttpAuthorizer) -> None:
    with pytest.raises(AuthorizationDenied) as denied:
        await stand_in.authorize(cluster_id="cluster-a", token="b")
    assert denied.value.status == 401
    assert denied.value.retry_after is None


async def test_stand_in_refuses_an_empty_cluster_id(stand_in: HttpAuthorizer) -> None:
    with pytest.raises(AuthorizationDenied) as denied:
        await stand_in.authorize(cluster_id="", token="a")
    assert denied.value.status == 400


# --- the request we send ------------------------------------------------------------------


async def test_request_follows_the_protocol() -> None:
    seen: list[tuple[str, str, str | None, str | None, Any]] = []

    async def record(request: Request) -> Response:
        seen.append(
            (
                request.method,
                request.url.path,
                request.headers.get("content-type"),
                request.headers.get("accept"),
                json.loads(await request.body()),
            )
        )
        return Response(
            content=json.dumps({"account_id": "acct-9"}),
            status_code=201,
            media_type="application/json",
        )

    app = Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])
    assert await _authorize_against(app, cluster_id="c-1", token="tok") == "acct-9"
    assert seen == [
        (
            "POST",
            "/api/accounts_mgmt/v1/cluster_registrations",
            "application/json",
            "application/json",
            {"cluster_id": "c-1", "authorization_token": "tok", "account_id": ""},
        )
    ]


# --- the mapping of upstream answers ------------------------------------------------------


@pytest.mark.parametrize("status_code", [400, 401, 403, 404, 409, 418])
async def test_4xx_is_denied_with_the_same_code(status_code: int) -> None:
    app = _upstream(status_code, json.dumps({"name": "x", "reason": SECRET_DETAIL}))
    with pytest.raises(AuthorizationDenied) as denied:
        await _authorize_against(app)
    assert denied.value.status == status_code
    assert denied.value.retry_after is None
    assert SECRET_DETAIL not in str(denied.value)


async def test_429_is_denied_with_retry_after_300() -> None:
    with pytest.raises(AuthorizationDenied) as denied:
        await _authorize_against(_upstream(429, "{}"))
    assert denied.value.status == 429
    assert denied.value.retry_after == 300


@pytest.mark.parametrize(
    ("status_code", "body", "content_type", "logged"),
    [
        pytest.param(500, SECRET_DETAIL, "text/plain", SECRET_DETAIL, id="500"),
        pytest.param(503, json.dumps({"r": SECRET_DETAIL}), JSON, SECRET_DETAIL, id="503"),
        pytest.param(204, "", JSON, "status 204", id="204"),
        pytest.param(302, "", "text/plain", "status 302", id="302"),
        pytest.param(200, SECRET_DETAIL, JSON, SECRET_DETAIL, id="bad-json"),
        pytest.param(200, json.dumps({"account_id": "x"}), "text/plain", "text/plain", id="text"),
        pytest.param(200, json.dumps({"account_id": ""}), JSON, "no account_id", id="empty-id"),
        pytest.param(200, json.dumps({"cluster_id": "c"}), JSON, "no account_id", id="no-id"),
        pytest.param(201, json.dumps({"account_id": 5}), JSON, "no account_id", id="number-id"),
        pytest.param(200, json.dumps([SECRET_DETAIL]), JSON, SECRET_DETAIL, id="list"),
    ],
)
async def test_upstream_failure_is_unavailable_without_detail(
    status_code: int, body: str, content_type: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.authorizer")
    with pytest.raises(AuthorizationUnavailable) as unavailable:
        await _authorize_against(_upstream(status_code, body, content_type))
    request_id = unavailable.value.request_id
    assert request_id in str(unavailable.value)
    assert SECRET_DETAIL not in str(unavailable.value)
    assert "tollbooth" not in str(unavailable.value)
    # The detail goes to the log, with the request id to correlate it.
    [record] = [r for r in caplog.records if r.name == "app.authorizer"]
    assert record.levelno == logging.WARNING
    assert f"request_id={request_id}" in record.getMessage()
    assert logged in record.getMessage()


async def test_json_content_type_with_parameters_is_accepted() -> None:
    app = _upstream(200, json.dumps({"account_id": "acct"}), "application/json; charset=utf-8")
    assert await _authorize_against(app) == "acct"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_network_error_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.authorizer")
    async with httpx.AsyncClient() as client:
        authorizer = HttpAuthorizer(f"http://127.0.0.1:{_closed_port()}/", client=client, timeout=2)
        with pytest.raises(AuthorizationUnavailable) as unavailable:
            await authorizer.authorize(cluster_id="cluster-a", token="a")
    assert "ConnectError" not in str(unavailable.value)
    assert any("ConnectError" in record.getMessage() for record in caplog.records)


async def test_credentials_in_the_url_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.authorizer")
    app = _upstream(500, "")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        authorizer = HttpAuthorizer("http://user:hunter2@tollbooth.test/?key=k3y", client=client)
        with pytest.raises(AuthorizationUnavailable):
            await authorizer.authorize(cluster_id="cluster-a", token="a")
    [record] = caplog.records
    assert "tollbooth.test" in record.getMessage()
    assert "hunter2" not in record.getMessage()
    assert "k3y" not in record.getMessage()


@pytest.mark.parametrize("url", ["tollbooth.test/x", "ftp://tollbooth.test/", "/relative"])
async def test_invalid_url_is_refused(url: str) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(ValueError, match="URL"):
            HttpAuthorizer(url, client=client)
