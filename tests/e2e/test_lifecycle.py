"""The real daemon's life on a namespaced node: start order against kube-proxy, signals, crash
and restart. Issue 5 "Done when": start before and after a stand-in kube-proxy; SIGHUP;
SIGTERM (rules gone, exit 0); SIGKILL and restart (one copy of each rule, no stale rule)."""

from __future__ import annotations

import time

import signal

import pytest

from edgeproxy.demo.clients import echo_line, http_get, wait_until
from edgeproxy.demo.kube_proxy import Iptables, StandInKubeProxy
from edgeproxy.demo.topology import (DNS_RECORD, DNS_VIP, ECHO_VIP, METRICS_PORT, METRICS_VIP,
                                     WEB_BACKENDS, WEB_PORT, WEB_VIP)
from tests.e2e import harness as h

pytestmark = [pytest.mark.slow, pytest.mark.netns]

LABELLED = (METRICS_VIP, METRICS_PORT, WEB_BACKENDS["web-1"], METRICS_PORT)
# kube-proxy's stale copy of web: a pod IP that is gone. Reached only when its jump wins.
STALE_WEB = (WEB_VIP, 80, "198.18.1.99", WEB_PORT)


def _web_ok(ns) -> bool:
    return http_get(ns, WEB_VIP, timeout=1).strip() in ("web-1", "web-2")


def test_started_after_kube_proxy_serves_pods_and_node(topo, start_daemon, tmp_path):
    StandInKubeProxy(topo.node).install([LABELLED, STALE_WEB])
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    start_daemon(mirror.root)

    h.assert_rules_once(topo.node)
    assert _web_ok(topo.pod) and _web_ok(topo.node)
    assert echo_line(topo.pod, ECHO_VIP, 7, "ping").startswith("echo-")
    name, addr = DNS_RECORD
    for ns in (topo.pod, topo.node):
        for transport in ("+notcp", "+tcp"):
            dig = ns.run(["dig", "+short", "+time=2", "+tries=1", transport,
                          f"@{DNS_VIP}", name])
            assert dig.stdout.strip() == addr, (ns.name, transport, dig.stdout)
    # The labelled service is skipped: kube-proxy's DNAT answers it, edgeproxy has no rule.
    assert "node_up 1" in http_get(topo.pod, METRICS_VIP, METRICS_PORT)
    assert not [line for line in h.rule_lines(topo.node) if METRICS_VIP in line]


