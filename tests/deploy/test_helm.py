"""helm/telemeter: linted and rendered by the real Helm library (helm-python-sdk, Helm v4).

Rendered with the default values, with non-default ones (three replicas and an HPA,
ServiceMonitors, existing Secrets, the optional client) and with remote write forwarding on
(every option, and the URL alone), every core manifest is validated
against the Kubernetes schemas (kubernetes-validate) of the oldest supported and the newest
Kubernetes. The Deployments are checked against the real programs: their command lines are
parsed by the server's and client's argument parsers, their env vars must be server settings,
their ports must be the listeners those flags open, and the probe and scrape paths must be
routes of the app behind that port.
"""

from __future__ import annotations

import base64
import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

import telemeter
from app.app import create_external_app, create_internal_app
from app.main import SHUTDOWN_GRACE_S
from app.runtime import Runtime
from app.settings import ServerSettings
from app.settings import build_parser as server_parser
from app.tokens import load_signing_key
from client.settings import build_parser as client_parser
from client.settings import settings_from_args
from dev.prometheus import federate_scrape_config
from telemeter.addresses import parse_listen_address

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "telemeter"
RELEASE, NAMESPACE = "tm", "telemetry"
FULLNAME = f"{RELEASE}-telemeter"
OLDEST_KUBERNETES = "1.27.0"  # Chart.yaml kubeVersion
OPERATOR_API = "monitoring.coreos.com/v1"
# Target labels the Prometheus Operator attaches: none may reach a federated series.
OPERATOR_TARGET_LABELS = ("pod", "namespace", "service", "container", "endpoint")

