"""Which endpoints this node uses for a service port (pure: no sockets, no clock).

Two steps, both functions of (service port, its endpoints, the node's identity):

1. `categorize_endpoints` is kube-proxy's ``CategorizeEndpoints`` (pkg/proxy/topology.go),
   case for case, so its table of tests applies (tests/forwarding/test_topology.py mirrors
   it):

   * the Cluster set: ready endpoints, narrowed by topology hints when the hints allow it
     (``topologyModeFromHints``: every ready endpoint hinted for nodes and one for this node
     -> ``PreferSameNode``; else every ready endpoint hinted for zones and one for this zone ->
     ``PreferSameZone``; else no topology); none ready anywhere -> the serving-and-terminating
     ones (KEP-1669), without topology;
   * the Local set (``internalTrafficPolicy: Local``, or ``externalTrafficPolicy: Local`` on a
     port reachable from outside): ready endpoints on this node, else its serving-and-
     terminating ones; topology does not apply. An empty Local set while other nodes have
     endpoints means the connection is refused, never sent elsewhere (``has_any`` tells the
     two apart);
   * an endpoint is local when its ``nodeName`` is this node's name; the zone is the node's
     configured zone ("" = the node has no zone label, so zone hints cannot apply).

2. `select` turns that into what the listeners serve (`PortSelection`): the main listener (the
   cluster IPs) uses the internal policy's set; a port whose external paths need the other set
   gets a second listener with it (see ``ServicePort.second_listener``). Each set is then put
   in locality order for a disconnected node — endpoints on this node, then in this zone, then
   the rest — as tiers the balancer tries in turn (``locality=False``: one tier). Locality
   only orders what kube-proxy's rules selected; it never adds an endpoint they left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Iterable

from edgeproxy.model import POLICY_CLUSTER, POLICY_LOCAL, Endpoint, EndpointInfo, ServicePort

PREFER_SAME_ZONE = "PreferSameZone"
PREFER_SAME_NODE = "PreferSameNode"

# Locality tiers, best first (their names appear in status).
NODE, ZONE, REMOTE = "node", "zone", "remote"
LOCALITIES = (NODE, ZONE, REMOTE)


@dataclass(frozen=True)
class NodeIdentity:
    """This node as EndpointSlices name it: ``nodeName`` and ``topology.kubernetes.io/zone``."""

    name: str = ""
    zone: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "zone": self.zone}


def is_local(ep: EndpointInfo, node: NodeIdentity) -> bool:
    return bool(node.name) and ep.node_name == node.name


def locality(ep: EndpointInfo, node: NodeIdentity) -> str:
    if is_local(ep, node):
        return NODE
    if node.zone and ep.zone == node.zone:
        return ZONE
    return REMOTE


def _serving_terminating(ep: EndpointInfo) -> bool:
    return ep.serving and ep.terminating


@dataclass(frozen=True)
class Categorized:
    """kube-proxy's four results. ``None`` (not empty) for a set the port never uses."""

    cluster: tuple[EndpointInfo, ...] | None
    local: tuple[EndpointInfo, ...] | None
    all_reachable: tuple[EndpointInfo, ...]
    has_any: bool  # some endpoint is usable somewhere in the cluster
    topology_mode: str = ""  # "", PreferSameZone or PreferSameNode (the Cluster set's)


def topology_mode_from_hints(endpoints: Iterable[EndpointInfo], node: NodeIdentity) -> str:
    """kube-proxy's ``topologyModeFromHints`` (the PreferSameTrafficDistribution gate is on:
    GA in Kubernetes 1.35)."""
    for_node = for_zone = False
    all_node = all_zone = True
    for ep in endpoints:
        if not ep.ready:
            continue
        if not ep.node_hints:
            all_node = False
        elif node.name in ep.node_hints:
            for_node = True
        if not ep.zone_hints:
            all_zone = False
        elif node.zone in ep.zone_hints:
            for_zone = True
    if all_node and for_node:
        return PREFER_SAME_NODE
    if all_zone and for_zone:
        return PREFER_SAME_ZONE
    return ""


def _available_for_topology(ep: EndpointInfo, mode: str, node: NodeIdentity) -> bool:
    if mode == "":
        return True
    if mode == PREFER_SAME_NODE:
        return node.name in ep.node_hints
    if mode == PREFER_SAME_ZONE:
        return node.zone in ep.zone_hints
    return False


