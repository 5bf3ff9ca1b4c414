"""``--iptables-backend auto``: pick the backend the node's kube-proxy uses, and say why.

The order follows kube-proxy's own images (the iptables-wrapper script) with two additions:
1. kube-proxy in nftables mode owns ``table ip kube-proxy`` -> ``nftables``;
2. the kubelet's ``KUBE-IPTABLES-HINT`` / ``KUBE-KUBELET-CANARY`` chains in mangle, looked up
   with iptables-nft-save first, then iptables-legacy-save -> that flavour;
3. otherwise the flavour holding more rules (kube-proxy, CNI plugins and Docker all write);
4. otherwise (an edge node with edgecore and no kubelet chains, no rules at all) the flavour
   the node's ``iptables`` command is (``iptables -V`` says "nf_tables" or "legacy").
`decide` is pure so the logic is tested with canned command outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edgeproxy.tools import LocalRunner, Runner

log = logging.getLogger(__name__)

KUBELET_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


@dataclass(frozen=True)
class NodeFacts:
    nft_tables: str  # `nft list tables` output ("" when nft is missing)
    nft_mangle: str  # iptables-nft-save -t mangle
    legacy_mangle: str  # iptables-legacy-save -t mangle ("" when the table does not exist)
    nft_save: str  # iptables-nft-save (all tables)
    legacy_save: str  # iptables-legacy-save (existing tables only)
    iptables_version: str  # iptables -V


def _rule_count(save_text: str) -> int:
    return sum(1 for line in save_text.splitlines() if line.startswith("-A "))


def _has_chain(save_text: str, names: tuple[str, ...]) -> str | None:
    for line in save_text.splitlines():
        if line.startswith(":") and line[1:].split()[0] in names:
            return line[1:].split()[0]
    return None


def decide(facts: NodeFacts) -> tuple[str, str]:
    """(backend name, human reason)."""
    for line in facts.nft_tables.splitlines():
        if line.split()[:3] in (["table", "ip", "kube-proxy"], ["table", "ip6", "kube-proxy"]):
            return "nftables", f"kube-proxy runs in nftables mode ({line.strip()} exists)"
    chain = _has_chain(facts.nft_mangle, KUBELET_CHAINS)
    if chain:
        return "nft", f"the kubelet's {chain} chain is in iptables-nft's mangle table"
    chain = _has_chain(facts.legacy_mangle, KUBELET_CHAINS)
    if chain:
        return "legacy", f"the kubelet's {chain} chain is in iptables-legacy's mangle table"
    nft_rules, legacy_rules = _rule_count(facts.nft_save), _rule_count(facts.legacy_save)
    if legacy_rules > nft_rules:
        return "legacy", f"iptables-legacy holds more rules ({legacy_rules} vs {nft_rules} nft)"
    if nft_rules > legacy_rules:
        return "nft", f"iptables-nft holds more rules ({nft_rules} vs {legacy_rules} legacy)"
    if "legacy" in facts.iptables_version:
        return "legacy", f"no kubelet chains and no rules; `iptables -V` is legacy " \
                         f"({facts.iptables_version.strip()})"
    return "nft", f"no kubelet chains and no rules; `iptables -V` is " \
                  f"{facts.iptables_version.strip() or 'unknown'}, defaulting to nft"


def gather(runner: Runner | None = None) -> NodeFacts:
    run = runner or LocalRunner()

    def out(argv: list[str]) -> str:
        res = run(argv)
        return res.stdout if res.returncode == 0 else ""

    legacy_tables = out(["cat", "/proc/net/ip_tables_names"]).split()
    return NodeFacts(
        nft_tables=out(["nft", "list", "tables"]),
        nft_mangle=out(["iptables-nft-save", "-t", "mangle"]),
        # Never ask libiptc for a table that does not exist: that would create it.
        legacy_mangle=out(["iptables-legacy-save", "-t", "mangle"])
        if "mangle" in legacy_tables else "",
        nft_save=out(["iptables-nft-save"]),
        legacy_save=out(["iptables-legacy-save"]) if legacy_tables else "",
        iptables_version=out(["iptables", "-V"]),
    )


def detect(runner: Runner | None = None) -> tuple[str, str]:
    return decide(gather(runner))
