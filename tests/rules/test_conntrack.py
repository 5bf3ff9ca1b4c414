"""UDP conntrack flushing with real traffic in a namespace: a UDP flow that existed before
capture keeps its old NAT until flushed, then reaches the proxy listener."""

from __future__ import annotations

import shutil
import socket

import pytest

from edgeproxy.demo.kube_proxy import StandInKubeProxy
from edgeproxy.rules.backends import make_backend
from edgeproxy.rules.conntrack import flush_udp_flows
from edgeproxy.rules.keeper import RuleKeeper
from edgeproxy.rules.render import render_rules
from edgeproxy.tools import namespace_runner
from tests.rules import states

pytestmark = pytest.mark.skipif(shutil.which("conntrack") is None, reason="conntrack missing")


def _entries(netns) -> str:
    return netns.run(["conntrack", "-L", "-p", "udp", "--orig-dst", "198.19.0.53"],
                     check=False).stdout


def test_flush_of_nothing_is_not_an_error(netns):
    assert flush_udp_flows([("198.19.0.99", 53), (None, 30053)],
                           namespace_runner(netns.name, cooperative=True)) == 0


def test_udp_flow_existing_before_capture_is_redirected_after_it(netns):
    StandInKubeProxy(netns, "nft").install()  # conntrack is active in the namespace from here on
    netns.run(["ip", "addr", "add", "169.254.96.17/32", "dev", "lo"])
    netns.run(["ip", "route", "add", "198.19.0.0/16", "dev", "lo"])
    ports = states.example_ports()
    pp = states.proxy_ports_for(ports)
    with netns.entered():
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("169.254.96.17", pp[states.DNS_UDP]))
        server.settimeout(2)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
    try:
        client.sendto(b"before", ("198.19.0.53", 53))  # a flow to the VIP, not captured yet
        assert "dport=53" in _entries(netns)
        run = namespace_runner(netns.name, cooperative=True)
        keeper = RuleKeeper(make_backend("nft", run), flush=lambda t: flush_udp_flows(t, run))
        keeper.update(render_rules(ports, pp, states.LISTEN))
        assert keeper.conntrack_deleted_total == 1
        client.sendto(b"after", ("198.19.0.53", 53))  # same socket, same 5-tuple
        data, _ = server.recvfrom(100)
        assert data == b"after"
        assert f"src=169.254.96.17 dst=127.0.0.1 sport={pp[states.DNS_UDP]}" in _entries(netns)
    finally:
        server.close()
        client.close()