NON_DEFAULT: dict[str, Any] = {
    "replicaCount": 3,
    "autoscaling": {"enabled": True, "maxReplicas": 12, "targetCPUUtilizationPercentage": 60},
    "image": {"repository": "registry.example.com/telemeter", "tag": "0.1.0-1"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Telemeter"}},
    "networkPolicy": {
        "monitoringNamespace": "openshift-monitoring",
        "monitoringPodLabels": {"app.kubernetes.io/name": "prometheus"},
        "externalFrom": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
    },
    "redis": {
        "url": "redis://rc-redis-cluster-0.rc-redis-cluster-headless:6379,"
        "redis://rc-redis-cluster-1.rc-redis-cluster-headless:6379",
        "existingSecret": "rc-redis-cluster",
    },
    "signingKey": {"existingSecret": "telemeter-signing", "existingSecretKey": "key.pem"},
    "server": {
        "authorizeURL": "https://api.example.com/api/accounts_mgmt/v1/cluster_registrations",
        "whitelist": ['{__name__="up"}', '{__name__=~"cluster_version|alerts"}'],
        "labels": {"region": "eu-1"},
        "requiredLabels": {"env": "prod"},
        "verbose": True,
        "extraArgs": ["--limit-series=20000"],
        "ring": {"heartbeatSeconds": 1, "leaseSeconds": 6},
        "preStopSleepSeconds": 3,
        "terminationGracePeriodSeconds": 20,
        "externalPort": 8443,
        "internalPort": 8444,
    },
    "service": {"type": "LoadBalancer", "port": 443},
    "client": {
        "enabled": True,
        "id": "cluster-a",
        "from": "https://prometheus-k8s.openshift-monitoring.svc:9091",
        "fromServiceAccountToken": True,
        "token": "long-lived-token",
        "matches": ['{__name__="up"}', '{__name__="ALERTS",alertstate="firing"}'],
        "anonymizeLabels": ["instance", "pod"],
        "anonymizeSalt": "salt",
    },
}
# Remote write with every option: Mimir behind TLS with a client certificate and OAuth2.
FORWARDING: dict[str, Any] = {
    "forward": {
        "url": "https://mimir.example.com/api/v1/push",
        "tenantId": "telemeter",
        "tenantHeader": "X-Scope-OrgID",
        "queueLimit": 2000,
        "maxAge": "30m",
        "caSecret": "receiver-ca",
        "caSecretKey": "bundle.pem",
        "clientCertSecret": "telemeter-forward-tls",
        "oidc": {
            "issuer": "https://sso.example.com/auth/realms/telemeter",
            "audience": "observatorium",
            "clientId": "telemeter-server",
            "clientSecret": {"existingSecret": "telemeter-oidc", "existingSecretKey": "secret"},
        },
    },
}
# Redis over TLS as an ACL user (docs/operations.md "Redis over TLS and with an ACL user").
REDIS_TLS: dict[str, Any] = {
    "redis": {
        "url": "rediss://rc-redis-cluster-0.rc-redis-cluster-headless:6379,"
        "rediss://rc-redis-cluster-1.rc-redis-cluster-headless:6379",
        "username": "telemeter",
        "existingSecret": "telemeter-redis-user",
        "existingSecretPasswordKey": "password",
        "caSecret": "redis-ca",
        "caSecretKey": "ca.pem",
        "clientCertSecret": "telemeter-redis-tls",
    },
}
# Mid-rotation (docs/operations.md "Rotating the signing key"): the new key signs, two older
# ones are still accepted.
ROTATION: dict[str, Any] = {
    "signingKey": {
        "existingSecret": "telemeter-signing-2026",
        "verifyKeys": [
            {"secret": "telemeter-signing-2025", "key": "public.pem"},
            {"secret": "telemeter-signing-2024"},
        ],
    },
}
# TLS on both listeners, client certificates on the internal one, and the Prometheus Operator
# scraping with its own (docs/operations.md "TLS").
SCRAPER_TLS = {
    "ca": {"secret": {"name": "telemeter-ca", "key": "ca.crt"}},
    "cert": {"secret": {"name": "prometheus-telemeter-client", "key": "tls.crt"}},
    "keySecret": {"name": "prometheus-telemeter-client", "key": "tls.key"},
    "serverName": f"{FULLNAME}-internal",
}
TLS: dict[str, Any] = {
    "tls": {
        "secret": "telemeter-external-tls",
        "internal": {
            "secret": "telemeter-internal-tls",
            "clientCASecret": "telemeter-scrapers-ca",
            "clientCASecretKey": "bundle.pem",
        },
    },
    "serviceMonitor": {"enabled": True, "tlsConfig": SCRAPER_TLS},
    "client": {
        "enabled": True,
        "id": "cluster-a",
        "from": "http://prometheus:9090",
        "token": "t",
        "toCASecret": "telemeter-external-ca",
    },
}
VALUES = {
    "default": None,
    "tls": TLS,
    "rotation": ROTATION,
    "non-default": NON_DEFAULT,
    "forwarding": FORWARDING,
    "redis-tls": REDIS_TLS,
    "forward-url-only": {"forward": {"url": "http://thanos-receive:19291/api/v1/receive"}},
}
# The server flags of remote write: none of them is rendered while forward.url is empty.
FORWARD_FLAGS = ("--forward-", "--tenant-", "--oidc-", "--client-")


@cache
def _render(which: str) -> tuple[dict[str, Any], ...]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(VALUES[which], name=RELEASE, namespace=NAMESPACE)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return tuple(docs)


def _kind(which: str, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _render(which) if doc["kind"] == kind]


def _one(which: str, kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _kind(which, kind) if d["metadata"]["name"] == name]
    return doc


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def _server_settings(container: dict[str, Any]) -> ServerSettings:
    assert container["command"] == ["telemeter-server"]
    try:
        flags = vars(server_parser().parse_args(container["args"]))
    except SystemExit:
        pytest.fail(f"telemeter-server refuses {container['args']} (see stderr)")
    env = {}
    for var in container.get("env", []):
        field = var["name"].removeprefix("TELEMETER_").lower()
        assert var["name"].startswith("TELEMETER_") and field in ServerSettings.model_fields, var
        if "value" in var:
            env[field] = var["value"]
    return ServerSettings(**(env | flags))


@cache
def _routes(listener: str) -> frozenset[str]:
    """The paths the server's external or internal app routes (a Runtime does no I/O to build)."""
    rt = Runtime(ServerSettings(name="routes"))
    app = create_external_app(rt) if listener == "external" else create_internal_app(rt)
    return frozenset(str(getattr(route, "path", "")) for route in app.routes)


def _dockerfile_user() -> int:
    (user,) = re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    return int(user)


def _camel(config: dict[str, Any]) -> dict[str, Any]:
    """A Prometheus relabel config with the Prometheus Operator's field names."""
    return {re.sub(r"_(\w)", lambda m: m.group(1).upper(), k): v for k, v in config.items()}


@pytest.fixture(autouse=True)
def _no_telemeter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in os.environ:
        if key.startswith("TELEMETER_"):
            monkeypatch.delenv(key)


# ----- lint and Kubernetes schemas --------------------------------------------------------------


@pytest.mark.parametrize("which", list(VALUES))
def test_lint_is_clean(which: str) -> None:
    report = helm.lint(CHART, VALUES[which], strict=True, namespace=NAMESPACE)
    assert report["messages"] == [] and report["errors"] == [], report


@pytest.mark.parametrize("which", list(VALUES))
def test_every_core_manifest_is_valid_kubernetes(which: str) -> None:
    kinds = set()
    for doc in _render(which):
        kinds.add(doc["kind"])
        if doc["apiVersion"] == OPERATOR_API:
            continue  # a CRD, not in the Kubernetes schemas: checked field by field below
        for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
            kubernetes_validate.validate(doc, version, strict=True)
    expected = {"Deployment", "Service", "ServiceAccount", "NetworkPolicy", "PodDisruptionBudget"}
    if which != "rotation":  # there every Secret exists already
        expected |= {"Secret"}
    if which == "non-default":
        expected |= {"HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ConfigMap"}
    assert expected <= kinds


def test_chart_kube_version_is_the_oldest_validated() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_KUBERNETES}-0"
    assert chart["appVersion"] == telemeter.__version__  # pyproject.toml reads it from there


