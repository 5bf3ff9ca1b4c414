"""Backends against real tables inside a private network namespace (legacy, nft, nftables)."""

from __future__ import annotations

import time

import pytest

from edgeproxy.demo.kube_proxy import StandInKubeProxy
from edgeproxy.rules.backends import make_backend
from edgeproxy.rules.backends.check import CheckCounts
from edgeproxy.rules.render import render_rules
from edgeproxy.tools import LocalRunner, namespace_runner
from tests.rules import states
from tests.rules.node import dump, ipt, ours_before_kube, targets

FLAVORS = ["legacy", "nft"]


def _ruleset(ports=None):
    ports = states.full_ports() if ports is None else ports
    return render_rules(ports, states.proxy_ports_for(ports), states.LISTEN)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_apply_twice_changes_nothing_and_keeps_kube_proxy_rules(netns, flavor):
    StandInKubeProxy(netns, flavor).install()
    backend = make_backend(flavor, namespace_runner(netns.name))
    rs = _ruleset()
    backend.apply(rs)
    first = dump(netns, flavor), dump(netns, flavor, 6)
    backend.apply(rs)
    assert (dump(netns, flavor), dump(netns, flavor, 6)) == first
    assert backend.check_and_repair(rs) == []
    for chain in ("PREROUTING", "OUTPUT"):
        assert ours_before_kube(targets(netns, flavor, chain)), targets(netns, flavor, chain)
    # kube-proxy's own chain is untouched.
    assert "198.18.1.11:8080" in ipt(netns, flavor, "-t", "nat", "-S", "KUBE-SERVICES").stdout
    # IPv6 VIPs went to ip6tables with a bracketed destination.
    v6 = ipt(netns, flavor, "-t", "nat", "-S", "KUBE-PORTALS-HOST", family=6).stdout
    assert "--to-destination [fd65:6467:6570::1]:" in v6


@pytest.mark.parametrize("flavor", FLAVORS)
def test_periodic_check_of_a_right_table_compares_text_without_parsing(netns, flavor):
    StandInKubeProxy(netns, flavor).install()
    backend = make_backend(flavor, namespace_runner(netns.name))
    rs = _ruleset()
    backend.apply(rs)
    if flavor == "nft":
        # Our own write moved the generation by exactly its transactions: it vouches for
        # the table, so the first check reads no table (it takes the reference digests).
        assert backend.check_and_repair(rs) == []
        assert backend.check.counts == CheckCounts(generation=1)
        assert backend.check_and_repair(rs) == []  # nothing written since: generation
        assert backend.check.counts == CheckCounts(generation=2)
        # Someone else writes to nf_tables: our chains' raw rules are unchanged.
        ipt(netns, flavor, "-t", "nat", "-A", "KUBE-SERVICES", "-d", "198.19.0.99/32",
            "-j", "RETURN")
        assert backend.check_and_repair(rs) == []
        assert backend.check.counts == CheckCounts(generation=2, digests=1)
        # Our chain emptied behind our back: its digest says so, and it is rebuilt without
        # reading any table.
        expected = dump(netns, flavor)
        ipt(netns, flavor, "-t", "nat", "-F", "KUBE-PORTALS-HOST")
        assert backend.check_and_repair(rs) == [
            "iptables-nft nat: chain KUBE-PORTALS-HOST changed behind our back (raw-rule digest)"]
        assert backend.check.counts == CheckCounts(generation=2, digests=2)
        assert dump(netns, flavor) == expected
    else:  # legacy tables have no generation: text compared first, then the table digest
        assert backend.check_and_repair(rs) == []
        # iptables-save printed our chains exactly as RuleSet.saved_block renders them.
        assert backend.check.counts == CheckCounts(full=1) and backend.checks_parsed == 0
        assert backend.check_and_repair(rs) == []  # the table digest answers
        assert backend.check.counts == CheckCounts(digests=1, full=1)
        ipt(netns, flavor, "-t", "nat", "-F", "KUBE-PORTALS-HOST")
        assert any("KUBE-PORTALS-HOST" in r for r in backend.check_and_repair(rs))
        assert backend.check.counts == CheckCounts(digests=1, full=2)
        assert backend.checks_parsed == 1


