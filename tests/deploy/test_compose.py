"""compose/: the one-host deployment, checked without Docker.

The file is validated against the Compose specification (check-jsonschema's vendored schema);
every telemeter command line in it is parsed by the real argument parsers (and the server's and
client's settings are built from them, with the files they name read from compose/), so a
renamed flag breaks this test rather than someone's deployment. The Prometheus it runs is the
documented scrape configuration, checked by promtool, and the servers forward by remote write to
the receiver Prometheus it runs; the Redis nodes' command lines and the
cluster-forming script are run for real against local redis-server processes. The overlay
compose.redis-tls.yaml (Redis over TLS, the servers as the least-privilege ACL user) is checked
the same way, and run for real with a server on top.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_origin
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from app.main import SHUTDOWN_GRACE_S
from app.settings import ServerSettings
from app.settings import build_parser as server_parser
from client.benchmark import build_parser as benchmark_parser
from client.benchmark import config_from_args
from client.settings import build_parser as client_parser
from client.settings import load_runtime, settings_from_args
from dev.authorization_server import load_tokens
from dev.launch import start_server, write_signing_key
from dev.ports import free_ports
from dev.processes import ManagedProcess
from dev.prometheus import FEDERATE_JOB, SERVER_JOB, federate_scrape_config
from dev.redis_security import SERVER_ACL
from telemeter.addresses import parse_listen_address, parse_redis_url
from telemeter.durations import parse_duration
from telemeter.textparse import parse_text
from tests.support import authorize as authorize_at_server
from tests.support import console_scripts, encode_upload, upload, valid_families

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
TLS_OVERLAY = COMPOSE_DIR / "compose.redis-tls.yaml"
DOCS_SCRAPE_CONFIG = ROOT / "docs" / "prometheus-scrape.yaml"
# What `docker compose` would take from the environment or .env.
TEST_ENV = {
    "REDIS_PASSWORD": "compose-test-password",
    "REDIS_TELEMETER_PASSWORD": "compose-test-telemeter-password",
}
REDIS_NODES = 6
_VARIABLE = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: install {package} (scripts/bootstrap.sh does)")
    return path


def _substitute(match: re.Match[str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}."""
    if match.group(0) == "$$":
        return "$"
    expression = match.group(1) if match.group(1) is not None else match.group(2)
    name, op, rest = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?])?(.*)", expression).groups()  # type: ignore[union-attr]
    value = TEST_ENV.get(name)
    if op in (":-", "-"):
        return value if value or (op == "-" and value is not None) else rest
    if op in (":?", "?") and not value:
        raise AssertionError(f"compose needs {name}: {rest}")
    return value or ""


