"""Legacy table digests inside a private namespace: blind to counters, not to rules, and never
creating a table by looking at it."""

from __future__ import annotations

from edgeproxy.rules import xtables


def _ipt(netns, *args, family=4):
    tool = "iptables-legacy" if family == 4 else "ip6tables-legacy"
    netns.run([tool, "-w", "5", "-t", "nat", *args])


def _names(netns, family=4):
    proc = "ip_tables_names" if family == 4 else "ip6_tables_names"
    return netns.run(["cat", f"/proc/net/{proc}"]).stdout.split()


def test_missing_table_is_absent_and_stays_missing(netns):
    assert xtables.table_digest(4, "nat", netns.name) == "absent"
    assert xtables.table_digest(6, "nat", netns.name) == "absent"
    assert _names(netns) == [] and _names(netns, 6) == []


def test_digest_ignores_counters_and_sees_rule_changes(netns):
    _ipt(netns, "-N", "KUBE-PORTALS-HOST")
    _ipt(netns, "-A", "KUBE-PORTALS-HOST", "-d", "198.19.0.10/32", "-p", "tcp", "-m", "tcp",
         "--dport", "80", "-m", "comment", "--comment", "default/web",
         "-j", "DNAT", "--to-destination", "198.18.1.11:8080")
    _ipt(netns, "-A", "OUTPUT", "-j", "KUBE-PORTALS-HOST")
    digest = xtables.table_digest(4, "nat", netns.name)
    assert digest not in (None, "absent")
    # Reading another, smaller table in between must not leave traces in the next digest.
    assert xtables.table_digest(4, "filter", netns.name) == "absent"
    netns.run(["iptables-legacy", "-w", "5", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"])
    assert xtables.table_digest(4, "filter", netns.name) not in (None, "absent", digest)
    assert xtables.table_digest(4, "nat", netns.name) == digest
    netns.run(["ip", "route", "add", "198.19.0.0/16", "dev", "lo"])
    netns.run(["curl", "-s", "--max-time", "0.5", "http://198.19.0.10/"], check=False)
    counted = netns.run(["iptables-legacy", "-t", "nat", "-L", "OUTPUT", "-v", "-n", "-x"]).stdout
    assert counted.splitlines()[2].split()[0] != "0"  # the counters did move
    assert xtables.table_digest(4, "nat", netns.name) == digest
    _ipt(netns, "-R", "KUBE-PORTALS-HOST", "1", "-d", "198.19.0.10/32", "-p", "tcp", "-m", "tcp",
         "--dport", "80", "-m", "comment", "--comment", "default/web",
         "-j", "DNAT", "--to-destination", "198.18.1.12:8080")
    assert xtables.table_digest(4, "nat", netns.name) not in (None, digest)


def test_ipv6_layout(netns):
    _ipt(netns, "-N", "KUBE-PORTALS-HOST", family=6)
    _ipt(netns, "-A", "KUBE-PORTALS-HOST", "-d", "fd00:198:19::40/128", "-p", "tcp", "-m", "tcp",
         "--dport", "443", "-j", "DNAT", "--to-destination", "[fd65:6467:6570::1]:61002",
         family=6)
    digest = xtables.table_digest(6, "nat", netns.name)
    assert digest not in (None, "absent")
    assert xtables.table_digest(6, "nat", netns.name) == digest
    _ipt(netns, "-A", "KUBE-PORTALS-HOST", "-p", "udp", "-j", "RETURN", family=6)
    assert xtables.table_digest(6, "nat", netns.name) not in (None, digest)