def test_started_before_kube_proxy_takes_the_front_back(topo, start_daemon, tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    daemon = start_daemon(mirror.root)
    assert _web_ok(topo.pod)

    # kube-proxy starts later and prepends its jump: its stale web rule would now win.
    StandInKubeProxy(topo.node).install([LABELLED, STALE_WEB])
    took = wait_until(
        lambda: all(Iptables(topo.node).targets(c)[0].startswith("KUBE-PORTALS")
                    for c in ("PREROUTING", "OUTPUT")), timeout=5)
    assert took is not None, Iptables(topo.node).listing("PREROUTING", "OUTPUT")
    h.assert_rules_once(topo.node)
    assert wait_until(lambda: _web_ok(topo.pod) and _web_ok(topo.node), timeout=3) is not None
    assert "node_up 1" in http_get(topo.pod, METRICS_VIP, METRICS_PORT)
    assert h.chain_repairs(daemon) >= 1

    # And again when kube-proxy re-inserts after a flush (the jump it finds missing).
    before = h.chain_repairs(daemon)
    StandInKubeProxy(topo.node).jump_ahead()
    assert wait_until(lambda: h.chain_repairs(daemon) > before and
                         Iptables(topo.node).targets("PREROUTING")[0] != "KUBE-SERVICES",
                         timeout=5) is not None
    h.assert_rules_once(topo.node)


def test_sighup_reloads_while_traffic_flows(topo, start_daemon, tmp_path):
    StandInKubeProxy(topo.node).install([LABELLED, STALE_WEB])
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    daemon = start_daemon(mirror.root)
    client = h.standard_client(topo).start()
    try:
        client.wait_for_requests(3)
        for _ in range(3):
            daemon.signal(signal.SIGHUP)
            client.wait_for_requests(3)
        assert daemon.running()
        assert daemon.get("/readyz")[0] == 200
    finally:
        client.stop()
    client.assert_no_failures()
    h.assert_rules_once(topo.node)


def test_sigterm_hands_traffic_back_and_exits_zero(topo, start_daemon, tmp_path):
    StandInKubeProxy(topo.node).install([LABELLED])
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    daemon = start_daemon(mirror.root)
    assert h.rule_lines(topo.node)

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0, daemon.log_tail()
    assert h.rule_lines(topo.node) == []
    for chain in ("PREROUTING", "OUTPUT"):
        assert Iptables(topo.node).targets(chain) == ["KUBE-SERVICES"]
    # kube-proxy's own service still works: nothing of it was touched.
    assert "node_up 1" in http_get(topo.pod, METRICS_VIP, METRICS_PORT)
    with pytest.raises(OSError):  # nobody serves web any more (kube-proxy has no rule for it)
        http_get(topo.pod, WEB_VIP, timeout=0.5)


def test_sigkill_then_restart_leaves_one_copy_of_each_rule(topo, start_daemon, tmp_path):
    StandInKubeProxy(topo.node).install([LABELLED])
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    workdir = tmp_path / "daemon"
    first = start_daemon(mirror.root, workdir=workdir)
    ports_before = h.proxy_ports(topo.node)
    assert f"{ECHO_VIP}:7/tcp" in ports_before

    first.signal(signal.SIGKILL)
    first.wait(timeout=5)
    assert h.rule_lines(topo.node), "a killed daemon cannot clean up; its rules stay"
    mirror.delete("echo.yaml")  # changed while nobody was watching

    start_daemon(mirror.root, workdir=workdir)
    h.assert_rules_once(topo.node)
    ports_after = h.proxy_ports(topo.node)
    assert f"{ECHO_VIP}:7/tcp" not in ports_after, "stale rule of a deleted service"
    # The proxy ports are kept across the restart (state dir), so nothing else moved.
    assert {k: v for k, v in ports_before.items() if k in ports_after} == ports_after
    assert _web_ok(topo.pod)
    with pytest.raises(OSError):
        echo_line(topo.pod, ECHO_VIP, 7, "ping", timeout=0.5)


def test_a_broken_file_at_start_does_not_stop_the_valid_rest(topo, start_daemon, tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    mirror.write("broken.yaml", h.BROKEN_MANIFEST)
    daemon = start_daemon(mirror.root)
    assert _web_ok(topo.pod)
    # A file that fails while younger than the settle window (2 s) may still be being
    # written: its error is reported once it is older and still fails.
    deadline = time.monotonic() + 6
    while not h.file_errors(status := daemon.status(), "broken.yaml"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert {"default/web", "default/echo", "kube-system/edge-dns"} <= h.status_services(status)


def test_refuses_a_manifest_directory_others_can_write(topo, start_daemon, tmp_path):
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    mirror.root.chmod(0o777)
    daemon = start_daemon(mirror.root, ready=False)
    assert daemon.wait(timeout=15) != 0
    log = daemon.log_tail()
    assert str(mirror.root) in log and "Traceback" not in log, log
    assert h.rule_lines(topo.node) == []


def test_sighup_rereads_the_config_file(topo, start_daemon, tmp_path):
    """SIGHUP applies a changed config file at once where it can (sync period), keeps bound
    settings until the next start, and keeps the running config when the file is broken."""
    mirror = h.AtomicRenameMirror(tmp_path / "mirror")
    config_file = tmp_path / "edgeproxy.yaml"
    config_file.write_text("iptablesMinSyncPeriod: 100ms\n")
    daemon = start_daemon(mirror.root, extra_args=["--config", str(config_file)])
    config = daemon.status()["config"]
    assert config["iptablesMinSyncPeriod"] == 0.1
    assert config["iptablesSyncPeriod"] == 0.3  # a flag: flags win over the file
    port_range = config["proxyPortRange"]

    config_file.write_text("iptablesMinSyncPeriod: 150ms\niptablesSyncPeriod: 2s\n"
                           "proxyPortRange: 40000-40999\n")
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: daemon.status()["config"]["iptablesMinSyncPeriod"] == 0.15,
                         timeout=5) is not None, daemon.log_tail()
    assert daemon.status()["config"]["iptablesSyncPeriod"] == 0.3
    assert daemon.status()["config"]["proxyPortRange"] == port_range
    assert "take effect at the next start" in daemon.log_tail(40)

    config_file.write_text("iptablesMinSyncPeriod: [\n")
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: "config file invalid" in daemon.log_tail(40),
                         timeout=5) is not None
    assert daemon.running() and daemon.get("/readyz")[0] == 200
    assert daemon.status()["config"]["iptablesMinSyncPeriod"] == 0.15
    assert _web_ok(topo.pod)
