"""Forwarded answers: how long they are fresh, stale, and the bound."""

from __future__ import annotations

from dnslib import QTYPE, RR, SOA, A, DNSRecord

from edgeproxy.dns.cache import AnswerCache, answer_ttl


def answer(ttls=(300,), rcode=0, soa=None, tc=False):
    m = DNSRecord.question("www.example.org").reply()
    m.header.rcode = rcode
    m.header.tc = int(tc)
    for ttl in ttls:
        m.add_answer(RR("www.example.org", QTYPE.A, ttl=ttl, rdata=A("192.0.2.1")))
    if soa is not None:
        m.add_auth(RR("example.org", QTYPE.SOA, ttl=soa[0],
                      rdata=SOA("ns.example.org", "h.example.org", (1, 2, 3, 4, soa[1]))))
    return m


def test_ttls_like_coredns():
    assert answer_ttl(answer((300, 60))) == 60
    assert answer_ttl(answer((99999,))) == 3600
    assert answer_ttl(answer((), rcode=3, soa=(900, 30))) == 30  # min(SOA TTL, minimum)
    assert answer_ttl(answer((), rcode=3)) is None  # no SOA: not cached (RFC 2308)
    assert answer_ttl(answer((), rcode=2)) is None  # SERVFAIL
    assert answer_ttl(answer(tc=True)) is None


def test_fresh_then_stale_then_gone():
    cache = AnswerCache(stale_for=100)
    cache.put("k", answer((10,)), now=1000)
    assert cache.get("k", 1005).fresh(1005)
    stale = cache.get("k", 1050)
    assert stale is not None and not stale.fresh(1050)
    assert cache.get("k", 1111) is None and len(cache) == 0


def test_bounded_least_recently_used_goes_first():
    cache = AnswerCache(capacity=2)
    cache.put("a", answer(), 0)
    cache.put("b", answer(), 0)
    cache.get("a", 1)
    cache.put("c", answer(), 2)
    assert cache.get("b", 3) is None and cache.get("a", 3) and cache.get("c", 3)
