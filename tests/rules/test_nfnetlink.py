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


def test_rule_digest_sees_every_rule_change(netns):
    netns.run(["nft", "-f", "-"], input=TABLE)
    digest = nfnetlink.rule_digest(4, "edgeproxy", netns=netns.name)
    assert digest and digest == nfnetlink.rule_digest(4, "edgeproxy", netns=netns.name)
    # Per chain: the empty chain digests like nothing at all, the full one does not.
    assert (nfnetlink.rule_digest(4, "edgeproxy", "other", netns=netns.name)
            == nfnetlink.rule_digest(6, "edgeproxy", netns=netns.name))
    assert nfnetlink.rule_digest(4, "edgeproxy", "KUBE-PORTALS-HOST", netns=netns.name) == digest
    handle = netns.run(["nft", "-a", "list", "chain", "ip", "edgeproxy", "KUBE-PORTALS-HOST"]
                       ).stdout.splitlines()[2].rsplit("# handle ", 1)[1]
    netns.run(["nft", "replace", "rule", "ip", "edgeproxy", "KUBE-PORTALS-HOST", "handle",
               handle, "ip", "daddr", "198.19.0.10", "tcp", "dport", "80", "dnat", "to",
               "169.254.96.17:61009", "comment", '"default/web"'])
    replaced = nfnetlink.rule_digest(4, "edgeproxy", netns=netns.name)
    assert replaced not in (None, digest)
    netns.run(["nft", "flush", "chain", "ip", "edgeproxy", "KUBE-PORTALS-HOST"])
    assert nfnetlink.rule_digest(4, "edgeproxy", netns=netns.name) not in (None, replaced)


def test_unreadable_namespace_gives_none_not_an_error():
    assert nfnetlink.generation("edgeproxy-no-such-namespace") is None
    assert nfnetlink.rule_digest(4, "edgeproxy", netns="edgeproxy-no-such-namespace") is None
