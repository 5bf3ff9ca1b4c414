"""kube-proxy (iptables mode) as edgeproxy meets it on a node: the one stand-in the demo, the
tests and the benchmarks use, and a reader of the node's iptables.

`StandInKubeProxy.install` leaves what kube-proxy and the kubelet leave: the kubelet's
``KUBE-IPTABLES-HINT`` chain in mangle (how kube-proxy's images and edgeproxy's ``auto`` backend
tell which iptables flavour the node uses) and ``KUBE-FIREWALL`` jumped to from filter INPUT; a
nat ``KUBE-SERVICES`` chain with one DNAT per service, jumped to from PREROUTING and OUTPUT at
rule 1, inserted only when ``-C`` finds it missing (as kube-proxy does: nobody moves an
existing jump). `sync` is kube-proxy rewriting its own chain (its jumps untouched);
`jump_ahead` is kube-proxy restarted after a flush, re-inserting its jump at rule 1, ahead of
edgeproxy's ("whoever inserted last wins").
"""

from __future__ import annotations

import subprocess
from typing import Sequence

from edgeproxy.demo.netns import NetNS

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_JUMP = ("-m", "comment", "--comment", "kubernetes service portals", "-j", KUBE_SERVICES)
# (cluster IP, port, endpoint IP, endpoint port); kube-proxy's idea of a web service whose pod
# does not exist, so that traffic reaching it instead of edgeproxy fails visibly.
Service = tuple[str, int, str, int]
DEFAULT_SERVICES: dict[int, tuple[Service, ...]] = {
    4: (("198.19.0.10", 80, "198.18.1.11", 8080),),
    6: (("fd00:198:19::10", 80, "fd00:198:18::11", 8080),),
}


class Iptables:
    """One iptables command of the node (flavour: None for plain ``iptables``, "legacy",
    "nft"; family 4 or 6), run inside a namespace."""

    def __init__(self, ns: NetNS, flavor: str | None = None, family: int = 4) -> None:
        self.ns = ns
        base = "iptables" if family == 4 else "ip6tables"
        self.tool = base if flavor is None else f"{base}-{flavor}"
        self.family = family

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.ns.run([self.tool, "-w", "5", *args], check=check)

    def targets(self, chain: str, table: str = "nat") -> list[str]:
        """Targets of the rules in ``chain``, in order (e.g. ['KUBE-PORTALS-CONTAINER', ...])."""
        found = []
        for line in self("-t", table, "-S", chain).stdout.splitlines():
            parts = line.split()
            if parts[:1] == ["-A"] and "-j" in parts:
                found.append(parts[parts.index("-j") + 1])
        return found

    def listing(self, *chains: str, table: str = "nat") -> str:
        """The real ``iptables -t TABLE -nvL [CHAIN]`` output (all chains when none given)."""
        if not chains:
            return self("-t", table, "-nvL").stdout
        return "\n".join(self("-t", table, "-nvL", c).stdout for c in chains)

    def save(self, table: str | None = None) -> str:
        """``iptables-save`` of one table, or of all."""
        argv = [f"{self.tool}-save"] + (["-t", table] if table else [])
        return self.ns.run(argv).stdout


class StandInKubeProxy:
    """kube-proxy's footprint in iptables (see the module docstring)."""

    def __init__(self, ns: NetNS, flavor: str | None = None, family: int = 4) -> None:
        self.iptables = Iptables(ns, flavor, family)
        self.family = family

    def install(self, services: Sequence[Service] | None = None) -> "StandInKubeProxy":
        ipt = self.iptables
        ipt("-t", "mangle", "-N", "KUBE-IPTABLES-HINT", check=False)
        ipt("-t", "filter", "-N", "KUBE-FIREWALL", check=False)
        self._ensure_jump("filter", "INPUT", ("-j", "KUBE-FIREWALL"))
        self.sync(DEFAULT_SERVICES[self.family] if services is None else services)
        for chain in ("PREROUTING", "OUTPUT"):
            self._ensure_jump("nat", chain, KUBE_JUMP)
        return self

    def _ensure_jump(self, table: str, chain: str, rule: Sequence[str]) -> None:
        if self.iptables("-t", table, "-C", chain, *rule, check=False).returncode != 0:
            self.iptables("-t", table, "-I", chain, "1", *rule)

    def sync(self, services: Sequence[Service]) -> None:
        """kube-proxy writing its own chain: one DNAT per service appended to KUBE-SERVICES
        (created when missing); the jumps into it are left as they are."""
        host = "/32" if self.family == 4 else "/128"
        self.iptables("-t", "nat", "-N", KUBE_SERVICES, check=False)
        for vip, port, target, target_port in services:
            to = f"{target}:{target_port}" if self.family == 4 else f"[{target}]:{target_port}"
            self.iptables("-t", "nat", "-A", KUBE_SERVICES, "-d", f"{vip}{host}", "-p", "tcp",
                          "-m", "tcp", "--dport", str(port), "-m", "comment", "--comment",
                          "stand-in kube-proxy", "-j", "DNAT", "--to-destination", to)

    def jump_ahead(self) -> None:
        """kube-proxy restarted after a flush: its jump is re-inserted at position 1, ahead of
        edgeproxy's (nobody moves an existing jump; whoever inserted last wins)."""
        for chain in ("PREROUTING", "OUTPUT"):
            while self.iptables("-t", "nat", "-D", chain, *KUBE_JUMP,
                                check=False).returncode == 0:
                pass
            self.iptables("-t", "nat", "-I", chain, "1", *KUBE_JUMP)
