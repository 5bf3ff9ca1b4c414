"""Cluster IPs for Services without one: deterministic, stable, never an explicit address."""

from __future__ import annotations

import ipaddress
import random

import pytest

from edgeproxy.model import FilterMode, KubeObject, SkipReason, SourceRef, Verdict
from edgeproxy.state import build_state
from edgeproxy.state.allocation import (CIDRError, ClusterIPAllocator, ServiceCIDRs,
                                        assign, home_offset, needs_address, wanted_families)
from edgeproxy.state.builder import ChunkedObjects

V4 = ServiceCIDRs.parse("198.19.128.0/17")
DUAL = ServiceCIDRs.parse("198.19.128.0/17,fd00:96::/112")


def service(name, ns="default", file="svc.yaml", doc="0", **spec):
    spec.setdefault("ports", [{"port": 80}])
    return KubeObject("Service", "v1", ns, name, SourceRef(file, doc),
                      {"metadata": {"name": name, "namespace": ns,
                                    **({"labels": spec.pop("labels")} if "labels" in spec
                                       else {})},
                       "spec": spec})


def names(n, seed=1, prefix="svc"):
    rng = random.Random(seed)
    return [f"{prefix}-{rng.randrange(10**9)}" for _ in range(n)]


def addresses(objects, cidrs=V4):
    return assign(objects, cidrs)[1].addresses


def test_parse_cidrs():
    assert str(DUAL) == "198.19.128.0/17,fd00:96::/112"
    assert not ServiceCIDRs.parse("")
    for bad in ("10.0.0.1/16", "10.0.0.0/16,10.1.0.0/16", "nonsense", "10.0.0.0/31"):
        with pytest.raises(CIDRError):
            ServiceCIDRs.parse(bad)


def test_only_services_without_any_cluster_ip_need_one():
    assert needs_address(service("a").body)
    assert not needs_address(service("a", clusterIP="198.19.0.1").body)
    assert not needs_address(service("a", clusterIP="None").body)  # headless
    assert not needs_address(service("a", type="ExternalName", externalName="x.org").body)
    labelled = service("a", labels={"service.edgemesh.kubeedge.io/service-proxy-name": ""})
    assert not needs_address(labelled.body)  # left to kube-proxy: no address of ours
    assert needs_address(labelled.body, FilterMode.FILTER_IF_LABEL_DOES_NOT_EXISTS)


def test_families_like_the_api_server():
    assert wanted_families({}, DUAL) == (4,)
    assert wanted_families({"ipFamilyPolicy": "PreferDualStack"}, DUAL) == (4, 6)
    assert wanted_families({"ipFamilyPolicy": "RequireDualStack",
                            "ipFamilies": ["IPv6", "IPv4"]}, DUAL) == (6, 4)
    assert wanted_families({"ipFamilies": ["IPv6"]}, DUAL) == (6,)


def test_addresses_come_from_the_range_and_the_home_is_the_name_hash():
    got = addresses([service("web"), service("db", ns="shop")])
    net = V4.networks[0]
    for (ns, name), ips in got.items():
        (ip,) = ips
        assert ipaddress.ip_address(ip) in net
        assert int(ipaddress.ip_address(ip)) - int(net.network_address) == \
            home_offset(f"{ns}/{name}", net)


def test_dual_stack_service_gets_both_families_primary_first():
    got = addresses([service("web", ipFamilyPolicy="PreferDualStack",
                             ipFamilies=["IPv6", "IPv4"])], DUAL)
    v6, v4 = got[("default", "web")]
    assert ipaddress.ip_address(v6) in DUAL.networks[1]
    assert ipaddress.ip_address(v4) in DUAL.networks[0]


def test_a_family_without_a_range_is_reported_not_invented():
    allocation = assign([service("web", ipFamilies=["IPv6"])], V4)[1]
    assert ("default", "web") not in allocation.addresses
    assert "no IPv6 range" in allocation.unallocated[("default", "web")]


def test_same_directory_on_two_nodes_gives_the_same_addresses():
    objs = [service(n, ns=random.choice(["a", "b"])) for n in names(400)]
    node1 = addresses(objs)
    shuffled = objs[:]
    random.Random(7).shuffle(shuffled)
    node2 = addresses(shuffled)
    assert node1 == node2 and len(node1) == 400


def test_restart_keeps_everything():
    objs = [service(n) for n in names(200)]
    first = ClusterIPAllocator(V4)
    first.apply(objs)
    again = ClusterIPAllocator(V4)  # a new process: no state carried over
    again.apply(objs)
    assert first.allocation == again.allocation


def test_never_an_address_an_explicit_cluster_ip_uses():
    net = V4.networks[0]
    web_home = net.network_address + home_offset("default/web", net)
    objs = [service("web"), service("pinned", clusterIPs=[str(web_home)])]
    allocation = assign(objs, V4)[1]
    (ip,) = allocation.addresses[("default", "web")]
    assert ip != str(web_home)
    assert "explicit clusterIP" in allocation.displaced[("default", "web")]


def _home_collision(net_text: str) -> tuple[str, str]:
    net = ipaddress.ip_network(net_text)
    seen: dict[int, str] = {}
    for i in range(10000):
        name = f"s{i}"
        offset = home_offset(f"default/{name}", net)
        if offset in seen:
            return seen[offset], name
        seen[offset] = name
    raise AssertionError("no collision found")


