"""nfnetlink reads inside a private namespace: the generation id moves with every write and
only then; a chain's raw-rule digest moves with any rule change in it and not with a mere
re-read or a packet counter."""

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


def _digests(netns, chains, table="edgeproxy", family=4):
    return nfnetlink.chain_digests(family, table, chains, netns=netns.name)


def test_chain_digests_see_every_rule_change(netns):
    netns.run(["nft", "-f", "-"], input=TABLE)
    chains = ["KUBE-PORTALS-HOST", "other"]
    digests = _digests(netns, chains)
    assert digests and digests == _digests(netns, chains)  # a re-read changes nothing
    assert _digests(netns, chains, family=6) == {c: "absent" for c in chains}  # no ip6 table
    # A missing chain is told apart from an empty one (a rule dump alone cannot).
    per_chain = _digests(netns, ["other", "gone"])
    assert per_chain is not None and per_chain["gone"] == "absent"
    assert per_chain["other"] not in ("absent", None)
    handle = netns.run(["nft", "-a", "list", "chain", "ip", "edgeproxy", "KUBE-PORTALS-HOST"]
                       ).stdout.splitlines()[2].rsplit("# handle ", 1)[1]
    netns.run(["nft", "replace", "rule", "ip", "edgeproxy", "KUBE-PORTALS-HOST", "handle",
               handle, "ip", "daddr", "198.19.0.10", "tcp", "dport", "80", "dnat", "to",
               "169.254.96.17:61009", "comment", '"default/web"'])
    replaced = _digests(netns, chains)
    assert replaced["KUBE-PORTALS-HOST"] != digests["KUBE-PORTALS-HOST"]
    assert replaced["other"] == digests["other"]
    netns.run(["nft", "flush", "chain", "ip", "edgeproxy", "KUBE-PORTALS-HOST"])
    assert _digests(netns, chains)["KUBE-PORTALS-HOST"] not in (
        None, "absent", replaced["KUBE-PORTALS-HOST"])


def test_chain_digests_ignore_counters_of_iptables_nft_rules(netns):
    def ipt(*args):
        netns.run(["iptables-nft", "-w", "5", "-t", "nat", *args])

    chains = ["OUTPUT", "KUBE-PORTALS-HOST"]
    ipt("-N", "KUBE-PORTALS-HOST")
    ipt("-A", "KUBE-PORTALS-HOST", "-d", "198.19.0.10/32", "-p", "tcp", "-m", "tcp",
        "--dport", "80", "-j", "DNAT", "--to-destination", "198.18.1.11:8080")
    ipt("-A", "OUTPUT", "-j", "KUBE-PORTALS-HOST")
    digests = _digests(netns, chains, table="nat")
    netns.run(["ip", "route", "add", "198.19.0.0/16", "dev", "lo"])
    netns.run(["curl", "-s", "--max-time", "0.5", "http://198.19.0.10/"], check=False)
    counted = netns.run(["iptables-nft", "-t", "nat", "-L", "OUTPUT", "-v", "-n", "-x"]).stdout
    assert any(line.split()[0] not in ("0", "pkts") for line in counted.splitlines()[2:])
    assert _digests(netns, chains, table="nat") == digests
    ipt("-R", "KUBE-PORTALS-HOST", "1", "-d", "198.19.0.10/32", "-p", "tcp", "-m", "tcp",
        "--dport", "80", "-j", "DNAT", "--to-destination", "198.18.1.12:8080")
    assert _digests(netns, chains, table="nat")["KUBE-PORTALS-HOST"] != \
        digests["KUBE-PORTALS-HOST"]


def test_unreadable_namespace_gives_none_not_an_error():
    assert nfnetlink.generation("edgeproxy-no-such-namespace") is None
    assert nfnetlink.chain_digests(4, "edgeproxy", ["x"],
                                   netns="edgeproxy-no-such-namespace") is None
