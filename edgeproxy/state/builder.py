"""The desired state: validated objects in, ``DesiredState`` (what to proxy, and why not) out.

Pure: no I/O, deterministic for a given set of objects whatever their order. It owns
* duplicate objects: the same kind/namespace/name twice -> the one with the smallest
  (file path, document index) wins, the others are reported as conflicts and ignored
  (a Service that loses is listed with reason ``conflict``);
* the service verdicts (``filtering``), one ``ServicePort`` per proxied (service, port, protocol);
  SCTP ports stay in the verdict's port list but never enter the desired state;
* endpoints, matched to service ports by port name and protocol as kube-proxy does: from the
  EndpointSlices labelled ``kubernetes.io/service-name`` when the Service has any, otherwise from
  its Endpoints; an unset ``ready`` is ready; not-ready addresses are left out; deduplicated and
  sorted; the target port is the endpoint port's number;
* VIP conflicts: two services claiming the same VIP:port/protocol -> the service with the
  smaller source wins, the loser's port is not proxied and the conflict is reported;
* DestinationRules (EdgeMesh): the rule named like the Service in its namespace sets the
  port's ``lb_policy``.

Speed: a reload after one changed file must not redo the work for 10,000 unchanged services.
The per-service result is a pure function of (Service object, its slices or Endpoints object,
its DestinationRule, filter mode); the catalog hands out the same object instances for
unchanged files, so results are memoized by object identity (``_Memo``), and only the cheap
global passes (grouping, duplicate and VIP-conflict detection) run over everything.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Iterable

from edgeproxy.model import (
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    DEFAULT_NAMESPACE,
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

from .gcpause import gc_paused
from .filtering import PROXIED_PROTOCOLS, service_vips, verdict_reason

_ORDER = attrgetter("order")
_USED_KINDS = ("Service", "Endpoints", "EndpointSlice", "DestinationRule")


@dataclass(frozen=True)
class _ServiceResult:
    """Everything derived from one Service and its dependencies alone."""

    verdict: ServiceVerdict  # as if no other service conflicted with it
    ports: tuple[ServicePort, ...]
    # per port: its "vip port proto" claims (strings: their hash is cached, tuples rehash)
    claims: tuple[tuple[str, ...], ...]
    # The same, as dicts, so the common no-conflict case is two C-level dict updates (a dict
    # copied into another keeps its stored hashes: ServicePortKey's hash is Python code).
    port_map: dict
    claim_map: dict


class ChunkedObjects(tuple):
    """A tuple of objects that also knows its chunks (one per file, in path order).

    The catalog hands these out, chunks in file-path order; a chunk is the very same tuple while its file is unchanged.
    ``build_state`` then redoes its grouping only for changed chunks and reuses whole chunks'
    results: touching 20,000 cold objects costs more than the 50 ms a one-file reload may take.
    """

    chunks: tuple[tuple[KubeObject, ...], ...]

    def __new__(cls, chunks: Iterable[tuple[KubeObject, ...]]) -> "ChunkedObjects":
        chunks = tuple(chunks)
        self = super().__new__(cls, chain.from_iterable(chunks))
        self.chunks = chunks
        return self


@dataclass
class _Groups:
    """Objects grouped by kind and (namespace, name); the first step of every build."""

    winners: dict[str, dict[tuple[str, str], KubeObject]]
    losers: list[KubeObject]
    ignored: dict[str, int]
    slices: dict[tuple[str, str], list[KubeObject]]  # (namespace, service) -> slices


@dataclass
class _Chunk:
    """What one chunk contributed to the previous build (see ``ChunkedObjects``)."""

    objects: tuple[KubeObject, ...]
    groups: _Groups
    services: list[KubeObject]  # sorted by source
    tables: list[tuple[str, dict]]  # the non-empty winners tables
    idents: set[tuple[str, str]]  # every (namespace, name) its objects may affect
    # (filter mode, ports, claims, verdicts) when the chunk's services had no VIP conflict
    result: tuple | None = None


class _Memo:
    """Results of the previous build: per Service (by identity) and per chunk."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple] = {}
        self.chunks: dict[int, _Chunk] = {}


_memo = _Memo()
# One token: whoever pops it uses the shared memo; a concurrent caller (the daemon computes in
# a native thread) gets a private, empty one instead of corrupting it. list.pop is atomic.
_memo_token = [True]

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