def test_a_home_collision_is_won_by_the_smaller_name_and_the_other_probes():
    cidrs = ServiceCIDRs.parse("198.19.200.0/24")
    a, b = sorted(_home_collision("198.19.200.0/24"))
    alone = addresses([service(b)], cidrs)
    both = assign([service(b), service(a)], cidrs)[1]
    # a sorts first: it keeps the shared home, b moves (the documented collision).
    assert both.addresses[("default", a)] == alone[("default", b)]
    assert both.addresses[("default", b)] != alone[("default", b)]
    assert f"home of default/{a}" in both.displaced[("default", b)]


def _moved(before, after):
    return {k for k in before if k in after and before[k] != after[k]}


@pytest.mark.parametrize("change", ["add", "remove", "rename"])
def test_other_services_changing_moves_no_allocation_except_on_a_collision(change):
    """A /22 holds 1022 addresses, so 300 Services collide often enough to exercise the rule."""
    cidrs = ServiceCIDRs.parse("198.19.192.0/22")
    rng = random.Random(change)
    for trial in range(20):
        base = [service(n) for n in names(300, seed=trial)]
        if change == "add":
            after_objs = base + [service(f"new-{rng.randrange(10**6)}") for _ in range(5)]
        elif change == "remove":
            after_objs = [o for o in base if rng.random() > 0.05]
        else:
            after_objs = [service(f"renamed-{o.name}") if rng.random() < 0.05 else o
                          for o in base]
        before = assign(base, cidrs)[1]
        after = assign(after_objs, cidrs)[1]
        for ident in _moved(before.addresses, after.addresses):
            # Only (a) a Service whose home a newcomer with a smaller name now holds, or
            # (b) one that had already lost its home to a collision, may move.
            if ident in before.displaced:
                continue
            holder = after.displaced.get(ident, "")
            assert "home of" in holder, (ident, holder)
            winner = tuple(holder.rsplit(" ", 1)[1].split("/"))
            assert winner not in before.addresses and winner < ident
        held_home = [i for i in before.addresses if i not in before.displaced]
        assert len(held_home) > 250  # most Services sit at their home


def test_address_change_is_reported_with_its_collision():
    cidrs = ServiceCIDRs.parse("198.19.200.0/24")
    a, b = sorted(_home_collision("198.19.200.0/24"))
    allocator = ClusterIPAllocator(cidrs)
    _, changes = allocator.apply([service(b)])
    assert changes == []
    _, changes = allocator.apply([service(b), service(a, file="z.yaml")])
    assert [c.ident for c in changes] == [("default", b)]
    assert "home of" in changes[0].why and allocator.changes_total == 1


def test_allocated_service_is_proxied_like_any_other():
    objs, allocation = assign([service("web")], V4)
    state = build_state(objs)
    (verdict,) = state.services
    assert verdict.verdict is Verdict.PROXY
    (sp,) = state.ports.values()
    assert sp.cluster_ips == allocation.addresses[("default", "web")]


def test_without_service_cidr_nothing_changes():
    objs = [service("web")]
    out, allocation = assign(objs, ServiceCIDRs())
    assert out == objs and not allocation.addresses
    assert build_state(out).services[0].reason is SkipReason.NO_CLUSTER_IP


def test_unchanged_chunks_keep_their_objects_so_the_builder_cache_hits():
    chunk_a = (service("a", file="a.yaml"),)
    chunk_b = (service("b", file="b.yaml"), service("pinned", file="b.yaml", doc="1",
                                                    clusterIP="198.19.0.1"))
    allocator = ClusterIPAllocator(V4)
    first, _ = allocator.apply(ChunkedObjects([chunk_a, chunk_b]))
    chunk_c = (service("c", file="c.yaml"),)
    second, _ = allocator.apply(ChunkedObjects([chunk_a, chunk_b, chunk_c]))
    assert second.chunks[0] is first.chunks[0] and second.chunks[1] is first.chunks[1]
    assert second.chunks[1][1] is chunk_b[1]  # explicit: never rewritten
    assert (second.chunks[0][0].body["spec"]["clusterIP"]
            == addresses([service("a")])[("default", "a")][0])


def test_duplicate_service_follows_the_builder_winner():
    first = service("web", file="a.yaml", ipFamilies=["IPv6"])
    second = service("web", file="b.yaml")
    got = addresses([second, first], DUAL)
    (ip,) = got[("default", "web")]
    assert ":" in ip  # a.yaml's copy wins, as in build_state


def test_range_full_is_reported():
    cidrs = ServiceCIDRs.parse("198.19.200.0/30")  # 2 usable addresses
    allocation = assign([service(n) for n in ("a", "b", "c")], cidrs)[1]
    assert len(allocation.addresses) == 2
    assert list(allocation.unallocated.values()) == ["serviceCIDR 198.19.200.0/30 is full"]


def test_the_corpus_services_without_cluster_ip_get_addresses(corpus_dir):
    from edgeproxy.manifests import load_objects

    objs, errors = load_objects([corpus_dir])
    before = build_state(objs, errors=errors)
    skipped = {(v.namespace, v.name) for v in before.services
               if v.reason is SkipReason.NO_CLUSTER_IP}
    out, allocation = assign(objs, ServiceCIDRs.parse("198.19.128.0/17,fd00:96::/112"))
    after = build_state(out, errors=errors)
    explicit = {ip for sp in before.ports.values() for ip in sp.cluster_ips}
    assert len(skipped) > 50
    assert skipped <= set(allocation.addresses) | set(allocation.unallocated)
    given = [ip for ips in allocation.addresses.values() for ip in ips]
    assert len(given) == len(set(given)) and not explicit & set(given)
    assert not any(v.reason is SkipReason.NO_CLUSTER_IP for v in after.services
                   if (v.namespace, v.name) in allocation.addresses)
