"""Cluster IPs for Services that have none: what kube-apiserver's allocator would have given them.

Owns the choice of an address from ``serviceCIDR`` for every Service that has no ``clusterIP``
(and is neither headless nor ExternalName), and writing it into edgeproxy's in-memory copy of
the object, as the API server writes ``spec.clusterIP`` into what it stores. Everything after
(the state builder, the rules, the DNS records, ``validate``, status) then sees an ordinary
ClusterIP Service. Without ``serviceCIDR`` nothing happens (opt-in).

The rule (docs/dns.md, "Cluster IPs for Services without one"), per address family:

* a Service's **home** address is ``H(namespace/name)``: SHA-256 of the text, taken modulo the
  number of usable addresses of the CIDR (network and IPv4 broadcast addresses excluded). It
  depends on nothing but the name, so every node mirroring the same directory computes the
  same address, a restart computes it again, and no other Service's presence moves it;
* an address any Service in the directory names explicitly (``clusterIP``/``clusterIPs``) is
  never given out;
* **collision**: when several Services have the same home, the one with the smallest
  ``(namespace, name)`` keeps it; a home that is an explicit address is nobody's. Every other
  Service then probes ``H(namespace/name#1)``, ``#2``, ... (in ``(namespace, name)`` order)
  for an address that is nobody's home, nobody's explicit address and not yet given out
  (after 32 probes: the next free address upwards, wrapping). Homes are given out first, so
  nobody probes into a home.

So a Service holding its home address keeps it whatever else is added, removed or renamed,
except when a new Service with the same home and a smaller ``(namespace, name)`` appears (it
is then logged and counted as an address change). A Service that already lost its home (rare:
with n Services in a range of N addresses, about n/N of them) may move when the Services
around it change, because its probe sequence competes with the other losers'.

Families (as the API server decides them): ``spec.ipFamilies`` when given, else both
configured families for ``ipFamilyPolicy: PreferDualStack|RequireDualStack``, else the first
configured family (the first CIDR is the cluster's primary family).

`allocate` and `assign` are pure; `ClusterIPAllocator` is the daemon's stateful shell: it
reuses rewritten objects (identity: the state builder's cache keeps working) and reports
address changes since its previous run.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from edgeproxy.model import FilterMode, KubeObject

from .builder import Chunk, ChunkedObjects, Ident
from .filtering import label_skips, service_vips

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HASH_PROBES = 32  # hashed probes before the linear scan (a nearly full range)


class CIDRError(ValueError):
    """``serviceCIDR`` is not one or two CIDRs of distinct families."""


@dataclass(frozen=True)
class ServiceCIDRs:
    """The configured ranges, primary family first; empty: allocation is off."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str | Sequence[str]) -> "ServiceCIDRs":
        """``"10.96.0.0/16"``, ``"10.96.0.0/16,fd00:96::/112"`` or a list of them."""
        items = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)
                 if p.strip()]
        networks: list[Network] = []
        for item in items:
            try:
                net = ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                raise CIDRError(f"{item!r} is not a CIDR ({exc})") from None
            if net.num_addresses < 4:
                raise CIDRError(f"{item} is too small to allocate from (at least 4 addresses)")
            if any(n.version == net.version for n in networks):
                raise CIDRError(f"two IPv{net.version} ranges ({networks[0]}, {item}); "
                                "give at most one per family")
            networks.append(net)
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def family(self, version: int) -> Network | None:
        return next((n for n in self.networks if n.version == version), None)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)


@dataclass(frozen=True)
class Allocation:
    """What `allocate` decided."""

    addresses: Mapping[Ident, tuple[str, ...]] = field(default_factory=dict)
    # Services that kept no address of a family they want: ident -> why (range full, family
    # not configured).
    unallocated: Mapping[Ident, str] = field(default_factory=dict)
    # Services that lost their home address: ident -> who holds it (an explicit address or
    # the Service that won it).
    displaced: Mapping[Ident, str] = field(default_factory=dict)


def needs_address(body: Mapping, mode: FilterMode = FilterMode.FILTER_IF_LABEL_EXISTS) -> bool:
    """No clusterIP/clusterIPs at all (``None`` is headless: it has one), not ExternalName, and
    not left to kube-proxy by EdgeMesh's label: an address nobody captures would only make
    the Service's DNS name lead nowhere."""
    spec = body.get("spec") or {}
    if service_vips(spec) or spec.get("type") == "ExternalName":
        return False
    return not label_skips((body.get("metadata") or {}).get("labels"), mode)


def wanted_families(spec: Mapping, cidrs: ServiceCIDRs) -> tuple[int, ...]:
    """IP versions the Service gets addresses of, primary first (see the module docstring)."""
    families = []
    for name in spec.get("ipFamilies") or ():
        version = 6 if str(name) == "IPv6" else 4 if str(name) == "IPv4" else None
        if version is not None and version not in families:
            families.append(version)
    if families:
        return tuple(families)
    configured = tuple(n.version for n in cidrs.networks)
    if spec.get("ipFamilyPolicy") in ("PreferDualStack", "RequireDualStack"):
        return configured
    return configured[:1]


