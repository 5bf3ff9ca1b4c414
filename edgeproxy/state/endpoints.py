"""What the manifests say about each endpoint and about a Service's traffic policies (pure).

The state builder calls these for every Service it computes; nothing here knows the node, so
the desired state stays a function of the manifests alone (the forwarder applies the node's
identity, see ``edgeproxy.forwarding.topology``). It owns:

* EndpointSlices -> `EndpointInfo` per (port name, protocol), read as kube-proxy's
  ``EndpointSliceCache`` reads them: an unset ``ready`` or ``serving`` is true, an unset
  ``terminating`` false; ``hints.forZones`` / ``hints.forNodes`` kept as sorted names; FQDN
  slices carry nothing to dial. The same address in two places (a pod moving between slices,
  or a new pod that got the IP of a terminating one) keeps the later entry unless that one is
  terminating — kube-proxy's rule. Unlike kube-proxy (which takes ``addresses[0]`` only),
  every address of an endpoint is kept, as edgeproxy always did (the shared corpus pins it);
* Endpoints (v1) -> the same, ``addresses`` ready, ``notReadyAddresses`` neither ready nor
  serving, with ``nodeName``, ``hostname`` and ``targetRef``; a ready copy of an address wins;
* the Service's ``internalTrafficPolicy``, ``externalTrafficPolicy``, ``trafficDistribution``
  and ``service.kubernetes.io/topology-mode`` annotation (`traffic_policy`);
* hints for hand-written manifests (`derive_hints`): when a Service asks for
  ``trafficDistribution`` but none of its endpoints carries a hint (no EndpointSlice
  controller ever saw these objects), hints are filled in as that controller would
  (``PreferClose``/``PreferSameZone``: each ready endpoint hinted for its own zone;
  ``PreferSameNode``: also for its own node). Mirrored slices that carry hints are used as
  they are; the ``topology-mode: Auto`` heuristic needs the cluster's node sizes and is left
  to the controller.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

from edgeproxy.model import (
    POLICY_CLUSTER,
    POLICY_LOCAL,
    TOPOLOGY_HINTS_ANNOTATION,
    TOPOLOGY_MODE_ANNOTATION,
    TRAFFIC_DISTRIBUTIONS,
    Endpoint,
    EndpointInfo,
    KubeObject,
    TargetRef,
    TrafficPolicy,
)

PortEndpoints = dict[tuple[str, str], dict[Endpoint, EndpointInfo]]  # (name, proto) -> infos


def _target_ref(value: object) -> TargetRef | None:
    if not isinstance(value, Mapping):
        return None
    ref = TargetRef(*(str(value.get(k) or "") for k in ("kind", "namespace", "name", "uid")))
    return ref if ref != TargetRef() else None


def _names(items: object) -> tuple[str, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(sorted({str(i["name"]) for i in items if isinstance(i, Mapping)
                         and i.get("name")}))


_PLAIN = (True, True, False, None, None, (), (), None, None)  # no conditions, no metadata


def _slice_info(ep: Mapping) -> tuple:
    """The metadata of one EndpointSlice endpoint (EndpointInfo's fields after the address),
    shared by each of its addresses."""
    if len(ep) == 1:
        return _PLAIN  # addresses only: the common hand-written form
    get = ep.get
    conditions = get("conditions")
    hints = get("hints")
    ref = get("targetRef")
    return (not conditions or conditions.get("ready") is not False,
            not conditions or conditions.get("serving") is not False,
            bool(conditions) and conditions.get("terminating") is True,
            get("nodeName") or None,
            get("zone") or None,
            _names(hints.get("forZones")) if hints else (),
            _names(hints.get("forNodes")) if hints else (),
            get("hostname") or None,
            _target_ref(ref) if ref else None)


def slice_endpoints(slices: Iterable[KubeObject]) -> PortEndpoints:
    """(port name, protocol) -> {address: info}, from EndpointSlices in source order.

    A slice port without a name (or with "") matches the Service's unnamed port, as in
    kube-proxy (a nil name is read as ""). A slice port without a number carries no target.
    """
    out: PortEndpoints = defaultdict(dict)
    for s in slices:
        body = s.body
        if body.get("addressType") == "FQDN":
            continue
        entries = [(address, meta) for ep in (body.get("endpoints") or [])
                   for meta in (_slice_info(ep),) for address in ep.get("addresses") or []]
        if not entries:
            continue
        for port in body.get("ports") or []:
            number = port.get("port")
            if not number:
                continue
            bucket = out[(port.get("name") or "", port.get("protocol") or "TCP")]
            for address, meta in entries:
                key = Endpoint(address, number)
                # kube-proxy: a later copy replaces an earlier one unless it is terminating.
                if not meta[2] or key not in bucket:
                    bucket[key] = EndpointInfo(key, *meta)
    return out


def endpoints_endpoints(obj: KubeObject) -> PortEndpoints:
    """(port name, protocol) -> {address: info}, from an Endpoints (v1) object."""
    out: PortEndpoints = defaultdict(dict)
    for subset in obj.body.get("subsets") or []:
        entries = [(a, True) for a in subset.get("addresses") or []] + \
                  [(a, False) for a in subset.get("notReadyAddresses") or []]
        if not entries:
            continue
        for port in subset.get("ports") or []:
            bucket = out[(port.get("name") or "", port.get("protocol") or "TCP")]
            for address, ready in entries:
                key = Endpoint(address["ip"], port["port"])
                old = bucket.get(key)
                if old is not None and old.ready and not ready:
                    continue  # the address is also listed as ready
                bucket[key] = EndpointInfo(
                    key, ready=ready, serving=ready, node_name=address.get("nodeName") or None,
                    hostname=address.get("hostname") or None,
                    target_ref=_target_ref(address.get("targetRef")))
    return out


def traffic_policy(body: Mapping) -> TrafficPolicy:
    """The Service's policies with kube-proxy's defaults (unset or unknown: Cluster)."""
    spec = body.get("spec") or {}
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    internal = POLICY_LOCAL if spec.get("internalTrafficPolicy") == POLICY_LOCAL \
        else POLICY_CLUSTER
    external = POLICY_LOCAL if spec.get("externalTrafficPolicy") == POLICY_LOCAL \
        else POLICY_CLUSTER
    mode = annotations.get(TOPOLOGY_MODE_ANNOTATION) or \
        annotations.get(TOPOLOGY_HINTS_ANNOTATION) or None
    return TrafficPolicy(internal, external, spec.get("trafficDistribution") or None, mode)


def derive_hints(infos: tuple[EndpointInfo, ...], traffic: TrafficPolicy
                 ) -> tuple[tuple[EndpointInfo, ...], TrafficPolicy]:
    """Fill in the hints the EndpointSlice controller would have written for
    ``trafficDistribution`` when no endpoint has any (see the module docstring)."""
    if traffic.distribution not in TRAFFIC_DISTRIBUTIONS or \
            any(i.zone_hints or i.node_hints for i in infos):
        return infos, traffic
    same_node = traffic.distribution == "PreferSameNode"
    out = []
    for info in infos:
        if info.ready and (info.zone or (same_node and info.node_name)):
            info = info._replace(
                zone_hints=(info.zone,) if info.zone else (),
                node_hints=(info.node_name,) if same_node and info.node_name else ())
        out.append(info)
    derived = tuple(out)
    if derived == infos:
        return infos, traffic
    return derived, TrafficPolicy(traffic.internal, traffic.external, traffic.distribution,
                                  traffic.topology_mode, hints_derived=True)


def port_endpoints(bucket: Mapping[Endpoint, EndpointInfo] | None, traffic: TrafficPolicy
                   ) -> tuple[tuple[Endpoint, ...], tuple[EndpointInfo, ...], TrafficPolicy]:
    """(ready addresses, every endpoint sorted by address, the policy) of one service port."""
    if not bucket:
        return (), (), traffic
    infos = tuple(bucket[k] for k in sorted(bucket))
    infos, traffic = derive_hints(infos, traffic)
    return tuple(i.address for i in infos if i.ready), infos, traffic
