"""edgeproxy.demo.topology: the namespaced node the demo, e2e tests and benchmarks stand on,
with the example's backends (edgeproxy.demo.backends) and the stand-in kube-proxy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeproxy.demo import topology as node
from edgeproxy.demo.clients import echo_line, http_get
from edgeproxy.demo.kube_proxy import Iptables, StandInKubeProxy
from edgeproxy.demo.netns import netns_unavailable_reason


@pytest.fixture(scope="module")
def topo():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with node.Topology("eptest") as topology:
        yield topology


@pytest.mark.netns
def test_backends_answer_with_their_names_from_the_pod_through_the_node(topo):
    for name, addr in node.WEB_BACKENDS.items():
        assert http_get(topo.pod, addr, node.WEB_PORT).strip() == name
    assert echo_line(topo.pod, node.WEB_BACKENDS["web-2"], node.ECHO_PORT, "hi") == "echo-2: hi"
    name, addr = node.DNS_RECORD
    dig = topo.pod.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(node.DNS_PORT),
                        f"@{node.DNS_BACKEND}", name])
    assert dig.stdout.strip() == addr


@pytest.mark.netns
def test_node_has_no_default_route_and_cluster_ips_exist_nowhere(topo):
    routes = topo.node.run(["ip", "route"]).stdout
    assert "default" not in routes
    with pytest.raises(OSError):
        http_get(topo.pod, node.WEB_VIP, timeout=0.5)


@pytest.mark.netns
def test_stand_in_kube_proxy_serves_its_service_and_can_jump_ahead(topo):
    labelled = (node.METRICS_VIP, node.METRICS_PORT, node.WEB_BACKENDS["web-1"],
                node.METRICS_PORT)
    kube_proxy = StandInKubeProxy(topo.node).install([labelled])
    StandInKubeProxy(topo.node).install([])  # idempotent jumps, like kube-proxy's `-C` check
    assert "node_up 1" in http_get(topo.pod, node.METRICS_VIP, node.METRICS_PORT)
    iptables = Iptables(topo.node)
    for chain in ("PREROUTING", "OUTPUT"):
        assert iptables.targets(chain) == ["KUBE-SERVICES"]
    assert iptables.targets("INPUT", table="filter") == ["KUBE-FIREWALL"]
    hint = iptables("-t", "mangle", "-S", "KUBE-IPTABLES-HINT", check=False)
    assert hint.returncode == 0

    iptables("-t", "nat", "-N", "OTHER")
    iptables("-t", "nat", "-I", "PREROUTING", "1", "-j", "OTHER")
    kube_proxy.jump_ahead()
    assert iptables.targets("PREROUTING") == ["KUBE-SERVICES", "OTHER"]
    assert "stand-in kube-proxy" in iptables.listing("KUBE-SERVICES")


def test_backend_server_usage_error_exits_2():
    result = subprocess.run([sys.executable, "-m", "edgeproxy.demo.backends"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