def _slice_endpoints(slices: Iterable[KubeObject]) -> dict[tuple[str, str], set[Endpoint]]:
    """(port name, protocol) -> ready endpoints, from EndpointSlices.

    A slice port without a name (or with "") matches the Service's unnamed port, as in
    kube-proxy (a nil name is read as ""). A slice port without a number carries no target.
    """
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
        ready = [a["ip"] for a in subset.get("addresses") or []]  # notReadyAddresses excluded
        if not ready:
            continue
        for port in subset.get("ports") or []:
            bucket = out[(port.get("name") or "", port.get("protocol") or "TCP")]
            bucket.update(Endpoint(ip, port["port"]) for ip in ready)
    return out


def _all_keys(svc: KubeObject) -> tuple[ServicePortKey, ...]:
    keys = []
    for p in (svc.body.get("spec") or {}).get("ports") or []:
        try:
            protocol = Protocol(p.get("protocol") or "TCP")
        except ValueError:
            continue
        keys.append(ServicePortKey(svc.namespace, svc.name, p.get("name") or "", protocol))
    return tuple(keys)


def _compute(svc: KubeObject, mode: FilterMode, slices: tuple, endpoints: KubeObject | None,
             rule: KubeObject | None) -> _ServiceResult:
    reason = verdict_reason(svc.body, mode)
    all_keys = _all_keys(svc)
    if reason is not None:
        verdict = ServiceVerdict(svc.source, svc.namespace, svc.name, Verdict.SKIP, reason,
                                 all_keys)
        return _ServiceResult(verdict, (), (), {}, {})
    spec = svc.body.get("spec") or {}
    if slices:
        backends = _slice_endpoints(slices)
    elif endpoints is not None:
        backends = _endpoints_endpoints(endpoints)
    else:
        backends = {}
    policy = _policy(rule)
    affinity = spec.get("sessionAffinity") == "ClientIP"
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
        "timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT_SECONDS
    ingress = ((svc.body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    lb_ips = tuple(i["ip"] for i in ingress if i.get("ip"))
    vips = tuple(service_vips(spec))
    external = tuple(spec.get("externalIPs") or ())
    ports, claims = [], []
    for p in spec.get("ports") or []:
        protocol = p.get("protocol") or "TCP"
        if protocol not in PROXIED_PROTOCOLS:
            continue
        name = p.get("name") or ""
        sp = ServicePort(
            key=ServicePortKey(svc.namespace, svc.name, name, Protocol(protocol)),
            port=p["port"], cluster_ips=vips, node_port=p.get("nodePort") or None,
            external_ips=external, load_balancer_ips=lb_ips,
            session_affinity=affinity, affinity_timeout=timeout,
            endpoints=tuple(sorted(backends.get((name, protocol), ()))),
            lb_policy=policy, source=svc.source)
        ports.append(sp)
        claims.append(tuple(f"{vip} {sp.port} {protocol}" for vip in sp.vips))
    verdict = ServiceVerdict(svc.source, svc.namespace, svc.name, Verdict.PROXY, None, all_keys)
    return _ServiceResult(verdict, tuple(ports), tuple(claims), {sp.key: sp for sp in ports},
                          {c: sp for sp, cs in zip(ports, claims) for c in cs})


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def build_state(objects: Iterable[KubeObject],
                filter_mode: FilterMode = FilterMode.FILTER_IF_LABEL_EXISTS,
                errors: Iterable[ManifestError] = ()) -> DesiredState:
    """The desired state of a set of validated objects (see the module docstring)."""
    try:
        _memo_token.pop()
    except IndexError:
        with gc_paused():
            return _build(_Memo(), objects, FilterMode(filter_mode), tuple(errors))
    try:
        with gc_paused():
            return _build(_memo, objects, FilterMode(filter_mode), tuple(errors))
    finally:
        _memo_token.append(True)


def _group(objects: Iterable[KubeObject]) -> _Groups:
    winners: dict[str, dict[tuple[str, str], KubeObject]] = {k: {} for k in _USED_KINDS}
    losers: list[KubeObject] = []
    ignored: dict[str, int] = defaultdict(int)
    for obj in objects:
        table = winners.get(obj.kind)
        if table is None:
            ignored[obj.kind] += 1
            continue
        key = (obj.namespace, obj.name)
        first = table.get(key)
        if first is None:
            table[key] = obj
            continue
        if obj.order < first.order:  # whatever the input order, the smaller source wins
            table[key], first, obj = obj, obj, first
        losers.append(obj)
    slices: dict[tuple[str, str], list[KubeObject]] = defaultdict(list)
    for s in winners["EndpointSlice"].values():
        labels = (s.body.get("metadata") or {}).get("labels")
        owner = labels.get(SERVICE_NAME_LABEL) if labels else None
        if owner:
            slices[(s.namespace, owner)].append(s)
    return _Groups(winners, losers, dict(ignored), slices)


def _chunk(objects: tuple[KubeObject, ...]) -> _Chunk:
    groups = _group(objects)
    idents = {key for table in groups.winners.values() for key in table}
    idents.update(groups.slices)
    tables = [(kind, table) for kind, table in groups.winners.items() if table]
    return _Chunk(objects, groups, sorted(groups.winners["Service"].values(), key=_ORDER),
                  tables, idents)


def _merge_chunks(memo: _Memo, chunks: tuple[tuple[KubeObject, ...], ...]) -> tuple[_Groups, list[_Chunk],
                                                                        set] | None:
    """Merged groups, the chunks and the dirty idents; None when duplicates need the full path."""
    previous = memo.chunks
    current: dict[int, _Chunk] = {}
    parts: list[_Chunk] = []
    dirty: set[tuple[str, str]] = set()
    for objects in chunks:
        part = previous.get(id(objects))
        if part is None or part.objects is not objects:
            part = _chunk(objects)
            dirty |= part.idents
        current[id(objects)] = part
        parts.append(part)
    for key, part in previous.items():
        if current.get(key) is not part:
            dirty |= part.idents  # a removed or replaced chunk
    memo.chunks = current
    winners: dict[str, dict[tuple[str, str], KubeObject]] = {k: {} for k in _USED_KINDS}
    ignored: dict[str, int] = defaultdict(int)
    with_slices: list[dict] = []
    for part in parts:
        if part.groups.losers:
            return _fall_back(parts)
        for kind, table in part.tables:
            merged = winners[kind]
            before = len(merged)
            merged.update(table)  # C-level, reuses the stored hashes
            if len(merged) != before + len(table):
                return _fall_back(parts)  # the same object in two files: the full path decides
        for kind, count in part.groups.ignored.items():
            ignored[kind] += count
        if part.groups.slices:
            with_slices.append(part.groups.slices)
    # Slices are looked up only for services being recomputed: a lazy view over the chunks
    # (one Service's slices may be spread over several files) instead of a merged dict.
    slices = _SlicesView(with_slices)
    return _Groups(winners, [], dict(ignored), slices), parts, dirty


class _SlicesView:
    """``get(ident)`` over several chunks' (namespace, service) -> slices maps."""

    def __init__(self, maps: list[dict]) -> None:
        self.maps = maps

    def get(self, ident: tuple[str, str], default=None):
        found = [s for m in self.maps for s in m.get(ident, ())]
        return found or default


def _fall_back(parts: list[_Chunk]) -> None:
    # The full path does not maintain chunk results: forget them, or a later chunked build
    # could reuse a result computed before the changes this build consumed.
    for part in parts:
        part.result = None
    return None


def _build(memo: _Memo, objects: Iterable[KubeObject], filter_mode: FilterMode,
           errors: tuple[ManifestError, ...]) -> DesiredState:
    merged = None
    if isinstance(objects, ChunkedObjects):
        merged = _merge_chunks(memo, objects.chunks)
    if merged is not None:
        groups, parts, dirty = merged
        batches = [(part.services, part) for part in parts]
    else:
        groups = _group(objects)
        batches = [(sorted(groups.winners["Service"].values(), key=_ORDER), None)]
        dirty = set()
    conflicts: list[Conflict] = []
    for obj in sorted(groups.losers, key=_ORDER):
        first = groups.winners[obj.kind][(obj.namespace, obj.name)]
        conflicts.append(Conflict(f"{obj.kind} {obj.namespace}/{obj.name} defined twice",
                                  first.source, obj.source))
    endpoints = groups.winners["Endpoints"]
    rules = groups.winners["DestinationRule"]
    slices_by_service = groups.slices

    verdicts: list[ServiceVerdict] = []
    needs_sort = False
    for obj in groups.losers:
        if obj.kind == "Service":
            needs_sort = True
            verdicts.append(ServiceVerdict(obj.source, obj.namespace, obj.name, Verdict.SKIP,
                                           SkipReason.CONFLICT, _all_keys(obj)))
    ports: dict[ServicePortKey, ServicePort] = {}
    claims: dict[str, ServicePort] = {}
    memo_entries: dict[int, tuple] = {} if merged is None else memo.entries
    no_slices: tuple = ()
    memo_get = memo.entries.get
    for services, part in batches:
        if part is not None and part.result is not None and part.result[0] == filter_mode \
                and part.idents.isdisjoint(dirty) \
                and claims.keys().isdisjoint(part.result[2]):
            # Nothing this chunk's services depend on changed: reuse its whole result.
            ports.update(part.result[1])
            claims.update(part.result[2])
            verdicts.extend(part.result[3])
            continue
        chunk_ports: dict = {}
        chunk_claims: dict = {}
        chunk_verdicts: list[ServiceVerdict] = []
        clean = True
        for svc in services:
            ident = (svc.namespace, svc.name)
            slices = slices_by_service.get(ident)
            if not slices:
                slices = no_slices
            else:
                slices = tuple(slices) if len(slices) == 1 else tuple(sorted(slices, key=_ORDER))
            deps = (filter_mode, slices, endpoints.get(ident), rules.get(ident))
            entry = memo_get(id(svc))
            result = entry[2] if entry is not None and entry[0] is svc and entry[1] == deps \
                else None
            if result is None:
                result = _compute(svc, filter_mode, *deps[1:])
            memo_entries[id(svc)] = (svc, deps, result)
            if not result.ports:
                chunk_verdicts.append(result.verdict)
                continue
            if claims.keys().isdisjoint(result.claim_map):  # the usual case: no VIP conflict
                claims.update(result.claim_map)
                ports.update(result.port_map)
                chunk_claims.update(result.claim_map)
                chunk_ports.update(result.port_map)
                chunk_verdicts.append(result.verdict)
                continue
            clean = False
            kept = 0
            for sp, port_claims in zip(result.ports, result.claims):
                held = [c for c in port_claims if c in claims]
                if held:  # an earlier (smaller) source holds this VIP:port/protocol
                    taken = claims[held[0]]
                    vip = held[0].split(" ")[0]
                    conflicts.append(Conflict(
                        f"{_hostport(vip, sp.port)}/{sp.key.protocol.value} claimed by "
                        f"{taken.key.namespace}/{taken.key.name} and {svc.namespace}/{svc.name}",
                        taken.source, svc.source))  # type: ignore[arg-type]
                    continue
                for c in port_claims:
                    claims[c] = sp
                ports[sp.key] = sp
                kept += 1
            chunk_verdicts.append(result.verdict if kept else ServiceVerdict(
                svc.source, svc.namespace, svc.name, Verdict.SKIP, SkipReason.CONFLICT,
                result.verdict.ports))
        verdicts.extend(chunk_verdicts)
        if part is not None:
            part.result = (filter_mode, chunk_ports, chunk_claims, tuple(chunk_verdicts)) \
                if clean else None
    if merged is None:
        memo.entries = memo_entries  # keep only what this build used (bounded by its size)
    else:
        # Chunked builds only add entries; drop the dead ones now and then (bounded memory).
        if len(memo_entries) > 2 * sum(len(p.services) for p in parts) + 1000:
            live = {id(svc) for p in parts for svc in p.services}
            memo.entries = {k: v for k, v in memo_entries.items() if k in live}

    # Services that failed validation are listed too, so `validate` shows every Service.
    invalid = [e for e in errors if e.kind == "Service" and e.document is not None and e.name]
    if invalid:
        seen = {v.source for v in verdicts}
        for err in invalid:
            source = SourceRef(err.file, err.document)  # type: ignore[arg-type]
            if source not in seen:
                seen.add(source)
                needs_sort = True
                verdicts.append(ServiceVerdict(source, err.namespace or DEFAULT_NAMESPACE,
                                               err.name, Verdict.SKIP, SkipReason.INVALID))
    if needs_sort:  # otherwise already in source order (chunks come in file order)
        verdicts.sort(key=lambda v: source_order(v.source))
    return DesiredState(ports=ports, services=tuple(verdicts), errors=errors,
                        conflicts=tuple(conflicts), ignored_kinds=groups.ignored)


def _doc_key(document: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in document.split("/"))


def source_order(source: SourceRef) -> tuple:
    """Sort key of a source: file path, then document index numerically ("10" after "9")."""
    return (source.file, _doc_key(source.document))
