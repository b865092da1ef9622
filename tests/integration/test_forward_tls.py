"""Forwarding to an https receiver that wants our client certificate and an OAuth2 token: a real
server and Redis Cluster, the scripted receiver behind TLS, and a small OIDC issuer handing out
client-credentials tokens (docs/operations.md, "Remote write")."""

from __future__ import annotations

import contextlib
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from dev.launch import start_server
from tests.certs import write_pki
from tests.conftest import RedisClusterHandle
from tests.e2e.test_forward import FORWARD_ARGS, ScriptedReceiver, push, serve_scripted
from tests.support import authorize, empty_forward_queues, wait_for

pytestmark = pytest.mark.integration


class Issuer(http.server.ThreadingHTTPServer):
    """Discovery and a token endpoint: each grant a new token, ``tok1``, ``tok2``, ..."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _IssuerHandler)
        self.grants: list[dict[str, list[str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _IssuerHandler(http.server.BaseHTTPRequestHandler):
    server: Issuer

    def do_GET(self) -> None:
        self._json({"issuer": self.server.url, "token_endpoint": self.server.url + "/token"})

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.server.grants.append(form)
        self._json({"access_token": f"tok{len(self.server.grants)}", "expires_in": 3600})

    def _json(self, value: dict[str, Any]) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_forwarding_over_mutual_tls_with_client_credentials(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path, issuer: Issuer
) -> None:
    pki = write_pki(tmp_path / "pki")
    receiver = ScriptedReceiver()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    tls.load_cert_chain(str(pki.server_crt), str(pki.server_key))
    tls.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake
    receiver.socket = tls.wrap_socket(receiver.socket, server_side=True)
    url = receiver.url.replace("http://", "https://")
    (tmp_path / "secret").write_text("s3cret\n")
    empty_forward_queues(redis_cluster.startup_nodes, redis_cluster.password)
    with contextlib.contextmanager(serve_scripted)(receiver):
        server = start_server(
            redis_url=redis_cluster.url, workdir=tmp_path, name="tls", shared_key=signing_key,
            extra_args=[*FORWARD_ARGS, "--forward-url", url, "--forward-ca-file", str(pki.ca),
                        "--forward-client-crt", str(pki.client_crt),
                        "--forward-client-key", str(pki.client_key),
                        "--oidc-issuer", issuer.url, "--client-id", "telemeter",
                        "--client-secret-file", str(tmp_path / "secret")],
        )  # fmt: skip
        try:
            for n, cluster in enumerate(("tls-a", "tls-b", "tls-c")):
                assert push(server, authorize(server, cluster), cluster, n) == 200
            wait_for(
                lambda: (
                    None
                    if {"tls-a", "tls-b", "tls-c"} <= set(receiver.accepted)
                    else str(receiver.requests)
                ),
                timeout=30,
                what="the three uploads at the receiver",
            )
        finally:
            server.process.stop()
    seen = receiver.headers_seen
    assert {h["Authorization"] for h in seen} == {"Bearer tok1"}  # one grant, kept
    assert {h["THANOS-TENANT"] for h in seen} == {"tls-a", "tls-b", "tls-c"}
    grant = {"grant_type": ["client_credentials"], "client_id": ["telemeter"]}
    assert issuer.grants == [{**grant, "client_secret": ["s3cret"]}]
