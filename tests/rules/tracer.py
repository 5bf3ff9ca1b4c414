"""A packet tracer over an in-memory model of iptables tables (kube-proxy's proxier tests do the
same): push a synthetic packet through nat PREROUTING (from a pod) or OUTPUT (from the host) and
report where it is DNATed. It refuses what it does not understand (an unknown match or a jump to
a missing chain raises), so a test cannot pass by the tracer ignoring a rule.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from edgeproxy.rules.iptables_text import BUILTIN_CHAINS, Rule, Table


@dataclass(frozen=True)
class Packet:
    dst: str
    dport: int
    proto: str = "tcp"
    src: str = "198.18.2.10"
    path: str = "pod"  # "pod": arrives in PREROUTING; "host": leaves a local process, OUTPUT
    local_addrs: frozenset[str] = frozenset({"198.18.0.1", "169.254.96.17"})
    bridged: bool = False
    ctstate: frozenset[str] = frozenset()


@dataclass
class Outcome:
    verdict: str | None  # "DNAT", "ACCEPT", "DROP" or None (fell off the built-in chain)
    destination: str | None = None
    chains: list[str] = field(default_factory=list)  # chains visited, in order


class TraceError(AssertionError):
    pass


def _in(addr: str, spec: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(spec, strict=False)


def _matches(rule: Rule, pkt: Packet) -> bool:
    toks = list(rule.tokens)
    i = 0
    module = None
    while i < len(toks):
        neg = toks[i] == "!"
        if neg:
            i += 1
        tok = toks[i]
        if tok in ("-j", "-g"):
            return True
        if tok == "-m":
            module = toks[i + 1]
            i += 2
            continue
        value = toks[i + 1] if i + 1 < len(toks) else ""
        if tok == "-d":
            ok, i = _in(pkt.dst, value), i + 2
        elif tok == "-s":
            ok, i = _in(pkt.src, value), i + 2
        elif tok == "-p":
            ok, i = pkt.proto == value.lower(), i + 2
        elif tok == "--comment" and module == "comment":
            ok, i = True, i + 2
        elif tok == "--dport" and module in ("tcp", "udp"):
            low, _, high = value.partition(":")
            ok, i = pkt.proto == module and int(low) <= pkt.dport <= int(high or low), i + 2
        elif tok == "--dst-type" and module == "addrtype":
            if value != "LOCAL":
                raise TraceError(f"unsupported addrtype {value}")
            ok, i = pkt.dst in pkt.local_addrs, i + 2
        elif tok == "--physdev-is-in" and module == "physdev":
            ok, i = pkt.bridged, i + 1
        elif tok == "--ctstate" and module == "conntrack":
            ok, i = bool(set(value.split(",")) & pkt.ctstate), i + 2
        else:
            raise TraceError(f"tracer does not understand {tok!r} in {rule}")
        if ok == neg:
            return False
    return True


def trace(tables: dict[str, Table], pkt: Packet, table: str = "nat") -> Outcome:
    start = {"pod": "PREROUTING", "host": "OUTPUT"}[pkt.path]
    if table == "filter":
        start = "INPUT"
    tab = tables[table]
    outcome = Outcome(None)

    def run_chain(name: str, depth: int) -> str | None:
        if depth > 32:
            raise TraceError("jump loop")
        if name not in tab.chains:
            raise TraceError(f"jump to missing chain {name}")
        outcome.chains.append(name)
        for rule in tab.chains[name]:
            if not _matches(rule, pkt):
                continue
            target = rule.target
            if target == "DNAT":
                outcome.destination = rule.option("--to-destination")
                return "DNAT"
            if target in ("ACCEPT", "DROP"):
                return target
            if target == "RETURN":
                return None
            verdict = run_chain(target, depth + 1)
            if verdict is not None:
                return verdict
        return None

    if start not in BUILTIN_CHAINS[table]:
        raise TraceError(f"{start} is not a built-in chain of {table}")
    outcome.verdict = run_chain(start, 0)
    return outcome
