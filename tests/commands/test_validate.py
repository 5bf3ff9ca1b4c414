"""`edgeproxy validate`: exit statuses, the JSON shape, text output, the bundled examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgeproxy.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "config" / "examples"
EDGEPROXY = REPO / ".venv" / "bin" / "edgeproxy"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [str(EDGEPROXY)] if EDGEPROXY.exists() else [sys.executable, "-m", "edgeproxy"]
    return subprocess.run(command + ["validate", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_examples_are_valid_and_show_the_skipped_service() -> None:
    result = run_cli(str(EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skip   monitoring/node-metrics" in result.stdout and ": label" in result.stdout
    assert "198.19.0.10 -> 198.18.1.11:8080, 198.18.1.12:8080 (CONSISTENT_HASH_HTTP_HEADER x-user)" \
        in result.stdout
    assert "Traceback" not in result.stderr


def test_examples_json_shape() -> None:
    result = run_cli("-o", "json", str(EXAMPLES))
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["valid"] is True and report["errors"] == []
    by_name = {s["name"]: s for s in report["services"]}
    assert set(by_name) == {"web", "echo", "edge-dns", "node-metrics"}
    web = by_name["web"]
    assert set(web) == {"file", "document", "namespace", "name", "verdict", "reason", "ports",
                        "allocatedClusterIPs", "trafficPolicy"}
    assert web["trafficPolicy"] == {"internalTrafficPolicy": "Cluster",
                                    "externalTrafficPolicy": "Cluster"}
    assert (web["verdict"], web["reason"], web["document"]) == ("proxy", None, "0")
    (port,) = web["ports"]
    assert port["name"] == "http" and port["port"] == 80 and port["protocol"] == "TCP"
    assert port["vips"] == ["198.19.0.10"]
    assert port["endpoints"] == ["198.18.1.11:8080", "198.18.1.12:8080"]
    assert by_name["node-metrics"]["verdict"] == "skip"
    assert by_name["node-metrics"]["reason"] == "label"


def test_endpoint_metadata_and_traffic_policies(tmp_path: Path, capsys) -> None:
    (tmp_path / "web.yaml").write_text("""\
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations: {service.kubernetes.io/topology-mode: Auto}
spec:
  clusterIP: 198.19.0.10
  type: NodePort
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  trafficDistribution: PreferClose
  ports: [{port: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [198.18.1.11]
  nodeName: edge-1
  zone: zone-a
  hints: {forZones: [{name: zone-a}]}
  targetRef: {kind: Pod, name: web-0}
- addresses: [198.18.1.12]
  conditions: {ready: false, serving: true, terminating: true}
""")
    assert main(["validate", "-o", "json", str(tmp_path)]) == 0
    (web,) = json.loads(capsys.readouterr().out)["services"]
    assert web["trafficPolicy"] == {"internalTrafficPolicy": "Local",
                                    "externalTrafficPolicy": "Local",
                                    "trafficDistribution": "PreferClose", "topologyMode": "Auto"}
    (port,) = web["ports"]
    assert port["endpoints"] == ["198.18.1.11:8080"]  # the ready ones, as before
    assert port["endpointDetails"] == [
        {"address": "198.18.1.11:8080", "ready": True, "serving": True, "terminating": False,
         "nodeName": "edge-1", "zone": "zone-a", "hints": {"forZones": ["zone-a"]},
         "targetRef": {"kind": "Pod", "name": "web-0"}},
        {"address": "198.18.1.12:8080", "ready": False, "serving": True, "terminating": True}]
    assert main(["validate", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "internalTrafficPolicy Local, externalTrafficPolicy Local" in text
    assert "198.18.1.11:8080  ready  on zone-a/edge-1  hints forZones=zone-a  Pod web-0" in text
    assert "198.18.1.12:8080  terminating, serving" in text


def test_filter_mode_flag(capsys) -> None:
    assert main(["validate", "-o", "json", "--service-filter-mode",
                 "FilterIfLabelDoesNotExists", str(EXAMPLES)]) == 0
    report = json.loads(capsys.readouterr().out)
    verdicts = {s["name"]: s["verdict"] for s in report["services"]}
    assert verdicts == {"web": "skip", "echo": "skip", "edge-dns": "skip", "node-metrics": "proxy"}


def test_errors_exit_1_with_named_fields(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
        "spec: {clusterIP: 198.19.0.1, ports: [{port: 70000}]}\n"
        "---\nkind: [broken\n")
    (tmp_path / "ok.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: fine, namespace: a}\n"
        "spec: {clusterIP: 198.19.0.2, ports: [{port: 80}]}\n"
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: port, namespace: a}\n"
        "spec: {clusterIP: 198.19.0.3, ports: [{port: 0}]}\n")
    assert main(["validate", "-o", "json", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    errors = {(Path(e["file"]).name, e["document"]): e for e in report["errors"]}
    assert errors[("bad.yaml", None)]["message"].startswith("YAML error")
    port = errors[("ok.yaml", "1")]
    assert (port["kind"], port["namespace"], port["name"], port["path"]) == (
        "Service", "a", "port", "spec.ports[0].port")
    verdicts = {s["name"]: (s["verdict"], s["reason"]) for s in report["services"]}
    assert verdicts == {"fine": ("proxy", None), "port": ("skip", "invalid")}


def test_text_errors_and_missing_path() -> None:
    result = run_cli("/nonexistent/edgeproxy")
    assert result.returncode == 1
    assert "error: /nonexistent/edgeproxy: manifest root /nonexistent/edgeproxy does not exist" \
        in result.stdout
    assert "Traceback" not in result.stderr


def test_usage_error_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("-o", "xml", str(EXAMPLES)).returncode == 2


def test_yaml_output_is_the_json_report() -> None:
    import yaml

    as_json = json.loads(run_cli("-o", "json", str(EXAMPLES)).stdout)
    assert yaml.safe_load(run_cli("-o", "yaml", str(EXAMPLES)).stdout) == as_json


def test_the_filter_mode_comes_from_the_config_file_unless_a_flag_says(tmp_path) -> None:
    config = tmp_path / "edgeproxy.yaml"
    config.write_text("serviceFilterMode: FilterIfLabelDoesNotExists\n")
    report = json.loads(run_cli("-o", "json", "--config", str(config), str(EXAMPLES)).stdout)
    verdicts = {s["name"]: s["verdict"] for s in report["services"]}
    assert verdicts["node-metrics"] == "proxy" and verdicts["web"] == "skip"
    flagged = json.loads(run_cli("-o", "json", "--config", str(config), "--service-filter-mode",
                                 "FilterIfLabelExists", str(EXAMPLES)).stdout)
    assert {s["name"]: s["verdict"] for s in flagged["services"]}["web"] == "proxy"
    bad = tmp_path / "bad.yaml"
    bad.write_text("serviceFilterMode: Sometimes\n")
    result = run_cli("--config", str(bad), str(EXAMPLES))
    assert result.returncode == 2 and "serviceFilterMode" in result.stderr


def test_corpus_file_reports_conflicts(corpus_dir: Path, capsys) -> None:
    path = corpus_dir / "traefik__traefik__pkg_provider_kubernetes_crd_fixtures_services.yml"
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "conflict: 10.10.0.1:80/TCP claimed by default/native-svc and " \
           "default/native-disabled-svc" in out
    assert "skip   default/external-svc " in out


def test_service_cidr_shows_allocated_cluster_ips(tmp_path) -> None:
    (tmp_path / "plain.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: plain, namespace: default}\n"
        "spec: {ports: [{port: 80}]}\n")
    skipped = run_cli(str(tmp_path))
    assert "skip   default/plain" in skipped.stdout and "no-cluster-ip" in skipped.stdout
    text = run_cli("--service-cidr", "198.19.128.0/17", str(tmp_path))
    assert "proxy  default/plain" in text.stdout and "(allocated)" in text.stdout
    doc = json.loads(run_cli("--service-cidr", "198.19.128.0/17", "-o", "json",
                             str(tmp_path)).stdout)
    (svc,) = doc["services"]
    (ip,) = svc["allocatedClusterIPs"]
    assert svc["verdict"] == "proxy" and svc["ports"][0]["vips"] == [ip]
    again = json.loads(run_cli("--service-cidr", "198.19.128.0/17", "-o", "json",
                               str(tmp_path)).stdout)
    assert again["services"][0]["allocatedClusterIPs"] == [ip]  # another node, same address
    assert run_cli("--service-cidr", "nonsense", str(tmp_path)).returncode == 2
