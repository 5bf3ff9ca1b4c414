"""The DNS server against real clients: dig, dnspython and the C library (getaddrinfo).

Every record type and edge case of the zone, forwarding to a real upstream (dnsmasq),
caching, serve-stale with the uplink cut, truncation and the TCP retry, EDNS0, malformed
queries, live zone updates. Runs in namespaces (tests/dns/conftest.py)."""

from __future__ import annotations

import json
import re
import sys
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from edgeproxy.demo.clients import run_with_resolv_conf
from edgeproxy.dns.records import build_zone
from tests.dns.conftest import BIG_NAME, SERVER
from tests.dns.zone_fixture import objects

pytestmark = pytest.mark.netns
Z = "cluster.local"


def zone():
    return build_zone(objects(), ns_addresses=(SERVER,), serial=7)


def short(env, *args):
    return sorted(env.dig("+short", *args).split())


def status(text):
    return re.search(r"status: (\w+)", text).group(1)


def test_every_record_type_with_dig(dns_env):
    dns_env.start(zone())
    assert short(dns_env, f"web.default.svc.{Z}") == ["198.19.0.10"]
    assert short(dns_env, "AAAA", f"web.default.svc.{Z}") == ["fd00:19::10"]
    assert short(dns_env, "SRV", f"_http._tcp.web.default.svc.{Z}") == \
        ["0", "100", "80", f"web.default.svc.{Z}."]
    assert short(dns_env, f"db.shop.svc.{Z}") == ["198.18.1.21", "198.18.1.22"]
    assert short(dns_env, f"db-1.db.shop.svc.{Z}") == ["198.18.1.22"]
    assert short(dns_env, "-x", "198.19.0.10") == [f"web.default.svc.{Z}."]
    assert short(dns_env, "-x", "fd00:19::10") == [f"web.default.svc.{Z}."]
    assert short(dns_env, "-x", "198.18.1.21") == [f"db-0.db.shop.svc.{Z}."]
    assert short(dns_env, "TXT", f"dns-version.{Z}") == ['"1.1.0"']
    assert short(dns_env, "CNAME", f"ext.default.svc.{Z}") == ["upstream.example."]
    assert dns_env.dig("+short", "SOA", Z).split() == [
        f"ns.dns.{Z}.", f"hostmaster.{Z}.", "7", "7200", "1800", "86400", "5"]
    assert short(dns_env, "NS", Z) == [f"ns.dns.{Z}."]
    srv = dns_env.dig("SRV", f"_pg._tcp.db.shop.svc.{Z}")
    assert "ADDITIONAL: 3" in srv  # both targets' A records and the OPT


def test_nxdomain_nodata_and_flags_with_dig(dns_env):
    dns_env.start(zone())
    nx = dns_env.dig(f"nope.default.svc.{Z}")
    assert status(nx) == "NXDOMAIN" and " aa " in nx.split("flags:")[1].split(";")[0] + " "
    assert f"{Z}.\t\t5\tIN\tSOA\tns.dns.{Z}. hostmaster.{Z}. 7 7200 1800 86400 5" in nx
    nodata = dns_env.dig("A", f"v6only.default.svc.{Z}")
    assert status(nodata) == "NOERROR" and "ANSWER: 0" in nodata and "SOA" in nodata
    assert status(dns_env.dig(f"default.svc.{Z}")) == "NOERROR"  # a namespace: NODATA
    # The search-path expansion a pod with ndots:5 asks first: NXDOMAIN, locally.
    assert status(dns_env.dig(f"web.default.svc.{Z}.default.svc.{Z}")) == "NXDOMAIN"
    assert status(dns_env.dig(f"empty.shop.svc.{Z}")) == "NXDOMAIN"
    assert "Transfer failed" in dns_env.dig("AXFR", Z)  # refused, as CoreDNS


def test_case_insensitive_and_the_answer_keeps_the_question_case(dns_env):
    dns_env.start(zone())
    for _ in range(2):  # the second answer comes from the template
        out = dns_env.dig("WeB.DeFault.SVC.Cluster.Local")
        assert re.search(r"^WeB\.DeFault\.SVC\.Cluster\.Local\.\s+5\s+IN\s+A\s+198\.19\.0\.10$",
                         out, re.M), out


def test_python_resolvers_dnspython_and_getaddrinfo_with_the_pod_search_path(dns_env):
    dns_env.start(zone())
    with dns_env.node.entered():
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [SERVER]
        resolver.lifetime = 3
        answer = resolver.resolve(f"_pg._tcp.db.shop.svc.{Z}", "SRV")
        assert sorted(r.target.to_text() for r in answer) == \
            [f"db-0.db.shop.svc.{Z}.", f"db-1.db.shop.svc.{Z}."]
        assert answer.response.flags & dns.flags.AA
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve(f"nope.default.svc.{Z}", "A")
        with pytest.raises(dns.resolver.NoAnswer):
            resolver.resolve(f"v6only.default.svc.{Z}", "A")
        ptr = resolver.resolve_address("198.19.0.10")
        assert ptr[0].target.to_text() == f"web.default.svc.{Z}."
    # What a pod's C library does: resolv.conf with the kubelet's search path and ndots:5.
    resolv_conf = (f"nameserver {SERVER}\nsearch default.svc.{Z} svc.{Z} {Z}\n"
                   "options ndots:5 timeout:1 attempts:1\n")
    script = ("import json, socket; print(json.dumps([sorted({a[4][0] for a in "
              "socket.getaddrinfo(n, 80, proto=socket.IPPROTO_TCP)}) for n in "
              "['web', 'db.shop', 'legacy.default.svc']]))")
    result = run_with_resolv_conf(dns_env.node, resolv_conf, [sys.executable, "-c", script])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [["198.19.0.10", "fd00:19::10"], ["198.18.1.21", "198.18.1.22"],
                               ["198.19.0.20"]]