def _usable(net: Network) -> int:
    # IPv4: neither the network nor the broadcast address; IPv6: not the subnet-router anycast.
    return net.num_addresses - (2 if net.version == 4 else 1)


def home_offset(key: str, net: Network) -> int:
    """1-based offset of ``key``'s address in ``net`` (``key``: "ns/name" or "ns/name#k")."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:16], "big") % _usable(net) + 1


def _address(net: Network, offset: int) -> str:
    return str(net.network_address + offset)


def allocate(requests: Iterable[tuple[Ident, tuple[int, ...]]], explicit: Iterable[str],
             cidrs: ServiceCIDRs, homes: dict | None = None) -> Allocation:
    """Addresses for ``requests`` ((namespace, name) -> families), never one of ``explicit``.

    Pure: the same requests and explicit addresses give the same result in any order.
    ``homes`` memoizes `home_offset` between calls (it changes nothing but speed)."""
    memo = homes if homes is not None else {}
    families_of = dict(requests)
    explicit_ips = set()
    for ip in explicit:
        try:
            explicit_ips.add(ipaddress.ip_address(ip))
        except ValueError:
            continue
    per_ident: dict[Ident, dict[int, str]] = {}
    unallocated: dict[Ident, str] = {}
    displaced: dict[Ident, str] = {}
    wanted: dict[int, list[Ident]] = {4: [], 6: []}
    for ident in sorted(families_of):
        for version in families_of[ident]:
            if cidrs.family(version) is None:
                unallocated[ident] = f"no IPv{version} range in serviceCIDR ({cidrs})"
            else:
                wanted[version].append(ident)
    for version, idents in wanted.items():
        net = cidrs.family(version)
        if net is None or not idents:
            continue
        base = int(net.network_address)
        reserved = {int(ip) - base for ip in explicit_ips if ip.version == version and ip in net}

        def home(key: str) -> int:
            found = memo.get((key, net))
            if found is None:
                found = memo[(key, net)] = home_offset(key, net)
            return found

        # 1. Homes: the smallest name among those sharing one keeps it (idents are sorted).
        given: dict[int, Ident] = {}
        losers = []
        for ident in idents:
            offset = home(f"{ident[0]}/{ident[1]}")
            holder = given.get(offset)
            if offset in reserved:
                displaced[ident] = f"{_address(net, offset)} is an explicit clusterIP"
            elif holder is not None:
                displaced[ident] = (f"{_address(net, offset)} is the home of "
                                    f"{holder[0]}/{holder[1]}")
            else:
                given[offset] = ident
                per_ident.setdefault(ident, {})[version] = _address(net, offset)
                continue
            losers.append(ident)
        # 2. Probes, after every home is given out: nobody probes into someone's home.
        usable = _usable(net)
        for ident in losers:
            offset = None
            for attempt in range(1, HASH_PROBES + 1):
                candidate = home(f"{ident[0]}/{ident[1]}#{attempt}")
                if candidate not in given and candidate not in reserved:
                    offset = candidate
                    break
            else:  # nearly full: the next free address upwards, wrapping
                for step in range(1, min(usable, len(given) + len(reserved) + 1) + 1):
                    probe = (candidate - 1 + step) % usable + 1
                    if probe not in given and probe not in reserved:
                        offset = probe
                        break
            if offset is None:
                unallocated[ident] = f"serviceCIDR {net} is full"
                continue
            given[offset] = ident
            per_ident.setdefault(ident, {})[version] = _address(net, offset)
    addresses = {ident: tuple(by_version[v] for v in families_of[ident] if v in by_version)
                 for ident, by_version in per_ident.items()}
    return Allocation(addresses, unallocated, displaced)


def with_cluster_ips(obj: KubeObject, ips: tuple[str, ...]) -> KubeObject:
    """A copy of Service ``obj`` whose spec names ``ips`` as the API server stores them."""
    body = dict(obj.body)
    spec = dict(body.get("spec") or {})
    spec["clusterIP"] = ips[0]
    spec["clusterIPs"] = list(ips)
    body["spec"] = spec
    return KubeObject(obj.kind, obj.api_version, obj.namespace, obj.name, obj.source, body)


@dataclass
class _ChunkSummary:
    explicit: tuple[str, ...]
    requests: tuple[tuple[tuple, Ident, tuple[int, ...]], ...]  # (order, ident, families)


def _summarize(chunk: Sequence[KubeObject], cidrs: ServiceCIDRs, mode: FilterMode
               ) -> _ChunkSummary:
    explicit: list[str] = []
    requests = []
    for obj in chunk:
        if obj.kind != "Service":
            continue
        spec = obj.body.get("spec") or {}
        vips = service_vips(spec)
        if vips:
            explicit.extend(v for v in vips if isinstance(v, str) and v != "None")
        elif needs_address(obj.body, mode):
            requests.append((obj.order, (obj.namespace, obj.name), wanted_families(spec, cidrs)))
    return _ChunkSummary(tuple(explicit), tuple(requests))


@dataclass(frozen=True)
class AddressChange:
    ident: Ident
    old: tuple[str, ...]
    new: tuple[str, ...]
    why: str | None  # the collision that moved it, when one did


class ClusterIPAllocator:
    """The daemon's allocator: `apply` per computation, serial (no lock)."""

    def __init__(self, cidrs: ServiceCIDRs,
                 filter_mode: FilterMode = FilterMode.FILTER_IF_LABEL_EXISTS) -> None:
        self.cidrs = cidrs
        self.filter_mode = FilterMode(filter_mode)
        self.allocation = Allocation()
        self.changes_total = 0
        self._summaries: dict[Chunk, _ChunkSummary] = {}
        self._rewritten: dict[Chunk, tuple[tuple, Chunk]] = {}
        self._homes: dict = {}

    def configure(self, cidrs: ServiceCIDRs, filter_mode: FilterMode) -> None:
        """New settings (SIGHUP); the next `apply` recomputes every summary."""
        if cidrs != self.cidrs or FilterMode(filter_mode) != self.filter_mode:
            self.cidrs, self.filter_mode = cidrs, FilterMode(filter_mode)
            self._summaries.clear()
            self._rewritten.clear()
            self._homes.clear()

    def apply(self, objects: Sequence[KubeObject]) -> tuple[Sequence[KubeObject],
                                                           list[AddressChange]]:
        """``objects`` with allocated Services rewritten, and the addresses that changed since
        the previous call (none on the first)."""
        if not self.cidrs:
            self.allocation = Allocation()
            return objects, []
        chunks = objects.chunks if isinstance(objects, ChunkedObjects) else (tuple(objects),)
        summaries = {}
        for chunk in chunks:
            summary = self._summaries.get(chunk)
            if summary is None:
                summary = _summarize(chunk, self.cidrs, self.filter_mode)
            summaries[chunk] = summary
        self._summaries = summaries
        explicit = [ip for s in summaries.values() for ip in s.explicit]
        first_request: dict[Ident, tuple] = {}
        for summary in summaries.values():
            for order, ident, families in summary.requests:
                seen = first_request.get(ident)
                if seen is None or order < seen[0]:  # duplicates: the builder's winner
                    first_request[ident] = (order, families)
        requests = [(ident, families) for ident, (_, families) in first_request.items()]
        previous = self.allocation
        self.allocation = allocate(requests, explicit, self.cidrs, self._homes)
        # The first allocating call compares with the empty Allocation(): no changes.
        changes = [
            AddressChange(ident, old, self.allocation.addresses.get(ident, ()),
                          self.allocation.displaced.get(ident))
            for ident, old in previous.addresses.items()
            if ident in self.allocation.addresses and self.allocation.addresses[ident] != old]
        self.changes_total += len(changes)
        return self._rewrite(chunks, objects), changes

    def _rewrite(self, chunks: Sequence[Chunk], objects: Sequence[KubeObject]
                 ) -> Sequence[KubeObject]:
        addresses = self.allocation.addresses
        rewritten: dict[Chunk, tuple[tuple, Chunk]] = {}
        out = []
        for chunk in chunks:
            summary = self._summaries[chunk]
            signature = tuple(addresses.get(ident) for _, ident, _ in summary.requests)
            cached = self._rewritten.get(chunk)
            if cached is not None and cached[0] == signature:
                new_chunk = cached[1]
            elif not any(signature):
                new_chunk = chunk
            else:
                previous = {o.source: o for o in cached[1]} if cached is not None else {}
                new_chunk = tuple(self._one(obj, addresses, previous) for obj in chunk)
            rewritten[chunk] = (signature, new_chunk)
            out.append(new_chunk)
        self._rewritten = rewritten
        if isinstance(objects, ChunkedObjects):
            return ChunkedObjects(out)
        return out[0]

    @staticmethod
    def _one(obj: KubeObject, addresses: Mapping[Ident, tuple[str, ...]],
             previous: Mapping) -> KubeObject:
        if obj.kind != "Service" or service_vips(obj.body.get("spec") or {}):
            return obj
        ips = addresses.get((obj.namespace, obj.name))
        if not ips:
            return obj
        before = previous.get(obj.source)
        if before is not None and tuple((before.body.get("spec") or {}).get("clusterIPs")
                                        or ()) == ips:
            return before  # same object as last time: the builder's cache still hits
        return with_cluster_ips(obj, ips)


def assign(objects: Iterable[KubeObject], cidrs: ServiceCIDRs,
           filter_mode: FilterMode = FilterMode.FILTER_IF_LABEL_EXISTS
           ) -> tuple[list[KubeObject], Allocation]:
    """One-shot `ClusterIPAllocator.apply` (for ``edgeproxy validate`` and tests)."""
    allocator = ClusterIPAllocator(cidrs, filter_mode)
    result, _ = allocator.apply(list(objects))
    return list(result), allocator.allocation