# ----- the server Deployment against the real server --------------------------------------------


@pytest.mark.parametrize("which", list(VALUES))
def test_server_deployment_matches_the_real_flags_ports_and_routes(which: str) -> None:
    deployment = _one(which, "Deployment", FULLNAME)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    s = _server_settings(container)
    assert _port(container, "http") == parse_listen_address(s.listen)[1]
    assert _port(container, "internal") == parse_listen_address(s.listen_internal)[1]
    assert parse_listen_address(s.listen)[0] == parse_listen_address(s.listen_internal)[0]
    assert s.whitelist_rules(), "without a whitelist the server keeps nothing"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        listener = {"http": "external", "internal": "internal"}[get["port"]]
        assert get["path"] in _routes(listener), f"{probe}: {get['path']} is not served"
        tls = s.tls_crt if listener == "external" else s.internal_tls_crt
        assert get["scheme"] == ("HTTPS" if tls else "HTTP"), probe
        if listener == "internal":
            assert s.internal_tls_client_ca is None, f"{probe}: kubelet has no client certificate"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The pod is killed only after it released its ring leases and drained its listeners.
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > sleep + s.ring_lease + SHUTDOWN_GRACE_S
    # The signing key is the Secret's file.
    assert s.shared_key is not None
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (key_volume,) = [v for v in pod["volumes"] if v["name"] == "signing-key"]
    (item,) = key_volume["secret"]["items"]
    assert str(s.shared_key) == f"{mounts['signing-key']}/{item['path']}"
    # Every verify key is a file of its own Secret's volume.
    verify_volumes = [v for v in pod["volumes"] if v["name"].startswith("verify-key-")]
    assert [str(path) for path in s.verify_key] == [
        f"{mounts[v['name']]}/{v['secret']['items'][0]['path']}" for v in verify_volumes
    ]
    # A restricted pod, as the image's own user, on a read-only root filesystem.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_user()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "/tmp" in mounts.values()
    assert container["resources"]["requests"]["cpu"]  # the HPA scales on CPU requests


