"""The answer decision: records, NODATA vs NXDOMAIN, forwarding, ExternalName, case."""

from __future__ import annotations

import pytest

from edgeproxy.dns.answer import AXFR, NOERROR, NXDOMAIN, REFUSED, decide
from edgeproxy.dns.records import A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT, build_zone
from tests.dns.zone_fixture import objects

Z = "cluster.local"
ZONE = build_zone(objects(), ns_addresses=("169.254.96.53",))


def rdatas(decision):
    return [r[3] for r in decision.answer]


@pytest.mark.parametrize("qname, qtype, rcode, answers", [
    (f"web.default.svc.{Z}", A, NOERROR, ["198.19.0.10"]),
    (f"web.default.svc.{Z}", AAAA, NOERROR, ["fd00:19::10"]),
    (f"v6only.default.svc.{Z}", A, NOERROR, []),  # NODATA: the name has AAAA only
    (f"nope.default.svc.{Z}", A, NXDOMAIN, []),
    (f"web.nons.svc.{Z}", A, NXDOMAIN, []),
    (f"default.svc.{Z}", A, NOERROR, []),  # a namespace: NODATA
    (f"svc.{Z}", A, NOERROR, []),
    (f"_tcp.web.default.svc.{Z}", SRV, NOERROR, []),  # empty non-terminal: NODATA
    (f"_nope._tcp.web.default.svc.{Z}", SRV, NXDOMAIN, []),
    (f"web.default.svc.{Z}.svc.{Z}", A, NXDOMAIN, []),  # ndots:5 search expansion
    (f"web.default.svc.{Z}.default.svc.{Z}", A, NXDOMAIN, []),
    (f"empty.shop.svc.{Z}", A, NXDOMAIN, []),  # headless, nothing ready
    (f"dns-version.{Z}", TXT, NOERROR, ["1.1.0"]),
    (f"dns-version.{Z}", A, NOERROR, []),
    (f"noaddr.other.svc.{Z}", A, NOERROR, []),
    (f"x.default.pod.{Z}", A, NXDOMAIN, []),  # pods: disabled, as CoreDNS's default
    (f"ns.dns.{Z}", A, NOERROR, ["169.254.96.53"]),
    ("10.0.19.198.in-addr.arpa", PTR, NOERROR, [f"web.default.svc.{Z}"]),
])
def test_decisions(qname, qtype, rcode, answers):
    decision = decide(ZONE, qname, qtype)
    assert not decision.forward
    assert decision.authoritative
    assert decision.rcode == rcode
    assert rdatas(decision) == answers
    if not answers:  # negative answers carry the SOA, for negative caching (RFC 2308)
        (soa,) = decision.authority
        assert soa[1] == SOA and soa[3][-1] == ZONE.ttl


def test_soa_and_ns_at_the_apex():
    soa = decide(ZONE, Z, SOA)
    assert soa.answer[0][3][:2] == (f"ns.dns.{Z}", f"hostmaster.{Z}")
    ns = decide(ZONE, Z, NS)
    assert rdatas(ns) == [f"ns.dns.{Z}"] and ns.additional[0][3] == "169.254.96.53"


def test_srv_answer_carries_the_targets_addresses():
    decision = decide(ZONE, f"_pg._tcp.db.shop.svc.{Z}", SRV)
    assert len(decision.answer) == 2
    assert sorted(r[3] for r in decision.additional) == ["198.18.1.21", "198.18.1.22"]


def test_external_name_cname_and_its_target_to_resolve():
    decision = decide(ZONE, f"ext.default.svc.{Z}", A)
    assert decision.answer == ((f"ext.default.svc.{Z}", CNAME, 5, "upstream.example"),)
    assert decision.chase == "upstream.example"
    assert decide(ZONE, f"ext.default.svc.{Z}", CNAME).chase is None


def test_external_name_into_the_cluster_domain_is_followed_locally():
    decision = decide(ZONE, f"alias.default.svc.{Z}", A)
    assert [r[1] for r in decision.answer] == [CNAME, A]
    assert decision.chase is None


def test_everything_else_is_forwarded():
    assert decide(ZONE, "example.org", A).forward
    assert decide(ZONE, "1.2.0.192.in-addr.arpa", PTR).forward  # not ours: fall through
    assert decide(None, f"web.default.svc.{Z}", A).forward  # no zone yet


def test_zone_transfers_and_other_classes_are_refused():
    assert decide(ZONE, Z, AXFR).rcode == REFUSED
    assert decide(ZONE, f"web.default.svc.{Z}", A, qclass=3).rcode == REFUSED
