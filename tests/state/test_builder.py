"""Desired state assembly: endpoint matching, conflicts, DestinationRules, cached reuse."""

from __future__ import annotations

import random
from pathlib import Path

from edgeproxy.manifests import load_objects
from edgeproxy.model import (
    Endpoint,
    FilterMode,
    LoadBalancerKind,
    Protocol,
    ServicePortKey,
    SkipReason,
    Verdict,
)
from edgeproxy.state import BuildCache, build_state
from tests.support.manifests import objects




SVC = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP}
"""

SLICE = """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [198.18.1.12]
  conditions: {ready: true}
- addresses: [198.18.1.11]
- addresses: [198.18.1.13]
  conditions: {ready: false, serving: true, terminating: true}
"""

ENDPOINTS = """
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: shop}
subsets:
- addresses: [{ip: 198.18.2.1}]
  notReadyAddresses: [{ip: 198.18.2.2}]
  ports: [{name: http, port: 9090}]
"""

HTTP = ServicePortKey("shop", "web", "http", Protocol.TCP)
DNS = ServicePortKey("shop", "web", "dns", Protocol.UDP)


def test_slices_name_and_protocol_matching_ready_only() -> None:
    state = build_state(objects(SVC + "---" + SLICE))
    assert list(state.ports) == [HTTP, DNS]
    assert state.ports[HTTP].endpoints == (Endpoint("198.18.1.11", 8080),
                                           Endpoint("198.18.1.12", 8080))
    assert state.ports[DNS].endpoints == (Endpoint("198.18.1.11", 5353),
                                          Endpoint("198.18.1.12", 5353))
    assert state.ports[HTTP].cluster_ips == ("198.19.0.10",)


def test_slices_win_over_endpoints_and_endpoints_otherwise() -> None:
    both = build_state(objects(SVC + "---" + ENDPOINTS + "---" + SLICE))
    assert both.ports[HTTP].endpoints[0].port == 8080
    only_endpoints = build_state(objects(SVC + "---" + ENDPOINTS))
    assert only_endpoints.ports[HTTP].endpoints == (Endpoint("198.18.2.1", 9090),)
    assert only_endpoints.ports[DNS].endpoints == ()  # no port named dns/UDP


def test_unnamed_port_matches_empty_or_missing_slice_port_name() -> None:
    svc = """
apiVersion: v1
kind: Service
metadata: {name: one}
spec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}
"""
    for port in ("{name: '', port: 8080}", "{port: 8080}"):
        slice_ = f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: one-x, labels: {{kubernetes.io/service-name: one}}}}
addressType: IPv4
ports: [{port}]
endpoints: [{{addresses: [198.18.1.1]}}, {{addresses: [198.18.1.1]}}]
"""
        (sp,) = build_state(objects(svc + "---" + slice_)).ports.values()
        assert sp.endpoints == (Endpoint("198.18.1.1", 8080),)  # deduplicated


def test_missing_slice_port_name_does_not_match_named_port() -> None:
    slice_ = SLICE.replace("{name: http, port: 8080}", "{port: 8080}")
    assert build_state(objects(SVC + "---" + slice_)).ports[HTTP].endpoints == ()


def test_service_fields() -> None:
    svc = """
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 198.19.0.5
  clusterIPs: [198.19.0.5, "fd00::5"]
  externalIPs: [198.18.9.9]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 90}}
  ports: [{port: 443, nodePort: 30443}, ]
status: {loadBalancer: {ingress: [{ip: 198.18.8.8}, {hostname: x.example}]}}
"""
    (sp,) = build_state(objects(svc)).ports.values()
    assert sp.cluster_ips == ("198.19.0.5", "fd00::5")
    assert sp.load_balancer_ips == ("198.18.8.8",) and sp.external_ips == ("198.18.9.9",)
    assert sp.vips == ("198.19.0.5", "fd00::5", "198.18.8.8")
    assert (sp.node_port, sp.session_affinity, sp.affinity_timeout) == (30443, True, 90)
    (default,) = build_state(objects(SVC.replace("- {name: dns, port: 53, protocol: UDP}\n", "")
                                     .replace("name: http, ", ""))).ports.values()
    assert default.affinity_timeout == 10800 and not default.session_affinity


def test_sctp_is_listed_but_not_proxied() -> None:
    state = build_state(objects(SVC.replace("protocol: UDP", "protocol: SCTP")))
    assert list(state.ports) == [HTTP]
    (verdict,) = state.services
    assert verdict.verdict == Verdict.PROXY
    assert [k.protocol for k in verdict.ports] == [Protocol.TCP, Protocol.SCTP]


