"""nfnetlink reads inside a private namespace: the generation id moves with every write and
only then; the raw-rule digest moves with any rule change and not with a mere re-read."""

from __future__ import annotations

from edgeproxy.rules import nfnetlink

TABLE = """table ip edgeproxy {
    chain KUBE-PORTALS-HOST {
        ip daddr 198.19.0.10 tcp dport 80 dnat to 169.254.96.17:61000 comment "default/web"
        ip daddr 198.19.0.20 tcp dport 7 dnat to 169.254.96.17:61001 comment "default/echo"
    }
    chain other { }
}
"""


def test_generation_moves_with_writes_only(netns):
    first = nfnetlink.generation(netns.name)
    assert first is not None
    assert nfnetlink.generation(netns.name) == first  # reading is not writing
    netns.run(["nft", "-f", "-"], input=TABLE)
    second = nfnetlink.generation(netns.name)
    assert second is not None and second != first
    netns.run(["nft", "list", "ruleset"])
    assert nfnetlink.generation(netns.name) == second
    # An iptables-nft write is an nf_tables write too.
    netns.run(["iptables-nft", "-t", "nat", "-N", "KUBE-SERVICES"])
    assert nfnetlink.generation(netns.name) != second


def _digest(netns, chains=None, family=4):
    return nfnetlink.rule_digest(family, "edgeproxy", chains, netns=netns.name)


def test_rule_digest_sees_every_rule_change(netns):
    netns.run(["nft", "-f", "-"], input=TABLE)
    chains = ["KUBE-PORTALS-HOST", "other"]
    digest = _digest(netns, chains)
    assert digest and digest == _digest(netns, chains)
    assert _digest(netns) not in (None, digest)  # the table in one dump: hashed differently
    assert _digest(netns, ["KUBE-PORTALS-HOST", "gone"]) not in (None, digest)
    assert _digest(netns, chains, family=6) not in (None, digest)  # no ip6 table
    # A missing chain is told apart from an empty one (a rule dump alone cannot).
    per_chain = nfnetlink.chain_digests(4, "edgeproxy", ["other", "gone"], netns=netns.name)
    assert per_chain is not None and per_chain["gone"] == "absent"
    assert per_chain["other"] not in ("absent", None)
    handle = netns.run(["nft", "-a", "list", "chain", "ip", "edgeproxy", "KUBE-PORTALS-HOST"]
                       ).stdout.splitlines()[2].rsplit("# handle ", 1)[1]
    netns.run(["nft", "replace", "rule", "ip", "edgeproxy", "KUBE-PORTALS-HOST", "handle",
               handle, "ip", "daddr", "198.19.0.10", "tcp", "dport", "80", "dnat", "to",
               "169.254.96.17:61009", "comment", '"default/web"'])
    replaced = _digest(netns, chains)
    assert replaced not in (None, digest)
    netns.run(["nft", "flush", "chain", "ip", "edgeproxy", "KUBE-PORTALS-HOST"])
    assert _digest(netns, chains) not in (None, replaced)


def test_rule_digest_ignores_counters_of_iptables_nft_rules(netns):
    def ipt(*args):
        netns.run(["iptables-nft", "-w", "5", "-t", "nat", *args])

    ipt("-N", "KUBE-PORTALS-HOST")
    ipt("-A", "KUBE-PORTALS-HOST", "-d", "198.19.0.10/32", "-p", "tcp", "-m", "tcp",
        "--dport", "80", "-j", "DNAT", "--to-destination", "198.18.1.11:8080")
    ipt("-A", "OUTPUT", "-j", "KUBE-PORTALS-HOST")
    digest = nfnetlink.rule_digest(4, "nat", ["OUTPUT", "KUBE-PORTALS-HOST"], netns=netns.name)
    netns.run(["ip", "route", "add", "198.19.0.0/16", "dev", "lo"])
    netns.run(["curl", "-s", "--max-time", "0.5", "http://198.19.0.10/"], check=False)
    counted = netns.run(["iptables-nft", "-t", "nat", "-L", "OUTPUT", "-v", "-n", "-x"]).stdout
    assert any(line.split()[0] not in ("0", "pkts") for line in counted.splitlines()[2:])
    assert nfnetlink.rule_digest(4, "nat", ["OUTPUT", "KUBE-PORTALS-HOST"],
                                 netns=netns.name) == digest
    ipt("-R", "KUBE-PORTALS-HOST", "1", "-d", "198.19.0.10/32", "-p", "tcp", "-m", "tcp",
        "--dport", "80", "-j", "DNAT", "--to-destination", "198.18.1.12:8080")
    assert nfnetlink.rule_digest(4, "nat", ["OUTPUT", "KUBE-PORTALS-HOST"],
                                 netns=netns.name) not in (None, digest)


def test_unreadable_namespace_gives_none_not_an_error():
    assert nfnetlink.generation("edgeproxy-no-such-namespace") is None
    assert nfnetlink.rule_digest(4, "edgeproxy", netns="edgeproxy-no-such-namespace") is None
