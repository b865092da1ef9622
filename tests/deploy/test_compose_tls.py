"""compose/tls.yaml, the TLS override of compose.yaml (docs/deploy.md "TLS"), checked without
Docker: merged with compose.yaml as `docker compose -f compose.yaml -f tls.yaml` merges them,
every command line and TELEMETER_* variable is parsed by the real settings, every file they name
is one of compose/secrets/tls/ that compose/tls-certs.sh makes, and the Prometheus configuration
is the documented one over https. The certificates the script makes are then used for real: a
server started with them does TLS handshakes for the compose host names, and its internal
listener takes the Prometheus's client certificate and refuses a client without one.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from client.settings import build_parser as client_parser
from client.settings import settings_from_args
from dev.launch import start_server
from dev.prometheus import FEDERATE_JOB, SERVER_JOB
from telemeter.addresses import parse_listen_address
from tests.conftest import RedisClusterHandle
from tests.deploy.test_compose import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    DOCS_SCRAPE_CONFIG,
    _host_path,
    _interpolate,
    _parse_server,
    _services,
    _tool,
)
from tests.support import wait_for

TLS_FILE = COMPOSE_DIR / "tls.yaml"
CERTS_SCRIPT = COMPOSE_DIR / "tls-certs.sh"
SECRETS = (COMPOSE_DIR / "secrets" / "tls").resolve()
COMPOSE_NAMES = ("telemeter-server", "telemeter-server-0", "telemeter-server-1", "localhost")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of a service: environment by name, volumes by container path, the rest
    (command, healthcheck) replaced."""
    merged = dict(base)
    for key, value in override.items():
        if key == "environment":
            merged[key] = {**base.get(key, {}), **value}
        elif key == "volumes":
            by_target = {v.split(":")[1]: v for v in [*base.get(key, []), *value]}
            merged[key] = list(by_target.values())
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def plain() -> dict[str, Any]:
    loaded: dict[str, Any] = _interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))
    return loaded


@pytest.fixture(scope="module")
def merged(plain: dict[str, Any]) -> dict[str, Any]:
    override = _interpolate(yaml.safe_load(TLS_FILE.read_text()))
    assert set(override["services"]) <= set(plain["services"]), "tls.yaml only overrides"
    services = {
        name: _merge(service, override["services"].get(name, {}))
        for name, service in plain["services"].items()
    }
    return {**plain, "services": services}