def test_duplicate_service_smallest_source_wins_whatever_the_order() -> None:
    a = objects(SVC, "a.yaml")
    b = objects(SVC.replace("198.19.0.10", "198.19.0.99"), "b.yaml")
    for objs in (a + b, b + a):
        state = build_state(objs)
        assert state.ports[HTTP].cluster_ips == ("198.19.0.10",)
        (conflict,) = state.conflicts
        assert (conflict.winner.file, conflict.loser.file) == ("a.yaml", "b.yaml")
        assert [(v.source.file, v.verdict, v.reason) for v in state.services] == [
            ("a.yaml", Verdict.PROXY, None), ("b.yaml", Verdict.SKIP, SkipReason.CONFLICT)]


def test_document_order_is_numeric() -> None:
    docs = objects("---\n".join(SVC.replace("name: web", f"name: w{i}") for i in range(11)))
    state = build_state(docs)
    assert [v.source.document for v in state.services] == [str(i) for i in range(11)]
    # all eleven claim 198.19.0.10:80 and :53: document 0 wins, not "10"
    assert {c.winner.document for c in state.conflicts} == {"0"}
    assert len(state.conflicts) == 20


def test_vip_conflict_loser_keeps_other_ports() -> None:
    other = SVC.replace("name: web", "name: api").replace("port: 53,", "port: 54,")
    state = build_state(objects(SVC + "---" + other))
    assert [str(k) for k in state.ports] == ["shop/web:http/TCP", "shop/web:dns/UDP",
                                             "shop/api:dns/UDP"]
    (conflict,) = state.conflicts
    assert conflict.what == "198.19.0.10:80/TCP claimed by shop/web and shop/api"
    assert state.services[1].verdict == Verdict.PROXY  # api still serves 54/UDP


def test_destination_rules() -> None:
    def rule(lb: str, name: str = "web") -> str:
        return (f"apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\n"
                f"metadata: {{name: {name}, namespace: shop}}\n"
                f"spec: {{host: web, trafficPolicy: {{loadBalancer: {lb}}}}}\n")

    cases = {
        "{simple: RANDOM}": (LoadBalancerKind.RANDOM, None),
        "{simple: ROUND_ROBIN}": (LoadBalancerKind.ROUND_ROBIN, None),
        "{consistentHash: {useSourceIp: true}}": (LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP, None),
        "{consistentHash: {httpHeaderName: x-user}}": (
            LoadBalancerKind.CONSISTENT_HASH_HTTP_HEADER, "x-user"),
    }
    for lb, (kind, header) in cases.items():
        state = build_state(objects(SVC + "---\n" + rule(lb)))
        policy = state.ports[HTTP].lb_policy
        assert (policy.kind, policy.http_header_name) == (kind, header)
        assert policy.source is not None and policy.source.document == "1"
    other = build_state(objects(SVC + "---\n" + rule("{simple: RANDOM}", name="api")))
    assert other.ports[HTTP].lb_policy.kind == LoadBalancerKind.ROUND_ROBIN


def test_ignored_kinds_counted() -> None:
    text = SVC + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n" \
                 "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n" \
                 "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: e}\n"
    assert build_state(objects(text)).ignored_kinds == {"Deployment": 1, "ConfigMap": 2}


def test_invalid_services_are_listed(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SVC + "---\n" + SVC.replace("name: web", "name: bad")
                                     .replace("port: 80", "port: 0"))
    objs, errors = load_objects([tmp_path])
    state = build_state(objs, errors=errors)
    assert [(v.name, v.verdict, v.reason) for v in state.services] == [
        ("web", Verdict.PROXY, None), ("bad", Verdict.SKIP, SkipReason.INVALID)]
    assert state.errors == tuple(errors)


def test_filter_modes() -> None:
    labelled = SVC.replace("namespace: shop}",
                           "namespace: shop, labels: {service.edgemesh.kubeedge.io/service-proxy-name: ''}}")
    assert build_state(objects(labelled)).ports == {}
    both = objects(labelled + "---" + SVC.replace("name: web", "name: api")
                   .replace("198.19.0.10", "198.19.0.11"))
    only = build_state(both, FilterMode.FILTER_IF_LABEL_DOES_NOT_EXISTS)
    assert {k.name for k in only.ports} == {"web"}


def test_memoized_results_follow_dependency_changes() -> None:
    svc, slice_ = objects(SVC + "---" + SLICE)
    cache = BuildCache()
    first = build_state([svc, slice_], cache=cache)
    again = build_state([slice_, svc], cache=cache)
    assert again.ports[HTTP] is first.ports[HTTP]  # unchanged inputs: reused
    new_slice = objects(SLICE.replace("198.18.1.12", "198.18.1.99"))[0]
    changed = build_state([svc, new_slice], cache=cache)
    assert Endpoint("198.18.1.99", 8080) in changed.ports[HTTP].endpoints
    assert build_state([svc], cache=cache).ports[HTTP].endpoints == ()


