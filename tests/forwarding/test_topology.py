"""Endpoint selection: kube-proxy's CategorizeEndpoints table, case for case, then locality.

The first table is kube-proxy's TestCategorizeEndpoints (pkg/proxy/topology_test.go) with its
names: ``cluster``/``local`` None means "the port never uses that set", an empty set means
"uses it and has none"; ``all`` defaults to whichever of the two is set, as in the original;
``remote_only`` marks the cases where hasAnyEndpoints is true although nothing is reachable
from this node. The feature gates of older tables (ProxyTerminatingEndpoints,
TopologyAwareHints) are GA, so their "disabled" cases are gone, as upstream. The node-hint
cases follow KEP-3015 (PreferSameNode).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from edgeproxy.model import Endpoint, EndpointInfo, Protocol, ServicePort, ServicePortKey, \
    TrafficPolicy
from edgeproxy.forwarding.topology import (NodeIdentity, categorize_endpoints, select,
                                           topology_mode_from_hints)

NODE = "node-1"


def ep(address: str, *, zones=(), nodes=(), ready=True, serving=None, terminating=False,
       local=False, zone=None, node=None) -> EndpointInfo:
    ip, port = address.split(":")
    return EndpointInfo(Endpoint(ip, int(port)), ready=ready,
                        serving=ready if serving is None else serving, terminating=terminating,
                        node_name=NODE if local else node, zone=zone,
                        zone_hints=tuple(zones), node_hints=tuple(nodes))


def svc(internal_local=False, external_local=False, node_port=0) -> ServicePort:
    return ServicePort(ServicePortKey("ns", "svc", "", Protocol.TCP), 80, ("198.19.0.1",),
                       node_port=node_port or None,
                       traffic=TrafficPolicy("Local" if internal_local else "Cluster",
                                             "Local" if external_local else "Cluster"))


class Case(NamedTuple):
    name: str
    zone: str | None  # the node's zone label (None: no label)
    service: ServicePort
    endpoints: list
    cluster: set | None
    local: set | None
    all: set | None = None
    remote_only: bool = False


ZA = "zone-a"
A4 = [ep("10.1.2.3:80", zones=[ZA]), ep("10.1.2.4:80", zones=["zone-b"]),
      ep("10.1.2.5:80", zones=["zone-c"]), ep("10.1.2.6:80", zones=[ZA])]
LOCAL_MIX = [ep("10.1.2.3:80", zones=[ZA], local=True),
             ep("10.1.2.4:80", zones=["zone-b"], local=True),
             ep("10.1.2.5:80", zones=["zone-c"]), ep("10.1.2.6:80", zones=[ZA])]
TWO_REMOTE = [ep("10.0.0.0:80"), ep("10.0.0.1:80")]
ONE_LOCAL = [ep("10.0.0.0:80", local=True), ep("10.0.0.1:80")]
TERMINATING_REMOTE = [ep("10.0.0.0:80", ready=False, serving=True, terminating=True),
                      ep("10.0.0.1:80", ready=False, serving=True, terminating=True)]

KUBE_PROXY_CASES = [
    Case("should use topology since all endpoints have hints, node has a zone label and and "
         "there are endpoints for the node's zone", ZA, svc(), A4,
         {"10.1.2.3:80", "10.1.2.6:80"}, None),
    Case("externalTrafficPolicy: Local, topology ignored for Local endpoints", ZA,
         svc(external_local=True, node_port=8080), LOCAL_MIX,
         {"10.1.2.3:80", "10.1.2.6:80"}, {"10.1.2.3:80", "10.1.2.4:80"},
         {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"}),
    Case("internalTrafficPolicy: Local, topology ignored for Local endpoints", ZA,
         svc(internal_local=True, node_port=8080), LOCAL_MIX,
         {"10.1.2.3:80", "10.1.2.6:80"}, {"10.1.2.3:80", "10.1.2.4:80"},
         {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"}),
    Case("empty node labels", None, svc(), [ep("10.1.2.3:80", zones=[ZA])],
         {"10.1.2.3:80"}, None),
    Case("empty zone label", "", svc(), [ep("10.1.2.3:80", zones=[ZA])], {"10.1.2.3:80"},
         None),
    Case("node in different zone, no endpoint filtering", "zone-b", svc(),
         [ep("10.1.2.3:80", zones=[ZA])], {"10.1.2.3:80"}, None),
    Case("unready endpoint", ZA, svc(),
         A4[:3] + [ep("10.1.2.6:80", zones=[ZA], ready=False)], {"10.1.2.3:80"}, None),
    Case("only unready endpoints in same zone (should not filter)", ZA, svc(),
         [ep("10.1.2.3:80", zones=[ZA], ready=False), A4[1], A4[2],
          ep("10.1.2.6:80", zones=[ZA], ready=False)], {"10.1.2.4:80", "10.1.2.5:80"}, None),
    Case("missing hints, no filtering applied", ZA, svc(),
         [A4[0], A4[1], ep("10.1.2.5:80"), A4[3]],
         {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"}, None),
    Case("multiple hints per endpoint, filtering includes any endpoint with zone included",
         "zone-c", svc(),
         [ep("10.1.2.3:80", zones=[ZA, "zone-b", "zone-c"]),
          ep("10.1.2.4:80", zones=["zone-b", "zone-c"]),
          ep("10.1.2.5:80", zones=["zone-b", "zone-d"]), ep("10.1.2.6:80", zones=["zone-c"])],
         {"10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"}, None),
    Case("conflicting topology and localness require merging allEndpoints", ZA,
         svc(external_local=True, node_port=8080),
         [ep("10.0.0.0:80", zones=[ZA], local=True), ep("10.0.0.1:80", zones=["zone-b"],
                                                       local=True),
          ep("10.0.0.2:80", zones=[ZA]), ep("10.0.0.3:80", zones=["zone-b"])],
         {"10.0.0.0:80", "10.0.0.2:80"}, {"10.0.0.0:80", "10.0.0.1:80"},
         {"10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"}),
    Case("internalTrafficPolicy: Local, with empty endpoints", None, svc(internal_local=True),
         [], None, set()),
    Case("internalTrafficPolicy: Local, but all endpoints are remote", None,
         svc(internal_local=True), TWO_REMOTE, None, set(), remote_only=True),
    Case("internalTrafficPolicy: Local, all endpoints are local", None,
         svc(internal_local=True), [ep("10.0.0.0:80", local=True), ep("10.0.0.1:80",
                                                                      local=True)],
         None, {"10.0.0.0:80", "10.0.0.1:80"}),
    Case("internalTrafficPolicy: Local, some endpoints are local", None,
         svc(internal_local=True), ONE_LOCAL, None, {"10.0.0.0:80"}),
    Case("Cluster traffic policy, endpoints not Ready", None, svc(),
         [ep("10.0.0.0:80", ready=False), ep("10.0.0.1:80", ready=False)], set(), None),
    Case("Cluster traffic policy, some endpoints are Ready", None, svc(),
         [ep("10.0.0.0:80", ready=False), ep("10.0.0.1:80")], {"10.0.0.1:80"}, None),
    Case("Cluster traffic policy, all endpoints are terminating", None, svc(),
         [ep("10.0.0.0:80", ready=False, serving=True, terminating=True, local=True),
          ep("10.0.0.1:80", ready=False, serving=True, terminating=True)],
         {"10.0.0.0:80", "10.0.0.1:80"}, None),
    Case("iTP: Local, eTP: Cluster, some endpoints local", None,
         svc(internal_local=True, node_port=8080), ONE_LOCAL,
         {"10.0.0.0:80", "10.0.0.1:80"}, {"10.0.0.0:80"}, {"10.0.0.0:80", "10.0.0.1:80"}),
    Case("iTP: Cluster, eTP: Local, some endpoints local", None,
         svc(external_local=True, node_port=8080), ONE_LOCAL,
         {"10.0.0.0:80", "10.0.0.1:80"}, {"10.0.0.0:80"}, {"10.0.0.0:80", "10.0.0.1:80"}),
    Case("iTP: Local, eTP: Local, some endpoints local", None,
         svc(internal_local=True, external_local=True, node_port=8080), ONE_LOCAL,
         {"10.0.0.0:80", "10.0.0.1:80"}, {"10.0.0.0:80"}, {"10.0.0.0:80", "10.0.0.1:80"}),
    Case("iTP: Local, eTP: Local, all endpoints remote", None,
         svc(internal_local=True, external_local=True, node_port=8080), TWO_REMOTE,
         {"10.0.0.0:80", "10.0.0.1:80"}, set(), {"10.0.0.0:80", "10.0.0.1:80"}),
    Case("iTP: Local, eTP: Local, all endpoints remote and terminating", None,
         svc(internal_local=True, external_local=True, node_port=8080), TERMINATING_REMOTE,
         {"10.0.0.0:80", "10.0.0.1:80"}, set(), {"10.0.0.0:80", "10.0.0.1:80"},
         remote_only=True),
    Case("iTP: Cluster, eTP: Local, with terminating endpoints", None,
         svc(external_local=True, node_port=8080),
         [ep("10.0.0.0:80"), ep("10.0.0.1:80", ready=False, serving=False, local=True),
          ep("10.0.0.2:80", ready=False, serving=True, terminating=True, local=True),
          ep("10.0.0.3:80", ready=False, serving=True, terminating=True)],
         {"10.0.0.0:80"}, {"10.0.0.2:80"}, {"10.0.0.0:80", "10.0.0.2:80"}),
    Case("externalTrafficPolicy ignored if not externally accessible", None,
         svc(external_local=True), [ep("10.0.0.0:80"), ep("10.0.0.1:80", local=True)],
         {"10.0.0.0:80", "10.0.0.1:80"}, None, {"10.0.0.0:80", "10.0.0.1:80"}),
    Case("no cluster endpoints for iTP:Local internal-only service", None,
         svc(internal_local=True), [ep("10.0.0.0:80"), ep("10.0.0.1:80", local=True)],
         None, {"10.0.0.1:80"}, {"10.0.0.1:80"}),
]

# KEP-3015: forNodes hints (written for trafficDistribution: PreferSameNode, together with the
# zone hints older proxies fall back to).
NODE_HINT_CASES = [
    Case("prefer same node: every endpoint has a node hint and one is for this node", ZA,
         svc(), [ep("10.0.0.1:80", nodes=[NODE], zones=[ZA]),
                 ep("10.0.0.2:80", nodes=["node-2"], zones=[ZA]),
                 ep("10.0.0.3:80", nodes=["node-3"], zones=["zone-b"])],
         {"10.0.0.1:80"}, None),
    Case("node hints but none for this node: same zone", ZA, svc(),
         [ep("10.0.0.2:80", nodes=["node-2"], zones=[ZA]),
          ep("10.0.0.3:80", nodes=["node-3"], zones=["zone-b"])], {"10.0.0.2:80"}, None),
    Case("one endpoint without a node hint: same zone", ZA, svc(),
         [ep("10.0.0.1:80", nodes=[NODE], zones=[ZA]), ep("10.0.0.2:80", zones=[ZA]),
          ep("10.0.0.3:80", nodes=["node-3"], zones=["zone-b"])],
         {"10.0.0.1:80", "10.0.0.2:80"}, None),
    Case("node hints for other nodes, no zone hints: no topology", ZA, svc(),
         [ep("10.0.0.2:80", nodes=["node-2"]), ep("10.0.0.3:80", nodes=["node-3"])],
         {"10.0.0.2:80", "10.0.0.3:80"}, None),
    Case("unready endpoints need no node hint", ZA, svc(),
         [ep("10.0.0.1:80", nodes=[NODE]), ep("10.0.0.2:80", ready=False)],
         {"10.0.0.1:80"}, None),
    Case("only terminating endpoints: no topology", ZA, svc(),
         [ep("10.0.0.1:80", ready=False, serving=True, terminating=True, nodes=["node-2"]),
          ep("10.0.0.2:80", ready=False, serving=True, terminating=True, nodes=[NODE])],
         {"10.0.0.1:80", "10.0.0.2:80"}, None),
]


def _addresses(eps) -> set[str] | None:
    return None if eps is None else {str(e) for e in eps}


@pytest.mark.parametrize("case", KUBE_PROXY_CASES + NODE_HINT_CASES, ids=lambda c: c.name)
def test_categorize_endpoints(case: Case) -> None:
    node = NodeIdentity(NODE, case.zone or "")
    got = categorize_endpoints(case.endpoints, case.service, node)
    assert _addresses(got.cluster) == case.cluster
    assert _addresses(got.local) == case.local
    if case.cluster is not None and case.local is None:
        expected_all = case.cluster
    elif case.local is not None and case.cluster is None:
        expected_all = case.local
    else:
        expected_all = case.all
    assert _addresses(got.all_reachable) == expected_all
    assert got.has_any == (bool(expected_all) or case.remote_only)


def test_topology_mode_needs_a_node_name_and_a_zone() -> None:
    hinted = [ep("10.0.0.1:80", nodes=[NODE], zones=[ZA])]
    assert topology_mode_from_hints(hinted, NodeIdentity(NODE, ZA)) == "PreferSameNode"
    assert topology_mode_from_hints(hinted, NodeIdentity("", ZA)) == "PreferSameZone"
    assert topology_mode_from_hints(hinted, NodeIdentity("", "")) == ""


def test_no_node_name_means_nothing_is_local() -> None:
    # A node without a name (not configured, unknown host name) must not match endpoints
    # whose nodeName is unset either.
    got = categorize_endpoints([ep("10.0.0.1:80")], svc(internal_local=True), NodeIdentity())
    assert got.local == () and got.has_any


# -- select: what the listeners serve --------------------------------------------------------

def port(*eps, **kw) -> ServicePort:
    sp = svc(**kw)
    return ServicePort(sp.key, sp.port, sp.cluster_ips, node_port=sp.node_port,
                       traffic=sp.traffic, endpoint_info=tuple(eps),
                       endpoints=tuple(e.address for e in eps if e.ready))


def test_locality_tiers_node_then_zone_then_rest() -> None:
    node = NodeIdentity(NODE, ZA)
    sp = port(ep("10.0.0.4:80", zone="zone-b", node="node-4"),
              ep("10.0.0.2:80", zone=ZA, node="node-2"), ep("10.0.0.1:80", local=True),
              ep("10.0.0.3:80"))
    chosen = select(sp, node)
    assert [[str(e) for e in tier] for tier in chosen.main.tiers] == [
        ["10.0.0.1:80"], ["10.0.0.2:80"], ["10.0.0.4:80", "10.0.0.3:80"]]
    assert chosen.second is None
    flat = select(sp, node, locality_aware=False)
    assert len(flat.main.tiers) == 1 and set(flat.main.endpoints) == set(chosen.main.endpoints)


def test_locality_orders_only_what_topology_selected() -> None:
    # Zone hints narrow the set first; locality then puts this node's endpoint first.
    sp = port(ep("10.0.0.1:80", zones=[ZA], local=True), ep("10.0.0.2:80", zones=[ZA]),
              ep("10.0.0.3:80", zones=["zone-b"]))
    chosen = select(sp, NodeIdentity(NODE, ZA))
    assert chosen.categorized.topology_mode == "PreferSameZone"
    assert [[str(e) for e in t] for t in chosen.main.tiers] == [["10.0.0.1:80"],
                                                                 ["10.0.0.2:80"]]


def test_internal_local_without_local_endpoints_is_refused() -> None:
    chosen = select(port(ep("10.0.0.1:80"), internal_local=True), NodeIdentity(NODE))
    assert chosen.main.endpoints == () and chosen.main.refused
    nothing = select(port(internal_local=True), NodeIdentity(NODE))
    assert nothing.main.endpoints == () and not nothing.main.refused  # no endpoints at all


@pytest.mark.parametrize("internal_local,external_local,main,second", [
    (False, False, "Cluster", None),
    (False, True, "Cluster", "Local"),
    (True, False, "Local", "Cluster"),
    (True, True, "Local", "Cluster"),
])
def test_second_listener_serves_the_other_set(internal_local, external_local, main, second):
    sp = port(ep("10.0.0.1:80", local=True), ep("10.0.0.2:80"), internal_local=internal_local,
              external_local=external_local, node_port=30080)
    chosen = select(sp, NodeIdentity(NODE))
    assert chosen.main.policy == main
    assert (chosen.second.policy if chosen.second else None) == second
    # Pods reaching an external address follow externalTrafficPolicy; the node itself
    # always gets the Cluster set (kube-proxy's short-circuit for local traffic).
    by_listener = {False: chosen.main, True: chosen.second}
    assert by_listener[sp.external_from_pods_uses_second].policy == \
        ("Local" if external_local else "Cluster")
    assert by_listener[sp.external_from_host_uses_second].policy == "Cluster"
