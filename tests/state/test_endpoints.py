"""What the manifests say about each endpoint and about the Service's traffic policies."""

from __future__ import annotations

from edgeproxy.model import (Endpoint, EndpointInfo, Protocol, ServicePortKey, TargetRef,
                             TrafficPolicy)
from edgeproxy.state import build_state
from edgeproxy.state.endpoints import derive_hints, traffic_policy
from tests.support.manifests import objects

SVC = """
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {service.kubernetes.io/topology-mode: Auto}
spec:
  clusterIP: 198.19.0.10
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  trafficDistribution: PreferClose
  type: NodePort
  ports: [{name: http, port: 80, nodePort: 30080}]
"""

SLICE = """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.1.11]
  nodeName: edge-1
  zone: zone-a
  hostname: web-0
  targetRef: {kind: Pod, namespace: shop, name: web-0, uid: u-0}
  hints: {forZones: [{name: zone-b}, {name: zone-a}], forNodes: [{name: edge-1}]}
- addresses: [198.18.1.12]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: edge-2
- addresses: [198.18.1.13]
  conditions: {ready: false, serving: false}
"""

HTTP = ServicePortKey("shop", "web", "http", Protocol.TCP)


def test_slice_metadata_and_conditions_are_kept() -> None:
    sp = build_state(objects(SVC + "---" + SLICE)).ports[HTTP]
    assert sp.endpoints == (Endpoint("198.18.1.11", 8080),)  # ready ones, as before
    first, terminating, unready = sp.endpoint_info
    assert first == EndpointInfo(
        Endpoint("198.18.1.11", 8080), ready=True, serving=True, terminating=False,
        node_name="edge-1", zone="zone-a", zone_hints=("zone-a", "zone-b"),
        node_hints=("edge-1",), hostname="web-0",
        target_ref=TargetRef("Pod", "shop", "web-0", "u-0"))
    assert (terminating.ready, terminating.serving, terminating.terminating,
            terminating.node_name) == (False, True, True, "edge-2")
    assert (unready.ready, unready.serving, unready.terminating) == (False, False, False)
    assert sp.traffic == TrafficPolicy("Local", "Local", "PreferClose", "Auto")
    assert sp.internal_policy_local and sp.external_policy_local


def test_to_dict_uses_api_field_names() -> None:
    sp = build_state(objects(SVC + "---" + SLICE)).ports[HTTP]
    assert sp.endpoint_info[0].to_dict() == {
        "address": "198.18.1.11:8080", "ready": True, "serving": True, "terminating": False,
        "nodeName": "edge-1", "zone": "zone-a",
        "hints": {"forZones": ["zone-a", "zone-b"], "forNodes": ["edge-1"]},
        "hostname": "web-0",
        "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "u-0"}}
    assert sp.traffic.to_dict() == {"internalTrafficPolicy": "Local",
                                    "externalTrafficPolicy": "Local",
                                    "trafficDistribution": "PreferClose",
                                    "topologyMode": "Auto"}


def test_duplicate_address_later_copy_wins_unless_terminating() -> None:
    # kube-proxy's EndpointSliceCache: a pod that moved between slices, or a new pod that
    # got a terminating pod's IP, is kept as the non-terminating copy.
    two = SLICE.replace("web-a", "web-b").split("endpoints:")[0] + """endpoints:
- addresses: [198.18.1.12]
  nodeName: edge-3
- addresses: [198.18.1.11]
  conditions: {ready: false, serving: true, terminating: true}
"""
    sp = build_state(objects(SVC + "---" + SLICE + "---" + two)).ports[HTTP]
    by_ip = {i.ip: i for i in sp.endpoint_info}
    assert by_ip["198.18.1.12"].node_name == "edge-3" and by_ip["198.18.1.12"].ready
    assert by_ip["198.18.1.11"].node_name == "edge-1" and by_ip["198.18.1.11"].ready
    assert sp.endpoints == (Endpoint("198.18.1.11", 8080), Endpoint("198.18.1.12", 8080))


def test_endpoints_v1_node_name_and_target_ref() -> None:
    eps = """
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: shop}
subsets:
- addresses:
  - {ip: 198.18.2.1, nodeName: edge-1, hostname: web-0, targetRef: {kind: Pod, name: web-0}}
  notReadyAddresses: [{ip: 198.18.2.2, nodeName: edge-2}, {ip: 198.18.2.1}]
  ports: [{name: http, port: 9090}]
"""
    sp = build_state(objects(SVC + "---" + eps)).ports[HTTP]
    ready, unready = sp.endpoint_info
    assert ready == EndpointInfo(Endpoint("198.18.2.1", 9090), node_name="edge-1",
                                 hostname="web-0", target_ref=TargetRef("Pod", "", "web-0"))
    assert (unready.ready, unready.serving, unready.node_name) == (False, False, "edge-2")
    assert sp.endpoints == (Endpoint("198.18.2.1", 9090),)


def test_traffic_policy_defaults_and_old_annotation() -> None:
    assert traffic_policy({"spec": {}}) == TrafficPolicy("Cluster", "Cluster", None, None)
    old = {"metadata": {"annotations": {"service.kubernetes.io/topology-aware-hints": "auto"}}}
    assert traffic_policy(old).topology_mode == "auto"


def _info(ip, zone=None, node=None, ready=True, zones=()):
    return EndpointInfo(Endpoint(ip, 80), ready=ready, zone=zone, node_name=node,
                        zone_hints=zones)


def test_hints_derived_from_traffic_distribution_only_when_none_are_given() -> None:
    infos = (_info("10.0.0.1", "a", "n1"), _info("10.0.0.2", "b", "n2"),
             _info("10.0.0.3", "a", "n3", ready=False), _info("10.0.0.4"))
    close = TrafficPolicy(distribution="PreferClose")
    derived, traffic = derive_hints(infos, close)
    assert [i.zone_hints for i in derived] == [("a",), ("b",), (), ()]  # ready, zoned only
    assert [i.node_hints for i in derived] == [(), (), (), ()]
    assert traffic.hints_derived
    same_node, _ = derive_hints(infos, TrafficPolicy(distribution="PreferSameNode"))
    assert [i.node_hints for i in same_node] == [("n1",), ("n2",), (), ()]
    assert [i.zone_hints for i in same_node] == [("a",), ("b",), (), ()]
    # A slice that carries hints (the cluster's controller wrote them) is used as it is.
    given = infos[:1] + (_info("10.0.0.2", "b", zones=("a",)),)
    assert derive_hints(given, close) == (given, close)
    # No trafficDistribution (or topology-mode Auto, whose heuristic needs the cluster): none.
    assert derive_hints(infos, TrafficPolicy(topology_mode="Auto"))[0] == infos