def test_forwarding_caching_and_serve_stale_when_the_upstream_is_unreachable(dns_env):
    dns_env.start_upstream(ttl=2)
    server = dns_env.start(zone(), serve_stale=3600.0)
    assert short(dns_env, "www.example.org") == ["192.0.2.10"]
    first = dns_env.dig("www.example.org")
    assert status(first) == "NOERROR" and " aa" not in first.split("flags:")[1].split(";")[0]
    stats = server.call(lambda: dict(server.server.stats.queries))
    assert stats.get(("A", "forwarded")) == 1 and stats.get(("A", "cached"), 0) >= 1
    dns_env.cut_upstream()
    time.sleep(2.5)  # the cached answer has expired
    started = time.monotonic()
    stale = dns_env.dig("www.example.org")
    assert "192.0.2.10" in stale and "\t30\tIN\tA" in stale  # RFC 8767's stale TTL
    assert time.monotonic() - started < 2.0  # within one upstream timeout
    # The upstreams are now known down: the next one fails fast, still stale.
    started = time.monotonic()
    assert short(dns_env, "www.example.org") == ["192.0.2.10"]
    assert time.monotonic() - started < 0.5
    # A name never seen before has nothing stale: SERVFAIL, at once.
    assert status(dns_env.dig("api.example.org")) == "SERVFAIL"
    # Cluster names never needed the upstream.
    assert short(dns_env, f"web.default.svc.{Z}") == ["198.19.0.10"]
    counts = server.call(lambda: (server.server.stats.stale_total,
                                  dict(server.server.forwarder.errors_total)))
    assert counts[0] >= 2 and sum(counts[1].values()) >= 1


def test_external_name_target_is_resolved_upstream(dns_env):
    dns_env.start_upstream()
    dns_env.start(zone())
    out = dns_env.dig(f"ext.default.svc.{Z}")
    assert "CNAME\tupstream.example." in out and "192.0.2.20" in out


def test_truncation_and_tcp_fallback_for_large_answers(dns_env):
    dns_env.start_upstream()
    many = "\n---\n".join([objects.__globals__["MANIFESTS"], """
apiVersion: v1
kind: Service
metadata: {name: wide, namespace: default}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: wide, namespace: default}
subsets:
- addresses: [""" + ", ".join(f"{{ip: 198.18.8.{i}}}" for i in range(1, 101)) + """]
  ports: [{port: 80}]
"""])
    dns_env.start(build_zone(objects(many)))
    udp = dns_env.dig(f"wide.default.svc.{Z}", "+noedns", "+notcp", "+ignore")
    assert " tc" in udp.split("flags:")[1].split(";")[0] and "ANSWER: 0" in udp
    full = dns_env.dig(f"wide.default.svc.{Z}", "+noedns")  # dig retries over TCP
    assert "ANSWER: 100" in full
    edns = dns_env.dig(f"wide.default.svc.{Z}", "+bufsize=4096", "+notcp", "+ignore")
    assert "ANSWER: 0" in edns and "udp: 1232" in edns  # 100 A records > 1232 bytes
    # Forwarded: the upstream's UDP answer is truncated, we ask it over TCP.
    assert len(short(dns_env, BIG_NAME)) == 120


def test_edns0_version_do_bit_and_malformed_queries(dns_env):
    dns_env.start(zone())
    opt = dns_env.dig(f"web.default.svc.{Z}", "+dnssec")
    assert "flags: do; udp: 1232" in opt
    assert status(dns_env.dig(f"web.default.svc.{Z}", "+edns=1", "+noednsneg")) == "BADVERS"
    with dns_env.node.entered():
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(2)
        sock.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0", (SERVER, 53))
        reply = sock.recv(512)
        assert reply[:2] == b"\x12\x34" and reply[3] & 0xF == 1  # FORMERR, same ID
        query = dns.message.make_query(f"web.default.svc.{Z}", "A")
        answer = dns.query.udp(query, SERVER, timeout=2, sock=sock)
        assert answer.rcode() == dns.rcode.NOERROR


def test_records_follow_the_zone_live(dns_env):
    server = dns_env.start(zone())
    assert short(dns_env, f"web.default.svc.{Z}") == ["198.19.0.10"]
    changed = objects().copy()
    changed[0] = changed[0].__class__(
        changed[0].kind, changed[0].api_version, changed[0].namespace, changed[0].name,
        changed[0].source, {**changed[0].body, "spec": {**changed[0].body["spec"],
                                                       "clusterIP": "198.19.0.99",
                                                       "clusterIPs": ["198.19.0.99"]}})
    server.call(server.server.update, build_zone(changed))
    assert short(dns_env, f"web.default.svc.{Z}") == ["198.19.0.99"]
