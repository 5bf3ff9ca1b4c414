"""Pure rendering of the desired state into edgeproxy's capture rules (no I/O).

`render_rules` maps service ports plus their allocated proxy ports to a `RuleSet`: kube-proxy
userspace's chains (KUBE-PORTALS-CONTAINER/-HOST, KUBE-NODEPORT-CONTAINER/-HOST in nat,
KUBE-NODEPORT-NON-LOCAL in filter) with its exact jump comments, plus EDGEPROXY-LISTEN-GUARD in
filter, for IPv4 (iptables) and IPv6 (ip6tables). Every capture DNATs to the listen address on
the edgeproxy0 dummy interface, in the container path (PREROUTING) and the host path (OUTPUT)
alike: REDIRECT would send host traffic to 127.0.0.1 (a UDP listener on the wildcard then
answers from the wrong source) and would need route_localnet from PREROUTING (CVE-2020-8558).

Rules are written in the order iptables-save prints them (base options, then matches in
insertion order, then the target), so golden files read like a real dump of the table.

Both forms come from the same model: `render_service` makes one `Capture` per captured
destination (what it is: a cluster IP, an external IP or a NodePort, and where it goes) along
with its iptables rule specs; the nftables table (`RuleSet.nft_text`) is rendered from the
captures, not by translating the iptables tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

from edgeproxy.model import ListenAddresses, Protocol, ServicePort, ServicePortKey

from .iptables_text import format_rule

PORTALS_CONTAINER = "KUBE-PORTALS-CONTAINER"
PORTALS_HOST = "KUBE-PORTALS-HOST"
NODEPORT_CONTAINER = "KUBE-NODEPORT-CONTAINER"
NODEPORT_HOST = "KUBE-NODEPORT-HOST"
NODEPORT_NON_LOCAL = "KUBE-NODEPORT-NON-LOCAL"
LISTEN_GUARD = "EDGEPROXY-LISTEN-GUARD"
KUBE_SERVICES = "KUBE-SERVICES"

# kube-proxy userspace's jump comments, verbatim (pkg/proxy/userspace/proxier.go).
PORTALS_COMMENT = "handle ClusterIPs; NOTE: this must be before the NodePort rules"
NODEPORT_COMMENT = "handle service NodePorts; NOTE: this must be the last rule in the chain"
NON_LOCAL_COMMENT = "Ensure that non-local NodePort traffic can flow"
GUARD_COMMENT = "edgeproxy: only DNATed traffic may reach the proxy listeners"

# Every chain edgeproxy owns, per table; cleanup removes exactly these and the jumps to them.
OWN_CHAINS: dict[str, tuple[str, ...]] = {
    "nat": (PORTALS_CONTAINER, PORTALS_HOST, NODEPORT_CONTAINER, NODEPORT_HOST),
    "filter": (LISTEN_GUARD, NODEPORT_NON_LOCAL),
}
ALL_OWN_CHAINS = frozenset(c for chains in OWN_CHAINS.values() for c in chains)
TABLES = ("nat", "filter")
NFT_TABLE = "edgeproxy"
NFT_PRIORITY_OFFSET = -10  # dstnat - 10: before kube-proxy's nftables dstnat chains


@dataclass(frozen=True)
class Jump:
    """A rule in a built-in chain that enters one of our chains (order within a chain matters)."""

    table: str
    chain: str
    tokens: tuple[str, ...]  # full rule spec, ending in -j TARGET

    @property
    def target(self) -> str:
        return self.tokens[-1]


# The jumps, in the order they must appear in each built-in chain, all before KUBE-SERVICES.
JUMPS: tuple[Jump, ...] = (
    Jump("nat", "PREROUTING", ("-m", "comment", "--comment", PORTALS_COMMENT,
                               "-j", PORTALS_CONTAINER)),
    Jump("nat", "PREROUTING", ("-m", "addrtype", "--dst-type", "LOCAL", "-m", "comment",
                               "--comment", NODEPORT_COMMENT, "-j", NODEPORT_CONTAINER)),
    Jump("nat", "OUTPUT", ("-m", "comment", "--comment", PORTALS_COMMENT, "-j", PORTALS_HOST)),
    Jump("nat", "OUTPUT", ("-m", "addrtype", "--dst-type", "LOCAL", "-m", "comment",
                           "--comment", NODEPORT_COMMENT, "-j", NODEPORT_HOST)),
    Jump("filter", "INPUT", ("-m", "comment", "--comment", GUARD_COMMENT, "-j", LISTEN_GUARD)),
    Jump("filter", "INPUT", ("-m", "comment", "--comment", NON_LOCAL_COMMENT,
                             "-j", NODEPORT_NON_LOCAL)),
)


# What a capture is, which decides its rules (kube-proxy userspace's rule forms).
CLUSTER_IP = "cluster-ip"  # a ClusterIP or load-balancer ingress IP: both paths, unconditional
EXTERNAL_IP = "external-ip"  # from pods when not bridged or local; from the host when local
NODE_PORT = "node-port"  # any local address, in the NodePort chains


@dataclass(frozen=True)
class Capture:
    """One destination the rules capture: the model both rule forms are rendered from, and
    what UDP conntrack flushing and the tracer read.

    ``ip`` is None for a NodePort (any local address)."""

    family: int
    protocol: str  # "tcp" | "udp"
    ip: str | None
    port: int
    destination: str  # DNAT target, "169.254.96.17:61000" or "[fd65::1]:61000"
    key: ServicePortKey
    kind: str = CLUSTER_IP  # CLUSTER_IP | EXTERNAL_IP | NODE_PORT
    # The host path's target when it differs (a port with a second listener for its
    # external traffic policy: docs/endpoints.md); None: ``destination`` on both paths.
    host_destination: str | None = None

    @property
    def host_target(self) -> str:
        return self.host_destination or self.destination

    def nft_rules(self, addr: str) -> list[tuple[str, str, str | None]]:
        """(chain, rule, unless) of this capture in the nftables table (``addr``: "ip daddr"
        or "ip6 daddr"); the rule is left out when the rule ``unless`` is in its chain too.

        ``-m physdev ! --physdev-is-in`` has no nft equivalent without br_netfilter's meta
        keys, so an external IP is captured unconditionally in the container path (see
        docs/rules.md), where its ``-m addrtype --dst-type LOCAL`` twin adds nothing; the host
        path keeps ``fib daddr type local``, which adds nothing either when the same address
        is also a cluster IP of the service port (captured unconditionally)."""
        tail = f'dnat to {self.destination} comment "{self.key.comment}"'
        host_tail = f'dnat to {self.host_target} comment "{self.key.comment}"'
        if self.kind == NODE_PORT:
            return [(NODEPORT_CONTAINER, f"{self.protocol} dport {self.port} {tail}", None),
                    (NODEPORT_HOST, f"{self.protocol} dport {self.port} {host_tail}", None)]
        match = f"{addr} {self.ip} {self.protocol} dport {self.port}"
        always = f"{match} {tail}"
        if self.kind == EXTERNAL_IP:
            return [(PORTALS_CONTAINER, always, None),
                    (PORTALS_HOST, f"{match} fib daddr type local {host_tail}",
                     f"{match} {host_tail}")]
        return [(PORTALS_CONTAINER, always, None), (PORTALS_HOST, f"{match} {host_tail}", None)]


@dataclass(frozen=True)
class RuleSet:
    """The complete rules for one desired state; compare two with ``==``."""

    listen: ListenAddresses
    families: tuple[int, ...]
    chains: Mapping[tuple[int, str], tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]]
    captures: tuple[Capture, ...] = ()
    skipped: tuple[str, ...] = field(default=(), compare=False)  # why a key got no rules
    # Formatted rule lines per (family, table): formatting 20,000 rules costs ~100 ms and the
    # same RuleSet is written again after every repair.
    _lines: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def tables(self, family: int) -> tuple[str, ...]:
        return TABLES if family in self.families else ()

    def chain_rules(self, family: int, table: str) -> dict[str, tuple[tuple[str, ...], ...]]:
        """Our chains of a table with their rule specs, in declaration order."""
        return dict(self.chains.get((family, table), ()))

    def jumps(self, table: str) -> tuple[Jump, ...]:
        return tuple(j for j in JUMPS if j.table == table)

    def restore_text(self, family: int, table: str, jump_lines: list[str] | None = None,
                     only_chains: "set[str] | None" = None) -> str:
        """iptables-restore --noflush text that rebuilds our chains of ``table``.

        The ``:CHAIN - [0:0]`` lines create or flush only our chains; nothing else is touched.
        ``jump_lines`` are the jump edits a backend computed from the live table; by default
        the jumps are inserted at the top, as on a node where they do not exist yet.
        ``only_chains`` limits the rebuild to those chains (a repair of a jump rewrites none).
        """
        body = self._lines.get((family, table))
        if body is None:
            chains = self.chain_rules(family, table)
            body = [f":{name} - [0:0]" for name in chains]
            for name, rules in chains.items():
                body += [f"-A {name} {format_rule(spec)}" for spec in rules]
            self._lines[(family, table)] = body
        if only_chains is not None:
            body = [line for line in body
                    if line.split(" ", 2)[1 if line.startswith("-A") else 0].lstrip(":")
                    in only_chains]
        lines = [f"*{table}", *body]
        if jump_lines is None:
            position: dict[str, int] = {}
            jump_lines = []
            for jump in self.jumps(table):
                position[jump.chain] = position.get(jump.chain, 0) + 1
                jump_lines.append(f"-I {jump.chain} {position[jump.chain]} "
                                  f"{format_rule(jump.tokens)}")
        lines += jump_lines
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def saved_block(self, family: int, table: str, chain: str) -> str:
        """Our rules of ``chain`` exactly as ``iptables-save`` prints them (it always quotes a
        comment), lines joined by newlines: the periodic check compares this with a slice of
        the live save text instead of parsing 20,000 rules. Cached like the restore text."""
        key = ("saved", family, table, chain)
        block = self._lines.get(key)
        if block is None:
            lines = []
            for spec in self.chain_rules(family, table).get(chain, ()):
                toks = [f'"{t}"' if i and spec[i - 1] == "--comment" else t
                        for i, t in enumerate(spec)]
                lines.append(f"-A {chain} " + " ".join(toks))
            block = self._lines[key] = "\n".join(lines)
        return block

    def nft_text(self, family: int) -> str:
        """One ``nft -f`` transaction that replaces ``table ip|ip6 edgeproxy`` atomically.

        The leading ``table`` line makes the ``delete`` valid when the table does not exist yet;
        nothing outside our own table is named. The table comment carries a digest of the body
        so the backend can tell whether the live table is ours and current.
        """
        nft_family = "ip" if family == 4 else "ip6"
        body = self._nft_body(family)
        digest = hashlib.sha256(body.encode()).hexdigest()[:16]
        head = f"table {nft_family} {NFT_TABLE}"
        return (f"{head}\ndelete {head}\n{head} {{\n\tcomment \"edgeproxy {digest}\"\n"
                f"{body}}}\n")

    def nft_digest(self, family: int) -> str:
        return hashlib.sha256(self._nft_body(family).encode()).hexdigest()[:16]

    def nft_rule_counts(self, family: int) -> dict[str, int]:
        """Rules per chain of the nft table, to recognise a table someone edited."""
        return {chain: len(rules) for chain, rules in self.nft_chain_rules(family).items()}

    def nft_chain_rules(self, family: int) -> dict[str, list[str]]:
        """The rule lines of each chain of the nft table as rendered (``nft list table``
        prints those of our KUBE-* chains identically)."""
        return {name: rules for name, _, rules in self._nft_chains(family)}

    def _nft_chains(self, family: int) -> list[tuple[str, str | None, list[str]]]:
        """(name, base-chain ``type`` line or None, rules) of every chain of the nft table."""
        key = ("nft-chains", family)
        chains = self._lines.get(key)
        if chains is None:
            chains = self._lines[key] = _nft_chains(self, family)
        return chains

    def _nft_body(self, family: int) -> str:
        key = ("nft-body", family)
        body = self._lines.get(key)
        if body is None:
            out = []
            for name, hook, rules in self._nft_chains(family):
                out.append(f"\tchain {name} {{")
                if hook is not None:
                    out.append(f"\t\t{hook}")
                out += [f"\t\t{rule}" for rule in rules]
                out.append("\t}")
            body = self._lines[key] = "\n".join(out) + "\n"
        return body


def _nft_chains(ruleset: RuleSet, family: int) -> list[tuple[str, str | None, list[str]]]:
    """The nftables table of ``family``: base chains hooking prerouting/output at dstnat - 10
    (before kube-proxy's nftables chains) and input (the listen guard), then our KUBE-* chains
    with every capture's rules in key order."""
    addr = "ip daddr" if family == 4 else "ip6 daddr"
    listen = ruleset.listen.ipv4 if family == 4 else ruleset.listen.ipv6
    prio = str(-100 + NFT_PRIORITY_OFFSET)  # dstnat (-100) - 10; "dstnat" is prerouting-only
    guard = [f'{addr} {listen} ct status & dnat == 0 drop comment "{GUARD_COMMENT}"'] \
        if listen else []
    chains: list[tuple[str, str | None, list[str]]] = [
        ("prerouting", f"type nat hook prerouting priority {prio}; policy accept;",
         [f'jump {PORTALS_CONTAINER} comment "{PORTALS_COMMENT}"',
          f'fib daddr type local jump {NODEPORT_CONTAINER} comment "{NODEPORT_COMMENT}"']),
        ("output", f"type nat hook output priority {prio}; policy accept;",
         [f'jump {PORTALS_HOST} comment "{PORTALS_COMMENT}"',
          f'fib daddr type local jump {NODEPORT_HOST} comment "{NODEPORT_COMMENT}"']),
        ("input", "type filter hook input priority filter - 10; policy accept;", guard),
    ]
    # Each rule once per chain: one service port may capture an address twice (a ClusterIP
    # also listed as an external IP), which iptables keeps as two rules.
    own: dict[str, dict[str, str | None]] = {c: {} for c in OWN_CHAINS["nat"]}
    for capture in ruleset.captures:
        if capture.family == family:
            for chain, rule, unless in capture.nft_rules(addr):
                own[chain].setdefault(rule, unless)
    return chains + [(name, None, [r for r, unless in rules.items() if unless not in rules])
                     for name, rules in own.items()]


def _family(ip: str) -> int:
    # Addresses were validated when the manifests were loaded; parsing them again with
    # ipaddress was 60% of rendering 10,000 services.
    return 6 if ":" in ip else 4


def _host(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


@dataclass(frozen=True)
class ServiceRules:
    """One service port's share of the rule set (what `render_rules` concatenates)."""

    rules: tuple[tuple[tuple[int, str, str], tuple[str, ...]], ...]  # ((fam, table, chain), spec)
    captures: tuple[Capture, ...]
    skipped: tuple[str, ...]
    families: frozenset[int]


def render_service(key: ServicePortKey, sp: ServicePort, proxy_port: int | None,
                   listen: ListenAddresses, second_port: int | None = None) -> ServiceRules:
    """The rules of one service port; keys without a proxy port (or SCTP) are not captured.

    ``second_port``: the port's second listener (``ServicePort.second_listener``): external
    addresses (external IPs, load-balancer IPs, the NodePort) go there on the paths whose
    traffic policy needs the other endpoint set; cluster IPs never do."""
    rules: list[tuple[tuple[int, str, str], tuple[str, ...]]] = []
    captures: list[Capture] = []
    skipped: list[str] = []
    families: set[int] = set()
    if key.protocol not in (Protocol.TCP, Protocol.UDP):
        return ServiceRules((), (), (f"{key}: protocol {key.protocol.value} is not proxied",),
                            frozenset())
    if proxy_port is None:
        return ServiceRules((), (), (f"{key}: no proxy port allocated",), frozenset())
    proto = key.protocol.value.lower()
    comment = key.comment
    for fam in (4, 6):
        listen_ip = listen.ipv4 if fam == 4 else listen.ipv6
        fam_vips = [ip for ip in sp.vips if _family(ip) == fam]
        fam_external = [ip for ip in sp.external_ips if _family(ip) == fam]
        has_family = bool(fam_vips or fam_external
                          or any(_family(ip) == fam for ip in sp.cluster_ips))
        if not has_family:
            continue
        if not listen_ip:
            skipped.append(f"{key}: no IPv{fam} listen address for its IPv{fam} addresses")
            continue
        families.add(fam)
        dest = f"[{listen_ip}]:{proxy_port}" if fam == 6 else f"{listen_ip}:{proxy_port}"
        second = None
        if second_port is not None and sp.second_listener:
            second = f"[{listen_ip}]:{second_port}" if fam == 6 else \
                f"{listen_ip}:{second_port}"
        # Where external addresses go: from pods (PREROUTING) by externalTrafficPolicy, from
        # the node itself by the Cluster set, as kube-proxy does (docs/endpoints.md).
        ext_pods = second if second and sp.external_from_pods_uses_second else dest
        ext_host = second if second and sp.external_from_host_uses_second else dest
        container, host = (fam, "nat", PORTALS_CONTAINER), (fam, "nat", PORTALS_HOST)

        def dnat(dst: str | None, port: int, *extra: str, to: str = dest) -> tuple[str, ...]:
            spec: list[str] = []
            if dst:
                spec += ["-d", _host(dst)]
            spec += ["-p", proto, "-m", "comment", "--comment", comment,
                     "-m", proto, "--dport", str(port), *extra,
                     "-j", "DNAT", "--to-destination", to]
            return tuple(spec)

        n_cluster = len(sp.cluster_ips)
        for i, vip in enumerate(sp.vips):  # ClusterIPs, then load-balancer ingress IPs
            if _family(vip) != fam:
                continue
            pods, node = (dest, dest) if i < n_cluster else (ext_pods, ext_host)
            rules.append((container, dnat(vip, sp.port, to=pods)))
            rules.append((host, dnat(vip, sp.port, to=node)))
            captures.append(Capture(fam, proto, vip, sp.port, pods, key,
                                    host_destination=node if node != pods else None))
        for eip in fam_external:
            # kube-proxy userspace: from pods only when not bridged or addressed to us;
            # from the host only when the address is local.
            rules.append((container, dnat(eip, sp.port, "-m", "physdev", "!",
                                          "--physdev-is-in", to=ext_pods)))
            rules.append((container, dnat(eip, sp.port, "-m", "addrtype", "--dst-type",
                                          "LOCAL", to=ext_pods)))
            rules.append((host, dnat(eip, sp.port, "-m", "addrtype", "--dst-type", "LOCAL",
                                     to=ext_host)))
            captures.append(Capture(fam, proto, eip, sp.port, ext_pods, key, EXTERNAL_IP,
                                    ext_host if ext_host != ext_pods else None))
        if sp.node_port:
            rules.append(((fam, "nat", NODEPORT_CONTAINER), dnat(None, sp.node_port,
                                                                 to=ext_pods)))
            rules.append(((fam, "nat", NODEPORT_HOST), dnat(None, sp.node_port, to=ext_host)))
            for port in sorted({proxy_port} | ({second_port} if second else set())):
                rules.append(((fam, "filter", NODEPORT_NON_LOCAL),
                              ("-d", _host(listen_ip), "-p", proto, "-m", "comment",
                               "--comment", comment, "-m", proto, "--dport", str(port),
                               "-j", "ACCEPT")))
            captures.append(Capture(fam, proto, None, sp.node_port, ext_pods, key, NODE_PORT,
                                    ext_host if ext_host != ext_pods else None))
    return ServiceRules(tuple(rules), tuple(captures), tuple(skipped), frozenset(families))


def render_rules(ports: Mapping[ServicePortKey, ServicePort],
                 proxy_ports: Mapping[ServicePortKey, int],
                 listen: ListenAddresses,
                 service_rules: Callable[[ServicePortKey, ServicePort, int | None],
                                         ServiceRules] | None = None,
                 second_ports: Mapping[ServicePortKey, int] | None = None) -> RuleSet:
    """The complete rule set: every service port's rules (`render_service`, or
    ``service_rules`` such as a cache of it) in key order, plus the listen guard.
    ``second_ports``: the second listeners' ports (see `render_service`)."""
    second_ports = second_ports or {}
    chains: dict[tuple[int, str], dict[str, list[tuple[str, ...]]]] = {}
    for fam in (4, 6):
        chains[(fam, "nat")] = {c: [] for c in OWN_CHAINS["nat"]}
        chains[(fam, "filter")] = {c: [] for c in OWN_CHAINS["filter"]}
    captures: list[Capture] = []
    skipped: list[str] = []
    used_families = {4}
    for key in sorted(ports):
        if service_rules is None:
            part = render_service(key, ports[key], proxy_ports.get(key), listen,
                                  second_ports.get(key))
        else:
            part = service_rules(key, ports[key], proxy_ports.get(key))
        for (fam, table, chain), spec in part.rules:
            chains[(fam, table)][chain].append(spec)
        captures += part.captures
        skipped += part.skipped
        used_families |= part.families
    families = tuple(sorted(used_families))
    for fam in families:
        listen_ip = listen.ipv4 if fam == 4 else listen.ipv6
        if listen_ip:
            chains[(fam, "filter")][LISTEN_GUARD].append(
                ("-d", _host(listen_ip), "-m", "conntrack", "!", "--ctstate", "DNAT",
                 "-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP"))
    frozen = {
        k: tuple((name, tuple(rules)) for name, rules in v.items())
        for k, v in chains.items() if k[0] in families
    }
    return RuleSet(listen=listen, families=families, chains=frozen,
                   captures=tuple(captures), skipped=tuple(skipped))


class RuleRenderer:
    """`render_rules` that keeps each service port's rules while its ServicePort and proxy
    port stay the same: a reload that changes one Service among 10,000 renders one (the rest
    is a comparison and a concatenation; 0.15 s -> a few tens of ms). Entries of service
    ports no longer rendered are dropped, so the cache never outgrows the desired state."""

    def __init__(self) -> None:
        self._listen: ListenAddresses | None = None
        self._cache: dict[ServicePortKey, tuple[ServicePort, tuple[int | None, int | None],
                                                ServiceRules]] = {}
        self.rendered_last = 0  # service ports actually rendered by the last call

    def __call__(self, ports: Mapping[ServicePortKey, ServicePort],
                 proxy_ports: Mapping[ServicePortKey, int],
                 listen: ListenAddresses,
                 second_ports: Mapping[ServicePortKey, int] | None = None) -> RuleSet:
        if listen != self._listen:
            self._cache.clear()
            self._listen = listen
        old, self._cache = self._cache, {}
        self.rendered_last = 0
        seconds = second_ports or {}

        def service_rules(key: ServicePortKey, sp: ServicePort,
                          proxy_port: int | None) -> ServiceRules:
            hit = old.get(key)
            ports_now = (proxy_port, seconds.get(key))
            if hit is not None and hit[1] == ports_now and (hit[0] is sp or hit[0] == sp):
                part = hit[2]
            else:
                part = render_service(key, sp, proxy_port, listen, seconds.get(key))
                self.rendered_last += 1
            self._cache[key] = (sp, ports_now, part)
            return part

        return render_rules(ports, proxy_ports, listen, service_rules)
