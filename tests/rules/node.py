"""Namespace helpers for the rules integration tests: a stand-in kube-proxy, readers of the
live tables, and a dump to compare tables before/after."""

from __future__ import annotations

from tests.support.netns import NetNS

KUBE_JUMP = ("-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES")


def ipt(ns: NetNS, flavor: str, *args: str, family: int = 4, check: bool = True):
    tool = f"{'iptables' if family == 4 else 'ip6tables'}-{flavor}"
    return ns.run([tool, "-w", "5", *args], check=check)


def install_kube_proxy(ns: NetNS, flavor: str, family: int = 4, at_top: bool = True) -> None:
    """kube-proxy (iptables mode): KUBE-SERVICES jumped to from PREROUTING/OUTPUT at rule 1 and
    one DNAT of 198.19.0.10:80 to a backend that does not exist; a filter chain too."""
    vip, dest = (("198.19.0.10/32", "198.18.1.11:8080") if family == 4
                 else ("fd00:198:19::10/128", "[fd00:198:18::11]:8080"))
    ipt(ns, flavor, "-t", "nat", "-N", "KUBE-SERVICES", family=family, check=False)
    ipt(ns, flavor, "-t", "nat", "-A", "KUBE-SERVICES", "-d", vip, "-p", "tcp", "-m", "tcp",
        "--dport", "80", "-j", "DNAT", "--to-destination", dest, family=family)
    ipt(ns, flavor, "-t", "filter", "-N", "KUBE-FIREWALL", family=family, check=False)
    ipt(ns, flavor, "-t", "filter", "-I", "INPUT", "1", "-j", "KUBE-FIREWALL", family=family)
    for chain in ("PREROUTING", "OUTPUT"):
        if at_top:
            ipt(ns, flavor, "-t", "nat", "-I", chain, "1", *KUBE_JUMP, family=family)
        else:
            ipt(ns, flavor, "-t", "nat", "-A", chain, *KUBE_JUMP, family=family)


def dump(ns: NetNS, flavor: str, family: int = 4) -> str:
    """iptables-save without the timestamp comments and counters: comparable across calls."""
    tool = f"{'iptables' if family == 4 else 'ip6tables'}-{flavor}-save"
    out = ns.run([tool]).stdout
    return "\n".join(line.split(" [")[0] if line.startswith(":") else line
                     for line in out.splitlines() if not line.startswith("#"))


def targets(ns: NetNS, flavor: str, chain: str, table: str = "nat", family: int = 4) -> list:
    out = ipt(ns, flavor, "-t", table, "-S", chain, family=family).stdout.splitlines()
    return [line.split()[-1] for line in out if line.startswith("-A") and " -j " in line]


def ours_before_kube(order: list[str]) -> bool:
    ours = [i for i, t in enumerate(order) if t.startswith(("KUBE-PORTALS", "KUBE-NODEPORT"))]
    kube = order.index("KUBE-SERVICES") if "KUBE-SERVICES" in order else len(order)
    return bool(ours) and max(ours) < kube
