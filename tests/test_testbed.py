"""edgeproxy.testbed: the namespaced node the demo, e2e tests and benchmark stand on."""

from __future__ import annotations

import stat
import subprocess

import pytest

from edgeproxy import testbed as tb
from edgeproxy.netns import netns_unavailable_reason

REPO_EXAMPLES = tb.Path(__file__).resolve().parents[1] / "config" / "examples"


@pytest.fixture(scope="module")
def topo():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with tb.Topology("eptest") as topology:
        yield topology


@pytest.mark.netns
def test_backends_answer_with_their_names_from_the_pod_through_the_node(topo):
    for name, addr in tb.WEB_BACKENDS.items():
        assert tb.http_get(topo.pod, addr, tb.WEB_PORT).strip() == name
    assert tb.echo_line(topo.pod, tb.WEB_BACKENDS["web-2"], tb.ECHO_PORT, "hi") == "echo-2: hi"
    name, addr = tb.DNS_RECORD
    dig = topo.pod.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(tb.DNS_PORT),
                        f"@{tb.DNS_BACKEND}", name])
    assert dig.stdout.strip() == addr


@pytest.mark.netns
def test_node_has_no_default_route_and_cluster_ips_exist_nowhere(topo):
    routes = topo.node.run(["ip", "route"]).stdout
    assert "default" not in routes
    with pytest.raises(OSError):
        tb.http_get(topo.pod, tb.WEB_VIP, timeout=0.5)


@pytest.mark.netns
def test_stand_in_kube_proxy_serves_its_service_and_can_jump_ahead(topo):
    labelled = (tb.METRICS_VIP, tb.METRICS_PORT, tb.WEB_BACKENDS["web-1"], tb.METRICS_PORT)
    tb.install_kube_proxy(topo.node, [labelled])
    tb.install_kube_proxy(topo.node, [])  # idempotent jumps, like kube-proxy's `-C` check
    assert "node_up 1" in tb.http_get(topo.pod, tb.METRICS_VIP, tb.METRICS_PORT)
    for chain in ("PREROUTING", "OUTPUT"):
        assert tb.nat_chain_targets(topo.node, chain) == ["KUBE-SERVICES"]
    hint = topo.node.run(["iptables", "-t", "mangle", "-S", "KUBE-IPTABLES-HINT"], check=False)
    assert hint.returncode == 0

    topo.node.run(["iptables", "-t", "nat", "-N", "OTHER"])
    topo.node.run(["iptables", "-t", "nat", "-I", "PREROUTING", "1", "-j", "OTHER"])
    tb.kube_proxy_jumps_ahead(topo.node)
    assert tb.nat_chain_targets(topo.node, "PREROUTING") == ["KUBE-SERVICES", "OTHER"]
    assert "stand-in kube-proxy" in tb.nat_listing(topo.node, "KUBE-SERVICES")


def test_metric_value_sums_matching_samples():
    text = ('# HELP x_total help\n# TYPE x_total counter\n'
            'x_total{file="a.yaml",kind="syntax"} 2.0\nx_total{file="b.yaml"} 3.0\n'
            'x_total_created 1.7e9\ny 1\n')
    assert tb.metric_value(text, "x_total") == 5.0
    assert tb.metric_value(text, "x_total", {"file": "a.yaml"}) == 2.0
    assert tb.metric_value(text, "y") == 1.0
    assert tb.metric_value(text, "z") is None


def test_copy_examples_gives_modes_the_ownership_check_accepts(tmp_path):
    target = tb.copy_examples(REPO_EXAMPLES, tmp_path / "m")
    copied = sorted(p.name for p in target.iterdir())
    assert copied == sorted(p.name for p in REPO_EXAMPLES.glob("*.yaml"))
    for path in (target, *target.iterdir()):
        assert not stat.S_IMODE(path.stat().st_mode) & (stat.S_IWGRP | stat.S_IWOTH)


def test_backend_server_usage_error_exits_2():
    result = subprocess.run([tb.sys.executable, "-m", "edgeproxy.testbed"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "usage" in result.stderr
