"""The real daemon on a namespaced node choosing and judging endpoints: an endpoint whose SYNs
vanish is ejected and comes back, and `edgeproxy status` and /metrics say so; the node's
identity and every endpoint's metadata are shown (issue 13)."""

from __future__ import annotations

import time

import pytest

from edgeproxy.demo.clients import http_get, wait_until
from edgeproxy.demo.daemon import edgeproxy_argv
from edgeproxy.demo.topology import WEB_BACKENDS, WEB_PORT
from tests.support.node import metric_value

pytestmark = [pytest.mark.slow, pytest.mark.netns]

VIP = "198.19.0.60"
WEB1, WEB2, WEB3 = WEB_BACKENDS["web-1"], WEB_BACKENDS["web-2"], WEB_BACKENDS["web-3"]
LABELS = {"service": "default/outage", "protocol": "TCP"}

MANIFEST = f"""\
apiVersion: v1
kind: Service
metadata: {{name: outage, namespace: default}}
spec:
  clusterIP: {VIP}
  ports: [{{port: 80, targetPort: {WEB_PORT}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: outage-a
  namespace: default
  labels: {{kubernetes.io/service-name: outage}}
addressType: IPv4
ports: [{{port: {WEB_PORT}}}]
endpoints:
- addresses: [{WEB1}]
  nodeName: cloud-1
  zone: zone-z
  targetRef: {{kind: Pod, namespace: default, name: web-1}}
- addresses: [{WEB2}]
  nodeName: cloud-2
  zone: zone-z
  targetRef: {{kind: Pod, namespace: default, name: web-2}}
- addresses: [{WEB3}]
  nodeName: cloud-3
  conditions: {{ready: false, serving: true, terminating: true}}
"""


def _service(status: dict) -> dict:
    return next(s for s in status["services"] if s["service"] == "default/outage")


def _details(status: dict) -> dict[str, dict]:
    return {d["address"]: d for d in _service(status)["endpointDetails"]}


def test_ejected_endpoint_shown_in_status_and_metrics_then_back(topo, start_daemon, tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "outage.yaml").write_text(MANIFEST)
    daemon = start_daemon(manifests, ["--hostname-override", "Edge-Node", "--zone", "zone-a",
                                      "--health-probe-interval", "500ms"])
    status = daemon.status()
    assert status["node"] == {"name": "edge-node", "zone": "zone-a", "localityAware": True}
    web1 = _details(status)[f"{WEB1}:{WEB_PORT}"]
    assert (web1["nodeName"], web1["zone"], web1["targetRef"]["name"]) == ("cloud-1", "zone-z",
                                                                         "web-1")
    assert (web1["locality"], web1["used"], web1["health"]) == ("remote", True, "healthy")
    terminating = _details(status)[f"{WEB3}:{WEB_PORT}"]
    assert (terminating["terminating"], terminating["used"]) == (True, False)
    assert {http_get(topo.pod, VIP).strip() for _ in range(6)} == {"web-1", "web-2"}

    drop = ["INPUT", "-d", WEB2, "-p", "tcp", "--dport", str(WEB_PORT), "-j", "DROP"]
    topo.backends.run(["iptables", "-I", *drop])
    try:
        answers = [http_get(topo.pod, VIP, timeout=3).strip() for _ in range(10)]
        assert set(answers) == {"web-1"}  # nobody failed: the few slow ones failed over
        status = daemon.status()
        web2 = _details(status)[f"{WEB2}:{WEB_PORT}"]
        assert web2["health"] == "ejected" and web2["ejectedForSeconds"] > 0
        assert web2["lastError"] == "Connection timed out"
        metrics = daemon.metrics()
        assert metric_value(metrics, "edgeproxy_endpoint_ejections_total", LABELS) == 1
        assert metric_value(metrics, "edgeproxy_endpoints_ejected", LABELS) == 1
        assert metric_value(metrics, "edgeproxy_dial_failures_total", LABELS) >= 1
        text = topo.node.run([*edgeproxy_argv(), "status"], check=False).stdout
        assert "node: edge-node  zone: zone-a" in text
        line = next(ln for ln in text.splitlines() if f"{WEB2}:{WEB_PORT}" in ln
                    and "EJECTED" in ln)
        assert "cloud-2" in line and "Connection timed out" in line
    finally:
        topo.backends.run(["iptables", "-D", *drop])
    t0 = time.monotonic()
    took = wait_until(lambda: _details(daemon.status())[f"{WEB2}:{WEB_PORT}"]["health"]
                      == "healthy", timeout=5)
    assert took is not None and time.monotonic() - t0 < 3
    assert "web-2" in {http_get(topo.pod, VIP).strip() for _ in range(6)}
    metrics = daemon.metrics()
    assert metric_value(metrics, "edgeproxy_endpoint_readmissions_total", LABELS) == 1
    assert metric_value(metrics, "edgeproxy_endpoint_probes_total",
                        {**LABELS, "result": "ok"}) == 1
    assert metric_value(metrics, "edgeproxy_endpoints_ejected", LABELS) == 0
