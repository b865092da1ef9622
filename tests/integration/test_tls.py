"""TLS on both listeners, with real handshakes (docs/operations.md, "TLS").

One server runs with ``--tls-crt/--tls-key`` on the external listener and
``--internal-tls-crt/--internal-tls-key/--internal-tls-client-ca`` on the internal one. The Go
2019 client and ours push to it over TLS, trusting the test CA through ``SSL_CERT_FILE``; a real
Prometheus federates from it with a client certificate (``up`` 1, the pushed series scraped),
and without one or with a certificate of another CA it is refused (``up`` 0), as a Python
client is. Plain HTTP to either listener fails at once instead of hanging, and an upload over
the limit reads its 413 over TLS as it does in plain HTTP.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dev.launch import ServerHandle, start_server
from dev.ports import free_port
from dev.processes import ManagedProcess
from dev.prometheus import (
    PrometheusHandle,
    federate_scrape_config,
    find_prometheus,
    start_prometheus,
)
from dev.prometheus import wait_for as wait_for_query
from dev.upstream import GO_BUILD, go_binaries
from tests.certs import Pki, write_pki
from tests.conftest import RedisClusterHandle
from tests.support import (
    RING_ARGS,
    authorize,
    chunks,
    encode_upload,
    new_id,
    post_upload,
    series_of,
    upload_headers,
    valid_families,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

# The source's own `up`, not what the central role scraped back from /federate (it has an `_id`).
OWN_UP = '{__name__="up",_id=""}'
GOOD, NO_CERT, ROGUE = "tls-federate", "tls-federate-no-cert", "tls-federate-rogue-cert"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


def _context(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A client context trusting the test CA, presenting ``cert`` (certificate, key) if given."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(*map(str, cert))
    return context


def _scraper(pki: Pki) -> ssl.SSLContext:
    """What the central Prometheus holds: the CA and a client certificate it signed."""
    return _context(pki, (pki.client_crt, pki.client_key))


@pytest.fixture(scope="module")
def server(
    redis_cluster: RedisClusterHandle,
    signing_key: Path,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerHandle]:
    """A server with TLS on both listeners; the internal one wants a client certificate."""
    tls = [
        "--tls-crt", str(pki.server_crt), "--tls-key", str(pki.server_key),
        "--internal-tls-crt", str(pki.server_crt), "--internal-tls-key", str(pki.server_key),
        "--internal-tls-client-ca", str(pki.ca),
    ]  # fmt: skip
    plain = start_server(
        redis_url=redis_cluster.url,
        workdir=tmp_path_factory.mktemp("tls-server"),
        name="tls",
        shared_key=signing_key,
        extra_args=[*RING_ARGS, "--ring-namespace", new_id("tls-ring"), "--ratelimit", "0s", *tls],
        wait=False,
    )
    handle = dataclasses.replace(
        plain,
        external=plain.external.replace("http://", "https://"),
        internal=plain.internal.replace("http://", "https://"),
    )
    try:
        wait_for(lambda: _healthz(handle, _scraper(pki)), timeout=20, what="the TLS listeners")
        yield handle
    finally:
        handle.process.stop()


def _healthz(server: ServerHandle, context: ssl.SSLContext) -> str | None:
    if not server.process.alive:
        raise RuntimeError(f"the server exited:\n{server.process.log_tail()}")
    try:
        for url in (server.external, server.internal):
            httpx.get(f"{url}/healthz", verify=context, timeout=2).raise_for_status()
    except httpx.HTTPError as exc:
        return repr(exc)
    return None


def _tls_job(name: str, server: ServerHandle, tls_config: dict[str, str]) -> dict[str, Any]:
    """The recommended federate job (docs/prometheus-scrape.yaml) over HTTPS."""
    target = server.internal.removeprefix("https://")
    return {
        **federate_scrape_config([target], job_name=name),
        "scheme": "https",
        "tls_config": tls_config,
    }


@pytest.fixture(scope="module")
def prometheus(
    server: ServerHandle, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusHandle]:
    """The source Prometheus of the clients, and the central one scraping the server three ways:
    with the client certificate, with none, and with one of the rogue CA."""
    if find_prometheus() is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    ca = str(pki.ca)
    jobs = [
        _tls_job(GOOD, server, {"ca_file": ca, "cert_file": str(pki.client_crt),
                                "key_file": str(pki.client_key)}),
        _tls_job(NO_CERT, server, {"ca_file": ca}),
        _tls_job(ROGUE, server, {"ca_file": ca, "cert_file": str(pki.rogue_client_crt),
                                 "key_file": str(pki.rogue_client_key)}),
    ]  # fmt: skip
    handle = start_prometheus(
        workdir=tmp_path_factory.mktemp("tls-prometheus"),
        federate_targets=[],
        server_targets={},
        extra_scrape_configs=jobs,
    )
    try:
        wait_for_query(handle.url, 'up{job="prometheus"} == 1', timeout=30, process=handle.process)
        yield handle
    finally:
        handle.process.stop()


@pytest.fixture(scope="session")
def go_bin() -> Path:
    """The Go 2019 binaries (built offline on first use, about a minute)."""
    if not GO_BUILD.exists():
        pytest.skip(f"the Go 2019 build script is not at {GO_BUILD}: no Go client to test")
    try:
        return go_binaries()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building the Go 2019 binaries failed: {exc}")


def _push(
    binary: str, prometheus: PrometheusHandle, server: ServerHandle, cluster: str, pki: Pki,
    workdir: Path,
) -> None:  # fmt: skip
    """Run a client pushing the source's ``up`` to the server over TLS, trusting the test CA
    only through ``SSL_CERT_FILE``; wait until its series are on ``/federate``."""
    argv = [
        binary, "--from", prometheus.url, "--to", server.external, "--id", cluster,
        "--to-token", "a", "--interval", "2s", "--listen", f"127.0.0.1:{free_port()}",
        "--match", OWN_UP,
    ]  # fmt: skip
    log = workdir / f"{cluster}.log"
    with ManagedProcess(cluster, argv, log_path=log, env={"SSL_CERT_FILE": str(pki.ca)}) as client:

        def arrived() -> str | None:
            if not client.alive:
                raise AssertionError(f"{cluster} exited:\n{client.log_tail()}")
            text = httpx.get(f"{server.internal}/federate", verify=_scraper(pki), timeout=10).text
            lines = [line for line in series_of(text, cluster) if line.startswith("up{")]
            return None if lines else f"no up series of {cluster}; client log:\n{client.log_tail()}"

        wait_for(arrived, timeout=30, what=f"the pushes of {cluster}")


def test_the_go_client_pushes_over_tls(
    go_bin: Path, prometheus: PrometheusHandle, server: ServerHandle, pki: Pki, tmp_path: Path
) -> None:
    _push(str(go_bin / "telemeter-client"), prometheus, server, new_id("go-tls"), pki, tmp_path)


def test_our_client_pushes_over_tls(
    prometheus: PrometheusHandle, server: ServerHandle, pki: Pki, tmp_path: Path
) -> None:
    binary = Path(sys.executable).with_name("telemeter-client")
    assert binary.exists(), f"the project's console script is not installed at {binary}"
    _push(str(binary), prometheus, server, new_id("py-tls"), pki, tmp_path)


def test_the_client_refuses_a_server_it_does_not_trust(
    prometheus: PrometheusHandle, server: ServerHandle, pki: Pki, tmp_path: Path
) -> None:
    """Without the CA in ``SSL_CERT_FILE`` our client's token exchange fails on the handshake."""
    argv = [
        str(Path(sys.executable).with_name("telemeter-client")), "--from", prometheus.url,
        "--to", server.external, "--id", new_id("untrusting"), "--to-token", "a", "--listen", "",
        "--match", OWN_UP,
    ]  # fmt: skip
    log = tmp_path / "untrusting.log"
    with ManagedProcess("untrusting", argv, log_path=log, env={"SSL_CERT_FILE": str(pki.rogue_ca)}):
        wait_for(
            lambda: None if "CERTIFICATE_VERIFY_FAILED" in log.read_text() else "no such line",
            timeout=20,
            what="a certificate verification failure in the client log",
        )


