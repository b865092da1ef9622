"""The authorization stand-in as a real process: the answers docs/protocol.md section 2 lists."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dev.authorization_server import load_tokens, main
from telemeter.addresses import parse_listen_address

JSON_HEADERS = {"Content-Type": "application/json"}
STARTUP_TIMEOUT_SECONDS = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def stand_in_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``python -m dev.authorization_server`` on a free port; stop it after."""
    workdir = tmp_path_factory.mktemp("authorization-server")
    tokens_file = workdir / "tokens.json"
    tokens_file.write_text(json.dumps([{"token": "a"}, {"token": "b"}]))
    port = _free_port()
    log_path = workdir / "stderr.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dev.authorization_server",
                f"127.0.0.1:{port}",
                str(tokens_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"stand-in exited with {process.returncode}: {log_path.read_text()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    pytest.fail(f"stand-in did not answer within {STARTUP_TIMEOUT_SECONDS} s")


def _post(url: str, body: object, *, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, headers=JSON_HEADERS if headers is None else headers)


def _registration(cluster_id: str, token: str) -> dict[str, str]:
    return {"cluster_id": cluster_id, "authorization_token": token, "account_id": ""}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_non_post_is_405(stand_in_url: str, method: str) -> None:
    response = httpx.request(method, stand_in_url)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.json()["name"] == "MethodNotAllowed"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Content-Type": "application/json; charset=utf-8"}, id="with-charset"),
        pytest.param({"Content-Type": "text/plain"}, id="text"),
        pytest.param({}, id="missing"),
    ],
)
def test_content_type_must_be_exactly_json(stand_in_url: str, headers: dict[str, str]) -> None:
    response = _post(stand_in_url, _registration("cluster-x", "a"), headers=headers)
    assert response.status_code == 400
    assert response.json()["name"] == "InvalidContentType"


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"cluster_id": 5}', b"[1]"])
def test_bad_json_is_400(stand_in_url: str, body: bytes) -> None:
    response = _post(stand_in_url, body)
    assert response.status_code == 400
    assert response.json()["name"] == "InvalidBody"


@pytest.mark.parametrize(
    "body", [_registration("", "a"), {"authorization_token": "a"}, None], ids=str
)
def test_empty_cluster_id_is_400(stand_in_url: str, body: object) -> None:
    response = _post(stand_in_url, body)
    assert response.status_code == 400
    assert response.json()["name"] == "BadRequest"


def test_unknown_token_is_401(stand_in_url: str) -> None:
    response = _post(stand_in_url, _registration("cluster-a", "not-a-token"))
    assert response.status_code == 401
    assert response.json()["name"] == "NotAuthorized"


def test_first_registration_is_201_then_200(stand_in_url: str) -> None:
    first = _post(stand_in_url, _registration("cluster-a", "a"))
    assert first.status_code == 201
    assert first.headers["content-type"] == "application/json"
    expected = {"cluster_id": "cluster-a", "authorization_token": "a", "account_id": "3ludi27ck5rj"}
    assert first.json() == expected
    repeat = _post(stand_in_url, _registration("cluster-a", "a"))
    assert repeat.status_code == 200
    assert repeat.json() == expected
    # The pair is the key: another token for the same cluster is a first registration again.
    other_token = _post(stand_in_url, _registration("cluster-a", "b"))
    assert other_token.status_code == 201
    assert other_token.json()["account_id"] == "3ludi27ck5rj"


def test_every_path_is_served(stand_in_url: str) -> None:
    response = _post(
        f"{stand_in_url}/api/accounts_mgmt/v1/cluster_registrations",
        _registration("cluster-path", "a"),
    )
    assert response.status_code == 201
    assert response.json()["cluster_id"] == "cluster-path"


# --- command line (pure, nothing is started) -----------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9001", ("127.0.0.1", 9001)),
        (":9001", ("0.0.0.0", 9001)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9001", ("::1", 9001)),
    ],
)
def test_parse_listen_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9001", "host:", "host:port", "host:70000", "h:-1"])
def test_parse_listen_address_refuses_garbage(address: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        parse_listen_address(address)


def test_load_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('[{"token": "a"}, {"token": "b", "comment": "ignored"}]')
    assert load_tokens(path) == ["a", "b"]


@pytest.mark.parametrize("content", ["{", '{"token": "a"}', '[{"token": 1}]', '["a"]'])
def test_load_tokens_refuses_malformed_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="tokens file"):
        load_tokens(path)


def test_main_exits_with_usage_error_on_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["not-an-address", str(tmp_path / "missing.json")])
    assert exited.value.code == 2