class RecordingRunner(LocalRunner):
    """The namespace runner, remembering every iptables-restore input (still a LocalRunner,
    so the backend's in-process netlink reads run in the same namespace)."""

    def __init__(self, runner):
        super().__init__(runner.prefix, runner.netns)
        self.restores = []

    def __call__(self, argv, input=None):
        if "restore" in argv[0]:
            self.restores.append(input)
        return super().__call__(argv, input)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_one_service_changed_among_many_is_written_as_an_edit(netns, flavor):
    StandInKubeProxy(netns, flavor).install()
    runner = RecordingRunner(namespace_runner(netns.name))
    backend = make_backend(flavor, runner)
    ports = states.example_ports()
    for i in range(300):
        key = states.ServicePortKey("bulk", f"svc{i:03d}", "", states.Protocol.TCP)
        ports[key] = states.ServicePort(key, 80, (f"198.19.{1 + i // 200}.{1 + i % 200}",))
    proxy = {k: 20000 + i for i, k in enumerate(sorted(ports))}
    before = render_rules(ports, proxy, states.LISTEN)
    backend.apply(before)
    new_key = states.ServicePortKey("bulk", "added", "", states.Protocol.TCP)
    grown = {**ports, new_key: states.ServicePort(new_key, 80, ("198.19.9.9",))}
    after = render_rules(grown, {**proxy, new_key: 30000}, states.LISTEN)
    runner.restores.clear()
    backend.apply(after, previous=before)
    # One small transaction per table with changes: two inserts, no chain rebuilt.
    assert len(runner.restores) == 1
    assert runner.restores[0].count("\n-I ") == 2 and ":KUBE-" not in runner.restores[0]
    if flavor == "nft":
        # Nobody else wrote since: our own write vouches for the table, no save is read.
        generation, full = backend.check.counts.generation, backend.check.counts.full
        assert backend.check_and_repair(after) == []
        assert (backend.check.counts.generation, backend.check.counts.full) == (generation + 1,
                                                                                full)
        # Someone else writes after our write: the next check looks again.
        ipt(netns, flavor, "-t", "nat", "-D", "KUBE-PORTALS-HOST", "1")
        assert backend.check_and_repair(after) != []
    assert backend.check_and_repair(after) == []  # line for line what a full write gives

    # Someone flushed a chain: the edit is refused as a whole and the full path rebuilds.
    ipt(netns, flavor, "-t", "nat", "-F", "KUBE-PORTALS-HOST")
    backend.apply(before, previous=after)
    assert backend.check_and_repair(before) == []


@pytest.mark.parametrize("flavor", FLAVORS)
def test_kube_proxy_jump_inserted_later_at_rule_one_is_repaired(netns, flavor):
    backend = make_backend(flavor, namespace_runner(netns.name))
    rs = _ruleset()
    backend.apply(rs)
    assert backend.check_and_repair(rs) == []
    StandInKubeProxy(netns, flavor).install()  # kube-proxy (re)starts after us
    assert targets(netns, flavor, "PREROUTING")[0] == "KUBE-SERVICES"
    repairs = backend.check_and_repair(rs)
    assert any("PREROUTING" in r for r in repairs) and any("OUTPUT" in r for r in repairs)
    if flavor == "nft":  # only built-in chains changed: just they were listed and fixed
        assert backend.check.counts.digests == 1 and backend.check.counts.full == 0
    for chain in ("PREROUTING", "OUTPUT"):
        order = targets(netns, flavor, chain)
        assert ours_before_kube(order), order
        assert order.count("KUBE-SERVICES") == 1
    assert backend.check_and_repair(rs) == []