def test_non_default_values_reach_the_server() -> None:
    s = _server_settings(_container(_one("non-default", "Deployment", FULLNAME)))
    server = NON_DEFAULT["server"]
    assert s.authorize == server["authorizeURL"] and s.whitelist == server["whitelist"]
    assert s.label == ["region=eu-1"] and s.required_label == ["env=prod"]
    assert (s.ring_heartbeat, s.ring_lease) == (1.0, 6.0) and s.verbose == 1
    assert s.limit_series == 20000
    assert s.redis_url == NON_DEFAULT["redis"]["url"]
    env = {v["name"]: v for v in _container(_one("non-default", "Deployment", FULLNAME))["env"]}
    assert env["TELEMETER_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "rc-redis-cluster",
        "key": "redis-password",
    }
    assert not [d for d in _kind("non-default", "Secret") if "signing" in d["metadata"]["name"]]


def test_redis_tls_and_acl_values_reach_the_server() -> None:
    deployment = _one("redis-tls", "Deployment", FULLNAME)
    container = _container(deployment)
    s = _server_settings(container)
    redis = REDIS_TLS["redis"]
    assert s.redis_url == redis["url"] and s.redis_username == "telemeter"
    assert _secret_file(deployment, s.redis_ca_file) == ("redis-ca", "ca.pem")
    assert _secret_file(deployment, s.redis_client_crt) == ("telemeter-redis-tls", "tls.crt")
    assert _secret_file(deployment, s.redis_client_key) == ("telemeter-redis-tls", "tls.key")
    env = {v["name"]: v for v in container["env"]}
    assert env["TELEMETER_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "telemeter-redis-user",
        "key": "password",
    }
    # Changing the Redis values rolls the pods (the files are read once, at start-up).
    annotation = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    default = _one("default", "Deployment", FULLNAME)["spec"]["template"]["metadata"]
    assert annotation != default["annotations"]["checksum/config"]


@pytest.mark.parametrize("which", ["default", "non-default", "forwarding"])
def test_no_redis_tls_or_user_unless_asked(which: str) -> None:
    container = _container(_one(which, "Deployment", FULLNAME))
    s = _server_settings(container)
    assert (s.redis_username, s.redis_ca_file, s.redis_client_crt) == (None, None, None)
    assert not [m for m in container["volumeMounts"] if m["name"].startswith("redis-")]


def test_verify_keys_are_mounted_from_their_secrets() -> None:
    deployment = _one("rotation", "Deployment", FULLNAME)
    s = _server_settings(_container(deployment))
    assert s.verify_key == [
        Path("/etc/telemeter/verify-keys/0/public.pem"),
        Path("/etc/telemeter/verify-keys/1/signing-key.pem"),
    ]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert volumes["verify-key-0"]["secretName"] == "telemeter-signing-2025"
    assert volumes["verify-key-0"]["items"] == [{"key": "public.pem", "path": "public.pem"}]
    assert volumes["verify-key-1"]["secretName"] == "telemeter-signing-2024"
    assert volumes["signing-key"]["secretName"] == "telemeter-signing-2026"
    assert not _server_settings(_container(_one("default", "Deployment", FULLNAME))).verify_key


def test_default_signing_key_is_generated_and_loadable() -> None:
    secret = _one("default", "Secret", f"{FULLNAME}-signing-key")
    pem = base64.b64decode(secret["data"]["signing-key.pem"])
    assert load_signing_key(pem).algorithm == "ES256"


def test_replicas_and_autoscaling() -> None:
    assert _one("default", "Deployment", FULLNAME)["spec"]["replicas"] == 3
    assert not _kind("default", "HorizontalPodAutoscaler")
    deployment = _one("non-default", "Deployment", FULLNAME)
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    hpa = _one("non-default", "HorizontalPodAutoscaler", FULLNAME)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}


