"""The desired state: validated objects in, ``DesiredState`` (what to proxy, and why not) out.

Pure: no I/O, deterministic for a given set of objects whatever their order. It owns
* duplicate objects: the same kind/namespace/name twice -> the one with the smallest
  (file path, document index) wins, the others are reported as conflicts and ignored;
* the service verdicts (``filtering``), one ``ServicePort`` per proxied (service, port, protocol);
* endpoints, matched to service ports by port name and protocol as kube-proxy does: from the
  EndpointSlices labelled ``kubernetes.io/service-name`` when the Service has any, otherwise from
  its Endpoints; an unset ``ready`` is ready; not-ready addresses are left out; deduplicated and
  sorted; the target port is the endpoint port's number;
* VIP conflicts: two services claiming the same VIP:port/protocol -> the smaller source wins,
  the loser's port is not proxied and the conflict is reported;
* DestinationRules (EdgeMesh): the rule named like the Service in its namespace sets the
  port's ``lb_policy``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from edgeproxy.model import (
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    SERVICE_NAME_LABEL,
    Conflict,
    DesiredState,
    Endpoint,
    FilterMode,
    KubeObject,
    LoadBalancerKind,
    LoadBalancerPolicy,
    ManifestError,
    Protocol,
    ServicePort,
    ServicePortKey,
    ServiceVerdict,
    SkipReason,
    SourceRef,
    Verdict,
)

from .filtering import PROXIED_PROTOCOLS, service_vips, verdict_reason

_USED_KINDS = ("Service", "Endpoints", "EndpointSlice", "DestinationRule")


def source_order(source: SourceRef) -> tuple:
    """Sort key of a source: file path, then document index numerically ("10" after "9")."""
    return (source.file, tuple(int(p) if p.isdigit() else -1 for p in source.document.split("/")))


def _dedupe(objects: list[KubeObject], conflicts: list[Conflict]) -> dict[tuple[str, str], KubeObject]:
    """(namespace, name) -> winning object of one kind; losers reported."""
    winners: dict[tuple[str, str], KubeObject] = {}
    for obj in sorted(objects, key=lambda o: source_order(o.source)):
        key = (obj.namespace, obj.name)
        first = winners.get(key)
        if first is None:
            winners[key] = obj
        else:
            conflicts.append(Conflict(f"{obj.kind} {obj.namespace}/{obj.name} defined twice",
                                      first.source, obj.source))
    return winners


def _policy(rule: KubeObject | None) -> LoadBalancerPolicy:
    if rule is None:
        return LoadBalancerPolicy()
    lb = (((rule.body.get("spec") or {}).get("trafficPolicy") or {}).get("loadBalancer") or {})
    consistent = lb.get("consistentHash")
    if consistent:
        if consistent.get("httpHeaderName"):
            return LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_HTTP_HEADER,
                                      consistent["httpHeaderName"], rule.source)
        return LoadBalancerPolicy(LoadBalancerKind.CONSISTENT_HASH_SOURCE_IP, None, rule.source)
    if lb.get("simple") == "RANDOM":
        return LoadBalancerPolicy(LoadBalancerKind.RANDOM, None, rule.source)
    return LoadBalancerPolicy(LoadBalancerKind.ROUND_ROBIN, None, rule.source)


def _slice_endpoints(slices: list[KubeObject]) -> dict[tuple[str, str], set[Endpoint]]:
    """(port name, protocol) -> ready endpoints, from EndpointSlices."""
    out: dict[tuple[str, str], set[Endpoint]] = defaultdict(set)
    for s in slices:
        body = s.body
        if body.get("addressType") == "FQDN":
            continue
        ready = [a for ep in (body.get("endpoints") or [])
                 if ((ep.get("conditions") or {}).get("ready") is not False)
                 for a in ep.get("addresses") or []]
        if not ready:
            continue
        for port in body.get("ports") or []:
            number = port.get("port")
            if not number:
                continue
            bucket = out[(port.get("name") or "", port.get("protocol") or "TCP")]
            bucket.update(Endpoint(a, number) for a in ready)
    return out


def _endpoints_endpoints(obj: KubeObject) -> dict[tuple[str, str], set[Endpoint]]:
    out: dict[tuple[str, str], set[Endpoint]] = defaultdict(set)
    for subset in obj.body.get("subsets") or []:
        ready = [a["ip"] for a in subset.get("addresses") or []]
        if not ready:
            continue
        for port in subset.get("ports") or []:
            bucket = out[(port.get("name") or "", port.get("protocol") or "TCP")]
            bucket.update(Endpoint(ip, port["port"]) for ip in ready)
    return out


def build_state(objects: Iterable[KubeObject],
                filter_mode: FilterMode = FilterMode.FILTER_IF_LABEL_EXISTS,
                errors: Iterable[ManifestError] = ()) -> DesiredState:
    """The desired state of a set of validated objects (see the module docstring)."""
    errors = tuple(errors)
    by_kind: dict[str, list[KubeObject]] = {k: [] for k in _USED_KINDS}
    ignored: dict[str, int] = defaultdict(int)
    for obj in objects:
        bucket = by_kind.get(obj.kind)
        if bucket is None:
            ignored[obj.kind] += 1
        else:
            bucket.append(obj)

    conflicts: list[Conflict] = []
    services = _dedupe(by_kind["Service"], conflicts)
    endpoints = _dedupe(by_kind["Endpoints"], conflicts)
    rules = _dedupe(by_kind["DestinationRule"], conflicts)
    slices_by_service: dict[tuple[str, str], list[KubeObject]] = defaultdict(list)
    for s in _dedupe(by_kind["EndpointSlice"], conflicts).values():
        owner = ((s.body.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner:
            slices_by_service[(s.namespace, owner)].append(s)

    verdicts: list[ServiceVerdict] = []
    ports: dict[ServicePortKey, ServicePort] = {}
    claims: dict[tuple[str, int, str], ServicePort] = {}
    losers = {c.loser for c in conflicts if c.what.startswith("Service ")}
    ordered = sorted(by_kind["Service"], key=lambda o: source_order(o.source))
    for svc in ordered:
        if svc.source in losers:
            verdicts.append(ServiceVerdict(svc.source, svc.namespace, svc.name, Verdict.SKIP,
                                           SkipReason.CONFLICT, _all_keys(svc)))
            continue
        reason = verdict_reason(svc.body, filter_mode)
        if reason is not None:
            verdicts.append(ServiceVerdict(svc.source, svc.namespace, svc.name, Verdict.SKIP,
                                           reason, _all_keys(svc)))
            continue
        svc_ports = _service_ports(svc, slices_by_service, endpoints, rules)
        kept: list[ServicePortKey] = []
        for sp in svc_ports:
            lost_to = None
            for vip in sp.vips:
                other = claims.get((vip, sp.port, sp.key.protocol.value))
                if other is not None:
                    lost_to = (vip, other)
                    break
            if lost_to is not None:
                vip, other = lost_to
                conflicts.append(Conflict(
                    f"{_hostport(vip, sp.port)}/{sp.key.protocol.value} claimed by "
                    f"{other.key.namespace}/{other.key.name} and {svc.namespace}/{svc.name}",
                    other.source, svc.source))  # type: ignore[arg-type]
                continue
            for vip in sp.vips:
                claims[(vip, sp.port, sp.key.protocol.value)] = sp
            ports[sp.key] = sp
            kept.append(sp.key)
        if kept:
            verdicts.append(ServiceVerdict(svc.source, svc.namespace, svc.name, Verdict.PROXY,
                                           None, _all_keys(svc)))
        else:
            verdicts.append(ServiceVerdict(svc.source, svc.namespace, svc.name, Verdict.SKIP,
                                           SkipReason.CONFLICT, _all_keys(svc)))

    # Services that failed validation are listed too, so `validate` shows every Service.
    seen = {v.source for v in verdicts}
    for err in errors:
        if err.kind == "Service" and err.document is not None and err.name:
            source = SourceRef(err.file, err.document)
            if source not in seen:
                seen.add(source)
                verdicts.append(ServiceVerdict(source, err.namespace or "default", err.name,
                                               Verdict.SKIP, SkipReason.INVALID))
    verdicts.sort(key=lambda v: source_order(v.source))
    return DesiredState(ports=dict(sorted(ports.items())), services=tuple(verdicts),
                        errors=errors, conflicts=tuple(conflicts), ignored_kinds=dict(ignored))


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _all_keys(svc: KubeObject) -> tuple[ServicePortKey, ...]:
    keys = []
    for p in (svc.body.get("spec") or {}).get("ports") or []:
        try:
            protocol = Protocol(p.get("protocol") or "TCP")
        except ValueError:
            continue
        keys.append(ServicePortKey(svc.namespace, svc.name, p.get("name") or "", protocol))
    return tuple(keys)


def _service_ports(svc: KubeObject, slices_by_service, endpoints, rules) -> list[ServicePort]:
    spec = svc.body.get("spec") or {}
    ident = (svc.namespace, svc.name)
    slices = slices_by_service.get(ident)
    if slices:
        backends = _slice_endpoints(slices)
    elif ident in endpoints:
        backends = _endpoints_endpoints(endpoints[ident])
    else:
        backends = {}
    policy = _policy(rules.get(ident))
    affinity = spec.get("sessionAffinity") == "ClientIP"
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
        "timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT_SECONDS
    lb_ips = tuple(i["ip"] for i in (((svc.body.get("status") or {}).get("loadBalancer") or {})
                                     .get("ingress") or []) if i.get("ip"))
    vips = tuple(service_vips(spec))
    out = []
    for p in spec.get("ports") or []:
        protocol = p.get("protocol") or "TCP"
        if protocol not in PROXIED_PROTOCOLS:
            continue  # SCTP: listed in the verdict's ports, never in the desired state
        name = p.get("name") or ""
        key = ServicePortKey(svc.namespace, svc.name, name, Protocol(protocol))
        out.append(ServicePort(
            key=key, port=p["port"], cluster_ips=vips, node_port=p.get("nodePort") or None,
            external_ips=tuple(spec.get("externalIPs") or ()), load_balancer_ips=lb_ips,
            session_affinity=affinity, affinity_timeout=timeout,
            endpoints=tuple(sorted(backends.get((name, protocol), ()))),
            lb_policy=policy, source=svc.source))
    return out