@pytest.mark.parametrize("flavor", FLAVORS)
def test_chains_deleted_behind_our_back_are_restored(netns, flavor):
    StandInKubeProxy(netns, flavor).install()
    backend = make_backend(flavor, namespace_runner(netns.name))
    rs = _ruleset()
    backend.apply(rs)
    expected = dump(netns, flavor)
    # What `kube-proxy --cleanup` (<= 1.25) or EdgeMesh's exit does to the shared names.
    for chain, target in (("PREROUTING", "KUBE-PORTALS-CONTAINER"),
                          ("OUTPUT", "KUBE-PORTALS-HOST")):
        ipt(netns, flavor, "-t", "nat", "-D", chain, "-m", "comment", "--comment",
            "handle ClusterIPs; NOTE: this must be before the NodePort rules", "-j", target)
        ipt(netns, flavor, "-t", "nat", "-F", target)
        ipt(netns, flavor, "-t", "nat", "-X", target)
    ipt(netns, flavor, "-t", "nat", "-D", "KUBE-NODEPORT-HOST", "1")  # one rule lost
    repairs = backend.check_and_repair(rs)
    assert any("KUBE-PORTALS-CONTAINER missing" in r for r in repairs), repairs
    assert any("KUBE-NODEPORT-HOST" in r for r in repairs), repairs
    assert dump(netns, flavor) == expected


@pytest.mark.parametrize("flavor", FLAVORS)
def test_restart_after_sigkill_leaves_one_copy_and_no_stale_rule(netns, flavor):
    StandInKubeProxy(netns, flavor).install()
    runner = namespace_runner(netns.name)
    old = _ruleset()
    make_backend(flavor, runner).apply(old)
    # A racing second writer (or an older edgeproxy) left extra jumps.
    ipt(netns, flavor, "-t", "nat", "-I", "PREROUTING", "1", "-j", "KUBE-PORTALS-CONTAINER")
    ipt(netns, flavor, "-t", "nat", "-A", "OUTPUT", "-j", "KUBE-PORTALS-HOST")
    # The "restarted" daemon: a fresh backend with a state where web is gone.
    ports = states.full_ports()
    del ports[states.WEB]
    new = render_rules(ports, states.proxy_ports_for(states.full_ports()), states.LISTEN)
    make_backend(flavor, runner).apply(new)
    for chain in ("PREROUTING", "OUTPUT"):
        order = targets(netns, flavor, chain)
        assert sum(t.startswith("KUBE-PORTALS") for t in order) == 1, order
        assert ours_before_kube(order), order
    nat = ipt(netns, flavor, "-t", "nat", "-S").stdout
    assert "default/web" not in nat
    assert "default/echo" in nat
    assert make_backend(flavor, runner).check_and_repair(new) == []


@pytest.mark.parametrize("flavor", FLAVORS)
def test_cleanup_restores_tables_exactly_and_twice_is_fine(netns, flavor):
    StandInKubeProxy(netns, flavor).install()
    StandInKubeProxy(netns, flavor, family=6).install()
    before = dump(netns, flavor), dump(netns, flavor, 6)
    backend = make_backend(flavor, namespace_runner(netns.name))
    backend.apply(_ruleset())
    report = backend.cleanup()
    assert report.ok and any("KUBE-PORTALS-CONTAINER" in r for r in report.removed)
    assert any(r.startswith("ip6tables") for r in report.removed)
    assert (dump(netns, flavor), dump(netns, flavor, 6)) == before
    again = backend.cleanup()
    assert again.ok and again.removed == []


def _whole_ruleset(netns) -> tuple[str, str, str]:
    """Everything the kernel holds: both legacy families and all of nf_tables (the nft flavour,
    our nftables tables and kube-proxy's)."""
    return (dump(netns, "legacy"), dump(netns, "legacy", 6),
            netns.run(["nft", "list", "ruleset"]).stdout)