def test_deterministic_under_shuffles() -> None:
    objs = objects("---".join([SVC, SLICE, ENDPOINTS, SVC.replace("name: web", "name: api")]))
    reference = build_state(objs)
    for seed in range(5):
        shuffled = list(objs)
        random.Random(seed).shuffle(shuffled)
        state = build_state(shuffled)
        assert state.ports == reference.ports
        assert state.conflicts == reference.conflicts
        assert state.services == reference.services


def test_chunked_reuse_matches_a_fresh_build(tmp_path: Path) -> None:
    """Catalog snapshots let build_state reuse per-file work; after every kind of edit the
    result must equal a from-scratch build of the same objects (a plain list: no reuse)."""
    import os

    from edgeproxy.manifests.catalog import ManifestCatalog

    def svc(name: str, ip: str) -> str:
        return (f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n"
                f"spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n")

    def eps(name: str, ip: str) -> str:
        return (f"apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}}}\n"
                f"subsets: [{{addresses: [{{ip: {ip}}}], ports: [{{name: http, port: 8080}}]}}]\n")

    def slice_(name: str, svc_name: str, ip: str) -> str:
        return (f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                f"metadata: {{name: {name}, labels: {{kubernetes.io/service-name: {svc_name}}}}}\n"
                f"addressType: IPv4\nports: [{{name: http, port: 9090}}]\n"
                f"endpoints: [{{addresses: [{ip}]}}]\n")

    files = {
        "a.yaml": svc("a", "198.19.0.1") + "---\n" + svc("b", "198.19.0.2"),
        "b.yaml": svc("c", "198.19.0.3"),
        "c.yaml": eps("a", "198.18.0.1"),
    }
    edits = [
        {"d.yaml": slice_("a-1", "a", "198.18.0.9")},  # slices elsewhere now win for a
        {"e.yaml": slice_("a-2", "a", "198.18.0.10")},  # a's slices spread over two files
        {"b.yaml": svc("c", "198.19.0.1")},  # VIP conflict with a (a.yaml sorts first)
        {"b.yaml": svc("c", "198.19.0.3")},  # resolved
        {"f.yaml": svc("c", "198.19.0.7")},  # duplicate Service across files
        {"d.yaml": slice_("a-1", "a", "198.18.0.11")},  # an edit while the duplicate exists
        {"f.yaml": None},  # duplicate gone: the edit above must show
        {"c.yaml": eps("a", "198.18.0.2")},
        {"d.yaml": None, "e.yaml": None},  # back to Endpoints
        {"00.yaml": eps("b", "198.18.0.5")},  # a file sorting first
    ]

    def apply(changes: dict) -> None:
        for name, text in changes.items():
            path = tmp_path / name
            if text is None:
                path.unlink()
            else:
                old = path.stat().st_mtime_ns if path.exists() else 0
                path.write_text(text)
                os.utime(path, ns=(old + 10**9, old + 10**9))

    apply(files)
    catalog = ManifestCatalog(tmp_path)
    cache = BuildCache()
    for filter_mode in (FilterMode.FILTER_IF_LABEL_DOES_NOT_EXISTS,
                        FilterMode.FILTER_IF_LABEL_EXISTS):
        build_state(catalog.refresh().objects, filter_mode, cache=cache)
    for step, changes in enumerate(edits):
        apply(changes)
        snapshot = catalog.refresh()
        reused = build_state(snapshot.objects, cache=cache)
        fresh = build_state(snapshot.objects)  # no cache: everything computed
        assert reused.ports == fresh.ports, step
        assert reused.services == fresh.services, step
        assert reused.conflicts == fresh.conflicts, step
        assert reused.ignored_kinds == fresh.ignored_kinds, step
        flat = build_state(list(snapshot.objects), cache=cache)  # the same cache, no chunks
        assert flat.ports == fresh.ports and flat.services == fresh.services, step
        again = build_state(snapshot.objects, cache=cache)  # chunked right after a flat one
        assert again.ports == fresh.ports and again.services == fresh.services, step
    a_port = ServicePortKey("default", "a", "http", Protocol.TCP)
    assert reused.ports[a_port].endpoints == (Endpoint("198.18.0.2", 8080),)


def test_a_cache_reuses_results_and_a_build_without_one_computes_afresh() -> None:
    objs = objects(SVC + "---" + SLICE)
    cache = BuildCache()
    cached = build_state(objs, cache=cache)
    assert list(cache.services) == [o for o in objs if o.kind == "Service"]
    assert build_state(objs, cache=cache).ports[HTTP] is cached.ports[HTTP]  # reused
    fresh = build_state(objs)
    assert fresh.ports == cached.ports
    assert fresh.ports[HTTP] is not cached.ports[HTTP]  # computed afresh, cache untouched
    assert build_state(objs, cache=cache).ports[HTTP] is cached.ports[HTTP]