@pytest.mark.parametrize("which", list(VALUES))
def test_services_pdb_and_network_policy_select_the_server_pods(which: str) -> None:
    deployment = _one(which, "Deployment", FULLNAME)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    names = {p["name"] for p in _container(deployment)["ports"]}
    external = _one(which, "Service", FULLNAME)["spec"]
    internal = _one(which, "Service", f"{FULLNAME}-internal")["spec"]
    for spec, target in ((external, "http"), (internal, "internal")):
        assert spec["selector"].items() <= pod_labels.items()
        assert [p["targetPort"] for p in spec["ports"]] == [target] and target in names
    assert internal["clusterIP"] == "None"  # every pod is its own scrape target
    pdb = _one(which, "PodDisruptionBudget", FULLNAME)["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    policy = _one(which, "NetworkPolicy", FULLNAME)["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    rules = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert set(rules) == {"http", "internal"}
    (peer,) = rules["internal"]["from"]
    namespace = (VALUES[which] or {}).get("networkPolicy", {}).get("monitoringNamespace")
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": namespace or "monitoring"
    }


# ----- remote write -----------------------------------------------------------------------------


def _secret_file(deployment: dict[str, Any], path: Path | None) -> tuple[str, str]:
    """The (Secret, key) a file named by a flag comes from, through the pod's volume mounts."""
    assert path is not None
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in _container(deployment)["volumeMounts"]}
    mount = mounts[str(path.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (key,) = [i["key"] for i in volume["secret"]["items"] if i["path"] == path.name]
    return volume["secret"]["secretName"], key


@pytest.mark.parametrize("which", ["default", "non-default"])
def test_forwarding_is_off_unless_a_url_is_given(which: str) -> None:
    deployment = _one(which, "Deployment", FULLNAME)
    container = _container(deployment)
    assert not [a for a in container["args"] if a.startswith(FORWARD_FLAGS)]
    assert _server_settings(container).forward_url is None
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {v["name"] for v in volumes} == {"signing-key", "tmp"}


def test_forwarding_values_reach_the_server() -> None:
    deployment = _one("forwarding", "Deployment", FULLNAME)
    s = _server_settings(_container(deployment))
    forward = FORWARDING["forward"]
    oidc = forward["oidc"]
    assert s.forward_url == forward["url"]
    assert (s.tenant_id, s.tenant_header) == ("telemeter", "X-Scope-OrgID")
    assert (s.forward_queue_limit, s.forward_max_age) == (2000, 1800.0)
    assert (s.oidc_issuer, s.oidc_audience, s.client_id) == (
        oidc["issuer"], oidc["audience"], oidc["clientId"]
    )  # fmt: skip
    assert s.client_secret is None, "the client secret is never on the command line"
    assert _secret_file(deployment, s.client_secret_file) == ("telemeter-oidc", "secret")
    assert _secret_file(deployment, s.forward_ca_file) == ("receiver-ca", "bundle.pem")
    assert _secret_file(deployment, s.forward_client_crt) == ("telemeter-forward-tls", "tls.crt")
    assert _secret_file(deployment, s.forward_client_key) == ("telemeter-forward-tls", "tls.key")


def test_forwarding_with_only_a_url_keeps_the_server_defaults() -> None:
    deployment = _one("forward-url-only", "Deployment", FULLNAME)
    container = _container(deployment)
    flags = [a for a in container["args"] if a.startswith(FORWARD_FLAGS)]
    assert flags == ["--forward-url=http://thanos-receive:19291/api/v1/receive"]
    s = _server_settings(container)
    assert (s.tenant_id, s.tenant_header) == (None, "THANOS-TENANT")  # a tenant per cluster
    defaults = ServerSettings(name="defaults")
    assert (s.forward_queue_limit, s.forward_max_age) == (
        defaults.forward_queue_limit, defaults.forward_max_age
    )  # fmt: skip
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {v["name"] for v in volumes} == {"signing-key", "tmp"}


# ----- TLS on the listeners --------------------------------------------------------------------


def test_tls_secrets_are_mounted_where_the_flags_point() -> None:
    deployment = _one("tls", "Deployment", FULLNAME)
    s = _server_settings(_container(deployment))
    mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v["secret"] for v in deployment["spec"]["template"]["spec"]["volumes"]
               if "secret" in v}  # fmt: skip
    internal = TLS["tls"]["internal"]
    for volume, secret, crt, key in (
        ("tls-external", TLS["tls"]["secret"], s.tls_crt, s.tls_key),
        ("tls-internal", internal["secret"], s.internal_tls_crt, s.internal_tls_key),
    ):
        assert volumes[volume]["secretName"] == secret  # a kubernetes.io/tls Secret
        assert (str(crt), str(key)) == (f"{mounts[volume]}/tls.crt", f"{mounts[volume]}/tls.key")
    assert volumes["tls-client-ca"]["secretName"] == internal["clientCASecret"]
    assert str(s.internal_tls_client_ca) == f"{mounts['tls-client-ca']}/bundle.pem"
    for name in (f"{FULLNAME}-federate", FULLNAME):
        (endpoint,) = _one("tls", "ServiceMonitor", name)["spec"]["endpoints"]
        assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == SCRAPER_TLS
    for which in ("default", "non-default"):
        s = _server_settings(_container(_one(which, "Deployment", FULLNAME)))
        assert s.tls_crt is s.internal_tls_crt is s.internal_tls_client_ca is None
        for monitor in _kind(which, "ServiceMonitor"):
            assert "scheme" not in monitor["spec"]["endpoints"][0]


def test_client_pushes_over_https_trusting_the_given_ca() -> None:
    container = _container(_one("tls", "Deployment", f"{FULLNAME}-client"))
    settings = settings_from_args(client_parser().parse_args(container["args"]))
    assert urlsplit(settings.upload_url).scheme == "https"
    (env,) = container["env"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env == {"name": "SSL_CERT_FILE", "value": f"{mounts['ca']}/ca.crt"}
    client = _container(_one("non-default", "Deployment", f"{FULLNAME}-client"))
    assert "env" not in client and urlsplit(client["args"][1].split("=", 1)[1]).scheme == "http"


# ----- PrometheusRule: the alerts of files/alerts.yaml ------------------------------------------


def test_prometheus_rule_carries_the_plain_alerts_file() -> None:
    rule = _one("non-default", "PrometheusRule", FULLNAME)
    assert rule["apiVersion"] == OPERATOR_API
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert not _kind("default", "PrometheusRule")  # off unless asked for


def test_dashboard_config_map_carries_the_plain_dashboard_file() -> None:
    config_map = _one("non-default", "ConfigMap", f"{FULLNAME}-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's label
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Telemeter"}
    (text,) = config_map["data"].values()
    assert json.loads(text) == json.loads((CHART / "files" / "dashboard.json").read_text())
    assert not _kind("default", "ConfigMap")  # off unless asked for


# ----- ServiceMonitors: the recommended scrape configuration -----------------------------------


def test_federate_service_monitor_keeps_pod_labels_off_federated_series() -> None:
    monitor = _one("non-default", "ServiceMonitor", f"{FULLNAME}-federate")
    assert monitor["apiVersion"] == OPERATOR_API
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    internal = _one("non-default", "Service", f"{FULLNAME}-internal")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= internal["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in internal["spec"]["ports"]}
    assert endpoint["path"] == "/federate" and endpoint["path"] in _routes("internal")
    assert endpoint["honorLabels"] is True
    recommended = federate_scrape_config(["unused:1"])
    mark_instance, drop_pod = recommended["relabel_configs"]
    relabelings = endpoint["relabelings"]
    assert relabelings[0] == _camel(mark_instance)
    (drop,) = [r for r in relabelings if r.get("action") == "labeldrop"]
    assert re.fullmatch(drop["regex"], drop_pod["regex"])
    for label in OPERATOR_TARGET_LABELS:
        assert re.fullmatch(drop["regex"], label), f"{label} would reach federated series"
    for kept in ("_id", "job", "instance", "__address__"):
        assert not re.fullmatch(drop["regex"], kept), f"{kept} must not be dropped"
    assert endpoint["metricRelabelings"] == [
        _camel(c) for c in recommended["metric_relabel_configs"]
    ]


def test_self_metrics_service_monitor_is_an_ordinary_scrape() -> None:
    monitor = _one("non-default", "ServiceMonitor", FULLNAME)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["path"] in _routes("internal")
    assert "honorLabels" not in endpoint and "relabelings" not in endpoint
    assert not _kind("default", "ServiceMonitor")  # needs the operator's CRDs: opt-in


# ----- the optional client ----------------------------------------------------------------------


def test_client_deployment_parses_and_pushes_to_the_release() -> None:
    assert not [d for d in _kind("default", "Deployment") if d["metadata"]["name"] != FULLNAME]
    deployment = _one("non-default", "Deployment", f"{FULLNAME}-client")
    assert deployment["spec"]["replicas"] == 1
    container = _container(deployment)
    assert container["command"] == ["telemeter-client"]
    try:
        settings = settings_from_args(client_parser().parse_args(container["args"]))
    except SystemExit:
        pytest.fail(f"telemeter-client refuses {container['args']} (see stderr)")
    client = NON_DEFAULT["client"]
    assert settings.cluster_id == client["id"] and settings.matches == tuple(client["matches"])
    assert settings.anonymize_labels == ("instance", "pod")
    upload = urlsplit(settings.upload_url)
    assert upload.hostname == f"{FULLNAME}.{NAMESPACE}.svc"
    assert upload.port == _one("non-default", "Service", FULLNAME)["spec"]["ports"][0]["port"]
    assert settings.listen is not None and settings.listen[1] == _port(container, "http")
    secret = _one("non-default", "Secret", f"{FULLNAME}-client")
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
    for path in (settings.to_token_file, settings.anonymize_salt_file):
        assert path is not None and path.parent == Path(mount["mountPath"])
        assert path.name in secret["data"]
    token_file = settings.to_token_file
    assert token_file is not None
    assert base64.b64decode(secret["data"][token_file.name]) == b"long-lived-token"


# ----- values the chart refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"replicaCount": "three"}, "replicaCount"),
        ({"sever": {}}, "sever"),
        ({"server": {"ttl": "ten minutes"}}, "ttl"),
        ({"server": {"terminationGracePeriodSeconds": 12}}, "ring leases"),
        ({"server": {"ring": {"heartbeatSeconds": 4, "leaseSeconds": 6}}}, "twice"),
        ({"client": {"enabled": True, "from": "http://p:9090", "token": "t"}}, "client.id"),
        ({"forward": {"url": "thanos-receive:19291/api/v1/receive"}}, "forward/url"),
        ({"forward": {"url": "http://r:9090/api/v1/write", "queueLimit": 0}}, "forward/queueLimit"),
        ({"forward": {"tenantHeader": "X Scope OrgID"}}, "forward/tenantHeader"),
        ({"forward": {"maxAge": "an hour"}}, "forward/maxAge"),
        ({"tls": {"internal": {"clientCASecret": "ca"}}}, "needs tls.internal.secret"),
        (
            {
                "tls": {"internal": {"secret": "internal-tls", "clientCASecret": "ca"}},
                "serviceMonitor": {"enabled": True},
            },
            "serviceMonitor.tlsConfig.cert",
        ),
        ({"redis": {"url": "redis://r:6379", "caSecret": "redis-ca"}}, "rediss://"),
        ({"redis": {"url": "redis://r:6379", "clientCertSecret": "redis-tls"}}, "rediss://"),
        ({"redis": {"url": "rediss://r:6379", "username": "tele meter"}}, "redis/username"),
        (
            {"forward": {"url": "http://r:9090/api/v1/write", "oidc": {"issuer": "https://sso"}}},
            "clientId",
        ),
    ],
)
def test_values_the_chart_refuses(values: dict[str, Any], error: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError, match=error):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
