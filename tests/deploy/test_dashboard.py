"""The Grafana dashboard shipped with the chart (helm/telemeter/files/dashboard.json,
docs/operations.md "Dashboard"): a dashboard Grafana can import, every PromQL expression valid
for promtool once the Grafana variables are replaced, and every metric it reads one a real
server exports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dev.launch import ServerHandle, start_server
from dev.ports import free_port
from tests.conftest import RedisClusterHandle
from tests.deploy.test_alerts import _promtool
from tests.support import (
    RING_ARGS,
    authorize,
    encode_upload,
    new_id,
    post_upload,
    series_of,
    valid_families,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "telemeter" / "files" / "dashboard.json"
# Concrete values for the dashboard's own variables and for Grafana's built-in ones.
VARIABLES = {"job": "telemeter-server", "pod": ".*"}
BUILT_IN = {"__rate_interval": "2m", "__interval": "1m", "__range": "1h"}
# Made by Prometheus itself for every target, not by the server.
PROMETHEUS_MADE = {"up"}
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
    "unless",
}  # fmt: skip
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _concrete(text: str) -> str:
    """``text`` with every Grafana variable replaced (an unknown one fails the test)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES or name in BUILT_IN, f"unknown variable ${name} in {text!r}"
        return VARIABLES.get(name) or BUILT_IN[name]

    return _VARIABLE.sub(value, text)


def _expressions() -> list[tuple[str, str]]:
    """(panel id and refId, expression with concrete values) of every query of the dashboard."""
    return [
        (f"panel_{panel['id']}_{target['refId']}", _concrete(target["expr"]))
        for panel in _panels(_dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers,
    groupings, ranges, function calls and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\()?", text)
    return {m.group(1) for m in names if m.group(2) is None} - _KEYWORDS


def test_metric_names_finds_the_metrics_and_nothing_else() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, op) (rate(a_bucket{op="x"}[5m] offset 1h)))'
    assert metric_names(expr) == {"a_bucket"}
    assert metric_names("count(time() - max by (_id) (b) < 600) / on (x) c") == {"b", "c"}


def test_the_dashboard_is_importable_in_grafana() -> None:
    dashboard = _dashboard()
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", *VARIABLES}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(dashboard["panels"]))
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("upload", "rejects", "slots", "redis", "queue", "oldest", "dropped", "/federate"):
        assert topic in titles, topic


def test_promtool_checks_every_expression(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:{name}", "expr": expr}
        for name, expr in [*_expressions(), *_variable_queries()]
    ]
    assert len(rules) >= 20
    rules_file = tmp_path / "dashboard-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([_promtool(), "check", "rules", str(rules_file)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def _variable_queries() -> list[tuple[str, str]]:
    """The series selectors of the ``label_values(selector, label)`` variable queries."""
    found = []
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"not a label_values query: {query}"
        found.append((f"variable_{variable['name']}", _concrete(match.group(1))))
    return found


@pytest.fixture(scope="module")
def server(
    redis_cluster: RedisClusterHandle, signing_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """A server that forwards (to nobody: the forwarding metrics exist all the same)."""
    handle = start_server(
        redis_url=redis_cluster.url,
        workdir=tmp_path_factory.mktemp("dashboard"),
        name="dashboard",
        shared_key=signing_key,
        extra_args=[
            *RING_ARGS, "--ring-namespace", new_id("dashboard-ring"),
            "--forward-url", f"http://127.0.0.1:{free_port()}/api/v1/write",
        ],
    )  # fmt: skip
    yield handle
    handle.process.stop()


def _exported(text: str) -> set[str]:
    """The sample names an exposition text has or may have: every sample line's name, and for
    every ``# TYPE`` line the names its type gives (a family without samples yet still has one)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names.update(name + suffix for suffix in suffixes)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.mark.integration
def test_every_metric_is_one_the_server_exports(server: ServerHandle) -> None:
    cluster = new_id("dashboard")
    answer = post_upload(server, authorize(server, cluster), encode_upload(valid_families(cluster)))
    assert answer.status_code == 200, answer.text
    federated = ""

    def pushed() -> str | None:
        nonlocal federated
        federated = httpx.get(f"{server.internal}/federate", timeout=30).text
        return None if series_of(federated, cluster) else "the upload not on /federate"

    wait_for(pushed, timeout=20, what="the pod serving the cluster")  # once it holds its ranges
    metrics = httpx.get(f"{server.internal}/metrics", timeout=10).text
    exported = _exported(metrics) | _exported(federated) | PROMETHEUS_MADE
    assert "telemeter_forward_queue_length" in exported  # the forwarding metrics are there
    used = {
        name: where
        for where, expr in [*_expressions(), *_variable_queries()]
        for name in metric_names(expr)
    }
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, f"metrics the server does not export: {missing}"
    every_query = [*_expressions(), *_variable_queries()]
    assert all(metric_names(expr) for _, expr in every_query), "a query without a metric"