def categorize_endpoints(endpoints: Iterable[EndpointInfo], sp: ServicePort,
                         node: NodeIdentity) -> Categorized:
    """kube-proxy's ``CategorizeEndpoints`` (see the module docstring)."""
    eps = tuple(endpoints)
    cluster: tuple[EndpointInfo, ...] | None = None
    local: tuple[EndpointInfo, ...] | None = None
    has_any = False
    mode = ""
    if sp.uses_cluster_endpoints:
        mode = topology_mode_from_hints(eps, node)
        cluster = tuple(ep for ep in eps
                        if ep.ready and _available_for_topology(ep, mode, node))
        # Nothing ready for this topology means nothing ready anywhere (the mode falls back to
        # "" when this zone/node has no ready endpoint): try the terminating ones.
        if not cluster:
            cluster = tuple(ep for ep in eps if _serving_terminating(ep))
        has_any = bool(cluster)
    if not sp.uses_local_endpoints:
        return Categorized(cluster, None, cluster or (), has_any, mode)
    local_ready = local_terminating = False
    for ep in eps:
        if ep.ready:
            has_any = True
            local_ready = local_ready or is_local(ep, node)
        elif _serving_terminating(ep):
            has_any = True
            local_terminating = local_terminating or is_local(ep, node)
    use_terminating = False
    if local_ready:
        local = tuple(ep for ep in eps if is_local(ep, node) and ep.ready)
    elif local_terminating:
        use_terminating = True
        local = tuple(ep for ep in eps if is_local(ep, node) and _serving_terminating(ep))
    else:
        local = ()
    if cluster is None:
        return Categorized(None, local, local, has_any, mode)
    if mode == "" and not use_terminating:
        # cluster holds every ready endpoint, local only ready ones: a superset already.
        return Categorized(cluster, local, cluster, has_any, mode)
    merged = {ep.address: ep for ep in chain(cluster, local)}
    return Categorized(cluster, local, tuple(merged[k] for k in sorted(merged)), has_any, mode)


@dataclass(frozen=True)
class EndpointSet:
    """The endpoints one listener balances over, in locality tiers (best first)."""

    policy: str  # Cluster or Local: which of kube-proxy's sets this is
    tiers: tuple[tuple[Endpoint, ...], ...] = ()
    # Empty although endpoints exist elsewhere (a Local set with none on this node):
    # connections are refused rather than sent elsewhere.
    refused: bool = False

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(chain.from_iterable(self.tiers))


def _tiers(eps: Iterable[EndpointInfo], node: NodeIdentity, enabled: bool
           ) -> tuple[tuple[Endpoint, ...], ...]:
    eps = tuple(eps)
    if not eps:
        return ()
    if not enabled:
        return (tuple(ep.address for ep in eps),)
    groups: dict[str, list[Endpoint]] = {name: [] for name in LOCALITIES}
    for ep in eps:
        groups[locality(ep, node)].append(ep.address)
    return tuple(tuple(g) for g in groups.values() if g)


@dataclass(frozen=True)
class PortSelection:
    """What the listeners of one service port serve on this node."""

    main: EndpointSet  # the cluster IPs (and whatever external path needs the same set)
    second: EndpointSet | None  # the second listener's, when the port has one
    categorized: Categorized

    def used(self) -> set[Endpoint]:
        """Endpoints some listener may send a connection to."""
        sets = [self.main] + ([self.second] if self.second is not None else [])
        return {ep for s in sets for ep in s.endpoints}


def select(sp: ServicePort, node: NodeIdentity, locality_aware: bool = True) -> PortSelection:
    """The listeners' endpoint sets of ``sp`` on ``node`` (see the module docstring)."""
    cat = categorize_endpoints(sp.infos, sp, node)

    def endpoint_set(policy: str) -> EndpointSet:
        eps = (cat.local if policy == POLICY_LOCAL else cat.cluster) or ()
        return EndpointSet(policy, _tiers(eps, node, locality_aware),
                           refused=not eps and cat.has_any)

    main_policy = POLICY_LOCAL if sp.internal_policy_local else POLICY_CLUSTER
    second = None
    if sp.second_listener:
        second = endpoint_set(POLICY_CLUSTER if sp.internal_policy_local else POLICY_LOCAL)
    return PortSelection(endpoint_set(main_policy), second, cat)
