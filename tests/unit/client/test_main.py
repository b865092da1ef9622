"""The ``telemeter-client`` process: flag refusal, local listener, SIGHUP and /-/reload, SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from client.main import main
from dev.ports import free_port
from telemeter.transforms import anonymize
from tests.unit.client.recorder import Recorded, Recorder, Reply, text_reply, token_reply


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to", "http://s", "--id", "c", "--to-token", "t"], "you must specify a Prometheus"),
        (
            [
                "--from",
                "http://p",
                "--to",
                "http://s",
                "--id",
                "c",
                "--to-token",
                "t",
                "--anonymize-labels",
                "instance",
            ],
            "--anonymize-labels needs --anonymize-salt",
        ),
    ],
)
def test_inconsistent_flags_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _rules(request: Recorded) -> list[str]:
    return parse_qs(urlsplit(request.target).query)["match[]"]


@pytest.fixture
def client_process(
    server: Recorder, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    match_file = tmp_path / "rules"
    match_file.write_text("first\n")
    port = free_port()
    now_ms = int(time.time() * 1000)
    server.script("/federate", text_reply(f'ALERTS{{instance="i:1"}} 1 {now_ms}\n'))
    server.script("/authorize", token_reply(labels={"_id": "c1"}))
    server.script("/upload", Reply(200))
    argv = [
        sys.executable, "-m", "client.main",
        "--from", server.url, "--to", server.url, "--id", "c1", "--to-token", "t",
        "--listen", f"127.0.0.1:{port}", "--interval", "30s", "--match-file", str(match_file),
        "--anonymize-labels", "instance", "--anonymize-salt", "s1",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process, f"http://127.0.0.1:{port}", match_file
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def _wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, "the client exited"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the client's listener never came up")


def test_listener_reload_and_stop(
    server: Recorder, client_process: tuple[subprocess.Popen[bytes], str, Path]
) -> None:
    process, base, match_file = client_process
    _wait_healthy(base, process)
    server.wait_for("/upload", 1)
    assert httpx.get(f"{base}/healthz/ready").text == "ok"
    # GET /federate: the last payload, renamed, anonymized, with the token's labels.
    federate = httpx.get(f"{base}/federate")
    assert federate.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert f'alerts{{instance="{anonymize("s1", "i:1")}",_id="c1"}} 1 ' in federate.text
    metrics = httpx.get(f"{base}/metrics").text
    for line in (
        "federate_samples 1.0",
        "federate_filtered_samples 0.0",
        "federate_requests_total 1.0",
        "federate_requests_failed_total 0.0",
        'metricsclient_http_requests_total{client="federate_to",status_code="200"} 1.0',
    ):
        assert line in metrics.splitlines()

    match_file.write_text("second\n")
    process.send_signal(signal.SIGHUP)
    scrapes = server.wait_for("/federate", 2)
    match_file.write_text("third\n")
    assert httpx.post(f"{base}/-/reload").status_code == 200
    scrapes = server.wait_for("/federate", 3)
    assert [_rules(r) for r in scrapes] == [['{__name__="up"}', "first"],
                                            ['{__name__="up"}', "second"],
                                            ['{__name__="up"}', "third"]]  # fmt: skip
    match_file.unlink()
    failed = httpx.post(f"{base}/-/reload")
    assert failed.status_code == 500 and "match-file" in failed.text
    assert process.poll() is None  # a failed reload keeps the client running

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def _raw(base: str, data: bytes) -> bytes:
    """Send ``data`` on one connection to the listener and read until it closes."""
    host, port = urlsplit(base).netloc.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_listener_speaks_http_1_1(
    server: Recorder, client_process: tuple[subprocess.Popen[bytes], str, Path]
) -> None:
    process, base, _ = client_process
    _wait_healthy(base, process)
    with httpx.Client(base_url=base) as http:
        assert http.get("/nowhere").status_code == 404
        assert http.post("/healthz").status_code == 405
        assert http.get("/-/reload").status_code == 405
        assert http.head("/healthz").status_code == 200
        assert http.get("/healthz?x=1").text == "ok"
    # Two requests on one connection (keep-alive), the second asking to close.
    two = _raw(
        base,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    assert two.count(b"HTTP/1.1 200 OK\r\n") == 2 and two.endswith(b"ok")
    assert _raw(base, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _raw(base, b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 400 "
    )
    big = b"POST /-/reload HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n"
    assert _raw(base, big).startswith(b"HTTP/1.1 413 ")
    chunked = b"POST /-/reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert _raw(base, chunked).startswith(b"HTTP/1.1 411 ")
    assert process.poll() is None