def test_prometheus_with_the_client_certificate_scrapes_federate(
    prometheus: PrometheusHandle, server: ServerHandle, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up` is 1 for the job with the certificate and federated series arrive in Prometheus;
    the jobs without one or with the rogue CA's are refused (`up` 0)."""
    # An upload over TLS without a client certificate (httpx trusts SSL_CERT_FILE too).
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    cluster = new_id("prom-tls")
    answer = post_upload(server, authorize(server, cluster), encode_upload(valid_families(cluster)))
    assert answer.status_code == 200, answer.text
    wait_for_query(prometheus.url, f'up{{job="{GOOD}"}} == 1', timeout=30)
    for job in (NO_CERT, ROGUE):
        wait_for_query(prometheus.url, f'up{{job="{job}"}} == 0', timeout=30)
    scraped = wait_for_query(prometheus.url, f'abuse_metric_1{{_id="{cluster}"}}', timeout=30)
    assert len(scraped) == 5 and {s["metric"]["job"] for s in scraped} == {GOOD}
    up = {s["metric"]["job"]: s["value"][1] for s in prometheus.query('up{job=~"tls-.*"}')}
    assert up == {GOOD: "1", NO_CERT: "0", ROGUE: "0"}
    targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=10).json()["data"]
    errors = {t["labels"]["job"]: t["lastError"] for t in targets["activeTargets"]}
    assert errors[GOOD] == ""
    assert errors[NO_CERT] and errors[ROGUE]  # as it happens "EOF": the server hangs up


@pytest.mark.parametrize("who", ["no certificate", "a certificate of another CA"])
def test_the_internal_listener_refuses_a_client_without_a_trusted_certificate(
    server: ServerHandle, pki: Pki, who: str
) -> None:
    cert = None if who == "no certificate" else (pki.rogue_client_crt, pki.rogue_client_key)
    with httpx.Client(verify=_context(pki, cert), timeout=10) as client:
        for path in ("/federate", "/metrics", "/status"):
            # The handshake fails (TLS 1.3: the client learns it on its first read): no answer.
            with pytest.raises(httpx.TransportError):
                client.get(f"{server.internal}{path}")
    with httpx.Client(verify=_scraper(pki), timeout=10) as client:
        for path in ("/federate", "/metrics", "/status"):
            assert client.get(f"{server.internal}{path}").status_code == 200, path


@pytest.mark.parametrize("listener", ["external", "internal"])
def test_plain_http_to_a_tls_listener_fails_fast(server: ServerHandle, listener: str) -> None:
    url = getattr(server, listener).replace("https://", "http://") + "/healthz"
    began = time.monotonic()
    with pytest.raises(httpx.TransportError) as failed:
        httpx.get(url, timeout=10)
    assert not isinstance(failed.value, httpx.TimeoutException)
    assert time.monotonic() - began < 5


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_upload_over_the_limit_reads_its_413_over_tls(
    server: ServerHandle, pki: Pki, monkeypatch: pytest.MonkeyPatch, framing: str
) -> None:
    """The early answer and the lingering close work over TLS too (docs/protocol.md)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    jwt = authorize(server, "big-tls")
    body = os.urandom(3 * 1024 * 1024)  # 3 MB, six times --limit-bytes
    content = body if framing == "content-length" else chunks(body, 64 * 1024)
    answer = httpx.post(
        f"{server.external}/upload", content=content, headers=upload_headers(jwt), timeout=30
    )
    assert answer.status_code == 413, answer.text