def test_the_override_follows_the_compose_specification() -> None:
    check = _tool("check-jsonschema", "check-jsonschema")
    run = subprocess.run(
        [check, "--builtin-schema", "vendor.compose-spec", str(TLS_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_servers_serve_both_listeners_over_tls(merged: dict[str, Any]) -> None:
    servers = _services(merged, "telemeter-server")
    assert sorted(servers) == ["telemeter-server-0", "telemeter-server-1"]
    for name, service in servers.items():
        s = _parse_server(merged, service)
        files = {
            "tls_crt": "server.crt", "tls_key": "server.key", "internal_tls_crt": "server.crt",
            "internal_tls_key": "server.key", "internal_tls_client_ca": "ca.crt",
        }  # fmt: skip
        for field, file in files.items():
            path = getattr(s, field)
            assert path is not None, f"{name}: no {field}"
            assert _host_path(merged, service, str(path)) == SECRETS / file, field
        probe = service["healthcheck"]["test"][-1]
        assert f"https://127.0.0.1:{parse_listen_address(s.listen)[1]}/healthz/ready" in probe
        assert f"cafile='{s.internal_tls_client_ca}'" in probe


def test_client_and_load_test_push_over_https_trusting_the_ca(
    plain: dict[str, Any], merged: dict[str, Any]
) -> None:
    client = merged["services"]["client"]
    settings = settings_from_args(client_parser().parse_args(client["command"][1:]))
    assert urlsplit(settings.upload_url).scheme == "https"
    ca = client["environment"]["SSL_CERT_FILE"]
    assert _host_path(merged, client, ca) == SECRETS / "ca.crt"
    # The same command lines as compose.yaml's but for the scheme (and the load test's CA).
    same = [a.replace("https://", "http://") for a in client["command"]]
    assert same == plain["services"]["client"]["command"]
    benchmark = list(merged["services"]["benchmark"]["command"])
    at = benchmark.index("--to-ca-file")
    assert _host_path(merged, merged["services"]["benchmark"], benchmark[at + 1]) == (
        SECRETS / "ca.crt"
    )
    del benchmark[at : at + 2]
    same = [a.replace("https://", "http://") for a in benchmark]
    assert same == plain["services"]["benchmark"]["command"]


def test_prometheus_scrapes_the_documented_jobs_over_https(
    plain: dict[str, Any], merged: dict[str, Any]
) -> None:
    service = merged["services"]["prometheus"]
    config_file = _host_path(merged, service, "/etc/prometheus/prometheus.yml")
    assert config_file.name == "prometheus-tls.yml"
    jobs = {j["job_name"]: j for j in yaml.safe_load(config_file.read_text())["scrape_configs"]}
    plain_file = _host_path(
        plain, plain["services"]["prometheus"], "/etc/prometheus/prometheus.yml"
    )
    plain_jobs = {
        j["job_name"]: j for j in yaml.safe_load(plain_file.read_text())["scrape_configs"]
    }
    documented = yaml.safe_load(DOCS_SCRAPE_CONFIG.read_text())["scrape_configs"]
    assert set(jobs) == set(plain_jobs)
    for name in (FEDERATE_JOB, SERVER_JOB):
        job = dict(jobs[name])
        assert job.pop("scheme") == "https"
        tls = job.pop("tls_config")
        assert job == plain_jobs[name], name
        for key, file in (("ca_file", "ca.crt"), ("cert_file", "prometheus.crt"),
                          ("key_file", "prometheus.key")):  # fmt: skip
            assert _host_path(merged, service, tls[key]) == SECRETS / file, key
    assert plain_jobs[FEDERATE_JOB] == next(j for j in documented if j["job_name"] == FEDERATE_JOB)
    run = subprocess.run(
        [_tool("promtool", "the Debian package prometheus"), "check", "config", "--syntax-only",
         str(config_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


# ----- the certificates of tls-certs.sh, for real ------------------------------------------------


def _handshake(address: str, context: ssl.SSLContext, name: str) -> str:
    """Connect, shake hands as a client of ``name`` and send one request; the status line."""
    host, port = parse_listen_address(address.split("://", 1)[1])
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        return tls.recv(4096).decode().split("\r\n", 1)[0]


@pytest.mark.integration
def test_the_certificates_of_the_script_serve_the_compose_names(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path: Path
) -> None:
    certs = tmp_path / "tls"
    done = subprocess.run([str(CERTS_SCRIPT), str(certs)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in certs.iterdir()) == [
        "ca.crt",
        "prometheus.crt",
        "prometheus.key",
        "server.crt",
        "server.key",
    ]  # fmt: skip (no CA key is left behind)
    tls = [
        "--tls-crt", str(certs / "server.crt"), "--tls-key", str(certs / "server.key"),
        "--internal-tls-crt", str(certs / "server.crt"),
        "--internal-tls-key", str(certs / "server.key"),
        "--internal-tls-client-ca", str(certs / "ca.crt"),
    ]  # fmt: skip
    server = start_server(
        redis_url=redis_cluster.url, workdir=tmp_path, name="compose-tls",
        shared_key=signing_key, extra_args=tls, wait=False,
    )  # fmt: skip
    trusting = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    scraper = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    scraper.load_cert_chain(str(certs / "prometheus.crt"), str(certs / "prometheus.key"))
    try:

        def up() -> str | None:
            assert server.process.alive, server.process.log_tail()
            try:
                _handshake(server.external, trusting, "localhost")
            except OSError as exc:
                return repr(exc)
            return None

        wait_for(up, timeout=20, what="the external TLS listener")
        for name in COMPOSE_NAMES:
            assert _handshake(server.external, trusting, name) == "HTTP/1.1 200 OK", name
            assert _handshake(server.internal, scraper, name) == "HTTP/1.1 200 OK", name
        try:  # no client certificate: the handshake fails, or the server hangs up unanswered
            status = _handshake(server.internal, trusting, "localhost")
        except (ssl.SSLError, ConnectionError):
            status = ""
        assert status == "", f"answered {status!r} without a client certificate"
    finally:
        server.process.stop()
