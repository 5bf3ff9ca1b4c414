"""The cluster zone from the mirrored objects: every name and record the DNS server answers.

Pure: `build_zone` turns Services and their EndpointSlices (or Endpoints) into a `Zone`, as
the Kubernetes DNS-Based Service Discovery specification 1.1.0 and CoreDNS's *kubernetes*
plugin define them (docs/dns.md has the table):

* ClusterIP Service ``svc`` in ``ns``: ``svc.ns.svc.<zone>`` A/AAAA per cluster IP (every
  family of ``clusterIPs``); SRV ``_port._proto.svc.ns.svc.<zone>`` per named port (target
  the service name, the service port) and, as CoreDNS does, SRV of every port on the service
  name itself; PTR of each cluster IP;
* headless Service: A/AAAA per ready endpoint address (none ready: the name does not exist,
  NXDOMAIN, as the specification says); SRV per (ready endpoint, port) with the endpoint's
  name as target and the endpoint port (what a client of a headless service dials);
* every ready endpoint of a Service (headless or not, as CoreDNS): ``host.svc.ns.svc.<zone>``
  A/AAAA, ``host`` being the endpoint's ``hostname`` or its address with dashes
  (``198-18-1-11``, ``fd00--1``), and PTR of the address (a cluster IP's PTR wins);
* ExternalName: CNAME to ``externalName`` (an IP literal there is no name: nothing, as CoreDNS);
* ``dns-version.<zone>`` TXT "1.1.0"; the apex SOA and NS (``ns.dns.<zone>``, the DNS
  server's own addresses).

Ready: ``conditions.ready`` unset or true (slices), listed in ``addresses`` (Endpoints); every
endpoint when the Service has ``publishNotReadyAddresses: true`` or the old
``service.alpha.kubernetes.io/tolerate-unready-endpoints: "true"``. Slices are the Service's
when labelled ``kubernetes.io/service-name``, else its Endpoints object (as the state builder
matches them). Duplicates: the object with the smallest (file, document) wins, as everywhere.

Names are lowercase; every ancestor of a name inside the zone exists too (empty
non-terminals, namespaces with a Service, ``svc.<zone>``) so that the server answers NODATA
for them, never NXDOMAIN (RFC 8020). `ZoneBuilder` caches each Service's records by object
identity, like the state builder, so a reload of one file among 10,000 services rebuilds one
Service's records plus the merge.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Iterable, Mapping, NamedTuple

from edgeproxy.model import KubeObject

from edgeproxy.state.builder import group_objects
from edgeproxy.state.filtering import is_headless, service_vips

SCHEMA_VERSION = "1.1.0"  # kubernetes/dns docs/specification.md
VERSION_TTL = 28800  # the specification's example and CoreDNS's
DEFAULT_TTL = 5  # CoreDNS kubernetes plugin
MAX_TTL = 3600  # CoreDNS caps its ttl option here
TOLERATE_UNREADY = "service.alpha.kubernetes.io/tolerate-unready-endpoints"

# Record types, as numbers (RFC 1035 and successors): the wire's and dnslib's QTYPE values.
A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 16, 28, 33

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ORDER = attrgetter("order")

Rdata = object  # str (address, name, text) or (priority, weight, port, target) for SRV


@dataclass(frozen=True)
class Zone:
    """One generation of the cluster zone. ``records``: name -> type -> rdata tuple;
    ``names``: every name that exists (with or without records of its own)."""

    domain: str  # "cluster.local", lowercase, no trailing dot
    ttl: int
    records: Mapping[str, Mapping[int, tuple[Rdata, ...]]] = field(default_factory=dict)
    names: frozenset[str] = frozenset()
    serial: int = 1
    # name -> (namespace, service): whose records these are, for status and tests.
    owners: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def lookup(self, name: str) -> Mapping[int, tuple[Rdata, ...]] | None:
        """Records of ``name`` (lowercase); {} for a name with none; None when it does not exist."""
        found = self.records.get(name)
        if found is not None:
            return found
        return {} if name in self.names else None

    @property
    def service_count(self) -> int:
        return len(set(self.owners.values()))


def endpoint_label(ip: str, hostname: str | None) -> str:
    """The endpoint's name below its Service: its hostname, else the address with dashes
    (CoreDNS's endpointHostname: ``198-18-1-11``, ``fd00--1``, ``fd00--`` ends with ``0``)."""
    if hostname and _LABEL.match(hostname.lower()):
        return hostname.lower()
    if ":" in ip:
        dashed = ip.replace(":", "-")
        return dashed + "0" if dashed.endswith("-") else dashed
    return ip.replace(".", "-")


def _canonical(ip: object) -> str | None:
    try:
        return str(ipaddress.ip_address(str(ip)))
    except ValueError:
        return None


def _external_name(value: object) -> str | None:
    """ExternalName target as a name, or None (empty, an IP literal, not a domain name)."""
    if not isinstance(value, str):
        return None
    name = value.strip().rstrip(".").lower()
    if not name or _canonical(name) is not None or len(name) > 253:
        return None
    if not all(_LABEL.match(label) or label == "*" or label.startswith("_") and label[1:]
               for label in name.split(".")):
        return None
    return name


class _Endpoint(NamedTuple):
    ip: str
    label: str


class _Port(NamedTuple):
    name: str
    protocol: str
    number: int


def _ports(entries: Iterable[dict] | None) -> list[_Port]:
    """The numbered entries of a Service's, slice's or subset's ``ports`` (API defaults)."""
    return [_Port(p.get("name") or "", p.get("protocol") or "TCP", int(p["port"]))
            for p in entries or [] if p.get("port")]


def _publish_not_ready(svc: KubeObject) -> bool:
    spec = svc.body.get("spec") or {}
    annotations = (svc.body.get("metadata") or {}).get("annotations") or {}
    return spec.get("publishNotReadyAddresses") is True or \
        str(annotations.get(TOLERATE_UNREADY, "")).lower() == "true"


def _from_slices(slices: Iterable[KubeObject], all_endpoints: bool
                 ) -> tuple[list[_Endpoint], list[_Port]]:
    endpoints: list[_Endpoint] = []
    ports: list[_Port] = []
    for s in slices:
        body = s.body
        if body.get("addressType") == "FQDN":
            continue
        ports += _ports(body.get("ports"))
        for ep in body.get("endpoints") or []:
            if not all_endpoints and (ep.get("conditions") or {}).get("ready") is False:
                continue
            for address in ep.get("addresses") or []:
                ip = _canonical(address)
                if ip is not None:
                    endpoints.append(_Endpoint(ip, endpoint_label(ip, ep.get("hostname"))))
    return endpoints, ports


def _from_endpoints(obj: KubeObject, all_endpoints: bool
                    ) -> tuple[list[_Endpoint], list[_Port]]:
    endpoints: list[_Endpoint] = []
    ports: list[_Port] = []
    for subset in obj.body.get("subsets") or []:
        addresses = list(subset.get("addresses") or [])
        if all_endpoints:
            addresses += subset.get("notReadyAddresses") or []
        for address in addresses:
            ip = _canonical(address.get("ip"))
            if ip is not None:
                endpoints.append(_Endpoint(ip, endpoint_label(ip, address.get("hostname"))))
        ports += _ports(subset.get("ports"))
    return endpoints, ports


def _srv_weight(count: int) -> int:
    return max(1, 100 // max(1, count))  # CoreDNS: the 100 spread over a priority's records


def _srv_name(port: _Port, base: str) -> str | None:
    """``_port._proto.base`` for a named port whose name is a label (unnamed: no SRV)."""
    if not port.name or not _LABEL.match(port.name.lower()):
        return None
    return f"_{port.name.lower()}._{port.protocol.lower()}.{base}"


class _Result(NamedTuple):
    """One Service's contribution: (name, type, rdata) records, PTR claims of its cluster
    IPs (which win over endpoint PTRs), and the names that exist without records."""

    records: tuple[tuple[str, int, Rdata], ...]
    cluster_ptrs: tuple[tuple[str, str], ...]
    endpoint_ptrs: tuple[tuple[str, str], ...]
    names: tuple[str, ...]


def service_records(svc: KubeObject, slices: tuple[KubeObject, ...],
                    endpoints_obj: KubeObject | None, domain: str, ttl: int) -> _Result:
    """Every record one Service contributes (see the module docstring)."""
    spec = svc.body.get("spec") or {}
    base = f"{svc.name}.{svc.namespace}.svc.{domain}".lower()
    records: list[tuple[str, int, Rdata]] = []
    cluster_ptrs: list[tuple[str, str]] = []
    endpoint_ptrs: list[tuple[str, str]] = []
    if spec.get("type") == "ExternalName":
        target = _external_name(spec.get("externalName"))
        if target is None:
            return _Result((), (), (), ())
        return _Result(((base, CNAME, target),), (), (), (base,))
    all_endpoints = _publish_not_ready(svc)
    if slices:
        ready, endpoint_ports = _from_slices(slices, all_endpoints)
    elif endpoints_obj is not None:
        ready, endpoint_ports = _from_endpoints(endpoints_obj, all_endpoints)
    else:
        ready, endpoint_ports = [], []
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in ready:
        if (ep.ip, ep.label) not in seen:
            seen.add((ep.ip, ep.label))
            unique.append(ep)
    names = [base]
    for ep in unique:  # endpoint names, for headless and ClusterIP Services alike
        host = f"{ep.label}.{base}"
        records.append((host, AAAA if ":" in ep.ip else A, ep.ip))
        endpoint_ptrs.append((ipaddress.ip_address(ep.ip).reverse_pointer, host))
    vips = service_vips(spec)
    if is_headless(spec, vips):  # the name is its ready endpoints
        if not unique:
            return _Result((), (), (), ())  # NXDOMAIN (specification 2.4.1)
        for ip in sorted({ep.ip for ep in unique}):
            records.append((base, AAAA if ":" in ip else A, ip))
        ports = sorted(set(endpoint_ports))
        hosts = sorted({f"{ep.label}.{base}" for ep in unique})
        by_name: dict[str, list] = defaultdict(list)
        for port in ports:
            srv_name = _srv_name(port, base)
            for host in hosts:
                by_name[base].append((port.number, host))
                if srv_name:
                    by_name[srv_name].append((port.number, host))
        for name, targets in by_name.items():
            for number, host in targets:
                records.append((name, SRV, (0, _srv_weight(len(targets)), number, host)))
        return _Result(tuple(records), (), tuple(endpoint_ptrs), tuple(names))
    ips = [ip for ip in (_canonical(v) for v in vips) if ip is not None]
    for ip in ips:
        records.append((base, AAAA if ":" in ip else A, ip))
        cluster_ptrs.append((ipaddress.ip_address(ip).reverse_pointer, base))
    if ips:
        service_ports = sorted(set(_ports(spec.get("ports"))))
        for port in service_ports:
            records.append((base, SRV, (0, _srv_weight(len(service_ports)), port.number, base)))
            srv_name = _srv_name(port, base)
            if srv_name:
                records.append((srv_name, SRV, (0, 100, port.number, base)))
    return _Result(tuple(records), tuple(cluster_ptrs), tuple(endpoint_ptrs), tuple(names))


class _Deps(NamedTuple):
    slices: tuple[KubeObject, ...]
    endpoints: KubeObject | None
    domain: str
    ttl: int


class ZoneBuilder:
    """Builds `Zone`s from successive object sets, reusing each unchanged Service's records
    (keys are the objects themselves: the catalog hands out the same instances while a file
    is unchanged). One caller, serial builds, as the state builder's cache."""

    def __init__(self) -> None:
        self._cache: dict[KubeObject, tuple[_Deps, _Result]] = {}
        self._last_key: tuple | None = None
        self._last: Zone | None = None
        self._last_objects: list[KubeObject] = []  # keeps the ids in _last_key unique

    def build(self, objects: Iterable[KubeObject], domain: str, ttl: int,
              serial: int = 1, ns_addresses: tuple[str, ...] = ()) -> Zone:
        objects = list(objects)
        key = (tuple(map(id, objects)), domain, ttl, ns_addresses)
        if key == self._last_key and self._last is not None:
            return self._last  # nothing changed: same Zone, same serial
        groups = group_objects(objects)  # the same winners and slice owners as the proxy's
        services = groups.winners["Service"]
        endpoints = groups.winners["Endpoints"]
        slices = groups.slices
        cache: dict[KubeObject, tuple[_Deps, _Result]] = {}
        results = []
        for svc in sorted(services.values(), key=_ORDER):
            ident = (svc.namespace, svc.name)
            deps = _Deps(tuple(sorted(slices.get(ident, ()), key=_ORDER)),
                         endpoints.get(ident), domain, ttl)
            entry = self._cache.get(svc)
            if entry is None or entry[0] != deps:
                entry = (deps, service_records(svc, deps.slices, deps.endpoints, domain, ttl))
            cache[svc] = entry
            results.append((ident, entry[1]))
        self._cache = cache
        zone = merge(results, domain, ttl, serial, ns_addresses)
        self._last_key, self._last, self._last_objects = key, zone, objects
        return zone


def merge(results: Iterable[tuple[tuple[str, str], _Result]], domain: str, ttl: int,
          serial: int = 1, ns_addresses: tuple[str, ...] = ()) -> Zone:
    """One Zone from per-Service results given in source order (the first claim of a name's
    CNAME or of a cluster IP's PTR wins)."""
    records: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    owners: dict[str, tuple[str, str]] = {}
    names: set[str] = set()
    cluster_ptr: dict[str, str] = {}
    endpoint_ptr: dict[str, list[str]] = defaultdict(list)
    namespaces: set[str] = set()
    for ident, result in results:
        namespaces.add(ident[0].lower())
        for name, rtype, rdata in result.records:
            if name in owners and owners[name] != ident:
                continue  # the same name from two Services: the earlier source's
            owners[name] = ident
            bucket = records[name][rtype]
            if rdata not in bucket:
                bucket.append(rdata)
        for name in result.names:
            owners.setdefault(name, ident)
            names.add(name)
        for rname, target in result.cluster_ptrs:
            cluster_ptr.setdefault(rname, target)
        for rname, target in result.endpoint_ptrs:
            if target not in endpoint_ptr[rname]:
                endpoint_ptr[rname].append(target)
    for rname, targets in endpoint_ptr.items():
        if rname not in cluster_ptr:
            records[rname][PTR] = targets
    for rname, target in cluster_ptr.items():
        records[rname][PTR] = [target]
    apex = domain
    records[f"dns-version.{apex}"][TXT] = [SCHEMA_VERSION]
    ns_name = f"ns.dns.{apex}"
    records[apex][NS] = [ns_name]
    for ip in ns_addresses:
        records[ns_name][AAAA if ":" in ip else A].append(ip)
    names.add(ns_name)
    frozen = {name: {t: tuple(v) for t, v in by_type.items()}
              for name, by_type in records.items()}
    # Every ancestor inside the zone exists (empty non-terminals): NODATA, not NXDOMAIN.
    suffix = "." + apex
    for name in list(frozen) + list(names):
        if not name.endswith(suffix):
            continue  # reverse names: the reverse zones are not ours to deny
        labels = name[:-len(suffix)].split(".")
        for i in range(1, len(labels)):
            names.add(".".join(labels[i:]) + suffix)
    names.update(f"{ns}.svc{suffix}" for ns in namespaces)
    names.update({f"svc{suffix}", f"pod{suffix}", f"dns{suffix}"})
    names.update(frozen)
    return Zone(domain=apex, ttl=ttl, records=frozen, names=frozenset(names), serial=serial,
                owners=owners)


def build_zone(objects: Iterable[KubeObject], domain: str = "cluster.local",
               ttl: int = DEFAULT_TTL, serial: int = 1,
               ns_addresses: tuple[str, ...] = ()) -> Zone:
    """The zone of ``objects`` (a fresh `ZoneBuilder` each call)."""
    return ZoneBuilder().build(objects, domain.lower().rstrip("."), ttl, serial, ns_addresses)
