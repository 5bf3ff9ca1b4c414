"""monitoring/: the alert rules pass promtool (syntax and their unit tests), and every metric
the rules and the Grafana dashboard query is one the daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edgeproxy.daemon.http import metrics_app

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
PROMTOOL = shutil.which("promtool")
_NAME = re.compile(r"\b((?:edgeproxy|process|python)_[a-z_]+)")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created", "_info")


def _exported(daemon) -> set[str]:
    out = {}

    def start_response(status, headers):
        out["status"] = status

    body = b"".join(metrics_app(daemon)({"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET",
                                         "QUERY_STRING": ""}, start_response)).decode()
    names = set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            names.add(family)
            names.update(family + suffix for suffix in _SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _queried() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    rules = yaml.safe_load((MONITORING / "edgeproxy-alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.setdefault("alerts", set()).update(_NAME.findall(rule["expr"]))
    dashboard = json.loads((MONITORING / "edgeproxy-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            found.setdefault("dashboard", set()).update(_NAME.findall(target["expr"]))
    return found


def test_every_queried_metric_is_exported(daemon):
    exported = _exported(daemon)
    for where, names in _queried().items():
        missing = sorted(n for n in names if n not in exported)
        assert not missing, f"{where} queries metrics the daemon does not export: {missing}"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package "
                                             "prometheus; scripts/bootstrap installs it)")
def test_alert_rules_pass_promtool_and_their_unit_tests():
    check = subprocess.run([PROMTOOL, "check", "rules", "edgeproxy-alerts.yaml"],
                           cwd=MONITORING, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([PROMTOOL, "test", "rules", "edgeproxy-alerts.test.yaml"],
                          cwd=MONITORING, capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_the_dashboard_is_importable_grafana_json():
    dashboard = json.loads((MONITORING / "edgeproxy-dashboard.json").read_text())
    assert dashboard["uid"] == "edgeproxy" and dashboard["schemaVersion"] >= 30
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "instance"}
    ids = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "two panels at one place"
