"""Backend auto-detection from canned command outputs (kube-proxy's iptables-wrapper order)."""

from __future__ import annotations

from edgeproxy.tools import Result
from edgeproxy.rules.backends.detect import NodeFacts, decide, gather

EMPTY = NodeFacts("", "", "", "", "", "iptables v1.8.9 (nf_tables)")
HINT = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
CANARY = "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"


def _rules(n: int) -> str:
    return "*filter\n" + "".join(f"-A INPUT -s 198.18.0.{i}/32 -j ACCEPT\n" for i in range(n))


def test_kube_proxy_nftables_table_wins():
    facts = NodeFacts("table ip filter\ntable ip kube-proxy\n", HINT, "", _rules(3), "",
                      "iptables v1.8.9 (legacy)")
    name, reason = decide(facts)
    assert name == "nftables" and "kube-proxy" in reason


def test_kubelet_hint_chains_pick_the_flavour():
    assert decide(EMPTY.__class__(**{**EMPTY.__dict__, "nft_mangle": HINT}))[0] == "nft"
    legacy = decide(EMPTY.__class__(**{**EMPTY.__dict__, "legacy_mangle": CANARY,
                                       "nft_save": _rules(50)}))
    assert legacy[0] == "legacy" and "KUBE-KUBELET-CANARY" in legacy[1]


def test_rule_counts_then_iptables_version():
    more_legacy = NodeFacts("", "", "", _rules(2), _rules(9), "iptables v1.8.9 (nf_tables)")
    assert decide(more_legacy) == ("legacy",
                                   "iptables-legacy holds more rules (9 vs 2 nft)")
    more_nft = NodeFacts("", "", "", _rules(4), _rules(1), "iptables v1.8.9 (legacy)")
    assert decide(more_nft)[0] == "nft"
    assert decide(NodeFacts("", "", "", "", "", "iptables v1.8.7 (legacy)"))[0] == "legacy"
    name, reason = decide(EMPTY)
    assert name == "nft" and "iptables -V" in reason


def test_gather_never_reads_a_legacy_table_that_does_not_exist():
    calls = []

    def runner(argv, input=None):
        calls.append(list(argv))
        if argv[0] == "cat":
            return Result(0, "", "")  # no legacy tables at all
        if argv[:2] == ["iptables", "-V"]:
            return Result(0, "iptables v1.8.9 (nf_tables)\n", "")
        return Result(0, "", "")

    facts = gather(runner)
    assert not any(c[0] == "iptables-legacy-save" for c in calls), calls
    assert facts.iptables_version.startswith("iptables v1.8.9")