def test_cleanup_after_every_backend_leaves_the_whole_ruleset_exactly_as_before(netns):
    for flavor in FLAVORS:
        StandInKubeProxy(netns, flavor).install()
        StandInKubeProxy(netns, flavor, family=6).install()
    netns.run(["nft", "-f", "-"], input=KUBE_PROXY_NFT)
    before = _whole_ruleset(netns)
    rs = _ruleset()
    runner = namespace_runner(netns.name)
    for name in ("legacy", "nft", "nftables"):  # a node that switched backends over time
        make_backend(name, runner).apply(rs)
    assert _whole_ruleset(netns) != before
    for name in ("legacy", "nft", "nftables"):
        assert make_backend(name, runner).cleanup().ok
    assert _whole_ruleset(netns) == before


def test_cleanup_on_a_bare_node_leaves_only_empty_builtin_chains(netns):
    """What is not "exactly as before": the built-in tables our rules needed stay, empty, with
    their ACCEPT policies. Legacy tables cannot be deleted at all (they live until the
    namespace does); an iptables-nft table may be in use by another writer the moment we would
    delete it, and an empty one decides nothing. kube-proxy creates the same tables anyway."""
    rs = _ruleset()
    runner = namespace_runner(netns.name)
    for name in ("legacy", "nft", "nftables"):
        make_backend(name, runner).apply(rs)
        assert make_backend(name, runner).cleanup().ok
    for family in (4, 6):
        text = dump(netns, "legacy", family)
        assert [line for line in text.splitlines() if line[:1] not in ("*", ":", "")
                and line != "COMMIT"] == [], text
        assert all(line.endswith("ACCEPT") for line in text.splitlines() if line[:1] == ":")
    ruleset = netns.run(["nft", "list", "ruleset"]).stdout
    tables = [line.split()[1:3] for line in ruleset.splitlines() if line.startswith("table ")]
    assert sorted(tables) == [["ip", "filter"], ["ip", "nat"], ["ip6", "filter"], ["ip6", "nat"]]
    body = [line.strip() for line in ruleset.splitlines()
            if line.startswith("\t") and line.strip() not in ("", "}")]
    assert body and all(line.startswith(("chain ", "type ")) and
                        ("policy accept" in line or line.startswith("chain "))
                        for line in body), ruleset


def test_removing_the_last_ipv6_service_removes_ip6tables_chains(netns):
    backend = make_backend("nft", namespace_runner(netns.name))
    backend.apply(_ruleset())
    assert "KUBE-PORTALS-HOST" in dump(netns, "nft", 6)
    backend.apply(_ruleset(states.example_ports()))
    assert "KUBE-PORTALS" not in dump(netns, "nft", 6)


def test_legacy_backend_never_creates_missing_legacy_tables(netns):
    backend = make_backend("legacy", namespace_runner(netns.name))
    assert backend.diagnose(None)  # reports missing chains...
    assert backend.cleanup().removed == []
    names = netns.run(["cat", "/proc/net/ip_tables_names"]).stdout.split()
    assert names == []  # ...without having created a single legacy table


KUBE_PROXY_NFT = """table ip kube-proxy {
    chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept;
        ip daddr 198.19.0.10 tcp dport 80 dnat to 198.18.1.11:8080; }
    chain nat-output { type nat hook output priority -100; policy accept;
        ip daddr 198.19.0.10 tcp dport 80 dnat to 198.18.1.11:8080; }
}
"""


