"""The alerts shipped with the chart (helm/telemeter/files/alerts.yaml, docs/operations.md
"Alerts"): valid for promtool, and each one fires, or stays quiet, as its unit test says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "telemeter" / "files" / "alerts.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")


def _promtool() -> str:
    path = shutil.which("promtool", path=str(Path(sys.executable).parent)) or shutil.which(
        "promtool"
    )
    if path is None:
        pytest.fail("promtool is not installed: install the Debian package prometheus")
    return path


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_every_alert_has_a_unit_test_and_they_pass(tmp_path: Path) -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert alerts == tested
    tests["rule_files"] = [str(RULES)]
    spec = tmp_path / "alerts_test.yaml"
    spec.write_text(yaml.safe_dump(tests))
    done = subprocess.run([_promtool(), "test", "rules", str(spec)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
