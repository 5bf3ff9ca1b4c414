"""The zone built from the manifests: every record the specification and CoreDNS define."""

from __future__ import annotations

from edgeproxy.dns.records import (A, AAAA, CNAME, NS, PTR, SRV, TXT, ZoneBuilder, build_zone,
                                   endpoint_label)
from tests.dns.zone_fixture import objects

Z = "cluster.local"


def zone():
    return build_zone(objects(), ns_addresses=("169.254.96.53",))


def test_cluster_ip_service_has_a_and_aaaa_for_every_family():
    web = zone().records[f"web.default.svc.{Z}"]
    assert web[A] == ("198.19.0.10",) and web[AAAA] == ("fd00:19::10",)


def test_srv_for_named_ports_only_and_all_ports_on_the_service_name():
    z = zone()
    assert z.records[f"_http._tcp.web.default.svc.{Z}"][SRV] == (
        (0, 100, 80, f"web.default.svc.{Z}"),)
    assert z.records[f"_dns._udp.web.default.svc.{Z}"][SRV][0][2] == 53
    assert z.records[f"_https-alt._tcp.web.default.svc.{Z}"][SRV][0][2] == 8443
    assert sorted(r[2] for r in z.records[f"web.default.svc.{Z}"][SRV]) == [53, 80, 8443]
    # The unnamed port has no SRV name of its own, only the service name's SRV.
    assert not any(n.startswith("_") and "legacy" in n for n in z.records)
    assert [r[2] for r in z.records[f"legacy.default.svc.{Z}"][SRV]] == [7000]


def test_ptr_of_cluster_ips_and_of_ready_endpoints():
    r = zone().records
    assert r["10.0.19.198.in-addr.arpa"][PTR] == (f"web.default.svc.{Z}",)
    v6 = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.1.0.0.0.0.d.f.ip6.arpa"
    assert r[v6][PTR] == (f"web.default.svc.{Z}",)
    assert r["21.1.18.198.in-addr.arpa"][PTR] == (f"db-0.db.shop.svc.{Z}",)
    assert "12.1.18.198.in-addr.arpa" not in r  # not ready


def test_headless_names_are_its_ready_endpoints_with_hostnames():
    r = zone().records
    assert r[f"db.shop.svc.{Z}"][A] == ("198.18.1.21", "198.18.1.22")
    assert r[f"db-1.db.shop.svc.{Z}"][A] == ("198.18.1.22",)
    assert f"db-2.db.shop.svc.{Z}" not in r  # not ready
    srv = r[f"_pg._tcp.db.shop.svc.{Z}"][SRV]
    assert sorted(s[3] for s in srv) == [f"db-0.db.shop.svc.{Z}", f"db-1.db.shop.svc.{Z}"]
    assert {s[1] for s in srv} == {50}  # the weight spread like CoreDNS's


def test_headless_without_ready_endpoints_does_not_exist():
    z = zone()
    assert z.lookup(f"empty.shop.svc.{Z}") is None
    assert z.lookup(f"shop.svc.{Z}") == {}  # the namespace still exists


def test_publish_not_ready_addresses_and_ipv6_dashed_names():
    r = zone().records
    assert r[f"peers.shop.svc.{Z}"][AAAA] == ("fd00:18::31",)
    assert r[f"fd00-18--31.peers.shop.svc.{Z}"][AAAA] == ("fd00:18::31",)
    assert endpoint_label("fd00::", None) == "fd00--0"
    assert endpoint_label("198.18.1.1", "Bad.Host") == "198-18-1-1"


def test_cluster_ip_service_endpoints_have_dashed_names_like_coredns():
    assert zone().records[f"198-18-1-41.legacy.default.svc.{Z}"][A] == ("198.18.1.41",)


def test_external_name_is_a_cname_and_an_ip_literal_is_nothing():
    z = zone()
    assert z.records[f"ext.default.svc.{Z}"] == {CNAME: ("upstream.example",)}
    ip_literal = objects("""
apiVersion: v1
kind: Service
metadata: {name: lit, namespace: default}
spec: {type: ExternalName, externalName: "2001:db8::1"}
""")
    assert build_zone(ip_literal).lookup(f"lit.default.svc.{Z}") is None


def test_service_without_an_address_exists_without_records():
    assert zone().lookup(f"noaddr.other.svc.{Z}") == {}


def test_dns_version_apex_ns_and_empty_non_terminals():
    z = zone()
    assert z.records[f"dns-version.{Z}"][TXT] == ("1.1.0",)
    assert z.records[Z][NS] == (f"ns.dns.{Z}",)
    assert z.records[f"ns.dns.{Z}"][A] == ("169.254.96.53",)
    for ent in (f"_tcp.web.default.svc.{Z}", f"svc.{Z}", f"default.svc.{Z}", f"dns.{Z}"):
        assert z.lookup(ent) == {}, ent


def test_duplicate_service_the_smaller_source_wins():
    first = objects("""
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 198.19.0.99, ports: [{port: 80}]}
""")
    z = build_zone(objects() + [o.__class__(o.kind, o.api_version, o.namespace, o.name,
                                            o.source.__class__("a-first.yaml", "0"), o.body)
                                for o in first])
    assert z.records[f"web.default.svc.{Z}"][A] == ("198.19.0.99",)


def test_cluster_domain_is_configurable():
    z = build_zone(objects(), domain="Edge.Example.")
    assert f"web.default.svc.edge.example" in z.records


def test_builder_reuses_the_zone_while_nothing_changed():
    objs = objects()
    builder = ZoneBuilder()
    first = builder.build(objs, Z, 5, serial=1)
    assert builder.build(objs, Z, 5, serial=2) is first
    changed = builder.build(objs[:-1], Z, 5, serial=3)
    assert changed.serial == 3 and changed.lookup(f"noaddr.other.svc.{Z}") is None


def test_the_whole_corpus_builds(corpus_dir):
    from edgeproxy.manifests import load_objects

    objs, _ = load_objects([corpus_dir])
    z = build_zone(objs)
    assert z.service_count > 20
