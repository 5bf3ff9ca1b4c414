"""The real daemon's DNS on the namespaced edge node: a pod resolves services by name.

The pod's resolv.conf is the one kubelet writes (clusterDNS 169.254.96.53, the search path,
ndots:5), bind-mounted in a private mount namespace: getaddrinfo (getent, curl) resolves
through edgeproxy exactly as in a pod."""

from __future__ import annotations

import time

import pytest

from edgeproxy.demo.clients import pod_resolv_conf, run_with_resolv_conf, wait_until
from edgeproxy.demo.daemon import copy_examples
from edgeproxy.demo.topology import UPSTREAM_RECORD, WEB_VIP
from tests.e2e.harness import EXAMPLES

pytestmark = [pytest.mark.netns, pytest.mark.slow]
DNS = "169.254.96.53"
CIDR = "198.19.128.0/17"
PLAIN = """\
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: plain, namespace: default}
subsets:
- addresses: [{ip: 198.18.1.13}]
  ports: [{port: 8080}]
"""


def resolve(topo, *names):
    result = run_with_resolv_conf(topo.pod, pod_resolv_conf(DNS), ["getent", "ahostsv4", *names])
    return sorted({line.split()[0] for line in result.stdout.splitlines()})


def test_pod_resolves_services_by_name_and_the_records_follow_the_files(topo, start_daemon,
                                                                        tmp_path):
    manifests = copy_examples(EXAMPLES, tmp_path / "manifests")
    daemon = start_daemon(manifests, ["--service-cidr", CIDR])
    assert resolve(topo, "web") == [WEB_VIP]
    assert resolve(topo, "edge-dns.kube-system") == ["198.19.0.53"]
    assert resolve(topo, UPSTREAM_RECORD[0]) == [UPSTREAM_RECORD[1]]  # forwarded
    curl = run_with_resolv_conf(topo.pod, pod_resolv_conf(DNS),
                                ["curl", "-sS", "--max-time", "3", "http://web/"])
    assert curl.stdout.strip() in ("web-1", "web-2"), curl.stderr
    # A Service without clusterIP appears: allocated, proxied and named in the same sync.
    (manifests / "plain.yaml").write_text(PLAIN)
    took = wait_until(lambda: resolve(topo, "plain"), timeout=10, interval=0.05)
    assert took is not None
    (ip,) = resolve(topo, "plain")
    assert ip.startswith("198.19.")
    status = daemon.status()
    assert {"service": "default/plain", "clusterIPs": [ip]} in status["allocatedClusterIPs"]
    assert [s["allocated"] for s in status["services"] if s["service"] == "default/plain"] == \
        [True]
    body = run_with_resolv_conf(topo.pod, pod_resolv_conf(DNS),
                                ["curl", "-sS", "--max-time", "3", "http://plain/"])
    assert body.stdout.strip() == "web-3", body.stderr
    assert status["dns"]["upstreams"] == ["198.18.1.21:5353"]


def test_a_deleted_interface_brings_the_dns_address_back(topo, start_daemon, tmp_path):
    manifests = copy_examples(EXAMPLES, tmp_path / "manifests")
    start_daemon(manifests)
    assert resolve(topo, "web") == [WEB_VIP]
    topo.node.run(["ip", "link", "del", "edgeproxy0"])
    started = time.monotonic()
    took = wait_until(lambda: resolve(topo, "web") == [WEB_VIP], timeout=10, interval=0.1)
    assert took is not None, "DNS did not come back after the interface was deleted"
    assert time.monotonic() - started < 10
    assert f"{DNS}/32" in topo.node.run(["ip", "-o", "addr", "show", "dev",
                                         "edgeproxy0"]).stdout