def test_nftables_backend_runs_before_kube_proxy_table_and_leaves_it_alone(netns):
    netns.run(["nft", "-f", "-"], input=KUBE_PROXY_NFT)
    before = netns.run(["nft", "list", "table", "ip", "kube-proxy"]).stdout
    backend = make_backend("nftables", namespace_runner(netns.name))
    rs = _ruleset()
    backend.apply(rs)
    backend.apply(rs)
    assert backend.check_and_repair(rs) == []
    # Our own write established what is right (the generation moved by our transaction
    # alone): the first check is answered by the generation (and takes the reference
    # digests), no check so far needed a listing.
    assert backend.check.counts == CheckCounts(generation=1)
    netns.run(["nft", "flush", "chain", "ip", "edgeproxy", "KUBE-PORTALS-HOST"])
    assert backend.check_and_repair(rs) == [
        "nftables table ip edgeproxy: chain KUBE-PORTALS-HOST changed behind our back"]
    assert backend.check_and_repair(rs) == []
    netns.run(["nft", "delete", "table", "ip", "edgeproxy"])
    assert any("KUBE-PORTALS-CONTAINER missing" in r for r in backend.check_and_repair(rs))
    assert backend.check_and_repair(rs) == [] and backend.check.counts.full == 0
    # Without known digests (another writer raced with ours) a listing decides, and a
    # rule replaced by another one (same count) is still seen.
    backend.check.forget()
    handle = netns.run(["nft", "-a", "list", "chain", "ip", "edgeproxy", "KUBE-PORTALS-HOST"]
                       ).stdout.splitlines()[2].rsplit("# handle ", 1)[1]
    netns.run(["nft", "replace", "rule", "ip", "edgeproxy", "KUBE-PORTALS-HOST", "handle",
               handle, "ip", "daddr", "198.19.0.20", "tcp", "dport", "7", "dnat", "to",
               "198.18.1.99:7"])
    assert any("KUBE-PORTALS-HOST: 1 rule(s) differ" in r for r in backend.check_and_repair(rs))
    assert backend.check.counts.full == 1  # one listing of each family's table
    assert backend.check_and_repair(rs) == []
    assert netns.run(["nft", "list", "table", "ip", "kube-proxy"]).stdout == before
    report = backend.cleanup()
    assert report.ok and len(report.removed) == 2
    assert backend.cleanup().removed == []
    assert netns.run(["nft", "list", "tables"]).stdout.split() == ["table", "ip", "kube-proxy"]


def _serve_http(netns):
    """A listener on the listen address standing in for edgeproxy's web proxy port."""
    # The listen address on loopback (the forwarder uses a dummy edgeproxy0; some kernels, this
    # CI's included, lack the dummy driver and the rules do not care which device holds it).
    netns.run(["ip", "addr", "add", "169.254.96.17/32", "dev", "lo"])
    # Offline node: no route covers the VIPs, so connect() needs one (as the forwarder adds).
    netns.run(["ip", "route", "add", "198.19.0.0/16", "dev", "lo"])
    port = states.proxy_ports_for(states.full_ports())[states.WEB]
    proc = netns.popen(["python3", "-c", (
        "import socket\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('169.254.96.17', {port})); s.listen(8)\n"
        "while True:\n"
        "    c,_=s.accept(); c.recv(1024); c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nedgeproxy'); "
        "c.close()\n")])
    deadline = time.monotonic() + 5
    while f":{port}" not in netns.run(["ss", "-ltn"]).stdout:
        assert time.monotonic() < deadline, "stand-in listener did not start"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("backend_name", ["legacy", "nft", "nftables"])
def test_real_connection_to_vip_reaches_listener_ahead_of_kube_proxy(netns, backend_name):
    if backend_name == "nftables":
        netns.run(["nft", "-f", "-"], input=KUBE_PROXY_NFT)
    else:
        StandInKubeProxy(netns, backend_name).install()
    proc = _serve_http(netns)
    try:
        make_backend(backend_name, namespace_runner(netns.name)).apply(_ruleset())
        out = netns.run(["curl", "-s", "--max-time", "3", "http://198.19.0.10/"], check=False)
        assert out.stdout == "edgeproxy", (out.returncode, out.stderr)
        # Straight to the listen address (not DNATed): dropped by the listen guard.
        direct = netns.run(["curl", "-s", "--max-time", "1", "http://169.254.96.17:"
                            f"{states.proxy_ports_for(states.full_ports())[states.WEB]}/"],
                           check=False)
        assert direct.returncode != 0
    finally:
        proc.kill()
        proc.wait()
