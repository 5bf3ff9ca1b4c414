"""The answer decision: one question against the cluster `Zone` (pure, no wire format).

`decide` returns what to answer, as plain data the server encodes:

* inside the cluster domain, always authoritative (AA), never forwarded: the records of the
  name (CNAME of an ExternalName for any type, with a note to resolve its target), NODATA
  (NOERROR, no answer, the SOA in the authority section) when the name exists without
  records of that type, NXDOMAIN with the SOA when it does not exist. Search-path
  expansions of cluster names (``web.default.svc.cluster.local.svc.cluster.local``, asked
  by pods with ``ndots:5``) are names inside the domain that do not exist: NXDOMAIN at once,
  without touching the upstreams. Zone transfers are refused (as CoreDNS);
* reverse names (``in-addr.arpa``, ``ip6.arpa``) of cluster IPs and endpoint addresses: PTR;
  other reverse names are not ours (CoreDNS's default ``fallthrough in-addr.arpa ip6.arpa``):
  forwarded;
* everything else: forwarded.

TTLs: the zone's (CoreDNS's 5 s by default), the SOA's min(ttl, 300) with ``minimum`` = ttl,
so a negative answer is cached as long as a positive one; ``dns-version`` 28800 s.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT, VERSION_TTL, Zone

# Response codes (RFC 1035 4.1.1), the one definition the wire format and the cache import.
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
AXFR, IXFR, ANY = 252, 251, 255
CLASS_IN, CLASS_ANY = 1, 255
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")

Record = tuple[str, int, int, object]  # (owner, type, ttl, rdata)


@dataclass(frozen=True)
class Decision:
    rcode: int = NOERROR
    authoritative: bool = False
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    forward: bool = False  # not ours: ask the upstreams
    chase: str | None = None  # an ExternalName's target to resolve upstream and append

    @property
    def result(self) -> str:
        """For the metrics: answer, nodata, nxdomain, refused, forward."""
        if self.forward:
            return "forward"
        if self.rcode == NXDOMAIN:
            return "nxdomain"
        if self.rcode == REFUSED:
            return "refused"
        if self.rcode == NOERROR and not self.answer:
            return "nodata"
        return "answer" if self.rcode == NOERROR else "error"


FORWARD = Decision(forward=True)


def _in(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def soa_record(zone: Zone, apex: str | None = None) -> Record:
    apex = apex or zone.domain
    return (apex, SOA, min(zone.ttl, 300),
            (f"ns.dns.{zone.domain}", f"hostmaster.{zone.domain}", zone.serial, 7200, 1800,
             86400, zone.ttl))


def _ttl(zone: Zone, name: str, rtype: int) -> int:
    return VERSION_TTL if rtype == TXT and name == f"dns-version.{zone.domain}" else zone.ttl


def _records(zone: Zone, name: str, by_type, qtype: int) -> tuple[Record, ...]:
    types = [t for t in by_type if t != CNAME] if qtype == ANY else [qtype]
    return tuple((name, t, _ttl(zone, name, t), rdata)
                 for t in types for rdata in by_type.get(t, ()))


def _addresses(zone: Zone, target: str) -> tuple[Record, ...]:
    """A/AAAA of an in-zone name, for the additional section (SRV targets, NS)."""
    by_type = zone.lookup(target) or {}
    return tuple((target, t, zone.ttl, ip) for t in (A, AAAA) for ip in by_type.get(t, ()))


def decide(zone: Zone | None, qname: str, qtype: int, qclass: int = CLASS_IN) -> Decision:
    """What to answer for ``qname`` (lowercase, no trailing dot) ``qtype``/``qclass``."""
    if zone is None:
        return FORWARD
    reverse = next((r for r in REVERSE_ZONES if _in(qname, r)), None)
    if reverse is not None:
        by_type = zone.records.get(qname)
        if by_type is None or PTR not in by_type:
            return FORWARD
        if qclass not in (CLASS_IN, CLASS_ANY):
            return Decision(REFUSED)
        found = _records(zone, qname, by_type, qtype)
        return Decision(NOERROR, True, found,
                        () if found else (soa_record(zone, reverse),))
    if not _in(qname, zone.domain):
        return FORWARD
    if qclass not in (CLASS_IN, CLASS_ANY) or qtype in (AXFR, IXFR):
        return Decision(REFUSED, True)
    by_type = zone.lookup(qname)
    if by_type is None:
        return Decision(NXDOMAIN, True, authority=(soa_record(zone),))
    if qname == zone.domain and qtype == SOA:
        return Decision(NOERROR, True, (soa_record(zone),))
    target = by_type.get(CNAME)
    if target and qtype != CNAME:
        cname = (qname, CNAME, zone.ttl, target[0])
        inner = target[0]
        if _in(inner, zone.domain):  # an ExternalName pointing into the cluster domain
            rest = decide(zone, inner, qtype, qclass)
            return Decision(rest.rcode, True, (cname, *rest.answer), rest.authority,
                            rest.additional)
        return Decision(NOERROR, True, (cname,), chase=inner)
    found = _records(zone, qname, by_type, qtype)
    if not found:
        return Decision(NOERROR, True, authority=(soa_record(zone),))
    additional: tuple[Record, ...] = ()
    if qtype in (SRV, NS, ANY):
        targets = []
        for _, rtype, _, rdata in found:
            target_name = rdata[3] if rtype == SRV else rdata if rtype == NS else None
            if target_name and target_name not in targets:
                targets.append(target_name)
        additional = tuple(r for t in targets for r in _addresses(zone, t))
    return Decision(NOERROR, True, found, additional=additional)