def _interpolate(value: Any) -> Any:
    if isinstance(value, str):
        return _VARIABLE.sub(_substitute, value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as `docker compose config` sees it (anchors merged, variables set)."""
    loaded: dict[str, Any] = _interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))
    return loaded


def _scripts() -> set[str]:
    return set(console_scripts())


def _services(compose: dict[str, Any], script: str) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [None])[0] == script
    }


def _host_path(compose: dict[str, Any], service: dict[str, Any], container_path: str) -> Path:
    """The file of compose/ that a service sees at ``container_path`` (bind mount or secret)."""
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        target = rest.split(":")[0]
        if source.startswith(".") and target == container_path:
            return Path(COMPOSE_DIR / source).resolve()
        if source.startswith(".") and container_path.startswith(target + "/"):  # a directory
            return Path(COMPOSE_DIR / source, container_path.removeprefix(target + "/")).resolve()
    for secret in service.get("secrets", []):
        if container_path == f"/run/secrets/{secret}":
            return Path(COMPOSE_DIR, compose["secrets"][secret]["file"]).resolve()
    raise AssertionError(f"{container_path} is neither mounted nor a secret of the service")


def _port(address: str) -> int:
    return parse_listen_address(address)[1]


def _parse_server(compose: dict[str, Any], service: dict[str, Any]) -> ServerSettings:
    try:
        flags = vars(server_parser().parse_args(service["command"][1:]))
    except SystemExit:
        pytest.fail(f"telemeter-server refuses {service['command']} (see stderr)")
    env = {}
    for key, value in service.get("environment", {}).items():
        assert key.startswith("TELEMETER_"), key
        field = key.removeprefix("TELEMETER_").lower()
        assert field in ServerSettings.model_fields, f"{key} is not a server setting"
        # Lists come as JSON, as pydantic-settings reads them from the environment.
        is_list = get_origin(ServerSettings.model_fields[field].annotation) is list
        env[field] = json.loads(value) if is_list else value
    if "whitelist_file" in flags:
        flags["whitelist_file"] = _host_path(compose, service, str(flags["whitelist_file"]))
    return ServerSettings(**(env | flags))


@pytest.fixture(autouse=True)
def _no_telemeter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in os.environ:
        if key.startswith("TELEMETER_"):
            monkeypatch.delenv(key)


def test_compose_file_follows_the_compose_specification() -> None:
    check = _tool("check-jsonschema", "check-jsonschema")
    run = subprocess.run(
        [check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_telemeter_service_runs_a_console_script_of_the_image(
    compose: dict[str, Any],
) -> None:
    scripts = _scripts()
    image = compose["services"]["telemeter-server-0"]["image"]
    ours = {n: s for n, s in compose["services"].items() if s.get("image") == image}
    assert set(ours) == {
        "telemeter-server-0", "telemeter-server-1", "authorization-server", "client", "benchmark",
    }  # fmt: skip
    for name, service in ours.items():
        assert service["command"][0] in scripts, name
        assert service["build"]["context"] == ".." and (COMPOSE_DIR / "../Dockerfile").exists()
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name


def test_server_command_lines_parse_and_agree_with_the_rest_of_the_file(
    compose: dict[str, Any],
) -> None:
    servers = _services(compose, "telemeter-server")
    assert sorted(servers) == ["telemeter-server-0", "telemeter-server-1"]
    redis_nodes = {n: s for n, s in compose["services"].items() if n.startswith("redis-")}
    stand_in = compose["services"]["authorization-server"]
    for name, service in servers.items():
        s = _parse_server(compose, service)
        external, internal = _port(s.listen), _port(s.listen_internal)
        assert s.whitelist_rules(), "a server without a whitelist drops everything"
        assert s.shared_key is not None
        assert _host_path(compose, service, str(s.shared_key)).name == "signing-key.pem"
        assert s.verify_key == [], "no verify key unless TELEMETER_VERIFY_KEYS is set"
        assert s.redis_secret() == TEST_ENV["REDIS_PASSWORD"]
        nodes = parse_redis_url(s.redis_url).nodes
        for host, port in nodes:
            assert host in redis_nodes and f"{port}" in redis_nodes[host]["command"], host
        authorize = urlsplit(s.authorize or "")
        assert authorize.hostname == "authorization-server"
        assert authorize.port == _port(stand_in["command"][1])
        published = {int(p.split(":")[-1]): p for p in service["ports"]}
        assert set(published) == {external, internal}
        assert published[internal].startswith("127.0.0.1:"), "the internal port is not public"
        probe = service["healthcheck"]["test"][-1]
        assert f"http://127.0.0.1:{internal}/healthz/ready" in probe
        assert "telemeter-server" in service["networks"]["telemeter"]["aliases"]
        assert service["depends_on"]["redis-cluster-init"] == {
            "condition": "service_completed_successfully"
        }
        grace = parse_duration(service["stop_grace_period"])
        assert grace > s.ring_lease + SHUTDOWN_GRACE_S, f"{name}: SIGKILL before the ring release"


def test_verify_keys_are_files_of_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ["/etc/telemeter/keys/signing-key-old.pem", "/etc/telemeter/keys/older.pub.pem"]
    monkeypatch.setitem(TEST_ENV, "TELEMETER_VERIFY_KEYS", json.dumps(keys))
    rotating = _interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))
    for service in _services(rotating, "telemeter-server").values():
        s = _parse_server(rotating, service)
        assert [str(path) for path in s.verify_key] == keys
        assert [_host_path(rotating, service, str(path)) for path in s.verify_key] == [
            (COMPOSE_DIR / "secrets" / name).resolve()
            for name in ("signing-key-old.pem", "older.pub.pem")
        ]


def test_client_command_line_parses_and_reaches_the_servers(compose: dict[str, Any]) -> None:
    (service,) = _services(compose, "telemeter-client").values()
    try:
        settings = settings_from_args(client_parser().parse_args(service["command"][1:]))
    except SystemExit:
        pytest.fail(f"telemeter-client refuses {service['command']} (see stderr)")
    source = urlsplit(settings.from_url)
    assert source.hostname == "prometheus" and source.port == 9090
    assert "--web.listen-address" not in " ".join(compose["services"]["prometheus"]["command"])
    servers = _services(compose, "telemeter-server").values()
    upload = urlsplit(settings.upload_url)
    assert upload.hostname == "telemeter-server"
    assert {upload.port} == {_port(_parse_server(compose, s).listen) for s in servers}
    assert settings.listen is not None and settings.listen[1] == 9002
    on_host = dataclasses.replace(
        settings,
        to_token_file=_host_path(compose, service, str(settings.to_token_file)),
        anonymize_salt_file=_host_path(compose, service, str(settings.anonymize_salt_file)),
    )
    runtime = load_runtime(on_host)
    stand_in = compose["services"]["authorization-server"]
    tokens = load_tokens(_host_path(compose, stand_in, stand_in["command"][2]))
    assert runtime.to_token in tokens, "the client's token is unknown to the stand-in"


def test_authorization_stand_in_command_line(compose: dict[str, Any]) -> None:
    (service,) = _services(compose, "telemeter-authorization-server").values()
    argv = service["command"][1:]
    assert len(argv) == 2, "telemeter-authorization-server <listen-addr> <tokens.json>"
    assert parse_listen_address(argv[0])[0] == "0.0.0.0"
    assert load_tokens(_host_path(compose, service, argv[1]))


def test_benchmark_command_line_parses_and_targets_the_servers(compose: dict[str, Any]) -> None:
    (service,) = _services(compose, "telemeter-benchmark").values()
    assert service["profiles"] == ["benchmark"], "a load test must not start with `up`"
    try:
        args = benchmark_parser().parse_args(service["command"][1:])
    except SystemExit:
        pytest.fail(f"telemeter-benchmark refuses {service['command']} (see stderr)")
    args.metrics_file = _host_path(compose, service, str(args.metrics_file))
    args.to_token_file = _host_path(compose, service, str(args.to_token_file))
    config = config_from_args(args)
    upload = urlsplit(config.to_upload)
    servers = _services(compose, "telemeter-server").values()
    assert upload.hostname == "telemeter-server"
    assert {upload.port} == {_port(_parse_server(compose, s).listen) for s in servers}
    stand_in = compose["services"]["authorization-server"]
    assert config.token in load_tokens(_host_path(compose, stand_in, stand_in["command"][2]))
    assert parse_text(config.metrics_text)


def test_redis_cluster_of_six_nodes_with_aof_on_named_volumes(compose: dict[str, Any]) -> None:
    nodes = {n: s for n, s in compose["services"].items() if re.fullmatch(r"redis-\d", n)}
    assert len(nodes) == REDIS_NODES
    addresses = []
    for name, node in nodes.items():
        args = node["command"]
        flags = dict(zip(args[1::2], args[2::2], strict=False))
        assert flags["--cluster-enabled"] == "yes" and flags["--appendonly"] == "yes", name
        assert flags["--requirepass"] == flags["--masterauth"] == TEST_ENV["REDIS_PASSWORD"]
        (volume,) = node["volumes"]
        named, _, target = volume.partition(":")
        assert named in compose["volumes"] and target == "/data", name
        assert flags["--cluster-config-file"].startswith("/data/")
        addresses.append(f"{node['networks']['telemeter']['ipv4_address']}:{flags['--port']}")
    init = compose["services"]["redis-cluster-init"]
    assert init["command"][2:] == addresses
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in nodes}
    assert init["restart"] == "no"


def test_prometheus_runs_the_documented_scrape_configuration(compose: dict[str, Any]) -> None:
    config_file = _host_path(
        compose, compose["services"]["prometheus"], "/etc/prometheus/prometheus.yml"
    )
    config = yaml.safe_load(config_file.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    servers = _services(compose, "telemeter-server")
    internal = {n: _port(_parse_server(compose, s).listen_internal) for n, s in servers.items()}
    targets = [f"{name}:{port}" for name, port in internal.items()]
    federate = dict(jobs[FEDERATE_JOB])
    federate.pop("scrape_interval", None)
    assert federate == federate_scrape_config(targets)
    documented = yaml.safe_load(DOCS_SCRAPE_CONFIG.read_text())["scrape_configs"]
    assert jobs[FEDERATE_JOB] == next(j for j in documented if j["job_name"] == FEDERATE_JOB)
    scraped = {t for c in jobs[SERVER_JOB]["static_configs"] for t in c["targets"]}
    assert scraped == set(targets)
    promtool = _tool("promtool", "the Debian package prometheus")
    run = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_servers_forward_to_the_remote_write_receiver(compose: dict[str, Any]) -> None:
    receiver = compose["services"]["receiver"]
    args = receiver["command"]
    assert "--web.enable-remote-write-receiver" in args, "Prometheus answers /api/v1/write 404"
    assert "--web.listen-address" not in " ".join(args)  # so it listens on Prometheus's 9090
    assert receiver["image"] == compose["services"]["prometheus"]["image"]
    assert receiver["networks"] == ["telemeter"]
    servers = _services(compose, "telemeter-server")
    for name, service in servers.items():
        s = _parse_server(compose, service)
        assert s.forward_url is not None, f"{name} does not forward"
        target = urlsplit(s.forward_url)
        assert (target.scheme, target.hostname, target.port) == ("http", "receiver", 9090), name
        assert target.path == "/api/v1/write", "Prometheus's remote-write receiver path"
        assert service["depends_on"]["receiver"] == {"condition": "service_started"}
    (config,) = [a.split("=", 1)[1] for a in args if a.startswith("--config.file=")]
    config_file = _host_path(compose, receiver, config)
    assert yaml.safe_load(config_file.read_text())["scrape_configs"] == []
    promtool = _tool("promtool", "the Debian package prometheus")
    run = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


# ----- the Redis part, for real ------------------------------------------------------------------


@pytest.fixture
def redis_nodes(compose: dict[str, Any], tmp_path: Path) -> Iterator[list[str]]:
    """The six nodes of compose.yaml as local redis-server processes (their own flags)."""
    server = _tool("redis-server", "the Debian package redis-server")
    ports = free_ports(2 * REDIS_NODES)
    processes: list[ManagedProcess] = []
    addresses = []
    try:
        for i in range(REDIS_NODES):
            args = list(compose["services"][f"redis-{i}"]["command"])
            port, bus = ports[2 * i], ports[2 * i + 1]
            data = tmp_path / f"redis-{i}"
            data.mkdir()
            args[args.index("--port") + 1] = str(port)
            args = [a.replace("/data/", f"{data}/") for a in args]
            argv = [server, *args[1:], "--dir", str(data), "--bind", "127.0.0.1"]
            argv += ["--cluster-port", str(bus), "--save", ""]
            process = ManagedProcess(f"redis-{i}", argv, log_path=tmp_path / f"redis-{i}.log")
            processes.append(process.start())
            addresses.append(f"127.0.0.1:{port}")
        for process, address in zip(processes, addresses, strict=True):
            _wait_ping(process, address)
        yield addresses
    finally:
        for process in processes:
            process.stop()


def _client(address: str, *, tls: Path | None = None) -> redis.Redis:
    """The administrator's client of one node (over TLS with the certificates in ``tls``)."""
    host, _, port = address.rpartition(":")
    options: dict[str, Any] = {}
    if tls is not None:
        options = {
            "ssl": True,
            "ssl_ca_certs": str(tls / "ca.crt"),
            "ssl_certfile": str(tls / "client.crt"),
            "ssl_keyfile": str(tls / "client.key"),
        }
    return redis.Redis(host=host, port=int(port), password=TEST_ENV["REDIS_PASSWORD"], **options)


def _wait_ping(process: ManagedProcess, address: str, *, tls: Path | None = None) -> None:
    deadline = time.monotonic() + 10
    while True:
        assert process.alive, f"{process.name} refused its command line:\n{process.log_tail()}"
        try:
            if _client(address, tls=tls).ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def test_the_init_job_forms_the_cluster_once(redis_nodes: list[str], tmp_path: Path) -> None:
    script = COMPOSE_DIR / "redis-cluster-init.sh"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "REDISCLI_AUTH": TEST_ENV["REDIS_PASSWORD"]}
    first = subprocess.run(
        ["sh", str(script), *redis_nodes], env=env, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    info = _client(redis_nodes[0]).execute_command("CLUSTER", "INFO").decode()  # type: ignore[no-untyped-call]
    assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info
    roles = [_client(a).execute_command("ROLE")[0] for a in redis_nodes]  # type: ignore[no-untyped-call]
    assert sorted(roles) == [b"master"] * 3 + [b"slave"] * 3
    again = subprocess.run(
        ["sh", str(script), *redis_nodes], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "already formed" in again.stdout, again.stderr


# ----- compose.redis-tls.yaml: Redis over TLS, the servers as the ACL user --------------------


def _overlaid(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``docker compose -f base -f overlay``: mappings merged, a command replaced, volumes added
    (one mount per target)."""
    merged = copy.deepcopy(base)
    for name, service in overlay["services"].items():
        target = merged["services"][name]
        for key, value in service.items():
            if key in ("environment", "healthcheck"):
                target[key] = {**target.get(key, {}), **value}
            elif key == "volumes":
                targets = {v.split(":")[1] for v in value}
                kept = [v for v in target.get(key, []) if v.split(":")[1] not in targets]
                target[key] = [*kept, *value]
            else:
                target[key] = value
    return merged


@pytest.fixture(scope="module")
def compose_tls(compose: dict[str, Any]) -> dict[str, Any]:
    return _overlaid(compose, _interpolate(yaml.safe_load(TLS_OVERLAY.read_text())))


def _user_rule(command: list[str]) -> str:
    return " ".join(["user", *command[command.index("--user") + 1 :]])


def test_redis_tls_overlay_follows_the_compose_specification() -> None:
    check = _tool("check-jsonschema", "check-jsonschema")
    run = subprocess.run(
        [check, "--builtin-schema", "vendor.compose-spec", str(TLS_OVERLAY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_redis_tls_overlay_runs_the_servers_as_the_tested_acl_user(
    compose_tls: dict[str, Any],
) -> None:
    certs = (COMPOSE_DIR / "secrets" / "redis-tls").resolve()
    for name, service in _services(compose_tls, "telemeter-server").items():
        s = _parse_server(compose_tls, service)
        url = parse_redis_url(s.redis_url)
        assert url.tls and [h for h, _ in url.nodes] == ["redis-0", "redis-1", "redis-2"], name
        assert s.redis_username == "telemeter"
        assert s.redis_secret() == TEST_ENV["REDIS_TELEMETER_PASSWORD"]
        for path, file in (
            (s.redis_ca_file, "ca.crt"),
            (s.redis_client_crt, "client.crt"),
            (s.redis_client_key, "client.key"),
        ):
            assert path is not None and _host_path(compose_tls, service, str(path)) == certs / file
    password = TEST_ENV["REDIS_TELEMETER_PASSWORD"]
    for i in range(REDIS_NODES):
        node = compose_tls["services"][f"redis-{i}"]
        command = node["command"]
        assert _user_rule(command) == SERVER_ACL.replace("<password>", f">{password}")
        flags = dict(zip(command[1::2], command[2::2], strict=False))
        assert (flags["--port"], flags["--tls-port"]) == ("0", "6379")
        assert flags["--tls-cluster"] == flags["--tls-replication"] == "yes"
        assert flags["--appendonly"] == "yes" and flags["--cluster-enabled"] == "yes"
        for option, file in (("--tls-cert-file", "redis.crt"), ("--tls-ca-cert-file", "ca.crt")):
            assert _host_path(compose_tls, node, flags[option]) == certs / file
        assert "--tls" in node["healthcheck"]["test"]
        assert any(v.endswith(":/data") for v in node["volumes"]), "the data volume stays"
    init = compose_tls["services"]["redis-cluster-init"]
    assert "--tls" in init["environment"]["REDIS_CLI_TLS"]
    assert _host_path(compose_tls, init, "/tls/ca.crt") == certs / "ca.crt"


def test_redis_tls_overlay_for_real(
    compose_tls: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate script, the six nodes' command lines, the init job over TLS, then a
    server as the ACL user: an upload answered 200."""
    server_bin = _tool("redis-server", "the Debian package redis-server")
    tls = tmp_path / "redis-tls"
    made = subprocess.run(
        ["sh", str(COMPOSE_DIR / "redis-tls-certs.sh"), str(tls)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    ports = free_ports(2 * REDIS_NODES)
    processes: list[ManagedProcess] = []
    addresses = []
    try:
        for i in range(REDIS_NODES):
            args = list(compose_tls["services"][f"redis-{i}"]["command"])
            port, bus = ports[2 * i], ports[2 * i + 1]
            data = tmp_path / f"redis-{i}"
            data.mkdir()
            args[args.index("--tls-port") + 1] = str(port)
            args = [a.replace("/data/", f"{data}/").replace("/tls/", f"{tls}/") for a in args]
            argv = [server_bin, *args[1:], "--dir", str(data), "--bind", "127.0.0.1"]
            argv += ["--cluster-port", str(bus), "--save", ""]
            process = ManagedProcess(f"redis-{i}", argv, log_path=tmp_path / f"redis-{i}.log")
            processes.append(process.start())
            addresses.append(f"127.0.0.1:{port}")
        for process, address in zip(processes, addresses, strict=True):
            _wait_ping(process, address, tls=tls)
        init = compose_tls["services"]["redis-cluster-init"]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "REDISCLI_AUTH": TEST_ENV["REDIS_PASSWORD"],
            "REDIS_CLI_TLS": init["environment"]["REDIS_CLI_TLS"].replace("/tls/", f"{tls}/"),
        }
        formed = subprocess.run(
            ["sh", str(COMPOSE_DIR / "redis-cluster-init.sh"), *addresses],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert formed.returncode == 0, formed.stdout[-3000:] + formed.stderr[-3000:]

        service = compose_tls["services"]["telemeter-server-0"]
        s = _parse_server(compose_tls, service)
        files = {
            flag: tls / Path(str(path)).name
            for flag, path in (
                ("--redis-ca-file", s.redis_ca_file),
                ("--redis-client-crt", s.redis_client_crt),
                ("--redis-client-key", s.redis_client_key),
            )
        }
        monkeypatch.setenv("TELEMETER_REDIS_PASSWORD", s.redis_secret() or "")
        flags = ["--redis-username", str(s.redis_username)]
        flags += [str(part) for pair in files.items() for part in pair]
        server = start_server(
            redis_url=",".join(f"rediss://{a}" for a in addresses[:3]),
            workdir=tmp_path,
            name="compose-tls",
            shared_key=write_signing_key(tmp_path / "signing.pem"),
            extra_args=flags,
            wait=False,
        )
        try:
            server.process.wait_http(server.internal + "/healthz/ready", timeout=30)
            jwt = authorize_at_server(server, "compose-tls")
            answer = upload(server, jwt, encode_upload(valid_families("compose-tls")))
            assert answer.status_code == 200, answer.text
        finally:
            server.process.stop()
    finally:
        for process in processes:
            process.stop()
