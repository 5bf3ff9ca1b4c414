"""`edgeproxy cleanup` inside a namespace: every backend, IPv4 and IPv6, twice, UDP flows."""

from __future__ import annotations

import sys

from edgeproxy.demo.kube_proxy import StandInKubeProxy
from edgeproxy.rules.backends import make_backend
from edgeproxy.rules.render import render_rules
from edgeproxy.tools import namespace_runner
from tests.rules import states
from tests.rules.node import dump


def _cleanup(netns, *args):
    return netns.run([sys.executable, "-m", "edgeproxy", "cleanup", *args], check=False)


def test_cleanup_removes_all_backends_and_is_idempotent(netns):
    StandInKubeProxy(netns, "nft").install()
    StandInKubeProxy(netns, "nft", family=6).install()  # (empty built-in tables would stay: harmless)
    before = dump(netns, "nft"), dump(netns, "nft", 6)
    ports = states.full_ports()
    rs = render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)
    runner = namespace_runner(netns.name)
    for name in ("legacy", "nft", "nftables"):  # a node that switched backends over time
        make_backend(name, runner).apply(rs)
    out = _cleanup(netns)
    assert out.returncode == 0, out.stdout + out.stderr
    for expected in ("iptables-legacy nat: chain KUBE-PORTALS-CONTAINER",
                     "iptables-nft nat: chain KUBE-PORTALS-CONTAINER",
                     "ip6tables-nft nat: chain KUBE-PORTALS-HOST",
                     "iptables-nft filter: chain EDGEPROXY-LISTEN-GUARD",
                     "nftables table ip edgeproxy", "nftables table ip6 edgeproxy"):
        assert expected in out.stdout, out.stdout
    assert (dump(netns, "nft"), dump(netns, "nft", 6)) == before
    assert "KUBE-" not in dump(netns, "legacy")
    assert "edgeproxy" not in netns.run(["nft", "list", "tables"]).stdout
    again = _cleanup(netns)
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_cleanup_of_one_backend_leaves_the_others(netns):
    ports = states.example_ports()
    rs = render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)
    runner = namespace_runner(netns.name)
    make_backend("nft", runner).apply(rs)
    make_backend("nftables", runner).apply(rs)
    out = _cleanup(netns, "--iptables-backend", "nftables")
    assert out.returncode == 0 and "nftables table ip edgeproxy" in out.stdout
    assert "KUBE-PORTALS-CONTAINER" in dump(netns, "nft")


def test_cleanup_refuses_while_a_daemon_holds_the_node(tmp_path):
    """A running daemon would put its rules and interface back within a second: cleaning
    under it only drops traffic. The instance lock says one runs."""
    import os
    import subprocess
    import sys

    from edgeproxy.daemon.instance import acquire

    lock = acquire(tmp_path)
    try:
        result = subprocess.run([sys.executable, "-m", "edgeproxy", "cleanup", "--state-dir",
                                 str(tmp_path)], capture_output=True, text=True, timeout=30)
    finally:
        lock.release()
    assert result.returncode == 1
    assert f"PID {os.getpid()}" in result.stderr and "stop it first" in result.stderr
