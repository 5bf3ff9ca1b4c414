"""Readers of a namespace's live tables for the rules integration tests, built on the demo's
`Iptables` (kube-proxy itself is `edgeproxy.demo.kube_proxy.StandInKubeProxy`)."""

from __future__ import annotations

from edgeproxy.demo.kube_proxy import Iptables
from tests.support.netns import NetNS


def ipt(ns: NetNS, flavor: str, *args: str, family: int = 4, check: bool = True):
    return Iptables(ns, flavor, family)(*args, check=check)


def dump(ns: NetNS, flavor: str, family: int = 4) -> str:
    """iptables-save without the timestamp comments and counters: comparable across calls."""
    out = Iptables(ns, flavor, family).save()
    return "\n".join(line.split(" [")[0] if line.startswith(":") else line
                     for line in out.splitlines() if not line.startswith("#"))


def targets(ns: NetNS, flavor: str, chain: str, table: str = "nat", family: int = 4) -> list:
    return Iptables(ns, flavor, family).targets(chain, table)


def ours_before_kube(order: list[str]) -> bool:
    ours = [i for i, t in enumerate(order) if t.startswith(("KUBE-PORTALS", "KUBE-NODEPORT"))]
    kube = order.index("KUBE-SERVICES") if "KUBE-SERVICES" in order else len(order)
    return bool(ours) and max(ours) < kube
